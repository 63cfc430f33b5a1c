"""Smoke tier of the GPU benchmarks (bench/): every code path on the CPU with
tiny configs, against the ComfyUI the server tests use ($COMFYUI_PATH, else the
vendored 2024 host).  The GPU numbers themselves come from a lent H100
(bench/README.md); this only proves the scripts run."""
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
    current = os.path.isdir(os.path.join(comfy, "comfy", "ldm", "flux"))
    # the peer pack is not vendored (bench/README.md puts it in .peer/); the 2024 host has no FLUX
    cases = ["sd15.limit", "sd15.ours", "sd15.serial", "n256", "strategies", "sdxl.ours"]
    if os.path.isfile(os.path.join(PEER, "__init__.py")):
        cases.append("sd15.peer")
    if current:
        cases.append("flux.ours")
    out = tmp_path / "search.json"
    run([os.path.join(BENCH, "gpu_search.py"), "--smoke", "--comfyui", comfy, "--cases", ",".join(cases),
         "--out", str(out), "--workdir", str(tmp_path / "work")])
    doc = json.loads(out.read_text())
    by = {c["case"]: c for c in doc["cases"]}
    for kind in ("sd15", "sdxl") + (("flux",) if current else ()):
        assert doc["models"]["detect_" + kind]["ok"], doc["models"]["detect_" + kind]
    for name in ("sd15.limit", "sd15.ours.n2", "sd15.serial.n2", "sd15.ours.n4", "sdxl.ours.n2"):
        assert by[name]["status"] == "ok", by[name]
    ours = by["sd15.ours.n2"]
    assert ours["all_scores_finite"] and ours["micro_batch_used"] == 2 and ours["nfe_total"] == 2 * 2 * 1
    assert set(ours["split"]) == {"denoise_s", "decode_s", "verify_s", "rerender_s", "other_s"}
    assert by["sd15.serial.n2"]["micro_batch_used"] == 1
    if "sd15.peer" in cases:
        peer = by["sd15.peer.n2"]
        if not current:
            assert peer["status"] == "skipped"
        else:
            assert peer["status"] == "ok" and peer["all_scores_finite"], peer
    if current:
        assert by["flux.ours.n2"]["status"] == "ok", by["flux.ours.n2"]
    # strategies through SearchLoop's strategy input (N=4, 2 steps, coarse 1 step, 2 finalists)
    for name in ("random", "zero_order", "paths", "c2f_random", "c2f_random_eqcand"):
        c = by[f"sd15.strat.{name}.n4"]
        assert c["status"] == "ok", c
        assert c["nfe_per_s"] > 0 and c["total_s"] > 0
    zo = by["sd15.strat.zero_order.n4"]
    assert zo["strategy"] == {"name": "zero_order", "params": {"neighbours": 2, "cosine": 0.95}, "budget_nfe": 0,
                              "coarse_steps": 0}
    assert zo["nfe_total"] == 4 * 2 and zo["extra_costs"]["images_scored"] == 4
    assert set(zo["split"]) == {"denoise_s", "decode_s", "verify_s", "final_decode_s", "other_s"}
    assert by["sd15.strat.paths.n4"]["strategy"]["params"]["noises_per_path"] == 2
    c2f = by["sd15.strat.c2f_random.n4"]
    assert c2f["algorithm"] == "coarse_to_fine(random)" and c2f["strategy"]["coarse_steps"] == 1
    assert c2f["settings"]["rerender"] == 2 and len(c2f["extra_costs"]["hosts"]) == 2  # full host + coarse host
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
                      ("image_reward", "ImageRewardVerifier")):
        assert by[name]["status"] == "ok", by[name]
        assert by[name]["verifier_class"] == cls
    full = doc["models"]["full_size_on_meta"]
    assert full["open_clip ViT-L-14"] == 427616513 and full["open_clip ViT-H-14"] == 986109441
    assert full["transformers CLIP ViT-H-14 (PickScore)"] == 986109441
    assert 440e6 < full["ImageReward (BLIP ViT-L/16 + med BERT + MLP)"] < 460e6
    assert full["LAION aesthetic MLP"] == 927969
