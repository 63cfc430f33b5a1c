"""Worker machines: other ComfyUI servers (with this pack and the same model
files) that sample and score shards of a random search over ComfyUI's own
HTTP API.

Only the standard library: each shard is an ordinary prompt (``POST
/prompt``), followed by polling ``/history/<id>`` (no websocket client is
needed; the master's progress bar advances by a shard's NFEs when it comes
back), cancelled with ``POST /interrupt`` + ``POST /queue`` ``delete``.

The workers come from a worker pool of the operator's endpoint list
(``engine/endpoints.py``): a workflow names a pool, never a URL.  Only the
pool's URLs, and only the paths above, are ever contacted: redirects are
refused.  Every request is bounded (``verifiers/net.py``): a wall-clock
deadline, a body-size cap, a JSON depth cap, no non-finite or out-of-range
number.  The pool's auth header is read at run time from the environment
variable the operator named for it; it is never part of the workflow.

Faults: a worker that is unreachable, answers an HTTP error other than a
refused prompt, fails while running, is interrupted, times out, or answers
something malformed, too large, too deep or out of range has its shard put
back and run by another worker or locally (the search's result does not
change: a candidate's score does not depend on where it ran); the reason,
naming the worker, goes into the report's notes.  A worker that refuses the
prompt (a missing node or model file), redirects, or whose fingerprint
differs stops the search with an error naming it: those are settings to
fix.  A worker whose scores fail the master's audit is dropped
(``WorkerDispatch.ban``) and its shards run again elsewhere."""
from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .endpoints import WorkerPool, auth_headers
from ..search.dispatch import Task, TaskQueue, describe, plan_chunks
from ..search.sharded import ShardAnswerError, ShardRows
from ..verifiers import net
from ..verifiers.net import Limits


class WorkerFault(RuntimeError):
    """The worker could not finish the shard (unreachable, failed, interrupted, timed out, or answered
    something that cannot be used): re-assign it."""


class WorkerRefused(RuntimeError):
    """The worker must not be used: it refused the prompt, redirected, or its fingerprint differs."""


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class WorkerConfig:
    """What a Search Workers node hands Search Loop: plain data from the operator's worker pool (the auth header
    is not in it, only the name of the variable that holds it) and the node's own settings."""
    urls: Tuple[str, ...]
    source: str
    timeout_s: float = 600.0    # the most one shard may take (the node's, capped by the pool's)
    local: bool = True          # this machine samples shards too
    min_chunk: int = 1          # the fewest candidates a chunk holds (a worker's micro-batch)
    backups: bool = True        # an idle worker runs a chunk a slower one still runs, when it would finish first
    limits: Limits = Limits()   # one HTTP request: wall-clock deadline, body size, JSON depth
    auth_env: str = ""          # the NAME of the variable holding the auth header (read at run time)
    audit_per_shard: int = 2    # candidates of each worker shard this machine samples and scores itself
    audit_tolerance: float = 0.05

    @classmethod
    def from_pool(cls, pool: WorkerPool, timeout_s: float, local: bool) -> "WorkerConfig":
        return cls(pool.urls, f"worker pool '{pool.name}' ({pool.source})", min(float(timeout_s), pool.timeout_s),
                   bool(local), limits=pool.limits(), auth_env=pool.auth_env, audit_per_shard=pool.audit_per_shard,
                   audit_tolerance=pool.audit_tolerance)


# --------------------------------------------------------------------------- HTTP
PATHS = ("/prompt", "/history/", "/interrupt", "/queue")  # the only paths of a worker this pack requests
INTERRUPT_DEADLINE = 2.0  # seconds for each of the two requests that stop a prompt on a worker
PROMPT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class Client:
    """One worker: JSON over HTTP, only below its configured base URL and only to the pack's own paths, each
    request bounded in time, size and depth (``verifiers/net.py``)."""

    def __init__(self, base: str, headers: Dict[str, str], limits: Limits = Limits()):
        parts = urllib.parse.urlsplit(base)
        self.base = base
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.headers = dict(headers)
        self.limits = limits
        self.client_id = uuid.uuid4().hex

    def request(self, path: str, body: Any = None, deadline_s: Optional[float] = None) -> Tuple[int, Any]:
        if not path.startswith(PATHS):
            raise AssertionError(f"not one of the pack's worker paths: {path}")
        limits = self.limits if deadline_s is None else self.limits.sooner(deadline_s)
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        where = f"worker {self.base} ({'POST' if data is not None else 'GET'} {path.split('?')[0][:40]})"
        try:
            code, resp_headers, raw = net.request(self.scheme, self.host, self.port,
                                                  "POST" if data is not None else "GET", self.prefix + path, data,
                                                  headers, limits, where)
        except net.NetError as e:
            why = str(e).replace(where + ": ", "")
            raise WorkerFault(f"unreachable ({why})" if e.kind == "unreachable" else why) from None
        if 300 <= code < 400:
            raise WorkerRefused(f"worker {self.base} answered {path} with a redirect (to "
                                f"{net.shorten(resp_headers.get('location'), 80)!r}): refused, only the configured "
                                "worker URLs are contacted; the operator must configure the final URL") from None
        if not raw:
            return code, {}
        try:
            return code, net.loads(raw, limits.max_depth, where, allow_neg_inf=True)
        except net.NetError as e:
            if code != 200:  # an error page: its text is enough
                return code, {"raw": raw[:500].decode(errors="replace")}
            raise WorkerFault(str(e).replace(where + ": ", "")) from None

    def interrupt(self, prompt_id: str) -> None:
        """Stops the prompt if it is running (targeted where the server supports it) and drops it from the queue."""
        for path, body in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                self.request(path, body, deadline_s=INTERRUPT_DEADLINE)
            except (WorkerFault, WorkerRefused):
                pass  # the worker is gone: nothing is running there


def prompt_error(body: Any) -> str:
    """ComfyUI's refusal of a prompt (POST /prompt 400) in one line."""
    if not isinstance(body, dict):
        return net.shorten(body, 500)
    err = body.get("error")
    msg = (str(err.get("message") or "") + (": " + str(err["details"]) if err.get("details") else "")) \
        if isinstance(err, dict) else str(err or "")
    node_errors = body.get("node_errors")
    for nid, ne in (node_errors.items() if isinstance(node_errors, dict) else []):
        errors = ne.get("errors") if isinstance(ne, dict) else None
        for e in (errors if isinstance(errors, list) else [])[:2]:
            if isinstance(e, dict):
                msg += (f"; node {net.shorten(nid, 20)} ({net.shorten(ne.get('class_type', '?'), 60)}): "
                        f"{net.shorten(e.get('message', ''), 200)} {net.shorten(e.get('details', ''), 200)}").rstrip()
    return net.shorten(msg or json.dumps(body), 1000)


# --------------------------------------------------------------------------- one shard on one worker
@dataclass
class ShardJob:
    """One request to a worker: a chunk of random search's candidates (``start``, ``count``), or any other
    dispatched task (``task``: its plain-data ``spec`` is what the worker is sent), with a fresh ``token``."""
    start: int
    count: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    task: Optional[Task] = None

    def what(self) -> str:
        if self.task is not None and "start" not in self.task.spec:
            return describe(self.task)
        return f"candidates {self.start}..{self.start + self.count - 1}"


def run_remote(client: Client, job: ShardJob, graph: Dict[str, Any], node_id: str, timeout_s: float,
               check: Callable[[str, ShardJob, Any], ShardRows], stop: threading.Event,
               started: Callable[[str], None] = lambda pid: None, poll: float = 0.25) -> ShardRows:
    """Queues the shard's prompt on the worker, waits for it in /history and returns its checked rows, all
    within ``timeout_s`` of wall clock (each request's deadline is cut to what is left)."""
    deadline = time.monotonic() + float(timeout_s)

    def left() -> float:
        t = deadline - time.monotonic()
        if t <= 0.01:
            raise WorkerFault(f"timed out after {timeout_s:g} s")
        return t
    def call(path: str, body: Any = None) -> Tuple[int, Any]:
        try:
            return client.request(path, body, deadline_s=left())
        except WorkerFault:
            left()  # the shard's own time ran out during the request: that is what is said
            raise
    code, body = call("/prompt", {"prompt": graph, "client_id": client.client_id})
    if code == 400:
        raise WorkerRefused(f"worker {client.base} refused the shard's prompt: {prompt_error(body)}. A worker needs "
                            "this pack (the same version) and the same model, verifier and input files under the "
                            "same names")
    pid = body.get("prompt_id") if isinstance(body, dict) else None
    if code != 200 or not isinstance(pid, str) or not PROMPT_ID.match(pid):
        raise WorkerFault(f"POST /prompt answered HTTP {code} without a prompt id: {net.shorten(body, 300)}")
    started(pid)  # from here on, the caller interrupts the prompt if this raises
    while True:
        if stop.is_set():
            raise WorkerFault("stopped")
        code, hist = call("/history/" + urllib.parse.quote(pid))
        if code != 200:
            raise WorkerFault(f"GET /history answered HTTP {code}")
        entry = hist.get(pid) if isinstance(hist, dict) else None
        if isinstance(entry, dict):
            rows = _finished(client, job, entry, node_id, check)
            if rows is not None:
                return rows
        left()
        stop.wait(poll)


def _finished(client: Client, job: ShardJob, entry: Dict[str, Any], node_id: str,
              check: Callable[[str, ShardJob, Any], ShardRows]) -> Optional[ShardRows]:
    """The checked rows of a finished history entry, None while it runs; WorkerFault when it failed or its answer
    cannot be used."""
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    messages = status.get("messages") if isinstance(status.get("messages"), list) else []
    for m in messages:
        kind, data = (m[0], m[1]) if isinstance(m, list) and len(m) == 2 else (None, None)
        if kind == "execution_interrupted":
            raise WorkerFault("interrupted while it ran the shard")
        if kind == "execution_error":
            data = data if isinstance(data, dict) else {}
            raise WorkerFault(f"failed while it ran the shard: {net.shorten(data.get('exception_type', ''), 80)}: "
                              f"{net.shorten(str(data.get('exception_message', '')).strip(), 300)}")
    if status.get("status_str") == "error":
        raise WorkerFault("failed while it ran the shard")
    outputs = entry.get("outputs")
    if not (status.get("completed") or outputs):
        return None
    try:
        text = outputs[node_id]["text"][0]
        if not isinstance(text, str):
            raise TypeError
        ans = net.loads(text, client.limits.max_depth, f"worker {client.base}", allow_neg_inf=True)
    except net.NetError as e:
        raise WorkerFault(f"answered a shard that cannot be used: {str(e).split(': ', 1)[-1]}") from None
    except (KeyError, IndexError, TypeError):
        raise WorkerFault(f"answered {job.what()} without the shard JSON in its history entry") from None
    try:
        return check(client.base, job, ans)
    except ShardAnswerError as e:
        raise WorkerFault(f"answered a shard that cannot be used ({e})") from None


# --------------------------------------------------------------------------- the dispatcher
class WorkerDispatch:
    """Runs planned shards on the workers (one thread each, HTTP only) and locally (in the calling thread,
    which is ComfyUI's execution thread: the sampling stays there), re-assigning a faulty worker's shard.

    ``graph_for(job)``: the worker prompt of a shard; ``check(url, job, answer)``: its validated rows;
    ``on_remote(rows)``: called in the calling thread for each shard a worker finished (progress);
    ``interrupted()``: raises when the user cancels (ComfyUI's Cancel).

    A dispatcher remembers the shards it got (``done``, ``ran``) across calls: called again with the same plan
    after :meth:`ban`, it runs only the banned worker's shards again."""

    def __init__(self, config: WorkerConfig, graph_for: Callable[[ShardJob], Dict[str, Any]], node_id: str,
                 check: Callable[[str, ShardJob, Any], ShardRows], interrupted: Callable[[], None],
                 on_remote: Callable[[ShardRows], None] = lambda rows: None, poll: float = 0.25):
        self.config = config
        self.graph_for, self.node_id, self.check = graph_for, node_id, check
        self.interrupted, self.on_remote, self.poll = interrupted, on_remote, poll
        self.notes: List[str] = []
        self.ran: Dict[Tuple[int, int], str] = {}
        self.done: Dict[Tuple[int, int], ShardRows] = {}
        self.banned: Dict[str, str] = {}
        self.faulty: set = set()
        self.plans: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}

    def executors(self) -> int:
        """Who takes chunks: the workers not dropped, and this machine when it samples too."""
        alive = [u for u in self.config.urls if u not in self.banned and u not in self.faulty]
        return max(1, len(alive) + int(self.config.local))

    def plan(self, n: int, floor: int = 1) -> List[Tuple[int, int]]:
        """The chunks of ``n`` candidates (``search.dispatch.plan_chunks``: falling sizes, taken on demand),
        never below ``floor`` (this machine's micro-batch) or the pool's ``min_chunk``.  The same
        plan again for the same search (after :meth:`ban`), so only the banned worker's chunks run again."""
        if (n, floor) in self.plans:
            return list(self.plans[(n, floor)])
        self.plans[(n, floor)] = plan_chunks(n, self.executors(), max(int(floor), int(self.config.min_chunk)))
        return list(self.plans[(n, floor)])

    def ban(self, url: str, why: str) -> int:
        """Drops worker ``url`` for the rest of this search (its scores failed the audit): its shards are
        forgotten, so the next call runs them again elsewhere.  The number of shards dropped."""
        self.banned[url] = why
        lost = [k for k, where in self.ran.items() if where == url]
        for k in lost:
            self.ran.pop(k, None)
            self.done.pop(k, None)
        self.notes.append(f"worker {url} was dropped: {why}. Its {len(lost)} shard(s) were run again elsewhere")
        return len(lost)

    def __call__(self, plan: List[Tuple[int, int]], run_local: Callable[[int, int], ShardRows],
                 steps: Optional[int] = None) -> List[ShardRows]:
        """Random search's chunks (those not got before), on the workers and, with ``local``, here (``steps``: a
        coarse search's steps, which the workers are told)."""
        extra = {} if steps is None else {"steps": int(steps)}
        queue = TaskQueue([Task((s, c), spec={"start": s, "count": c, **extra}, cost=float(c))
                           for s, c in plan if (s, c) not in self.done])
        self.drive(queue, lambda task: run_local(task.spec["start"], task.spec["count"]))
        self.done.update(queue.done)
        self.ran.update(queue.ran)
        return [self.done[(s, c)] for s, c in plan]

    def drive(self, queue: TaskQueue, run_local: Callable[[Task], Any],
              graph_for: Optional[Callable[[ShardJob], Dict[str, Any]]] = None,
              check: Optional[Callable[[str, ShardJob, Any], Any]] = None,
              on_remote: Optional[Callable[[Any], None]] = None) -> TaskQueue:
        """Runs ``queue`` to its end: each worker (a thread, HTTP only) takes the next task it may run and
        sends it as ``graph_for(job)``, its answer checked by ``check(url, job, answer)``; this machine runs
        ``run_local(task)`` in the calling thread (with ``local``, or once every worker is gone).  A worker with
        nothing to take runs a backup of a chunk a slower one still runs, and any executor with nothing to take
        re-runs a backlogged executor's last pinned task from scratch when that ends sooner
        (``TaskQueue.take``).  The defaults: random search's chunks (this dispatcher's own)."""
        graph_for = graph_for or self.graph_for
        check = check or self.check
        on_remote = on_remote or self.on_remote
        try:
            headers = auth_headers(self.config.auth_env)
        except ValueError as e:
            raise WorkerRefused(str(e)) from None
        queue.uncancellable.add("local")  # this machine's task runs to its end: backing it up gains nothing
        cond = queue.cond
        fresh: List[ShardRows] = []
        fatal: List[BaseException] = []
        running: Dict[str, Tuple[Client, str]] = {}
        stop = threading.Event()
        urls = [u for u in self.config.urls if u not in self.banned and u not in self.faulty]
        alive = set(urls)

        cancels: Dict[str, threading.Event] = {}  # worker -> the event that stops its current chunk

        def worker(url: str) -> None:
            client = Client(url, headers, self.config.limits)
            while True:
                with cond:  # idle until a chunk is (put back) pending, or the search is over
                    task = None
                    while not (stop.is_set() or fatal or queue.complete()):
                        # nothing pending: a backup run of a chunk another participant would finish later
                        task = queue.take(url, backup=self.config.backups, steal=True)
                        if task is not None:
                            break
                        cond.wait(self.poll)
                    if task is None:
                        return
                    cancel = cancels[url] = threading.Event()
                job = ShardJob(int(task.spec.get("start", 0)),
                               int(task.spec.get("count", len(task.spec.get("rows") or ()))), task=task)

                def started(pid: str) -> None:
                    with cond:
                        running[url] = (client, pid)
                try:
                    rows = run_remote(client, job, graph_for(job), self.node_id, self.config.timeout_s,
                                      check, cancel, started, self.poll)
                except WorkerFault as e:
                    lost_race = str(e) == "stopped" and not stop.is_set()
                    with cond:  # the chunk goes back first (unless its other run goes on); then the prompt stops
                        busy = running.pop(url, None)
                        if not lost_race:
                            queue.fail(task, url, str(e), quiet=True)
                            alive.discard(url)
                        if str(e) != "stopped":
                            self.faulty.add(url)
                            self.notes.append(f"worker {url} {e}: its shard ({job.what()}) was re-assigned")
                    if busy is not None:
                        client.interrupt(busy[1])
                    if lost_race:  # its backup (or the run it backed up) answered first: it takes the next
                        continue
                    return
                except BaseException as e:  # refused, a bug: the search stops with it
                    with cond:
                        running.pop(url, None)
                        fatal.append(e)
                        cond.notify_all()
                    return
                with cond:
                    running.pop(url, None)
                    for other in queue.finish(task, url, rows):  # the other run of this chunk is not needed
                        if other in cancels:
                            cancels[other].set()
                    if queue.ran.get(task.key) == url:
                        fresh.append(rows)

        threads = [threading.Thread(target=worker, args=(u,), daemon=True, name=f"infscale-worker {u}")
                   for u in urls]
        for t in threads:
            t.start()
        try:
            while True:
                with cond:
                    if fatal:
                        raise fatal[0]
                    reported, fresh[:] = list(fresh), []
                    if queue.complete():
                        break
                    task = queue.take("local", steal=True) if (self.config.local or not alive) else None
                    if task is None:
                        cond.wait(self.poll)
                for rows in reported:
                    on_remote(rows)
                if task is None:
                    self.interrupted()
                    continue
                rows = run_local(task)
                with cond:
                    for other in queue.finish(task, "local", rows):  # a worker's backup run is not needed
                        if other in cancels:
                            cancels[other].set()
            for rows in reported:
                on_remote(rows)
        finally:
            stop.set()
            with cond:
                for ev in cancels.values():
                    ev.set()
                busy = list(running.values())
                cond.notify_all()
            for client, pid in busy:  # Cancel (or an error) stops every worker's shard too
                client.interrupt(pid)
            for t in threads:
                t.join(timeout=10)
        return queue
