"""Core tier: random search in shards (search/sharded.py) on the toy host, the shard answer's validation, and
the worker dispatcher (engine/workers.py) against small fake ComfyUI servers over real HTTP on loopback:
re-assignment of a failed worker's shard, errors for refusals and malformed answers, no other address
contacted.  The two-real-servers tests are in test_workers_server.py."""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import tracemalloc
import types
from http.server import BaseHTTPRequestHandler

import pytest
import torch

from loopback import serve, stop
from toy_host import gaussian_host, mean_rank, two_member_relative

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_pack_parts():
    """engine/workers.py imports no ComfyUI: load it (and search/) as parts of a package without running
    nodes/__init__.py, which would need ComfyUI."""
    if "infscale_core" not in sys.modules:
        pkg = types.ModuleType("infscale_core")
        pkg.__path__ = [REPO]
        sys.modules["infscale_core"] = pkg
        sub = types.ModuleType("infscale_core.engine")
        sub.__path__ = [os.path.join(REPO, "engine")]
        sys.modules["infscale_core.engine"] = sub
    return (importlib.import_module("infscale_core.engine.workers"),
            importlib.import_module("infscale_core.search.sharded"),
            importlib.import_module("infscale_core.search"))


workers, sharded, search_pkg = _load_pack_parts()
dispatch_mod = importlib.import_module("infscale_core.search.dispatch")
endpoints = importlib.import_module("infscale_core.engine.endpoints")
net = importlib.import_module("infscale_core.verifiers.net")

SEED, N, TOP_K, STEPS = 11, 12, 3, 6


def host(micro_batch=0):
    return gaussian_host(steps=STEPS, micro_batch=micro_batch)


def reference():
    return search_pkg.random_search(host(micro_batch=4), seed=SEED, budget_nfe=N * STEPS, top_k=TOP_K)


def recombine(m):
    return m[:, 0]


def local_dispatch(plan, run_local):
    return [run_local(s, c) for s, c in plan]


class Dispatcher:
    """A random search's dispatcher (search.random_search.Dispatcher) over a plain function."""

    def __init__(self, run, shards, recombine=recombine):
        self.run, self.shards, self.rule = run, shards, recombine

    def plan(self, n, floor):  # ``shards`` executors, the core's chunk rule
        return dispatch_mod.plan_chunks(n, self.shards, floor)

    def __call__(self, plan, run_local):
        return self.run(plan, run_local)

    def recombine(self, m):
        return self.rule(m)


def sharded_search(hst, dispatch, shards, recombine=recombine, member_names=()):
    """The one random search with its candidates in chunks handed to ``dispatch`` (``shards``: executors)."""
    return search_pkg.random_search(hst, seed=SEED, budget_nfe=N * STEPS, top_k=TOP_K,
                                    dispatch=Dispatcher(dispatch, shards, recombine), member_names=member_names)


class OverWorkers(Dispatcher):
    """A random search's dispatcher over a WorkerDispatch: its own chunk plan, an absolute verifier."""

    def __init__(self, d):
        super().__init__(d, 0)
        self.plan = d.plan


def worker_search(hst, d):
    """The one random search over a WorkerDispatch."""
    return search_pkg.random_search(hst, seed=SEED, budget_nfe=N * STEPS, top_k=TOP_K, dispatch=OverWorkers(d))


def same_search(a, b):
    (ra, fa), (rb, fb) = a, b
    assert [c.score for c in ra.candidates] == [c.score for c in rb.candidates]
    assert [c.rank for c in ra.candidates] == [c.rank for c in rb.candidates]
    assert [c.seed for c in ra.candidates] == [c.seed for c in rb.candidates]
    assert [f.result.index for f in fa] == [f.result.index for f in fb]
    assert ra.nfe_total == rb.nfe_total


@pytest.mark.parametrize("shards", [1, 3, 5, 12])
def test_random_search_in_shards_equals_random_search(shards):
    got = sharded_search(host(micro_batch=2), local_dispatch, shards)
    same_search(got, reference())
    assert [f.latent is not None for f in got[1]] == [True] * TOP_K  # local shards keep their finalists' latents
    assert got[0].settings["shards"] == [{"start": s, "count": c, "ran_on": "local"}  # never below the micro-batch
                                         for s, c in dispatch_mod.plan_chunks(N, shards, 2)]


def remote_dispatch(fail=()):
    """Shards with an odd index run on a second host, through the JSON answer and its check."""
    other = host(micro_batch=3)

    def dispatch(plan, run_local):
        out = []
        for k, (s, c) in enumerate(plan):
            if k % 2 and k not in fail:
                rows = sharded.run_shard(other, SEED, s, c)
                ans = json.loads(json.dumps(sharded.answer(rows, base_seed=SEED, token="t", fingerprint={"a": "1"})))
                out.append(sharded.check_answer(ans, start=s, count=c, base_seed=SEED, members=1, nfe=STEPS,
                                                token="t", source="worker W"))
            else:
                out.append(run_local(s, c))
        return out[::-1]  # any order
    return dispatch


def test_shards_scored_elsewhere_give_the_same_ranking_and_come_back_without_latents():
    report, finalists = sharded_search(host(), remote_dispatch(), 1)
    same_search((report, finalists), reference())
    where = {i: s["ran_on"] for s in report.settings["shards"] for i in range(s["start"], s["start"] + s["count"])}
    assert sorted(set(where.values())) == ["local", "worker W"]
    for f in finalists:  # a remote finalist: no latent, its seed's noise, so a stock KSampler replays it
        remote = where[f.result.index] != "local"
        assert (f.latent is None) == remote
        assert f.stock_node == "ksampler" and f.seed == f.result.seed == SEED + f.result.index
        assert torch.equal(f.noise, host().initial_noise([f.seed]))


def test_relative_verifier_rows_are_recombined_over_every_candidate():
    """Two members, combined by mean rank over all N: shards give the raw rows, the ranking comes from all."""
    two = two_member_relative

    full = sharded_search(two(host()), local_dispatch, 1, mean_rank, ["a", "b"])
    split = sharded_search(two(host()), local_dispatch, 4, mean_rank, ["a", "b"])
    same_search(full, split)
    assert set(full[0].candidates[0].verifier_scores) == {"a", "b"}
    assert all(f.latent is None for f in split[1])  # relative: every finalist is re-rendered


def test_check_answer_refuses_every_malformed_answer():
    rows = sharded.run_shard(host(), SEED, 4, 3)
    good = sharded.answer(rows, base_seed=SEED, token="tok", fingerprint={})
    kw = dict(start=4, count=3, base_seed=SEED, members=1, nfe=STEPS, token="tok", source="worker X")
    got = sharded.check_answer(json.loads(json.dumps(good)), **kw)
    assert torch.equal(got.rows, rows.rows) and got.where == "worker X"

    def broken(edit):
        a = json.loads(json.dumps(good))
        edit(a)
        with pytest.raises(sharded.ShardAnswerError, match="worker X.*malformed") as e:
            sharded.check_answer(a, **kw)
        return str(e.value)

    assert "expected 3 candidates" in broken(lambda a: a["candidates"].pop())
    assert "another candidate than 5" in broken(lambda a: a["candidates"][1].update(index=99))
    assert "seed" in broken(lambda a: a["candidates"][0].update(seed=1))
    assert "non-finite" in broken(lambda a: a["candidates"][2].update(members=[float("nan")]))
    assert "non-finite" in broken(lambda a: a["candidates"][2].update(members=[float("inf")]))
    ok = json.loads(json.dumps(good))
    ok["candidates"][2]["members"] = [float("-inf")]  # a remote grader's failed answer ranks last, as locally
    assert sharded.check_answer(json.loads(json.dumps(ok)), **kw).rows[2, 0] == float("-inf")
    assert "number" in broken(lambda a: a["candidates"][2].update(members=["0.5"]))
    assert "number" in broken(lambda a: a["candidates"][2].update(members=[0.1, 0.2]))
    assert "NFEs" in broken(lambda a: a["candidates"][0].update(nfe=STEPS + 1))
    assert "NFEs" in broken(lambda a: a["candidates"][0].update(nfe=True))
    assert "out of range" in broken(lambda a: a["candidates"][2].update(members=[10 ** 400]))  # no OverflowError
    assert "out of range" in broken(lambda a: a["candidates"][2].update(members=[-2e9]))
    assert "another seed" in broken(lambda a: a["candidates"][0].update(seed=10 ** 5000))  # never printed whole
    assert "token" in broken(lambda a: a.update(token="other"))
    assert "protocol" in broken(lambda a: a.update(protocol=99))
    with pytest.raises(sharded.ShardAnswerError, match="JSON object"):
        sharded.check_answer([1, 2], **kw)


# --------------------------------------------------------------------------- configuration
def test_the_auth_header_comes_from_the_pools_variable_and_never_travels(monkeypatch):
    monkeypatch.delenv("POOL_AUTH", raising=False)
    assert endpoints.auth_headers("POOL_AUTH") == {} and endpoints.auth_headers("") == {}
    monkeypatch.setenv("POOL_AUTH", "X-Distributed-Token: s3cret")
    assert endpoints.auth_headers("POOL_AUTH") == {"X-Distributed-Token": "s3cret"}
    monkeypatch.setenv("POOL_AUTH", "tok")
    assert endpoints.auth_headers("POOL_AUTH") == {"Authorization": "Bearer tok"}
    monkeypatch.setenv("POOL_AUTH", "X-A: b\r\nX-Injected: 1")
    with pytest.raises(ValueError, match="POOL_AUTH must be"):
        endpoints.auth_headers("POOL_AUTH")
    cfg = workers.WorkerConfig(("http://a:1",), "node", auth_env="POOL_AUTH")
    assert "tok" not in repr(cfg) and "s3cret" not in repr(cfg)  # the config holds the variable's name only


@pytest.fixture
def endpoint_file(tmp_path, monkeypatch):
    """The operator's endpoint list at a file of this test (and no ComfyUI-Distributed installed)."""
    path = tmp_path / "infscale_endpoints.json"
    monkeypatch.setenv(endpoints.ENDPOINTS_FILE_ENV, str(path))
    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    fake = types.SimpleNamespace(get_folder_paths=lambda name: [str(custom)], base_path=str(tmp_path),
                                 get_user_directory=lambda: str(tmp_path / "user"))
    monkeypatch.setitem(sys.modules, "folder_paths", fake)

    def write(data):
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return path
    write.custom = custom
    return write


def test_the_endpoint_list_is_parsed_strictly(endpoint_file):
    path = endpoint_file({"worker_pools": {
        "studio": {"urls": ["http://a:8188/", "https://b.example/comfy", "http://a:8188"], "auth_env": "STUDIO_AUTH",
                   "request_timeout_s": 5, "max_response_mb": 2, "audit_per_shard": 3},
        "bad-url": {"urls": ["ftp://a"]}, "creds": {"urls": ["http://u:p@a:1"]}, "query": {"urls": ["http://a:1/?x=1"]},
        "secret": {"urls": ["http://a:1"], "auth_env": "sk-123/abc"}, "extra": {"urls": ["http://a:1"], "url": "x"},
        "none configured": {"urls": ["http://a:1"]}},
        "graders": {"qwen": {"base_url": "http://127.0.0.1:8000/v1", "model": "Qwen", "api_key_env": "QWEN_KEY",
                             "timeout_s": 30},
                    "nomodel": {"base_url": "http://127.0.0.1:8000/v1"},
                    "badurl": {"base_url": "127.0.0.1:8000", "model": "m"}}})
    eps = endpoints.load()
    assert sorted(eps.pools) == ["studio"] and sorted(eps.graders) == ["qwen"]
    studio = eps.pools["studio"]
    assert studio.urls == ("http://a:8188", "https://b.example/comfy") and studio.auth_env == "STUDIO_AUTH"
    assert studio.limits() == net.Limits(5.0, 2 * 1024 * 1024, 32) and studio.audit_per_shard == 3
    assert eps.graders["qwen"].limits().deadline_s == 30
    text = " ".join(eps.problems)
    for name in ("bad-url", "creds", "query", "secret", "extra", "none configured", "nomodel", "badurl"):
        assert f"'{name}'" in text, (name, text)
    assert "never the secret itself" in text and "unknown key(s) url" in text and str(path) in text
    cfg = workers.WorkerConfig.from_pool(studio, timeout_s=99999, local=True)
    assert cfg.timeout_s == studio.timeout_s and cfg.limits == studio.limits() and cfg.auth_env == "STUDIO_AUTH"
    # a workflow names a pool; a URL (as workflows saved before wrote) is refused, saying how to configure it
    assert endpoints.pool("studio") is not None
    for old in ("http://10.0.0.9:8188", "http://a:1\nhttp://b:2", "127.0.0.1:8188, 127.0.0.2:8188"):
        with pytest.raises(endpoints.EndpointError, match="may no longer choose the machines.*worker_pools"):
            endpoints.pool(old)
    with pytest.raises(endpoints.EndpointError, match="no worker pool named 'other'.*configured: studio"):
        endpoints.pool("other")
    assert endpoints.pool("").name == "studio"  # '' (a workflow saved before pools): the only pool there is
    with pytest.raises(endpoints.EndpointError, match="may no longer choose where this server connects"):
        endpoints.grader("http://127.0.0.1:8293/v1")
    assert endpoints.check_key_env_widget("") is None and endpoints.check_key_env_widget("set by the operator") is None
    # the answer to a named variable never depends on whether it exists
    os.environ.pop("INFSCALE_SURELY_UNSET", None)
    assert endpoints.check_key_env_widget("PATH") == endpoints.check_key_env_widget("INFSCALE_SURELY_UNSET")
    endpoint_file("{not json")
    eps = endpoints.load()
    assert eps.pools == {} and "could not be read" in eps.problems[0]
    with pytest.raises(endpoints.EndpointError, match="no worker pool is configured.*could not be read"):
        endpoints.pool("")


def test_comfyui_distributeds_workers_are_one_more_pool(endpoint_file):
    (endpoint_file.custom / "ComfyUI-Distributed").mkdir()
    (endpoint_file.custom / "ComfyUI-Distributed" / "gpu_config.json").write_text(json.dumps({"workers": [
        {"id": "1", "host": "10.0.0.5", "port": 8189, "enabled": True},
        {"id": "2", "host": "10.0.0.6", "port": 8190, "enabled": False},
        {"id": "3", "host": "pod.proxy.runpod.net", "port": 443, "type": "cloud", "enabled": True}]}))
    pool = endpoints.load().pools[endpoints.DISTRIBUTED_POOL]
    assert pool.urls == ("http://10.0.0.5:8189", "https://pod.proxy.runpod.net")
    assert pool.auth_env == "INFSCALE_WORKER_AUTH" and pool.source == "ComfyUI-Distributed"
    endpoint_file({"worker_pools": {"studio": {"urls": ["http://a:1"]}}})
    assert sorted(endpoints.load().pools) == ["ComfyUI-Distributed", "studio"]
    with pytest.raises(endpoints.EndpointError, match="pick a worker pool"):
        endpoints.pool("")


# --------------------------------------------------------------------------- the dispatcher over HTTP
def _drip(handler, pid, entry):
    """Headers at once, then one byte of the body every 0.25 s (about 20 s for the whole answer)."""
    raw = json.dumps({pid: entry}).encode()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    try:
        for i in range(min(len(raw), 80)):
            handler.wfile.write(raw[i:i + 1])
            handler.wfile.flush()
            time.sleep(0.25)
    except OSError:
        pass


def _huge(handler, pid, entry, announce=False):
    """400 MB of body (never held in memory here), with or without a Content-Length announcing it."""
    total = 400 * 1024 * 1024
    handler.send_response(200)
    if announce:
        handler.send_header("Content-Length", str(total))
    handler.end_headers()
    chunk = b" " * (1024 * 1024)
    try:
        for _ in range(total // len(chunk)):
            handler.wfile.write(chunk)
    except OSError:
        pass
    handler.close_connection = True


def _deep(handler, pid, entry):
    handler._raw(b'{"' + pid.encode() + b'": ' + b"[" * 100000 + b"]" * 100000 + b"}")


def _bignum(handler, pid, entry):
    """The shard answer with a score of 10**400 (valid JSON, no float holds it)."""
    entry = json.loads(json.dumps(entry))
    ans = json.loads(entry["outputs"]["1"]["text"][0])
    ans["candidates"][0]["members"] = ["BIG"]
    entry["outputs"]["1"]["text"][0] = json.dumps(ans).replace('"BIG"', "1" + "0" * 400)
    handler._reply(200, {pid: entry})


SLOW_S = 20.0  # a "slow" fake worker's answer shows this long after its prompt

HOSTILE_HISTORY = {"drip": _drip, "huge": _huge, "huge_announced": lambda h, p, e: _huge(h, p, e, announce=True),
                   "deep": _deep, "bignum": _bignum}


class FakeComfy:
    """A ComfyUI stand-in on loopback: POST /prompt runs the shard on a toy host (``mode`` says how it
    misbehaves), GET /history/<id> answers as ComfyUI does; every request is recorded."""

    def __init__(self, mode="ok", answer_edit=None, redirect_to=None):
        self.mode, self.answer_edit, self.redirect_to = mode, answer_edit, redirect_to
        self.requests, self.history, self.interrupted = [], {}, []
        self.ready_at = {}  # prompt id -> when its answer shows in /history ("slow")
        self.shards = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code, body, headers=()):
                raw = json.dumps(body).encode()
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                fake.requests.append(("GET", self.path, dict(self.headers)))
                pid = self.path.rsplit("/", 1)[-1]
                if time.monotonic() < fake.ready_at.get(pid, 0.0):  # "slow": still running
                    return self._reply(200, {})
                if pid in fake.history and fake.mode in HOSTILE_HISTORY:
                    return HOSTILE_HISTORY[fake.mode](self, pid, fake.history[pid])
                self._reply(200, {pid: fake.history[pid]} if pid in fake.history else {})

            def _raw(self, raw):
                self.send_response(200)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("POST", self.path, dict(self.headers)))
                if self.path != "/prompt":
                    if self.path == "/interrupt":
                        fake.interrupted.append(body.get("prompt_id"))
                    return self._reply(200, {})
                if fake.mode == "redirect":
                    return self._reply(302, {}, [("Location", fake.redirect_to)])
                if fake.mode == "refuse":
                    return self._reply(400, {"error": {"message": "Prompt outputs failed validation"},
                                             "node_errors": {"1": {"class_type": "CheckpointLoaderSimple", "errors": [
                                                 {"message": "Value not in list", "details": "ckpt_name: x"}]}}})
                pid = f"p{len(fake.history)}"
                spec = json.loads(body["prompt"]["1"]["inputs"]["shard"])
                fake.shards.append((spec["start"], spec["count"]))
                self._reply(200, {"prompt_id": pid, "number": 0})
                if fake.mode == "hang":
                    return
                if fake.mode == "error":
                    fake.history[pid] = {"outputs": {}, "status": {"status_str": "error", "completed": False,
                                         "messages": [["execution_error", {"exception_type": "RuntimeError",
                                                                            "exception_message": "CUDA lost"}]]}}
                    return
                if fake.mode == "slow":
                    fake.ready_at[pid] = time.monotonic() + SLOW_S
                rows = sharded.run_shard(host(), spec["seed"], spec["start"], spec["count"])
                ans = sharded.answer(rows, base_seed=spec["seed"], token=spec["token"], fingerprint={"k": "v"})
                if fake.answer_edit:
                    fake.answer_edit(ans)
                fake.history[pid] = {"outputs": {"1": {"text": [json.dumps(ans)]}},
                                     "status": {"status_str": "success", "completed": True, "messages": []}}

        self.server, self.url = serve(Handler)

    def close(self):
        stop(self.server)


@pytest.fixture
def fakes():
    made = []

    def make(*a, **kw):
        f = FakeComfy(*a, **kw)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


def dead_url():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: connection refused


def run_with(urls, local=True, timeout_s=30.0, auth_env="", limits=None, backups=True):
    cfg = workers.WorkerConfig(tuple(urls), "test", timeout_s=timeout_s, local=local, auth_env=auth_env,
                               limits=limits or net.Limits(), backups=backups)

    def check(url, job, ans):
        return sharded.check_answer(ans, start=job.start, count=job.count, base_seed=SEED, members=1, nfe=STEPS,
                                    token=job.token, source=f"worker {url}")

    def graph_for(job):
        spec = {"start": job.start, "count": job.count, "seed": SEED, "token": job.token}
        return {"1": {"class_type": "InfScale_SearchShard", "inputs": {"shard": json.dumps(spec)}}}

    remote = []
    d = workers.WorkerDispatch(cfg, graph_for, "1", check, lambda: None, on_remote=remote.append, poll=0.02)
    got = worker_search(host(), d)
    return got, d, remote


def test_workers_share_the_search_and_give_the_local_result(fakes, monkeypatch):
    monkeypatch.setenv("TEST_POOL_AUTH", "X-Distributed-Token: s3cret")
    a, b = fakes(), fakes()
    got, d, remote = run_with([a.url, b.url], local=False, auth_env="TEST_POOL_AUTH")
    same_search(got, reference())
    assert a.shards and b.shards and sum(r.count for r in remote) == N  # every shard ran on a worker
    assert {r.where for r in remote} == {f"worker {a.url}", f"worker {b.url}"}
    assert all(h.get("X-Distributed-Token") == "s3cret" for f in (a, b) for _, _, h in f.requests)
    assert d.notes == []


@pytest.mark.parametrize("mode", ["unreachable", "error", "hang"])
def test_a_failing_worker_has_its_shard_reassigned_and_the_result_is_unchanged(fakes, mode):
    good = fakes()
    bad = dead_url() if mode == "unreachable" else fakes(mode).url
    # no local shards: with them the fast toy host could take every shard before the bad worker is tried
    # (without backups: the good worker would otherwise back up the hung chunk, test_a_slow_workers_chunk_...)
    got, d, _ = run_with([bad, good.url], local=False, timeout_s=1.0 if mode == "hang" else 30.0, backups=False)
    same_search(got, reference())
    assert len(d.notes) == 1 and d.notes[0].startswith(f"worker {bad} ")
    assert {"unreachable": "unreachable (", "error": "RuntimeError: CUDA lost",
            "hang": "timed out after 1 s"}[mode] in d.notes[0]
    assert "was re-assigned" in d.notes[0]


def test_a_slow_workers_chunk_is_backed_up_by_a_faster_one_and_the_slow_run_stopped(fakes):
    """Nothing left to take: the fast worker (its speed measured) runs the slow worker's chunk too, answers
    first, and the slow worker's prompt is stopped; the result is unchanged and nobody is called faulty."""
    slow, fast = fakes("slow"), fakes()
    t0 = time.monotonic()
    got, d, _ = run_with([slow.url, fast.url], local=False)
    assert time.monotonic() - t0 < SLOW_S / 2
    same_search(got, reference())
    assert slow.shards and slow.interrupted and d.notes == []
    assert {s["ran_on"] for s in got[0].settings["shards"]} == {f"worker {fast.url}"}
    shards = [(s["start"], s["count"]) for s in got[0].settings["shards"]]
    assert sorted(fast.shards) == shards and set(slow.shards) <= set(fast.shards)  # the slow one's, backed up


def test_when_every_worker_fails_the_shards_run_locally(fakes):
    got, d, _ = run_with([dead_url(), fakes("error").url], local=False)
    same_search(got, reference())
    assert {s["ran_on"] for s in got[0].settings["shards"]} == {"local"} and len(d.notes) == 2


def test_a_malformed_answer_has_its_shard_reassigned_naming_the_worker(fakes):
    for edit, why in ((lambda a: a["candidates"][0].update(members=[float("nan")]), "JSON constant NaN"),
                      (lambda a: a["candidates"][0].update(index=1000), "ids must be the shard's"),
                      (lambda a: a["candidates"][0].update(members=[1e12]), "out of range")):
        bad = fakes(answer_edit=edit)
        got, d, _ = run_with([bad.url], local=False)
        same_search(got, reference())  # the shard ran locally instead
        assert len(d.notes) == 1 and d.notes[0].startswith(f"worker {bad.url} ") and why in d.notes[0], d.notes
        assert "re-assigned" in d.notes[0]


@pytest.mark.parametrize("mode, why", [("drip", "deadline of 1 s"), ("deep", "nested deeper than the limit of 32"),
                                       ("bignum", "more than 20 digits"),
                                       ("huge", "larger than the limit of 1.0 MiB"),
                                       ("huge_announced", "announces 400.0 MiB")])
def test_a_hostile_answer_costs_at_most_its_limits_and_the_shard_runs_elsewhere(fakes, mode, why):
    """A worker that drips its answer, nests it 100,000 deep, claims a score of 10**400 or sends 400 MB: each
    request is bounded (1 s, 1 MiB, depth 32, no number beyond 64 bits), the failure names the worker, and the
    shard is re-run locally with the same result."""
    bad = fakes(mode)
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        got, d, _ = run_with([bad.url], local=False, limits=net.Limits(deadline_s=1.0, max_bytes=1024 * 1024))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - t0
    same_search(got, reference())
    (note,) = d.notes
    assert note.startswith(f"worker {bad.url} ") and why in note and "re-assigned" in note, note
    assert elapsed < 8, elapsed  # the deadline of each request (1 s) plus stopping the prompt, not the drip's 20 s
    assert peak < 2 * 1024 * 1024 + 512 * 1024, peak  # never more than the cap held (plus a chunk)


def test_a_banned_workers_shards_run_again_and_only_those(fakes):
    a, b = fakes(), fakes()
    got, d, _ = run_with([a.url, b.url], local=False)
    first = dict(d.ran)
    lost = d.ban(a.url, "its claims failed the audit")
    assert lost == sum(1 for u in first.values() if u == a.url) and lost > 0
    before_b = len(b.shards)
    again = d(d.plan(N, 1), lambda s, c: sharded.run_shard(host(), SEED, s, c))
    assert a.url not in d.ran.values()
    assert len(b.shards) - before_b == lost  # only the banned worker's shards ran again (on the other worker)
    assert torch.equal(torch.cat([r.rows for r in again]), sharded.run_shard(host(), SEED, 0, N).rows)
    assert any(n.startswith(f"worker {a.url} was dropped: its claims failed the audit") for n in d.notes)


def test_a_refused_prompt_stops_the_search_with_comfyuis_reason(fakes):
    bad = fakes("refuse")
    with pytest.raises(workers.WorkerRefused, match=f"worker {bad.url} refused.*Value not in list.*ckpt_name"):
        run_with([bad.url], local=False)  # (with local shards, the fast toy host could take every shard first)


def test_no_request_goes_to_an_address_not_configured(fakes):
    """A worker (or a proxy in front of it) that redirects elsewhere is refused: the other address is never
    contacted."""
    elsewhere = fakes()
    bad = fakes("redirect", redirect_to=elsewhere.url + "/prompt")
    with pytest.raises(workers.WorkerRefused, match="redirect .*refused"):
        run_with([bad.url], local=False)
    assert elsewhere.requests == []
    assert all(p in ("/prompt",) for _, p, _ in bad.requests)


def test_cancel_interrupts_the_workers_prompts(fakes):
    hang = fakes("hang")
    cfg = workers.WorkerConfig((hang.url,), "test", local=False)
    calls = []

    def interrupted():
        calls.append(1)
        if len(calls) > 5 and hang.shards:
            raise KeyboardInterrupt("cancel")

    d = workers.WorkerDispatch(cfg, lambda job: {"1": {"class_type": "X", "inputs": {"shard": json.dumps(
        {"start": job.start, "count": job.count, "seed": SEED, "token": job.token})}}}, "1",
        lambda *a: None, interrupted, poll=0.02)
    with pytest.raises(KeyboardInterrupt):
        d([(0, 4), (4, 4)], lambda s, c: None)
    assert set(hang.interrupted) == {"p0"}  # the running prompt is stopped (and dropped from the queue)


# --------------------------------------------------------------------------- what a worker is sent and answers
paths_mod = importlib.import_module("infscale_core.search.paths")


def test_a_rows_task_from_outside_is_checked_before_anything_runs():
    good = {"rows": [3, 5], "begin": 0, "end": 2, "fresh": True}
    assert sharded.rows_spec(good)["rows"] == [3, 5]
    for bad in ({"rows": [3, 3], "begin": 0, "end": 2}, {"rows": [], "begin": 0, "end": 2},
                {"rows": [1], "begin": 2, "end": 2}, {"rows": [1], "begin": 1, "end": 2, "fresh": True},
                {"rows": ["1"], "begin": 0, "end": 2}, {"rows": [1], "begin": 0, "end": 10 ** 9},
                {"rows": [1], "begin": 0, "end": 2, "drop": [-1]}, [1, 2]):
        with pytest.raises(ValueError):
            sharded.rows_spec(bad)


def test_noise_rows_travel_exactly_and_anything_else_is_refused():
    noise = torch.randn(3, 4, 8, 8)
    data = sharded.encode_noise(noise)
    assert torch.equal(sharded.decode_noise(json.loads(json.dumps(data)), 3, [4, 8, 8]), noise)
    for bad, rows, like in ((data, 2, None), (data, 3, [4, 8, 9]), (dict(data, float32=data["float32"][:-8]), 3, None),
                            (sharded.encode_noise(noise * 1e5), 3, None),
                            (sharded.encode_noise(torch.full((3, 4, 8, 8), float("nan"))), 3, None),
                            (dict(data, shape=[3, 4, 8, 8, 1, 1, 1]), 3, None), ("x", 3, None)):
        with pytest.raises(ValueError):
            sharded.decode_noise(bad, rows, like)


def test_a_paths_instruction_from_outside_is_checked():
    ok = {"op": "branch", "children": [[7, 1, 5, 6]], "begin": 2, "renoise": 1, "end": 4,
          "lineage": {"1": {"seed": 3, "ops": [["sample", 0.5, 9]]}}}
    got = paths_mod.paths_spec(ok)
    assert got["lineage"] == {1: {"seed": 3, "ops": [("sample", 0.5, 9)]}}
    for bad in (dict(ok, op="rm"), dict(ok, renoise=3), dict(ok, children=[[7, 1, 5]]),
                dict(ok, children=[[7, 1, 5, 6], [7, 2, 5, 6]]), dict(ok, lineage={"x": {"seed": 3, "ops": []}}),
                dict(ok, lineage={"1": {"seed": 3, "ops": [["exec", 0.5, 9]]}}),
                dict(ok, lineage={"1": {"seed": 3, "ops": [["sample", 7.0, 9]]}}),
                {"op": "finish", "rows": [1, 2], "seeds": [1], "begin": 1, "end": 4}):
        with pytest.raises(ValueError):
            paths_mod.paths_spec(bad)


def test_a_rows_answer_must_be_the_tasks_rows_scores_and_nfes():
    spec = {"rows": [3, 5], "begin": 0, "end": 2}
    ans = {"protocol": sharded.PROTOCOL, "token": "t", "kind": "rows", "rows": [3, 5], "members": [[1.0], [2.0]],
           "nfe": 4, "replay": False}
    got = sharded.check_rows_answer(ans, spec=spec, members=1, nfe=4, token="t", source="w")
    assert got["members"].tolist() == [[1.0], [2.0]]
    for change in ({"rows": [5, 3]}, {"nfe": 5}, {"token": "u"}, {"members": [[1.0]]},
                   {"members": [[1.0], [float("nan")]]}, {"members": [[1.0], [1e12]]}, {"replay": True}):
        with pytest.raises(sharded.ShardAnswerError):
            sharded.check_rows_answer(dict(ans, **change), spec=spec, members=1, nfe=4, token="t", source="w")
    noises = {"protocol": sharded.PROTOCOL, "token": "t", "kind": "noises", "members": [[1.0], [-float("inf")]],
              "nfe": 12}
    assert sharded.check_noises_answer(noises, rows=2, members=1, nfe=12, token="t", source="w")["nfe"] == 12
    with pytest.raises(sharded.ShardAnswerError):
        sharded.check_noises_answer(dict(noises, nfe=6), rows=2, members=1, nfe=12, token="t", source="w")
