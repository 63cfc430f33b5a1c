"""Real-server tier: a real ComfyUI process with the pack in custom_nodes,
driven over HTTP / websocket exactly as the editor drives it."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from comfy_server import execution_error, interrupt_run
from graphs import PREFIX, ksampler_graph, search_graph
from server_outputs import image_of, latent_file, report_of

NODE_IDS = [PREFIX + n for n in ("SearchLoop", "CLIPScoreVerifierLoader", "ScoresToJSON", "EarlyStop",
                                 "SuccessiveHalvingStrategy", "TreeSearchStrategy", "SelfConsistencyVerifierLoader",
                                 "VerifierPrefilter")]


def test_object_info_lists_every_node(comfy):
    info = comfy.object_info()
    for nid in NODE_IDS:
        assert nid in info, f"{nid} missing from /object_info"
        assert info[nid]["category"] == "inference scaling"
    req = info[PREFIX + "SearchLoop"]["input"]["required"]
    assert list(req) == ["model", "positive", "negative", "latent", "vae", "verifier", "prompt", "seed",
                         "candidates", "top_k", "sampler_name", "scheduler", "steps", "cfg", "denoise"]
    assert list(info[PREFIX + "SearchLoop"]["input"]["optional"]) == ["sampler", "sigmas", "strategy", "guider",
                                                                       "micro_batch", "exact_winner",
                                                                       "held_out_verifier", "video_scoring",
                                                                       "model_2", "switch_step", "workers", "devices"]
    assert info[PREFIX + "SearchLoop"]["output_name"] == ["image", "latent", "top_k_images", "scores",
                                                          "winner_noise", "best_seed", "noise"]
    weights = info[PREFIX + "CLIPScoreVerifierLoader"]["input"]["required"]["weights"][0]
    assert "tiny-clip.safetensors" in weights


def test_search_finishes_and_winner_reproduces_in_stock_ksampler(comfy):
    entry = comfy.run_ok(search_graph(seed=1000, candidates=5, top_k=2, micro_batch=2, prefix="s1"))
    rep = report_of(entry)
    assert len(rep["candidates"]) == 5
    seeds = sorted(c["seed"] for c in rep["candidates"])
    assert seeds == list(range(1000, 1005))
    scores = [c["score"] for c in rep["candidates"]]
    assert scores == sorted(scores, reverse=True)  # ranked best first
    assert len(set(round(s, 6) for s in scores)) > 1, "different candidates must get different scores"
    assert all(c["nfe"] == 4 for c in rep["candidates"]) and rep["nfe_total"] == 20  # euler, 4 steps
    assert rep["nfe_per_generation"] == 4 and rep["cfg_multiplier"] == 2
    best = rep["best"]
    assert len(entry["outputs"]["10"]["images"]) == 2  # top-k batch
    # search-time score and the batch-1 re-render's score agree (batched CPU kernels differ ~1e-5)
    for c in rep["candidates"][:2]:
        assert c["final_score"] == pytest.approx(c["score"], abs=1e-3)

    stock = comfy.run_ok(ksampler_graph(seed=best["seed"], prefix="k1"))
    assert torch.equal(latent_file(comfy, stock), latent_file(comfy, entry)), \
        "the winner's seed in a stock KSampler must give the same latent exactly"
    assert np.array_equal(image_of(comfy, stock, node="8"), image_of(comfy, entry))


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_sde"])
def test_stochastic_sampler_result_independent_of_micro_batch(comfy, sampler):
    runs = {}
    for mb in (1, 3):
        entry = comfy.run_ok(search_graph(seed=7, candidates=3, top_k=1, sampler=sampler, micro_batch=mb,
                                          prefix=f"mb{sampler}{mb}"))
        runs[mb] = {c["seed"]: c["score"] for c in report_of(entry)["candidates"]}
        runs[mb, "rep"] = report_of(entry)
        runs[mb, "entry"] = entry
    for s in runs[1]:
        assert runs[1][s] == pytest.approx(runs[3][s], abs=1e-3), f"candidate seed {s} depends on the micro-batch"
    assert runs[3, "rep"]["settings"]["per_candidate_noise"] is True
    # and the winner still reproduces in a stock KSampler
    best = runs[3, "rep"]["best"]
    stock = comfy.run_ok(ksampler_graph(seed=best["seed"], sampler=sampler, prefix=f"k{sampler}"))
    assert torch.equal(latent_file(comfy, stock), latent_file(comfy, runs[3, "entry"]))


def test_heun_nfe_count_is_exact(comfy):
    entry = comfy.run_ok(search_graph(seed=3, candidates=2, top_k=1, sampler="heun", steps=3, prefix="heun"))
    rep = report_of(entry)
    assert [c["nfe"] for c in rep["candidates"]] == [5, 5]  # 2 per step, 1 on the last
    assert rep["nfe_total"] == 10


def test_adaptive_sampler_reports_the_nfes_it_spent_whatever_the_micro_batch(comfy):
    """dpm_adaptive picks its own steps, and its step-size controller would see a whole batch: candidates run
    one at a time whatever micro_batch asks, and each one's NFEs are the model calls counted for it."""
    runs = []
    for mb in (1, 4):
        runs.append(report_of(comfy.run_ok(search_graph(seed=4, candidates=3, top_k=1, sampler="dpm_adaptive",
                                                        steps=4, micro_batch=mb, prefix=f"adaptive{mb}"))))
    per = [{c["seed"]: c["nfe"] for c in r["candidates"]} for r in runs]
    assert per[0] == per[1] and all(v > 0 for v in per[0].values())
    assert [{c["seed"]: c["score"] for c in r["candidates"]} for r in runs][0] == \
        [{c["seed"]: c["score"] for c in r["candidates"]} for r in runs][1]
    for r, p in zip(runs, per):
        assert r["settings"]["micro_batch"] == 1 and r["nfe_total"] == sum(p.values())
        assert r["trace"][-1]["nfe"] == r["nfe_total"]
        assert any("counted" in n for n in r["notes"])


def test_img2img_search(comfy):
    g = search_graph(seed=11, candidates=2, top_k=1, denoise=0.5, prefix="i2i")
    g["20"] = {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}}
    g["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["1", 2]}}
    g["6"]["inputs"]["latent"] = ["21", 0]
    rep = report_of(comfy.run_ok(g))
    assert all(c["nfe"] == 4 for c in rep["candidates"])  # denoise 0.5 keeps `steps` steps


def test_interrupt_stops_search_within_one_step(comfy):
    interrupted, later, seconds = interrupt_run(
        comfy, search_graph(seed=5, candidates=64, top_k=1, steps=30, micro_batch=2, prefix="intr"), after=1,
        timeout=120)
    assert interrupted, "the search was not interrupted"
    # one model call of the micro-batch may finish; 64 x 30 NFEs would otherwise follow
    assert later <= 2, f"{later} progress updates after the interrupt"
    assert seconds < 30
    comfy.run_ok(search_graph(seed=6, candidates=2, top_k=1, prefix="afterintr"))


def test_cpu_default_micro_batch_cancels_like_a_stock_ksampler(comfy):
    """On the CPU, SearchLoop's default (micro_batch 0) samples one candidate at a time, so at 512 x 512 a
    Cancel lands after at most the one model call in flight, as with a stock KSampler (issue #18, item 5)."""
    g = search_graph(seed=8, candidates=16, top_k=1, steps=20, micro_batch=0, prefix="intr512")
    g["4"]["inputs"].update(width=512, height=512)
    interrupted, later, _ = interrupt_run(comfy, g, after=3)  # a few model calls in: the search is under way
    assert interrupted, "the search was not interrupted"
    assert later <= 1, f"{later} model calls after the interrupt (a batch-1 run finishes at most the one in flight)"


def _load_latent_graph(name):
    g = search_graph(seed=1, candidates=2, top_k=1, prefix="bad")
    g["30"] = {"class_type": "LoadLatent", "inputs": {"latent": name}}
    g["6"]["inputs"]["latent"] = ["30", 0]
    return g


def _write_latent(comfy, name, tensor):
    safetensors.torch.save_file({"latent_tensor": tensor, "latent_format_version_0": torch.tensor([])},
                                os.path.join(comfy.input_dir, name))


BAD_CASES = {
    "top_k_gt_n": (lambda c: search_graph(candidates=2, top_k=3), "top_k (3) is larger than the number of candidates"),
    "channels": ("ch16.latent", "channels but this model works on 4-channel latents"),
    "video": ("video.latent", "is a video latent (5-D"),
    "batch2": ("batch2", "batch size 2"),
    "broken_file": (lambda c: search_graph(weights="broken-clip.safetensors"), "truncated"),
    "nan_scores": (lambda c: search_graph(weights="nan-clip.safetensors"), "non-finite score"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_a_clear_node_error_and_server_keeps_serving(comfy, case):
    make, needle = BAD_CASES[case]
    if case == "channels":
        _write_latent(comfy, "ch16.latent", torch.randn(1, 16, 8, 8))
        g = _load_latent_graph("ch16.latent")
    elif case == "video":
        _write_latent(comfy, "video.latent", torch.randn(1, 4, 3, 8, 8))
        g = _load_latent_graph("video.latent")
    elif case == "batch2":
        g = search_graph()
        g["4"]["inputs"]["batch_size"] = 2
    else:
        g = make(comfy)
    entry = comfy.run(g)
    err = execution_error(entry)
    assert err is not None, f"{case}: expected an execution error"
    assert needle in err["exception_message"], err["exception_message"]
    assert err["node_type"] in (PREFIX + "SearchLoop", PREFIX + "CLIPScoreVerifierLoader")
    comfy.run_ok(search_graph(seed=99, candidates=2, top_k=1, prefix="recover"))


def test_validation_errors_name_the_input(comfy):
    code, body = comfy.queue(search_graph(candidates=0))
    assert code == 400 and "candidates" in json.dumps(body)
    code, body = comfy.queue(search_graph(weights="missing.safetensors"))
    assert code == 400
    text = json.dumps(body)
    assert "missing.safetensors" in text and "Searched" in text and "huggingface.co" in text
    comfy.run_ok(search_graph(seed=98, candidates=2, top_k=1, prefix="recover2"))


def test_progress_is_one_bar_in_nfes_with_grid_previews(comfy):
    import io
    ws = comfy.websocket()
    try:
        code, body = comfy.queue(search_graph(seed=21, candidates=8, top_k=1, steps=3, micro_batch=2, prefix="prev"))
        assert code == 200
        pid = body["prompt_id"]
        ws.settimeout(120)
        progress, previews = [], []
        while True:
            msg = ws.recv()
            if isinstance(msg, bytes):
                if int.from_bytes(msg[:4], "big") == 1:  # PREVIEW_IMAGE: event, format, JPEG bytes
                    previews.append(Image.open(io.BytesIO(msg[8:])).size)
                continue
            m = json.loads(msg)
            data = m.get("data", {})
            if m["type"] == "progress" and data.get("node") in (None, "6"):
                progress.append((data["value"], data["max"]))
            if m["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == pid:
                break
    finally:
        ws.close()
    # one bar for the whole search: total = (N + top_k) x 3 NFEs, values only grow
    assert progress and all(mx == progress[0][1] for _, mx in progress)
    assert progress[0][1] == (8 + 1) * 3
    values = [v for v, _ in progress]
    assert values == sorted(values) and values[-1] == progress[0][1]
    # previews tile the micro-batch's x0-predictions: 2 candidates of 8x8 latents -> a 1x2 grid (16x8 latent),
    # which the server scales to its preview size keeping the 2:1 aspect; the batch-1 re-render's are square
    assert previews, "no preview images were sent"
    assert any(w == 2 * h for w, h in previews), previews[:5]
