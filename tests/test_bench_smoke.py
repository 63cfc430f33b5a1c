"""Smoke tier of the GPU benchmarks (bench/): every code path on the CPU with
tiny configs, against the ComfyUI the server tests use ($COMFYUI_PATH, else
.test-cache/ComfyUI-0.3.64).  The GPU numbers themselves come from a run on an NVIDIA
GPU (bench/README.md); this only proves the scripts run."""
import json
import os
import subprocess
import sys

import pytest

from comfy_server import REPO, comfyui_dir

BENCH = os.path.join(REPO, "bench")
PEER = os.path.join(REPO, ".peer", "ComfyUI-InferenceTimeScaling")


def run(args, timeout=600):
    proc = subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_gpu_search_smoke(tmp_path):
    comfy = comfyui_dir()
    # the peer pack is not vendored (bench/README.md puts it in .peer/)
    cases = ["sd15.limit", "sd15.ours", "sd15.serial", "n256", "strategies", "sd15.halving", "sd15.devices",
             "sdxl.limit", "sdxl.ours"]
    if os.path.isfile(os.path.join(PEER, "__init__.py")):
        cases.append("sd15.peer")
    cases.append("flux.ours")
    out = tmp_path / "search.json"
    run([os.path.join(BENCH, "gpu_search.py"), "--smoke", "--comfyui", comfy, "--cases", ",".join(cases),
         "--out", str(out), "--workdir", str(tmp_path / "work")])
    doc = json.loads(out.read_text())
    by = {c["case"]: c for c in doc["cases"]}
    for kind in ("sd15", "sdxl", "flux"):
        assert doc["models"]["detect_" + kind]["ok"], doc["models"]["detect_" + kind]
    for name in ("sd15.limit", "sd15.ours.n2", "sd15.ours_noexact.n2", "sd15.serial.n2", "sd15.ours.n4",
                 "sdxl.limit", "sdxl.ours.n2", "sdxl.ours_noexact.n2"):
        assert by[name]["status"] == "ok", by[name]
    # the devices case: 'cpu,cpu' (two model copies, two threads) against 'cpu', the same ranking
    for name in ("random", "zero_order", "halving", "evolution", "paths", "particles", "tree"):
        assert by[f"sd15.devices.{name}.speedup"]["same_ranking"], by[f"sd15.devices.{name}.speedup"]
        assert by[f"sd15.devices.{name}.speedup"]["max_score_diff"] < 1e-4, by[f"sd15.devices.{name}.speedup"]
        rows = by[f"sd15.devices.{name}.all.n4"]["devices"]["rows"]
        assert set(rows) == {"0:cpu", "1:cpu"} and all(v > 0 for v in rows.values()), rows
    # SearchLoop's numbers come from its report: phases, NFEs, the micro-batch it used
    ours = by["sd15.ours.n2"]
    assert ours["all_scores_finite"] and ours["micro_batch_used"] == 2 and ours["nfe_total"] == 2 * 2 * 1
    assert set(ours["split"]) == {"denoise_s", "decode_s", "verify_s", "rerender_s", "other_s"}
    assert set(ours["report_phases"]) == {"denoise", "decode", "verify", "rerender", "other"}
    assert ours["calls"]["denoise"] == 1 and ours["calls"]["rerender"] == 1  # winner sampled in a batch of 2
    assert ours["rerender_nfe"] == ours["report_rerender_nfe"] == 2 and ours["split"]["rerender_s"] > 0
    assert ours["oom_backoffs"] == 0 and ours["verifier_images"] == 2 + 1 and ours["replay"] == "ksampler"
    noex = by["sd15.ours_noexact.n2"]
    assert not noex["exact_winner"] and noex["rerender_nfe"] == 0 and noex["split"]["rerender_s"] == 0
    assert noex["replay"] == "batched"
    serial = by["sd15.serial.n2"]
    assert serial["micro_batch_used"] == 1 and serial["oom_backoffs"] == 0 and serial["calls"]["denoise"] == 2
    ratio = doc["summary"]["ours_over_limit"]
    for kind in ("sd15", "sdxl"):
        assert set(ratio[f"{kind}.n2"]) == {"exact_winner_on", "exact_winner_off"}, ratio
    if "sd15.peer" in cases:
        peer = by["sd15.peer.n2"]
        assert peer["status"] == "ok" and peer["all_scores_finite"], peer
    assert by["flux.ours.n2"]["status"] == "ok", by["flux.ours.n2"]
    # strategies through SearchLoop's strategy input (N=4, 2 steps, coarse 1 step, 2 finalists)
    for name in ("random", "zero_order", "paths", "c2f_random", "c2f_random_eqcand"):
        c = by[f"sd15.strat.{name}.n4"]
        assert c["status"] == "ok", c
        assert c["nfe_per_s"] > 0 and c["total_s"] > 0
        assert set(c["split"]) == {"denoise_s", "decode_s", "verify_s", "rerender_s", "other_s"}
    zo = by["sd15.strat.zero_order.n4"]
    assert {k: zo["strategy"][k] for k in ("name", "budget_nfe", "coarse_steps", "rerender")} == {
        "name": "zero_order", "budget_nfe": 0, "coarse_steps": 0, "rerender": 0}
    assert zo["strategy"]["params"]["neighbours"] == 2 and zo["strategy"]["params"]["cosine"] == 0.95
    assert zo["nfe_total"] == 4 * 2 and zo["extra_costs"]["images_scored"] == 4 + zo["calls"]["rerender"]
    # successive halving at N's budget (4 x 2 steps) and half of it, against random search at N and N/2
    for name in ("sd15.halving.random.n4", "sd15.halving.random.n2", "sd15.halving.b8", "sd15.halving.b4"):
        assert by[name]["status"] == "ok", by[name]
    h8 = by["sd15.halving.b8"]
    assert h8["algorithm"] == "halving" and h8["nfe_total"] <= 8 and h8["settings"]["started"] >= 4
    assert h8["replay"] == "ksampler" and by["sd15.halving.b4"]["nfe_total"] <= 4
    paths = by["sd15.strat.paths.n4"]
    assert paths["strategy"]["params"]["noises_per_path"] == 2
    assert paths["calls"]["rerender"] == 0 and paths["replay"] == "lineage"  # no stock node replays a lineage
    c2f = by["sd15.strat.c2f_random.n4"]
    assert c2f["algorithm"] == "coarse_to_fine(random)" and c2f["strategy"]["coarse_steps"] == 1
    assert c2f["strategy"]["rerender"] == 2 and c2f["settings"]["rerender"] == 2
    assert c2f["settings"]["coarse_candidates"] == 4 and c2f["nfe_total"] == 4 * 1 + 2 * 2
    assert c2f["extra_costs"]["images_scored"] == 4 + 2 + c2f["calls"]["rerender"]
    # rerender_nfe is the batch-1 re-render only; coarse-to-fine's full-step stage is part of nfe_total
    assert c2f["rerender_nfe"] == 2 * c2f["calls"]["rerender"] == c2f["report_rerender_nfe"]
    eq = by["sd15.strat.c2f_random_eqcand.n4"]
    assert eq["settings"]["coarse_candidates"] == 4 and eq["strategy"]["budget_nfe"] == 4 * 1 + 2 * 2
    saved = doc["summary"]["sd15_strategies"]["c2f_vs_random_equal_candidates"]
    assert saved["coarse_candidates"] == 4 and "saved_s" in saved


def test_gpu_verifiers_smoke(tmp_path):
    pytest.importorskip("open_clip")
    pytest.importorskip("transformers")
    out = tmp_path / "verifiers.json"
    run([os.path.join(BENCH, "gpu_verifiers.py"), "--smoke", "--out", str(out)])
    doc = json.loads(out.read_text())
    by = {c["case"]: c for c in doc["cases"]}
    for name in ("clipscore_vit_l14", "aesthetic_laion_v2", "pickscore_vit_h14", "hpsv2_vit_h14",
                 "peer_style_pil_preprocess"):
        assert by[name]["status"] == "ok", by[name]
    for name, cls in (("clipscore_vit_l14", "CLIPScoreVerifier"), ("aesthetic_laion_v2", "AestheticVerifier"),
                      ("pickscore_vit_h14", "PickScoreVerifier"), ("hpsv2_vit_h14", "HPSVerifier"),
                      ("image_reward", "ImageRewardVerifier"), ("vqascore_qwen25vl_3b", "VQAScoreVerifier"),
                      ("vqascore_qwen25vl_7b", "VQAScoreVerifier"), ("vlm_rubric_qwen25vl_3b", "RubricMeanRank"),
                      ("hpsv3_qwen2vl_7b", "HPSv3Verifier")):
        assert by[name]["status"] == "ok", by[name]
        assert by[name]["verifier_class"] == cls
    full = doc["models"]["full_size_on_meta"]
    assert full["open_clip ViT-L-14"] == 427616513 and full["open_clip ViT-H-14"] == 986109441
    assert full["transformers CLIP ViT-H-14 (PickScore)"] == 986109441
    assert 440e6 < full["ImageReward (BLIP ViT-L/16 + med BERT + MLP)"] < 460e6
    assert full["LAION aesthetic MLP"] == 927969
    assert full["Qwen2.5-VL-3B"] == 3754622976 and full["Qwen2.5-VL-7B"] == 8292166656
    for name in ("vqascore_qwen25vl_3b", "vqascore_qwen25vl_7b", "vlm_rubric_qwen25vl_3b"):
        rows = by[name]["timings"]
        assert [r["resolution"] for r in rows] == [128] and all(r["finite"] for r in rows)  # the largest size only
    assert 0 < by["vqascore_qwen25vl_3b"]["timings"][0]["score_example"] < 1
    assert [r["resolution"] for r in by["hpsv3_qwen2vl_7b"]["timings"]] == [128]
    assert by["hpsv3_qwen2vl_7b"]["timings"][0]["finite"] and by["hpsv3_qwen2vl_7b"]["seq_tokens"] > 256
    assert 7.7e9 < full["HPSv3 (Qwen2-VL-7B + reward head, no lm_head)"] < 7.8e9


def test_gpu_search_video_smoke(tmp_path):
    """The video cases (Wan-2.1 and Wan-2.2 size) on the CPU: the full-size configs' detection, and SearchLoop
    against raw batched sampling on a tiny Wan 2.1 with the real Wan 2.1 VAE."""
    comfy = comfyui_dir()
    out = tmp_path / "video.json"
    run([os.path.join(BENCH, "gpu_search.py"), "--smoke", "--comfyui", comfy, "--cases",
         "wan21,wan22,wan21.ours_preview,wan21.ours_first", "--out", str(out), "--workdir", str(tmp_path / "work")])
    doc = json.loads(out.read_text())
    by = {c["case"]: c for c in doc["cases"]}
    for kind, params in (("wan21", 1.3e9), ("wan22", 4.9e9)):
        det = doc["models"]["detect_" + kind]
        assert det["ok"] and det["params"] > params, det
    assert doc["models"]["wan21"]["latent_shape"] == [1, 16, 2, 2, 2]
    for name in ("wan21.limit", "wan21.ours.n2", "wan21.ours_noexact.n2"):
        assert by[name]["status"] == "ok", by[name]
    ours = by["wan21.ours.n2"]
    assert ours["all_scores_finite"] and ours["nfe_total"] == 2 * 2 and ours["replay"] == "ksampler"
    assert by["wan22"]["status"] == "skipped"
    shares = doc["summary"]["video"]["wan21.ours.n2"]
    assert 0 < shares["decode_verify_share"] < 1
    assert set(doc["summary"]["ours_over_limit"]["wan21.n2"]) == {"exact_winner_on", "exact_winner_off"}
    # the cheaper scorings, named explicitly: the first frame alone decodes one latent frame of two; preview
    # pruning books every candidate as decoded or pruned
    first, preview = by["wan21.ours_first.n2"], by["wan21.ours_preview.n2"]
    assert first["status"] == "ok" and first["video"]["decoded_latent_frames"] == [1, 2], first
    assert preview["status"] == "ok" and preview["video"]["preview_keep"] == 0.5, preview
    assert preview["video"]["preview_decoded"] + preview["video"]["preview_pruned"] == 2
