"""Bounded network reads: the one way the pack reads from another machine (a remote grader here, worker
ComfyUI servers in ``engine/workers.py``).

Everything read from the network is bounded in time, size and depth, and each failure is named:

* **time**: one wall-clock deadline for the whole request (connect + send + headers + body).  A watchdog
  closes the socket when it passes, so a server that drips one byte every few seconds costs at most the
  deadline, not the deadline per read;
* **size**: a body larger than ``max_bytes`` is refused, from its ``Content-Length`` before a byte of it is
  read, or as soon as more than ``max_bytes`` arrived (the body is read in chunks, so at most ``max_bytes``
  plus one chunk is ever held);
* **depth and numbers**: JSON nested deeper than ``max_depth`` is refused, and so are NaN, Infinity (and
  -Infinity unless the caller allows it) and integers beyond 64 bits, before anything downstream sees them.

Only the host and port given are contacted (``http.client`` directly: no proxy from the environment), and
a redirect is an answer like any other, never followed.  Nothing here imports ComfyUI."""
from __future__ import annotations

import http.client
import json
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

CHUNK = 64 * 1024
MAX_INT = 2 ** 64


class NetError(RuntimeError):
    """A read from the network that failed or was refused.  ``kind``: ``unreachable``, ``deadline``,
    ``too_large``, ``not_json``, ``too_deep`` or ``bad_number``; the message names the endpoint."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Limits:
    """What one request may cost: ``deadline_s`` seconds of wall clock, ``max_bytes`` of body, JSON nested at
    most ``max_depth`` deep."""
    deadline_s: float = 30.0
    max_bytes: int = 8 * 1024 * 1024
    max_depth: int = 32

    def __post_init__(self):
        if not (self.deadline_s > 0 and self.max_bytes > 0 and self.max_depth > 0):
            raise ValueError("network limits must be positive (deadline_s, max_bytes, max_depth)")

    def sooner(self, deadline_s: float) -> "Limits":
        """The same limits with the deadline cut to ``deadline_s`` when that is sooner."""
        return Limits(max(0.001, min(self.deadline_s, float(deadline_s))), self.max_bytes, self.max_depth)


def size_text(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def request(scheme: str, host: str, port: int, method: str, path: str, body: Optional[bytes],
            headers: Dict[str, str], limits: Limits, where: str) -> Tuple[int, Dict[str, str], bytes]:
    """One HTTP request to ``scheme://host:port`` + ``path`` within ``limits``: (status, headers, body).
    ``where`` names the endpoint in errors.  Raises :class:`NetError`."""
    end = time.monotonic() + limits.deadline_s
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=limits.deadline_s,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=limits.deadline_s)
    expired = threading.Event()

    def watchdog():  # the wall-clock deadline: whatever is blocked on the socket returns now
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    timer = threading.Timer(limits.deadline_s, watchdog)
    timer.daemon = True
    timer.start()

    def late() -> NetError:
        return NetError("deadline", f"{where}: no complete answer within the deadline of {limits.deadline_s:g} s "
                                    "(connect, send and read together)")
    try:
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            length = resp.getheader("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > limits.max_bytes:
                raise NetError("too_large", f"{where}: the answer announces {size_text(int(length))}, more than the "
                                            f"limit of {size_text(limits.max_bytes)}: refused unread")
            parts, got = [], 0
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise late()
                if conn.sock is not None:
                    conn.sock.settimeout(max(0.01, left))
                chunk = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
                if not chunk:
                    break
                got += len(chunk)
                if got > limits.max_bytes:
                    raise NetError("too_large", f"{where}: the answer is larger than the limit of "
                                                f"{size_text(limits.max_bytes)}: refused after "
                                                f"{size_text(got)}")
                parts.append(chunk)
            if expired.is_set():
                raise late()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, b"".join(parts)
        except NetError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            if expired.is_set() or time.monotonic() >= end:
                raise late() from None
            what = "timed out" if isinstance(e, (TimeoutError, socket.timeout)) else f"failed ({e!r})"
            raise NetError("unreachable", f"{where}: the request {what}") from None
    finally:
        timer.cancel()
        conn.close()


def _reject_constant(name: str):
    raise ValueError(f"the JSON constant {name} is not a number the pack accepts")


def loads(data: bytes, max_depth: int, where: str, allow_neg_inf: bool = False) -> Any:
    """JSON from the network: refused (:class:`NetError`) when it is not JSON, nested deeper than
    ``max_depth``, or holds NaN, Infinity (-Infinity unless ``allow_neg_inf``) or an integer beyond 64 bits."""
    def constant(name):
        if name == "-Infinity" and allow_neg_inf:
            return -math.inf
        raise _BadNumber(f"the JSON constant {name}")

    def number(text):
        v = float(text)
        if not math.isfinite(v):
            raise _BadNumber(f"the number {text[:40]} (out of range)")
        return v

    def integer(text):
        if len(text.lstrip("-")) > 20:
            raise _BadNumber(f"the integer {text[:40]}... (more than 20 digits)")
        v = int(text)
        if abs(v) > MAX_INT:
            raise _BadNumber(f"the integer {text} (beyond 64 bits)")
        return v
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else str(data)
        out = json.loads(text, parse_constant=constant, parse_float=number, parse_int=integer)
    except _BadNumber as e:
        raise NetError("bad_number", f"{where}: the answer holds {e}, which is refused") from None
    except RecursionError:
        raise NetError("too_deep", f"{where}: the answer's JSON is nested deeper than the limit of {max_depth}") \
            from None
    except (ValueError, UnicodeDecodeError) as e:
        raise NetError("not_json", f"{where}: the answer is not JSON ({str(e)[:120]})") from None
    if depth(out, max_depth + 1) > max_depth:
        raise NetError("too_deep", f"{where}: the answer's JSON is nested deeper than the limit of {max_depth}")
    return out


class _BadNumber(ValueError):
    pass


def depth(obj: Any, stop: int) -> int:
    """How deep ``obj`` nests (a scalar is 0, ``[]`` is 1), counted without recursion up to ``stop``."""
    deepest, todo = 0, [(obj, 0)]
    while todo:
        o, d = todo.pop()
        if isinstance(o, dict):
            o = list(o.values())
        elif not isinstance(o, list):
            continue
        d += 1
        deepest = max(deepest, d)
        if d >= stop:
            return d
        todo.extend((v, d) for v in o if isinstance(v, (dict, list)))
    return deepest


def shorten(text: Any, limit: int = 80) -> str:
    """``text`` for an error message: at most ``limit`` characters, with an ellipsis and the full length."""
    s = str(text)
    return s if len(s) <= limit else f"{s[:limit]}... ({len(s)} characters)"


__all__ = ["CHUNK", "Limits", "NetError", "depth", "loads", "request", "shorten", "size_text"]
