"""Strategies on flow models: re-noising checked numerically against ComfyUI's
own noise scaling, and the segmented algorithms on the tiny SD3 checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from graphs import search_graph
from server_outputs import latent_file, report_of
from strategy_graphs import with_strategy

HERE = os.path.dirname(os.path.abspath(__file__))


def test_renoise_matches_comfyui_noise_scaling(comfy_path):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "renoise_check.py"), comfy_path],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])["kinds"]
    assert {"eps", "v_prediction"} <= set(res)
    for kind, r in res.items():
        # x_b that ComfyUI's sampler starts from == the forward process from x_a (relative error, float32)
        assert r["max_rel_err"] < 1e-5, (kind, r)
        # and forward-noising a clean sample has the model's noise level at sigma_b
        assert r["std_at_b"] == pytest.approx(r["expected_std"], rel=0.05), (kind, r)
    if "flow_const" not in res:
        pytest.skip("this ComfyUI has no flow (CONST) model sampling: the EPS and v-prediction checks passed; "
                    "the flow check runs on current ComfyUI")


@pytest.mark.parametrize("name", ["paths", "zero_order", "particles"])
def test_strategies_on_a_flow_model(comfy, sd3, name):  # noqa: F811
    sampler = "euler_ancestral" if name == "particles" else "euler"
    g = with_strategy(search_graph(seed=4, candidates=4, top_k=1, cfg=4.0, steps=4, sampler=sampler,
                                   prefix=f"flow_{name}"), name)
    g["1"]["inputs"]["ckpt_name"] = sd3
    g["4"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    entry = comfy.run_ok(g)
    rep = report_of(entry)
    assert rep["algorithm"] == name and 0 < rep["nfe_total"] <= 4 * 4
    assert latent_file(comfy, entry).shape[1] == 16
    assert len({round(c["score"], 6) for c in rep["candidates"]}) > 1
