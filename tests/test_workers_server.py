"""Server tier: searching with a worker machine, on two real ComfyUI servers (two ports, the pack in both,
the same model files).  A search sharded over the worker (with a relative verifier, a mean-rank ensemble)
gives the same ranking and the same winner (bit for bit) as the local search, with an unreachable worker's
shard re-assigned (said on the node); a worker with a different checkpoint under the same name is refused; a
malformed answer and a redirect to an address not configured are errors; killing the worker mid-search gives
the same result (its shard re-run).

The worker's requests go through a recording proxy (the only URL configured), so every request the master
makes is seen.  One test kills the worker; a test after it gets a new one."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from comfy_server import execution_error, free_port, launch, need, set_endpoints, shutdown
from graphs import PREFIX, aesthetic_node, base_graph, custom_sampling, search_graph, verifier_node
from loopback import serve, stop
from strategy_graphs import with_strategy

SEED, N = 321, 4


def report_of(entry) -> dict:
    return json.loads(entry["outputs"]["8"]["text"][0])


def image_of(comfy, entry, node="7") -> np.ndarray:
    return np.asarray(Image.open(comfy.output_file(entry["outputs"][node]["images"][0])))


def latent_of(comfy, entry, node="9") -> torch.Tensor:
    return safetensors.torch.load_file(comfy.output_file(entry["outputs"][node]["latents"][0]))["latent_tensor"]


@pytest.fixture(scope="module")
def worker_server(comfy_path, models_dir, tmp_path_factory):
    """A second ComfyUI on another port: the same tiny-sd15 file and verifiers, and under the name
    'tiny-other.safetensors' a checkpoint whose diffusion model differs (the master has the original there).
    ``live()`` gives the running server, launching a new one if a test killed it."""
    root = tmp_path_factory.mktemp("worker_models")
    ckpts = root / "checkpoints"
    ckpts.mkdir()
    src = os.path.realpath(os.path.join(models_dir["checkpoints"], "tiny-sd15.safetensors"))
    os.symlink(src, ckpts / "tiny-sd15.safetensors")
    sd = safetensors.torch.load_file(src)
    key = sorted(k for k in sd if k.startswith("model.diffusion_model.") and k.endswith(".weight"))[0]
    sd[key] = sd[key] * 1.5
    safetensors.torch.save_file(sd, str(ckpts / "tiny-other.safetensors"))
    del sd
    other = os.path.join(models_dir["checkpoints"], "tiny-other.safetensors")  # the master's: the original
    made = not os.path.lexists(other)
    if made:
        os.symlink(src, other)
    servers = []

    def live():
        if servers and servers[-1].proc.poll() is None:
            return servers[-1]
        if servers:
            servers[-1].log.close()
        servers.append(launch(comfy_path, tmp_path_factory.mktemp("worker"), {
            "base_path": str(root), "checkpoints": "checkpoints", "verifiers": models_dir["verifiers"]}))
        return servers[-1]

    yield live
    if servers and servers[-1].proc.poll() is None:
        shutdown(servers[-1])
    elif servers:
        servers[-1].log.close()
    if made:  # the master's checkpoint list is as the other modules expect it again
        os.remove(other)


class Proxy:
    """The worker URL the master is given: forwards to the worker, records every request, and can tamper with
    the worker's /history answers or answer /prompt with a redirect."""

    def __init__(self, target: str):
        self.target, self.requests, self.tamper, self.redirect = target, [], None, None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _forward(self, body=None):
                proxy.requests.append((self.command, self.path))
                if proxy.redirect and self.path == "/prompt":
                    self.send_response(307)
                    self.send_header("Location", proxy.redirect + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                req = urllib.request.Request(proxy.target + self.path, data=body, method=self.command,
                                             headers={"Content-Type": "application/json"} if body else {})
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        code, raw = r.status, r.read()
                except urllib.error.HTTPError as e:
                    code, raw = e.code, e.read()
                except OSError:  # the worker is gone: so is the proxy's answer
                    self.close_connection = True
                    self.connection.close()
                    return
                if proxy.tamper and self.path.startswith("/history/"):
                    raw = proxy.tamper(raw)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self._forward()

            def do_POST(self):
                self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        self.server, self.url = serve(Handler)

    def close(self):
        stop(self.server)


@pytest.fixture
def worker(worker_server):
    """The worker server, alive (the test that kills it may run in any order)."""
    return worker_server()


@pytest.fixture
def proxy(worker):
    p = Proxy(worker.base)
    yield p
    p.close()


def with_workers(comfy, g, urls, local=True, timeout_s=300, **pool):
    """Search Loop with a Search Workers node naming the pool 'test-pool', which the operator's endpoint list of
    the master now holds with ``urls`` (and ``pool``'s settings)."""
    set_endpoints(comfy, worker_pools={"test-pool": dict({"urls": list(urls)}, **pool)})
    g["11"] = {"class_type": PREFIX + "SearchWorkers",
               "inputs": {"worker_urls": "test-pool", "timeout_s": timeout_s, "local_shards": local}}
    g["6"]["inputs"]["workers"] = ["11", 0]
    return g


def with_ensemble(g):
    """A relative verifier (mean rank of an aesthetic and a CLIPScore verifier): workers send raw member
    scores, and the master ranks over all N."""
    g["30"] = aesthetic_node()
    g["31"] = {"class_type": PREFIX + "VerifierEnsemble", "inputs": {"mode": "mean_rank", "verifier_1": ["30", 0],
                                                                    "weight_1": 1.0, "verifier_2": ["5", 0],
                                                                    "weight_2": 1.0}}
    if "6" in g:
        g["6"]["inputs"]["verifier"] = ["31", 0]
    return g


def ensemble_search(prefix):
    return with_ensemble(search_graph(seed=SEED, candidates=N, top_k=1, prefix=prefix))


_LOCAL = {}


def local_search(comfy):
    if "entry" not in _LOCAL:
        _LOCAL["entry"] = comfy.run_ok(ensemble_search("wk_local"))
    return _LOCAL["entry"]


def assert_same_search(comfy, entry, ref):
    a, b = report_of(entry), report_of(ref)
    assert [(c["index"], c["seed"], c["rank"]) for c in a["candidates"]] == \
        [(c["index"], c["seed"], c["rank"]) for c in b["candidates"]]
    assert [c["score"] for c in a["candidates"]] == pytest.approx([c["score"] for c in b["candidates"]], abs=1e-5)
    assert a["best"]["seed"] == b["best"]["seed"]
    assert torch.equal(latent_of(comfy, entry), latent_of(comfy, ref)), "the winner's re-render must be bit-identical"
    assert np.array_equal(image_of(comfy, entry), image_of(comfy, ref))
    return a


def worker_prompts(worker):
    return worker.get("/history")


def test_a_search_sharded_over_a_worker_equals_the_local_search(comfy, worker, proxy):
    """One live worker and one unreachable URL: the unreachable one's shard is re-assigned (said on the node),
    the live one samples its shards, and the result is the local search's."""
    ref = local_search(comfy)
    before = set(worker_prompts(worker))
    dead = f"http://127.0.0.1:{free_port()}"
    entry = comfy.run_ok(with_workers(comfy, ensemble_search("wk_shard"), [proxy.url, dead]))
    rep = assert_same_search(comfy, entry, ref)
    assert all(set(c["verifier_scores"]) == set(r["verifier_scores"]) and len(c["verifier_scores"]) == 2
               for c, r in zip(rep["candidates"], report_of(ref)["candidates"]))
    ran = {s["ran_on"] for s in rep["settings"]["shards"]}
    assert f"worker {proxy.url}" in ran and f"worker {dead}" not in ran, rep["settings"]["shards"]
    assert rep["settings"]["workers"]["pool"] == "worker pool 'test-pool' (endpoints file)"
    assert rep["settings"]["workers"]["workers"] == 2
    assert comfy.endpoints_file not in json.dumps(rep)  # no path of the server's in the saved report
    (fault,) = rep["settings"]["workers"]["faults"]
    assert fault.startswith(f"worker {dead} unreachable (") and "re-assigned" in fault
    assert fault in entry["outputs"]["6"]["text"][0]  # shown on the node
    assert any("re-rendered on this machine" in n for n in rep["notes"])
    # the worker ran Search Shard prompts only, answered JSON text and saved no image (this search's prompts:
    # another test's, such as the refused checkpoint's, may be in its history too)
    hist = {pid: h for pid, h in worker_prompts(worker).items() if pid not in before}
    assert hist
    for pid, h in hist.items():
        (nid, out), = h["outputs"].items()
        assert set(out) == {"text"}
        ans = json.loads(out["text"][0])
        assert ans["refused"] is None and all(set(c) == {"index", "seed", "members", "nfe"} and len(c["members"]) == 2
                                              for c in ans["candidates"])
    assert os.listdir(worker.output_dir) == []
    # every request the master made to the worker went to the configured URL: /prompt, /history, nothing else
    assert proxy.requests and {p.split("/")[1] for _, p in proxy.requests} <= {"prompt", "history"}


def test_a_worker_with_a_different_checkpoint_is_refused_naming_it(comfy, worker, proxy):
    g = with_workers(comfy, search_graph(seed=SEED, candidates=4, top_k=1, prefix="wk_other"), [proxy.url],
                     local=False)
    g["1"]["inputs"]["ckpt_name"] = "tiny-other.safetensors"
    err = execution_error(comfy.run(g))
    assert err is not None, "the search must stop"
    msg = err["exception_message"]
    assert f"worker {proxy.url} is refused" in msg and "diffusion model" in msg, msg
    assert "conditioning" not in msg and "verifier" not in msg  # only what differs is named


def test_a_malformed_worker_answer_has_its_shard_run_here_and_is_said(comfy, proxy):
    def tamper(raw):
        hist = json.loads(raw)
        for h in hist.values():
            for out in h.get("outputs", {}).values():
                ans = json.loads(out["text"][0])
                ans["candidates"][0]["index"] += 1000
                out["text"][0] = json.dumps(ans)
        return json.dumps(hist).encode()
    proxy.tamper = tamper
    entry = comfy.run_ok(with_workers(comfy, search_graph(seed=SEED, candidates=2, top_k=1, prefix="wk_bad"),
                                      [proxy.url], local=False))
    rep = report_of(entry)
    (fault,) = rep["settings"]["workers"]["faults"]
    assert fault.startswith(f"worker {proxy.url} ") and "ids must be the shard's" in fault and "re-assigned" in fault
    assert fault in entry["outputs"]["6"]["text"][0]  # said on the node
    assert {s["ran_on"] for s in rep["settings"]["shards"]} == {"local"}


def test_a_lying_worker_is_caught_by_the_audit_and_the_winner_is_the_honest_one(comfy, worker, proxy):
    """The worker's answers claim a score of 1e6 for one of its candidates: the master's audit (it samples and
    scores that candidate itself) catches the lie, drops the worker, re-runs its shards here, and the result is
    the local search's; the node and the report say so."""
    def tamper(raw):
        hist = json.loads(raw)
        for h in hist.values():
            for out in h.get("outputs", {}).values():
                ans = json.loads(out["text"][0])
                for c in ans["candidates"]:
                    c["members"] = [1e6 for _ in c["members"]]
                out["text"][0] = json.dumps(ans)
        return json.dumps(hist).encode()
    proxy.tamper = tamper
    ref = local_search(comfy)
    entry = comfy.run_ok(with_workers(comfy, ensemble_search("wk_lie"), [proxy.url], local=False, audit_per_shard=1))
    rep = assert_same_search(comfy, entry, ref)
    audit = rep["settings"]["workers"]["audit"]
    (dropped,) = audit["dropped"]
    assert dropped["worker"] == proxy.url and "disagrees with this machine's own" in dropped["why"], dropped
    assert audit["candidates"] >= 1 and audit["nfe"] > 0
    assert any(f.startswith(f"worker {proxy.url} was dropped") for f in rep["settings"]["workers"]["faults"])
    assert f"worker {proxy.url} was dropped" in entry["outputs"]["6"]["text"][0]  # said on the node
    assert {s["ran_on"] for s in rep["settings"]["shards"]} == {"local"}


def test_a_dripping_worker_costs_at_most_the_deadline(comfy):
    """A worker that accepts the prompt, then drips its /history answer one byte every 0.5 s: with the pool's
    request deadline of 1 s, its shard is re-run here within seconds (the drip alone would take minutes)."""
    class Drip(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            raw = b'{"prompt_id": "p1", "number": 0}' if self.path == "/prompt" else b"{}"
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "400")
            self.end_headers()
            try:
                for _ in range(400):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                pass
    srv, url = serve(Drip)
    try:
        t0 = time.monotonic()
        entry = comfy.run_ok(with_workers(comfy, search_graph(seed=SEED, candidates=2, top_k=1, prefix="wk_drip"),
                                          [url], local=False, request_timeout_s=1))
        elapsed = time.monotonic() - t0
    finally:
        stop(srv)
    (fault,) = report_of(entry)["settings"]["workers"]["faults"]
    assert fault.startswith(f"worker {url} ") and "deadline of 1 s" in fault and "re-assigned" in fault, fault
    assert elapsed < 60, elapsed


def test_no_request_goes_to_an_address_not_configured(comfy, worker, proxy):
    """The configured URL redirects to the (real, working) worker: the redirect is refused, so the worker,
    an address the user did not configure, never gets the prompt."""
    proxy.redirect = worker.base
    before = len(worker_prompts(worker))
    err = execution_error(comfy.run(with_workers(comfy, search_graph(seed=SEED, candidates=4, top_k=1,
                                                                     prefix="wk_redir"), [proxy.url], local=False)))
    assert err is not None and "redirect" in err["exception_message"] and "refused" in err["exception_message"]
    assert len(worker_prompts(worker)) == before
    assert proxy.requests == [("POST", "/prompt")]


def composable_range(g, seed, count, offset, ids):
    """One participant's part of a composable search: its range of candidates, sampled and decoded."""
    nid, dec = str(ids), str(ids + 5)
    g[nid] = {"class_type": PREFIX + "NoiseCandidateGenerator", "inputs": {"seed": seed, "count": count,
                                                                          "offset": offset}}
    sc = custom_sampling(g, (nid, 0), ids=(ids + 1, ids + 2, ids + 3, ids + 4))
    g[dec] = {"class_type": "VAEDecode", "inputs": {"samples": [sc, 0], "vae": ["1", 2]}}
    return dec


def test_composable_search_in_ranges_as_comfyui_distributed_runs_it(comfy):
    """The composable search split as a ComfyUI-Distributed setup splits it: each participant samples its range
    (NoiseCandidateGenerator offset), the images are gathered master first then the workers (what its
    collector does, here the stock Image Batch), and the master scores the whole batch, named by a
    NoiseCandidateGenerator over all N, and picks: the same candidates, scores and winner as Search Loop."""
    need(comfy, "SamplerCustomAdvanced", "CFGGuider")
    half = N // 2
    g = base_graph()
    g["5"] = verifier_node()
    with_ensemble(g)
    master, worker_part = composable_range(g, SEED, half, 0, 20), composable_range(g, SEED, half, half, 50)
    g["40"] = {"class_type": "ImageBatch", "inputs": {"image1": [master, 0], "image2": [worker_part, 0]}}
    g["41"] = {"class_type": PREFIX + "NoiseCandidateGenerator", "inputs": {"seed": SEED, "count": N, "offset": 0}}
    g["42"] = {"class_type": PREFIX + "VerifierScore", "inputs": {"images": ["40", 0], "verifier": ["31", 0],
                                                                 "prompt": "a red apple on a table",
                                                                 "noise": ["41", 0]}}
    g["43"] = {"class_type": PREFIX + "BestPick", "inputs": {"images": ["40", 0], "scores": ["42", 0], "top_k": 1,
                                                            "noise": ["41", 0]}}
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["42", 0]}}
    g["44"] = {"class_type": "SaveImage", "inputs": {"images": ["43", 0], "filename_prefix": "wk_comp"}}
    comp = report_of(comfy.run_ok(g))
    ref = report_of(local_search(comfy))
    assert comp["best"]["seed"] == ref["best"]["seed"]
    a = {c["seed"]: c["score"] for c in comp["candidates"]}
    b = {c["seed"]: c["score"] for c in ref["candidates"]}
    assert a.keys() == b.keys() and all(a[s] == pytest.approx(b[s], abs=1e-3) for s in a)
    # a participant whose images never arrive (a failed worker): the batch is short, and the naming NOISE
    # refuses it instead of giving the remaining images the wrong seeds
    g["42"]["inputs"]["images"] = [master, 0]
    g["43"]["inputs"]["images"] = [master, 0]
    err = execution_error(comfy.run(g))
    assert err is not None and f"names {N} candidates but the image batch has {half}" in err["exception_message"]


def test_killing_the_worker_mid_search_gives_the_same_result(comfy, worker, proxy):
    """The worker process is killed while it samples a shard (the next test that needs a worker gets a new one)."""
    ref = local_search(comfy)
    code, body = comfy.queue(with_workers(comfy, ensemble_search("wk_kill"), [proxy.url]))
    assert code == 200, body
    t0 = time.time()
    while time.time() - t0 < 120:  # a shard of the master's prompt is running on the worker
        q = worker.get("/queue")
        if q.get("queue_running"):
            break
        time.sleep(0.02)
    else:
        pytest.fail("the worker never ran a shard")
    worker.proc.kill()
    worker.proc.wait(20)
    entry = comfy.wait(body["prompt_id"], 300)
    assert execution_error(entry) is None, execution_error(entry)
    rep = assert_same_search(comfy, entry, ref)
    faults = rep["settings"]["workers"]["faults"]
    assert len(faults) == 1 and faults[0].startswith(f"worker {proxy.url} ") and "re-assigned" in faults[0], faults


# --------------------------------------------------------------------------- successive halving over a worker
def halving_search(prefix):
    """Successive halving (two prune rounds) with the mean-rank ensemble, two rows at a time: the first round's
    rows go out in chunks, and each later round continues the rows where their state lives."""
    g = ensemble_search(prefix)
    g["6"]["inputs"]["micro_batch"] = 2
    return with_strategy(g, "halving")


def local_halving(comfy):
    if "halving" not in _LOCAL:
        _LOCAL["halving"] = comfy.run_ok(halving_search("wk_h_local"))
    return _LOCAL["halving"]


def assert_same_halving(comfy, entry, ref):
    a = assert_same_search(comfy, entry, ref)
    b = report_of(ref)
    for sa, sb in zip(a["settings"]["stages"], b["settings"]["stages"]):
        assert (sa["candidates"], sa["kept"]) == (sb["candidates"], sb["kept"])
        assert sa["scores"] == pytest.approx(sb["scores"], abs=1e-5)
    assert len(a["settings"]["stages"]) == len(b["settings"]["stages"]) == 2
    return a


def test_successive_halving_over_a_worker_equals_the_local_search(comfy, worker, proxy):
    """The worker keeps its rows' state between rounds: the later rounds' prompts continue rows (not fresh), and
    every prune, score, the ranking and the winner equal the one-machine search's."""
    ref = local_halving(comfy)
    before = set(worker_prompts(worker))
    entry = comfy.run_ok(with_workers(comfy, halving_search("wk_h"), [proxy.url]))
    rep = assert_same_halving(comfy, entry, ref)
    assert rep["settings"]["dispatch"]["executors"] == 2 and not rep["settings"]["dispatch"]["failed"]
    sent = []
    for pid, h in worker_prompts(worker).items():
        if pid in before:
            continue
        (node,) = [n for n in h["prompt"][2].values() if n["class_type"].endswith("SearchShard")]
        sent.append(json.loads(node["inputs"]["shard"]))
        (out,) = h["outputs"].values()
        ans = json.loads(out["text"][0])
        assert ans["kind"] == "rows" and ans["refused"] is None and len(ans["members"][0]) == 2
    assert sent and all(s["kind"] == "rows" for s in sent)
    assert any(s["fresh"] for s in sent) and any(not s["fresh"] and s["begin"] > 0 for s in sent), sent
    note = next(n for n in rep["notes"] if n.startswith("rows sampled and scored"))
    assert f"worker {proxy.url}" in note and "this machine" in note
    assert rep["settings"]["workers"]["audit"]["candidates"] >= 1  # the finalist, rendered and checked here
    assert os.listdir(worker.output_dir) == []


@pytest.mark.parametrize("name", ["halving", "zero_order"])
def test_a_lying_worker_in_rounds_is_caught_and_the_result_is_the_honest_search(comfy, worker, proxy, name):
    """A worker that inflates its rows' scores is caught by the audit (its rows re-sampled here), dropped, and
    the search runs again without it: the one-machine result."""
    ref = local_halving(comfy) if name == "halving" else comfy.run_ok(noise_search(name, f"wk_{name}_ref"))

    def lie(raw: bytes) -> bytes:
        hist = json.loads(raw)
        for h in hist.values():
            for out in (h.get("outputs") or {}).values():
                ans = json.loads(out["text"][0])
                if ans.get("kind") in ("rows", "noises"):
                    ans["members"] = [[v + 50.0 for v in m] for m in ans["members"]]
                    out["text"][0] = json.dumps(ans)
        return json.dumps(hist).encode()
    proxy.tamper = lie
    g = halving_search("wk_h_lie") if name == "halving" else noise_search(name, f"wk_{name}_lie")
    entry = comfy.run_ok(with_workers(comfy, g, [proxy.url]))
    rep = assert_same_halving(comfy, entry, ref) if name == "halving" else assert_same_search(comfy, entry, ref)
    (dropped,) = rep["settings"]["workers"]["audit"]["dropped"]
    assert dropped["worker"] == proxy.url and "disagrees" in dropped["why"]


def test_killing_the_worker_mid_halving_gives_the_same_result(comfy, worker, proxy):
    """The worker dies while it holds rows: they are re-run from their seeds here, and nothing but time changes."""
    ref = local_halving(comfy)
    before = set(worker_prompts(worker))
    code, body = comfy.queue(with_workers(comfy, halving_search("wk_h_kill"), [proxy.url]))
    assert code == 200, body
    t0 = time.time()
    last = {}  # row -> the step the worker last answered it at
    while time.time() - t0 < 120 and not last:  # the worker answered a first round: it holds rows
        for pid, h in worker_prompts(worker).items():
            if pid not in before and h.get("outputs"):
                (out,) = h["outputs"].values()
                ans = json.loads(out["text"][0])
                (node,) = [n for n in h["prompt"][2].values() if n["class_type"].endswith("SearchShard")]
                end = json.loads(node["inputs"]["shard"])["end"]
                for r in ans["rows"]:
                    last[r] = max(last.get(r, 0), end)
        time.sleep(0.02)
    assert last, "the worker never answered a rows task"
    worker.proc.kill()
    worker.proc.wait(20)
    entry = comfy.wait(body["prompt_id"], 300)
    assert execution_error(entry) is None, execution_error(entry)
    rep = assert_same_halving(comfy, entry, ref)
    assert proxy.url in rep["settings"]["dispatch"]["failed"]
    # rows it still held and the search kept going were re-run from their seeds elsewhere; how many depends on how
    # far the worker got before the kill (it may have answered more rounds than this test saw), so the count is
    # only checked against the report's own note (the replay itself: tests/test_dispatch.py, deterministically)
    replayed = rep["settings"]["dispatch"]["replayed_rows"]
    assert (replayed > 0) == any("re-run from their seeds" in n for n in rep["notes"])


# --------------------------------------------------------------------------- zero-order and evolution over a worker
def noise_search(name, prefix):
    """Zero-order or evolution with the mean-rank ensemble, two rows at a time: each round's noises go out in
    chunks, as tensors, and come back as scores."""
    g = ensemble_search(prefix)
    g["6"]["inputs"]["micro_batch"] = 2
    inputs = {"budget_nfe": 40} if name == "zero_order" else {"population": 4, "elites": 1, "budget_nfe": 40}
    return with_strategy(g, name, dict(inputs, start_noises=4) if name == "zero_order" else inputs)


@pytest.mark.parametrize("name", ["zero_order", "evolution"])
def test_noise_strategies_over_a_worker_equal_the_local_search(comfy, worker, proxy, name):
    ref = comfy.run_ok(noise_search(name, f"wk_{name}_local"))
    before = set(worker_prompts(worker))
    entry = comfy.run_ok(with_workers(comfy, noise_search(name, f"wk_{name}"), [proxy.url]))
    rep = assert_same_search(comfy, entry, ref)
    assert [c["noise_id"] for c in rep["candidates"]] == [c["noise_id"] for c in report_of(ref)["candidates"]]
    assert rep["settings"]["dispatch"]["executors"] == 2 and rep["settings"]["dispatch"]["tasks"] >= 4
    kinds = []
    for pid, h in worker_prompts(worker).items():
        if pid not in before:
            (node,) = [n for n in h["prompt"][2].values() if n["class_type"].endswith("SearchShard")]
            spec = json.loads(node["inputs"]["shard"])
            kinds.append(spec["kind"])
            assert spec["noise"]["shape"][0] == len(spec["seeds"])
    assert kinds and set(kinds) == {"noises"}
    note = next(n for n in rep["notes"] if n.startswith("rows sampled and scored"))
    assert f"worker {proxy.url}" in note


# --------------------------------------------------------------------------- search over paths over a worker
def paths_search_graph(prefix, candidates=6):
    """Search over paths with the mean-rank ensemble, two rows at a time: the paths start in chunks, and each
    path's re-noisings are made where its state lives."""
    g = search_graph(seed=SEED, candidates=candidates, top_k=1, prefix=prefix)  # an absolute verifier: see below
    g["6"]["inputs"]["micro_batch"] = 2
    return with_strategy(g, "paths", {"paths": 3, "noises_per_path": 2, "start_level": 0.5, "forward": 0.25,
                                      "backward": 0.5})


def test_search_over_paths_over_a_worker_equals_the_local_search(comfy, worker, proxy):
    """The same rounds, survivors, scores, ranking and winner.  A winner a worker finished is re-made here from its
    recipe, alone: its latent equals the one-machine search's up to float rounding (that one came out of a
    micro-batch of two rows, and a lineage has no stock node that would replay it exactly either).  The verifier
    is an absolute one (CLIPScore): a lineage's rows run in other micro-batches here than on one machine, and a
    rank ensemble turns that float rounding into a swapped near-tie now and then (half a rank); the rank
    ensemble's recombination over dispatched rows is checked exactly in tests/test_dispatch.py."""
    ref = comfy.run_ok(paths_search_graph("wk_paths_local"))
    before = set(worker_prompts(worker))
    entry = comfy.run_ok(with_workers(comfy, paths_search_graph("wk_paths"), [proxy.url]))
    rep, theirs = report_of(entry), report_of(ref)
    assert [(c["index"], c["noise_id"], c["rank"]) for c in rep["candidates"]] == \
        [(c["index"], c["noise_id"], c["rank"]) for c in theirs["candidates"]]
    assert [c["score"] for c in rep["candidates"]] == pytest.approx([c["score"] for c in theirs["candidates"]],
                                                                    abs=1e-5)
    a, b = latent_of(comfy, entry), latent_of(comfy, ref)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    for ra, rb in zip(rep["settings"]["rounds"], theirs["settings"]["rounds"], strict=True):
        assert ra["kept_rows"] == rb["kept_rows"] and ra["scores"] == pytest.approx(rb["scores"], abs=1e-5)
    assert not rep["settings"]["workers"]["faults"], rep["settings"]["workers"]["faults"]
    assert rep["settings"]["dispatch"]["executors"] == 2
    ops = []
    for pid, h in worker_prompts(worker).items():
        if pid not in before:
            (node,) = [n for n in h["prompt"][2].values() if n["class_type"].endswith("SearchShard")]
            spec = json.loads(node["inputs"]["shard"])
            assert spec["kind"] == "paths"
            ops.append(spec["op"])
    assert "start" in ops and "branch" in ops, ops
    note = next(n for n in rep["notes"] if n.startswith("rows sampled and scored"))
    assert f"worker {proxy.url}" in note


def test_particles_over_a_worker_equal_the_local_search(comfy, worker, proxy):
    """Particle resampling (FK) with a stochastic sampler: the resampled copies are made where their parents
    live, and the weights, resamplings, ranking and winner are the one-machine search's."""
    def graph(prefix):
        g = search_graph(seed=SEED, candidates=6, top_k=1, prefix=prefix, sampler="euler_ancestral")
        g["6"]["inputs"]["micro_batch"] = 2
        return with_strategy(g, "particles", {"particles": 4, "interval": 1, "ess_threshold": 0.0})
    ref = comfy.run_ok(graph("wk_fk_local"))
    entry = comfy.run_ok(with_workers(comfy, graph("wk_fk"), [proxy.url]))
    rep, theirs = report_of(entry), report_of(ref)
    assert [(c["index"], c["noise_id"], c["rank"]) for c in rep["candidates"]] == \
        [(c["index"], c["noise_id"], c["rank"]) for c in theirs["candidates"]]
    assert [c["score"] for c in rep["candidates"]] == pytest.approx([c["score"] for c in theirs["candidates"]],
                                                                    abs=1e-5)
    for key in ("resampled_at", "lineages_alive", "distinct_final_samples"):
        assert rep["settings"][key] == theirs["settings"][key], key
    a, b = latent_of(comfy, entry), latent_of(comfy, ref)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    note = next(n for n in rep["notes"] if n.startswith("rows sampled and scored"))
    assert f"worker {proxy.url}" in note


def test_paths_under_its_fallback_budget_runs_random_searchs_chunks_on_the_worker(comfy, worker, proxy):
    """Paths at a budget under min_generations is random search's candidates: over a worker, in chunks, as
    random search would run them."""
    def graph(prefix):
        g = with_ensemble(search_graph(seed=SEED, candidates=N, top_k=1, prefix=prefix))
        g["6"]["inputs"]["micro_batch"] = 1
        return with_strategy(g, "paths", {"paths": 0, "budget_nfe": 8})
    ref = comfy.run_ok(graph("wk_pf_local"))
    entry = comfy.run_ok(with_workers(comfy, graph("wk_pf"), [proxy.url]))
    rep = assert_same_search(comfy, entry, ref)
    assert rep["settings"]["fallback"] == "random"
    assert {s["ran_on"] for s in rep["settings"]["shards"]} >= {f"worker {proxy.url}"}


@pytest.mark.parametrize("name", ["random", "halving"])
def test_coarse_to_fine_over_a_worker_equals_the_local_search(comfy, worker, proxy, name):
    """The coarse search's candidates are sampled on the worker at the coarse steps; the finalists are
    re-rendered here at full steps: the same coarse ranking, finalists and winner as on one machine."""
    def graph(prefix):
        g = search_graph(seed=SEED, candidates=6, top_k=1, prefix=prefix, steps=6)
        g["6"]["inputs"]["micro_batch"] = 2
        inputs = {"budget_nfe": 0} if name == "random" else {"rounds": 1, "first_level": 0.5}
        return with_strategy(g, name, inputs, coarse=(3, 2))
    ref = comfy.run_ok(graph(f"wk_c2f_{name}_local"))
    before = set(worker_prompts(worker))
    entry = comfy.run_ok(with_workers(comfy, graph(f"wk_c2f_{name}"), [proxy.url]))
    rep = assert_same_search(comfy, entry, ref)
    a, b = rep["settings"]["coarse_report"]["candidates"], report_of(ref)["settings"]["coarse_report"]["candidates"]
    assert [(c["index"], c["seed"], c["rank"]) for c in a] == [(c["index"], c["seed"], c["rank"]) for c in b]
    assert [c["score"] for c in a] == pytest.approx([c["score"] for c in b], abs=1e-5)
    sent = [json.loads(n["inputs"]["shard"]) for pid, h in worker_prompts(worker).items() if pid not in before
            for n in h["prompt"][2].values() if n["class_type"].endswith("SearchShard")]
    assert sent and all(s["steps"] == 3 for s in sent)


def test_the_tree_search_over_a_worker_equals_the_local_search(comfy, worker, proxy):
    """Every node's state stays where it was made: the root's children go out in chunks, a node's children and
    rollouts are made on its worker, finished samples are scored there; the same tree and winner here."""
    def graph(prefix):
        g = search_graph(seed=SEED, candidates=6, top_k=1, prefix=prefix)
        g["6"]["inputs"]["micro_batch"] = 2
        return with_strategy(g, "tree")
    ref = comfy.run_ok(graph("wk_tree_local"))
    before = set(worker_prompts(worker))
    entry = comfy.run_ok(with_workers(comfy, graph("wk_tree"), [proxy.url]))
    rep, theirs = report_of(entry), report_of(ref)
    assert [(c["index"], c["noise_id"], c["rank"]) for c in rep["candidates"]] == \
        [(c["index"], c["noise_id"], c["rank"]) for c in theirs["candidates"]]
    assert [c["score"] for c in rep["candidates"]] == pytest.approx([c["score"] for c in theirs["candidates"]],
                                                                    abs=1e-5)
    for key in ("expansions_by_depth", "waves", "nodes", "finished"):
        assert rep["settings"][key] == theirs["settings"][key], key
    a, b = latent_of(comfy, entry), latent_of(comfy, ref)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    ops = {json.loads(n["inputs"]["shard"])["op"] for pid, h in worker_prompts(worker).items() if pid not in before
           for n in h["prompt"][2].values() if n["class_type"].endswith("SearchShard")}
    assert "make" in ops and len(ops) >= 2, ops  # the root's children, and work on nodes it held
    assert not rep["settings"]["workers"]["faults"], rep["settings"]["workers"]["faults"]
