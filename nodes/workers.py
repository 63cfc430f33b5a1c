"""Worker machines: other ComfyUI servers (with this pack and the same model
files) that sample and score shards of a random search over ComfyUI's own
HTTP API.

Only the standard library: each shard is an ordinary prompt (``POST
/prompt``), followed by polling ``/history/<id>`` (no websocket client is
needed; the master's progress bar advances by a shard's NFEs when it comes
back), cancelled with ``POST /interrupt`` + ``POST /queue`` ``delete``.

Where worker URLs come from, first match wins: the Search Workers node's
``worker_urls``; the enabled workers of ComfyUI-Distributed's
``gpu_config.json`` when that pack is installed; the file named by
``$INFSCALE_WORKERS_FILE``, else ``infscale_workers.txt`` in ComfyUI's user
folder (one URL a line, ``#`` comments).  Only those URLs are ever contacted:
redirects are refused.  An auth header for the workers (a reverse proxy's or
ComfyUI-Distributed's token) is read from ``$INFSCALE_WORKER_AUTH`` at run time,
``Header-Name: value`` or a bare token (sent as ``Authorization: Bearer``); it
is never part of the workflow.

Faults: a worker that is unreachable, answers an HTTP error other than a
refused prompt, fails while running, is interrupted or times out has its shard
put back and run by another worker or locally (the search's result does not
change: a candidate's score does not depend on where it ran); the reason goes
into the report's notes.  A worker that refuses the prompt (a missing node or
model file), whose fingerprint differs, or whose answer is malformed stops the
search with an error naming it."""
from __future__ import annotations

import collections
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..search.sharded import ShardAnswerError, ShardRows

AUTH_ENV = "INFSCALE_WORKER_AUTH"
WORKERS_FILE_ENV = "INFSCALE_WORKERS_FILE"
WORKERS_FILE = "infscale_workers.txt"
HTTP_TIMEOUT = 30.0  # seconds for one HTTP request (a shard's own limit is the node's timeout)


class WorkerFault(RuntimeError):
    """The worker could not finish the shard (unreachable, failed, interrupted, timed out): re-assign it."""


class WorkerRefused(RuntimeError):
    """The worker must not be used: it refused the prompt, its fingerprint differs, or it answered nonsense."""


# --------------------------------------------------------------------------- configuration
def parse_urls(text: str, source: str = "worker_urls") -> List[str]:
    """Worker base URLs, one a line (or comma-separated), ``#`` comments; http(s) with a host, no query."""
    urls: List[str] = []
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0]
        for item in line.split(","):
            item = item.strip()
            if not item:
                continue
            p = urllib.parse.urlsplit(item)
            if p.scheme not in ("http", "https") or not p.hostname or p.query or p.fragment or p.username:
                raise ValueError(f"{source}: '{item}' is not a worker URL; write http://host:port (or https://...), "
                                 "one a line, without credentials, query or fragment")
            url = item.rstrip("/")
            if url not in urls:
                urls.append(url)
    return urls


def distributed_config_urls() -> Tuple[List[str], Optional[str]]:
    """The enabled workers of ComfyUI-Distributed's ``gpu_config.json``, when that pack is installed."""
    try:
        import folder_paths
        roots = folder_paths.get_folder_paths("custom_nodes")
    except Exception:
        return [], None
    for root in roots:
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue
        for name in names:
            path = os.path.join(root, name, "gpu_config.json")
            if "distributed" not in name.lower() or not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
            lines = []
            for w in cfg.get("workers", []) if isinstance(cfg, dict) else []:
                if not isinstance(w, dict) or not w.get("enabled", True):
                    continue
                host = str(w.get("host") or "127.0.0.1").strip()
                port = int(w.get("port") or 8188)
                if host.startswith(("http://", "https://")):
                    lines.append(host.rstrip("/"))
                else:
                    https = w.get("type") == "cloud" or port == 443
                    default = 443 if https else 80
                    lines.append(f"{'https' if https else 'http'}://{host}{'' if port == default else f':{port}'}")
            return parse_urls("\n".join(lines), path), path
    return [], None


def workers_file() -> str:
    path = os.environ.get(WORKERS_FILE_ENV)
    if path:
        return path
    try:
        import folder_paths
        user = folder_paths.get_user_directory() if hasattr(folder_paths, "get_user_directory") else \
            os.path.join(folder_paths.base_path, "user")
    except Exception:
        user = "user"
    return os.path.join(user, WORKERS_FILE)


def configured_urls(text: str) -> Tuple[List[str], str]:
    """(worker URLs, where they came from)."""
    urls = parse_urls(text)
    if urls:
        return urls, "the Search Workers node"
    urls, path = distributed_config_urls()
    if urls:
        return urls, f"ComfyUI-Distributed's {path}"
    path = workers_file()
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            urls = parse_urls(f.read(), path)
        if urls:
            return urls, path
    raise ValueError("Search Workers has no worker URL: write them into worker_urls (http://host:port, one a "
                     f"line), enable workers in ComfyUI-Distributed, or list them in {path} (or the file named "
                     f"by ${WORKERS_FILE_ENV})")


def auth_headers() -> Dict[str, str]:
    """The optional auth header from ``$INFSCALE_WORKER_AUTH`` (read at run time, never stored)."""
    raw = os.environ.get(AUTH_ENV, "").strip()
    if not raw:
        return {}
    if ":" in raw:
        name, value = raw.split(":", 1)
        name, value = name.strip(), value.strip()
        if not name or not value or any(c in name for c in " \t\r\n") or any(c in value for c in "\r\n"):
            raise ValueError(f"${AUTH_ENV} must be 'Header-Name: value' or a bare token")
        return {name: value}
    return {"Authorization": f"Bearer {raw}"}


@dataclass(frozen=True)
class WorkerConfig:
    """What a Search Workers node hands Search Loop: plain data (the auth header is not in it)."""
    urls: Tuple[str, ...]
    source: str
    timeout_s: float = 600.0
    local: bool = True          # this machine samples shards too
    shards_per_worker: int = 2  # shards planned per participant (smaller shards balance better)


# --------------------------------------------------------------------------- HTTP
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused (only the configured worker "
                                     "URLs are contacted)", headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirect)


class Client:
    """One worker: JSON over HTTP, only below its configured base URL."""

    def __init__(self, base: str, headers: Dict[str, str]):
        self.base = base
        self.headers = dict(headers)
        self.client_id = uuid.uuid4().hex

    def request(self, path: str, body: Any = None, timeout: float = HTTP_TIMEOUT) -> Tuple[int, Any]:
        url = self.base + path
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
        try:
            with _OPENER.open(req, timeout=timeout) as r:
                raw = r.read()
                code = r.status
        except urllib.error.HTTPError as e:
            if 300 <= e.code < 400:
                raise WorkerRefused(f"worker {self.base} answered {path} with a redirect ({e.reason}): refused, "
                                    "only the configured worker URLs are contacted; configure the final URL") from None
            raw, code = e.read() or b"", e.code
        except (urllib.error.URLError, OSError, ValueError) as e:  # refused, reset, DNS, timeout
            reason = getattr(e, "reason", e)
            raise WorkerFault(f"unreachable ({reason})") from None
        try:
            return code, (json.loads(raw) if raw else {})
        except ValueError:
            return code, {"raw": raw[:500].decode(errors="replace")}

    def interrupt(self, prompt_id: str) -> None:
        """Stops the prompt if it is running (targeted where the server supports it) and drops it from the queue."""
        for path, body in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                self.request(path, body, timeout=5)
            except (WorkerFault, WorkerRefused):
                pass  # the worker is gone: nothing is running there


def prompt_error(body: Any) -> str:
    """ComfyUI's refusal of a prompt (POST /prompt 400) in one line."""
    if not isinstance(body, dict):
        return str(body)[:500]
    err = body.get("error")
    msg = (err.get("message") or "") + (": " + err["details"] if err.get("details") else "") \
        if isinstance(err, dict) else str(err or "")
    for nid, ne in (body.get("node_errors") or {}).items():
        for e in (ne.get("errors") or [])[:2]:
            msg += f"; node {nid} ({ne.get('class_type', '?')}): {e.get('message', '')} {e.get('details', '')}".rstrip()
    return msg or json.dumps(body)[:500]


# --------------------------------------------------------------------------- one shard on one worker
@dataclass
class ShardJob:
    start: int
    count: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


def run_remote(client: Client, job: ShardJob, graph: Dict[str, Any], node_id: str, timeout_s: float,
               check: Callable[[str, ShardJob, Any], ShardRows], stop: threading.Event,
               started: Callable[[str], None] = lambda pid: None, poll: float = 0.25) -> ShardRows:
    """Queues the shard's prompt on the worker, waits for it in /history and returns its checked rows."""
    code, body = client.request("/prompt", {"prompt": graph, "client_id": client.client_id})
    if code == 400:
        raise WorkerRefused(f"worker {client.base} refused the shard's prompt: {prompt_error(body)}. A worker needs "
                            "this pack (the same version) and the same model, verifier and input files under the "
                            "same names")
    if code != 200 or not isinstance(body, dict) or not isinstance(body.get("prompt_id"), str):
        raise WorkerFault(f"POST /prompt answered HTTP {code}: {str(body)[:300]}")
    pid = body["prompt_id"]
    started(pid)
    deadline = time.monotonic() + float(timeout_s)
    while True:
        if stop.is_set():
            client.interrupt(pid)
            raise WorkerFault("stopped")
        code, hist = client.request("/history/" + urllib.parse.quote(pid))
        if code != 200:
            raise WorkerFault(f"GET /history answered HTTP {code}")
        entry = hist.get(pid) if isinstance(hist, dict) else None
        if isinstance(entry, dict):
            status = entry.get("status") or {}
            messages = status.get("messages") or []
            for kind, data in messages:
                if kind == "execution_interrupted":
                    raise WorkerFault("interrupted while it ran the shard")
                if kind == "execution_error":
                    raise WorkerFault(f"failed while it ran the shard: {data.get('exception_type', '')}: "
                                      f"{str(data.get('exception_message', '')).strip()[:300]}")
            if status.get("status_str") == "error":
                raise WorkerFault("failed while it ran the shard")
            outputs = entry.get("outputs") or {}
            if status.get("completed") or outputs:
                try:
                    text = outputs[node_id]["text"][0]
                    ans = json.loads(text)
                except (KeyError, IndexError, TypeError, ValueError):
                    raise ShardAnswerError(f"the answer of worker {client.base} for candidates {job.start}.."
                                           f"{job.start + job.count - 1} is malformed: no shard JSON in its history "
                                           "entry. Its scores were not used") from None
                return check(client.base, job, ans)
        if time.monotonic() > deadline:
            client.interrupt(pid)
            raise WorkerFault(f"timed out after {timeout_s:g} s")
        time.sleep(poll)


# --------------------------------------------------------------------------- the dispatcher
class WorkerDispatch:
    """Runs planned shards on the workers (one thread each, HTTP only) and locally (in the calling thread,
    which is ComfyUI's execution thread: the sampling stays there), re-assigning a faulty worker's shard.

    ``graph_for(job)``: the worker prompt of a shard; ``check(url, job, answer)``: its validated rows;
    ``on_remote(rows)``: called in the calling thread for each shard a worker finished (progress);
    ``interrupted()``: raises when the user cancels (ComfyUI's Cancel)."""

    def __init__(self, config: WorkerConfig, graph_for: Callable[[ShardJob], Dict[str, Any]], node_id: str,
                 check: Callable[[str, ShardJob, Any], ShardRows], interrupted: Callable[[], None],
                 on_remote: Callable[[ShardRows], None] = lambda rows: None, poll: float = 0.25):
        self.config = config
        self.graph_for, self.node_id, self.check = graph_for, node_id, check
        self.interrupted, self.on_remote, self.poll = interrupted, on_remote, poll
        self.notes: List[str] = []
        self.ran: Dict[Tuple[int, int], str] = {}

    def parts(self) -> int:
        return max(1, int(self.config.shards_per_worker)) * (len(self.config.urls) + int(self.config.local))

    def __call__(self, plan: List[Tuple[int, int]], run_local: Callable[[int, int], ShardRows]) -> List[ShardRows]:
        headers = auth_headers()
        cond = threading.Condition()
        pending = collections.deque(ShardJob(s, c) for s, c in plan)
        done: Dict[Tuple[int, int], ShardRows] = {}
        fresh: List[ShardRows] = []
        fatal: List[BaseException] = []
        running: Dict[str, Tuple[Client, str]] = {}
        stop = threading.Event()
        alive = set(self.config.urls)

        def worker(url: str) -> None:
            client = Client(url, headers)
            while True:
                with cond:  # idle until a shard is (put back) pending, or the search is over
                    while not (stop.is_set() or fatal or pending or len(done) == len(plan)):
                        cond.wait(self.poll)
                    if stop.is_set() or fatal or not pending:
                        return
                    job = pending.popleft()

                def started(pid: str) -> None:
                    with cond:
                        running[url] = (client, pid)
                try:
                    rows = run_remote(client, job, self.graph_for(job), self.node_id, self.config.timeout_s,
                                      self.check, stop, started, self.poll)
                except WorkerFault as e:
                    with cond:
                        running.pop(url, None)
                        pending.appendleft(job)
                        alive.discard(url)
                        if str(e) != "stopped":
                            self.notes.append(f"worker {url} {e}: its shard (candidates {job.start}.."
                                              f"{job.start + job.count - 1}) was re-assigned")
                        cond.notify_all()
                    return
                except BaseException as e:  # refused, malformed, a bug: the search stops with it
                    with cond:
                        running.pop(url, None)
                        fatal.append(e)
                        cond.notify_all()
                    return
                with cond:
                    running.pop(url, None)
                    done[(job.start, job.count)] = rows
                    fresh.append(rows)
                    self.ran[(job.start, job.count)] = url
                    cond.notify_all()

        threads = [threading.Thread(target=worker, args=(u,), daemon=True, name=f"infscale-worker {u}")
                   for u in self.config.urls]
        for t in threads:
            t.start()
        try:
            while True:
                with cond:
                    if fatal:
                        raise fatal[0]
                    reported, fresh[:] = list(fresh), []
                    if len(done) == len(plan):
                        break
                    job = None
                    if pending and (self.config.local or not alive):
                        job = pending.popleft()
                    else:
                        cond.wait(self.poll)
                for rows in reported:
                    self.on_remote(rows)
                if job is None:
                    self.interrupted()
                    continue
                rows = run_local(job.start, job.count)
                with cond:
                    done[(job.start, job.count)] = rows
                    self.ran[(job.start, job.count)] = "local"
                    cond.notify_all()
            for rows in reported:
                self.on_remote(rows)
        finally:
            stop.set()
            with cond:
                busy = list(running.values())
                cond.notify_all()
            for client, pid in busy:  # Cancel (or an error) stops every worker's shard too
                client.interrupt(pid)
            for t in threads:
                t.join(timeout=10)
        return [done[(s, c)] for s, c in plan]
