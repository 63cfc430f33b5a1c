"""Real-server tier for the search strategies: every algorithm through
SearchLoop's strategy input, with the tiny SD1.5-format checkpoint."""
from __future__ import annotations


import pytest
import safetensors.torch
import torch

from comfy_server import execution_error
from graphs import PREFIX, search_graph
from server_outputs import image_of, latent_file, report_of
from strategy_graphs import STRATEGIES, with_strategy

@pytest.mark.parametrize("name", list(STRATEGIES))
def test_each_strategy_runs_within_its_budget(comfy, name):
    sampler = "euler_ancestral" if name == "particles" else "euler"
    g = with_strategy(search_graph(seed=7, candidates=6, top_k=1, steps=4, sampler=sampler, micro_batch=0,
                                   prefix=f"strat_{name}"), name)
    entry = comfy.run_ok(g)
    rep = report_of(entry)
    budget = 12 if name == "random" else 6 * 4
    assert rep["algorithm"] == name
    assert 0 < rep["nfe_total"] <= budget, rep["nfe_total"]
    assert rep["settings"]["strategy"] == name
    assert rep["trace"] and all(t["nfe"] <= budget for t in rep["trace"])
    assert len(entry["outputs"]["7"]["images"]) == 1
    if name == "random":
        assert len(rep["candidates"]) == 3  # 12 NFEs / 4 per generation


def test_strategy_results_do_not_depend_on_micro_batch(comfy):
    runs = []
    for mb in (1, 3):
        g = with_strategy(search_graph(seed=11, candidates=4, top_k=1, steps=4, micro_batch=mb,
                                       prefix=f"zo_mb{mb}"), "paths")
        rep = report_of(comfy.run_ok(g))
        runs.append(sorted((c["noise_id"], round(c["score"], 4)) for c in rep["candidates"]))
    assert runs[0] == runs[1]


def test_segmented_strategy_refuses_multistep_sampler(comfy):
    g = with_strategy(search_graph(seed=1, candidates=4, steps=4, sampler="dpmpp_2m"), "paths")
    err = execution_error(comfy.run(g))
    assert err is not None and "dpmpp_2m" in err["exception_message"]
    assert "Pick one of" in err["exception_message"]
    g = with_strategy(search_graph(seed=1, candidates=4, steps=4, sampler="euler"), "particles")
    err = execution_error(comfy.run(g))
    assert err is not None and "stochastic sampler" in err["exception_message"]
    # an adaptive sampler's NFEs are not known in advance: no budget can be kept
    g = with_strategy(search_graph(seed=1, candidates=4, steps=4, sampler="dpm_adaptive"), "zero_order")
    err = execution_error(comfy.run(g))
    assert err is not None and "pick a fixed-step sampler" in err["exception_message"]


def test_coarse_to_fine_rerenders_finalists_at_full_steps(comfy):
    g = with_strategy(search_graph(seed=3, candidates=6, top_k=1, steps=6, prefix="c2f"), "random",
                      {"budget_nfe": 0}, coarse=(2, 2))
    rep = report_of(comfy.run_ok(g))
    assert rep["settings"]["coarse_steps"] == 2
    assert rep["nfe_total"] <= 6 * 6
    # the finalist was re-rendered at the full 6 steps: its NFEs say so
    assert rep["best"]["nfe"] == 6
    # paths: the finalists' lineages are replayed on the full schedule
    g = with_strategy(search_graph(seed=3, candidates=8, top_k=1, steps=6, prefix="c2f_paths"), "paths",
                      coarse=(3, 2))
    rep = report_of(comfy.run_ok(g))
    assert rep["algorithm"] == "coarse_to_fine(paths)" and rep["nfe_total"] <= 8 * 6
    assert "replayed at full steps" in rep["best"]["noise_id"]


def _latent_graph_inputs(comfy, name, tensor):
    import os
    path = os.path.join(comfy.input_dir, name)
    # the version key tells LoadLatent not to rescale (files without it are pre-2023 latents)
    safetensors.torch.save_file({"latent_tensor": tensor.contiguous(), "latent_format_version_0": torch.tensor([])},
                                path)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_img2img_inpainting_with_every_strategy(comfy, name):
    """denoise 0.8 on an encoded latent with a noise mask over the top half:
    image-to-image and inpainting at once; the unmasked half must come out unchanged."""
    torch.manual_seed(0)
    original = torch.randn(1, 4, 8, 8) * 0.5
    _latent_graph_inputs(comfy, "orig.latent", original)
    sampler = "euler_ancestral" if name == "particles" else "euler"
    g = search_graph(seed=5, candidates=3, top_k=1, steps=6, denoise=0.8, sampler=sampler, prefix=f"inpaint_{name}")
    g["30"] = {"class_type": "LoadLatent", "inputs": {"latent": "orig.latent"}}
    g["31"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 32}}
    g["33"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    g["32"] = {"class_type": "MaskComposite", "inputs": {
        "destination": ["33", 0], "source": ["31", 0], "x": 0, "y": 0, "operation": "add"}}
    g["34"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["30", 0], "mask": ["32", 0]}}
    g["6"]["inputs"]["latent"] = ["34", 0]
    g = with_strategy(g, name, {"budget_nfe": 0} if name == "random" else None)
    entry = comfy.run_ok(g)
    out = safetensors.torch.load_file(comfy.output_file(entry["outputs"]["9"]["latents"][0]))["latent_tensor"]
    assert out.shape == original.shape
    assert torch.allclose(out[..., 4:, :], original[..., 4:, :], atol=1e-3)  # kept
    assert not torch.allclose(out[..., :4, :], original[..., :4, :], atol=1e-2)  # repainted
    rep = report_of(entry)
    # KSampler's denoise 0.8 with 6 steps runs the last 6 of a 7-step schedule: 6 NFEs per generation
    assert rep["nfe_per_generation"] == 6
    assert rep["algorithm"] == name and 0 < rep["nfe_total"] <= 3 * 6


def test_strategy_with_guider_and_custom_sigmas(comfy):
    for name in ("paths", "zero_order"):
        g = search_graph(seed=8, candidates=4, top_k=1, steps=4, prefix=f"guided_{name}")
        g["40"] = {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0],
                                                        "negative": ["3", 0], "cfg": 5.0}}
        g["41"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        g["42"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 5,
                                                              "denoise": 1.0}}
        g["6"]["inputs"].update(guider=["40", 0], sampler=["41", 0], sigmas=["42", 0])
        cls, params = STRATEGIES[name]
        g["43"] = {"class_type": PREFIX + cls, "inputs": dict(params)}
        g["6"]["inputs"]["strategy"] = ["43", 0]
        rep = report_of(comfy.run_ok(g))
        assert rep["settings"]["mode"] == "guider" and rep["settings"]["steps"] == 5
        assert 0 < rep["nfe_total"] <= 4 * 5


def test_exact_winner_off_skips_the_batch_1_rerender(comfy):
    g = search_graph(seed=21, candidates=4, top_k=2, micro_batch=4, prefix="noexact")
    g["6"]["inputs"]["exact_winner"] = False
    rep = report_of(comfy.run_ok(g))
    assert rep["rerender_nfe"] == 0 and rep["settings"]["exact_winner"] is False
    assert all(c["final_score"] == c["score"] for c in rep["candidates"][:2])
    g["6"]["inputs"]["exact_winner"] = True
    g["7"]["inputs"]["filename_prefix"] = "exact"
    rep2 = report_of(comfy.run_ok(g))
    assert rep2["rerender_nfe"] == 2 * 4  # two winners, 4 Euler steps each, at batch 1
    assert [c["seed"] for c in rep2["candidates"]] == [c["seed"] for c in rep["candidates"]]


def test_strategy_node_widgets_are_the_registry(comfy):
    """The strategy nodes are generated from search/registry.py: every default, range and the widget order
    (saved workflows store widget values by position) come from there."""
    from search import algorithms
    info = comfy.object_info()
    for alg in algorithms().values():
        node = info[PREFIX + alg.node]
        required, optional = node["input"]["required"], node["input"].get("optional", {})
        assert list(required) == [p.name for p in alg.params if not p.optional] + ["budget_nfe"]
        assert sorted(optional) == sorted(p.name for p in alg.params if p.optional)
        for p in alg.params:
            spec = (optional if p.optional else required)[p.name]
            assert spec[1]["default"] == p.default, (alg.name, p.name)
            if p.choices:
                assert spec[0] == list(p.choices)
            for k in ("min", "max"):
                if getattr(p, k) is not None:
                    assert spec[1][k] == getattr(p, k), (alg.name, p.name, k)
            assert spec[1]["tooltip"]


def test_report_says_where_the_time_went(comfy):
    for name in ("random", "zero_order"):
        g = with_strategy(search_graph(seed=31, candidates=3, top_k=1, steps=3, micro_batch=3,
                                       prefix=f"phases_{name}"), name, {"budget_nfe": 0})
        rep = report_of(comfy.run_ok(g))
        ph = rep["phases"]
        assert set(ph) == {"denoise", "decode", "verify", "rerender", "other"}
        assert ph["denoise"]["calls"] >= 1 and ph["denoise"]["seconds"] > 0
        assert ph["decode"]["calls"] >= 1 and ph["verify"]["calls"] >= 1
        assert all(v["seconds"] >= 0 for v in ph.values())
        if rep["best"]["replay"] in ("ksampler", "noise") and rep["rerender_nfe"]:
            assert ph["rerender"]["calls"] >= 1


def test_random_strategy_refuses_a_budget_below_one_generation(comfy):
    for budget in (1, 3):
        g = with_strategy(search_graph(seed=1, candidates=4, steps=4, prefix="tiny_budget"), "random",
                          {"budget_nfe": budget})
        err = execution_error(comfy.run(g))
        assert err is not None and "too small" in err["exception_message"], budget


def test_successive_halving_replays_its_winner_exactly_in_a_stock_ksampler(comfy):
    import numpy as np
    from graphs import ksampler_graph
    g = with_strategy(search_graph(seed=40, candidates=4, top_k=1, steps=6, micro_batch=2, prefix="halving"),
                      "halving")
    entry = comfy.run_ok(g)
    rep = report_of(entry)
    s = rep["settings"]
    assert rep["algorithm"] == "halving" and rep["nfe_total"] <= 4 * 6
    assert s["started"] > 4  # more starts than random search could finish at this budget
    assert len(s["stages"]) == len(s["prune_indices"]) >= 1 and len(s["rank_correlation"]) == len(s["stages"])
    assert [st["live"] for st in s["stages"]][0] == s["started"]
    best = rep["best"]
    assert best["replay"] == "ksampler" and best["seed"] >= 40
    stock = comfy.run_ok(ksampler_graph(seed=best["seed"], steps=6, prefix="halving_stock"))
    assert torch.equal(latent_file(comfy, stock), latent_file(comfy, entry))
    assert np.array_equal(image_of(comfy, stock, node="8"), image_of(comfy, entry))


def test_tree_search_replays_unbranched_winners_in_a_stock_ksampler_and_returns_lineages(comfy):
    import numpy as np
    from graphs import ksampler_graph
    # root_widening 1: every rollout starts from a fresh noise, so the winner never branched: its seed replays it
    g = with_strategy(search_graph(seed=50, candidates=4, top_k=1, steps=6, micro_batch=2, prefix="tree_fresh"),
                      "tree", {"root_widening": 1.0})
    entry = comfy.run_ok(g)
    rep = report_of(entry)
    assert rep["algorithm"] == "tree" and rep["nfe_total"] <= 4 * 6
    assert rep["settings"]["finished_branched"] == 0 and rep["settings"]["fresh_noises"] > 4  # screened starts
    best = rep["best"]
    assert best["replay"] == "ksampler" and best["seed"] >= 50
    stock = comfy.run_ok(ksampler_graph(seed=best["seed"], steps=6, prefix="tree_stock"))
    assert torch.equal(latent_file(comfy, stock), latent_file(comfy, entry))
    assert np.array_equal(image_of(comfy, stock, node="8"), image_of(comfy, entry))
    # root_widening 0: one root expansion, the rest branches below it (re-noised): lineages, returned as sampled
    g = with_strategy(search_graph(seed=50, candidates=6, top_k=1, steps=6, micro_batch=2, prefix="tree_branch"),
                      "tree", {"root_widening": 0.0, "parallel": 1})
    rep = report_of(comfy.run_ok(g))
    s = rep["settings"]
    assert s["finished_branched"] > 0 and s["replay"]["lineage"] == s["finished_branched"]
    assert s["sampler_noise"] == "renoise" and rep["nfe_total"] <= 6 * 6
    assert rep["best"]["replay"] in ("ksampler", "lineage", "batched")


def test_early_stop_node_stops_a_strategy_and_reports_the_saving(comfy):
    # zero-order finishes the round the stop falls in, and its first round is its start pool (8 noises by
    # default: the whole budget here), so it starts from 4; random search samples one candidate per call under a
    # target rule (Stopper.horizon), so it stops after the first
    for name, inputs in (("random", {"budget_nfe": 0}), ("zero_order", {"budget_nfe": 0, "start_noises": 4})):
        g = with_strategy(search_graph(seed=9, candidates=8, top_k=1, steps=3, micro_batch=4,
                                       prefix=f"early_{name}"), name, inputs)
        g["42"] = {"class_type": PREFIX + "EarlyStop", "inputs": {
            "mode": "target score", "target_score": -1000.0, "patience": 8, "min_improvement": 0.0,
            "strategy": g["6"]["inputs"]["strategy"]}}
        g["6"]["inputs"]["strategy"] = ["42", 0]
        rep = report_of(comfy.run_ok(g))
        es = rep["settings"]["early_stop"]
        assert es["stopped"] and "target" in es["reason"], es
        assert rep["nfe_total"] < 8 * 3 and es["nfe_saved"] == 8 * 3 - rep["nfe_total"]
        assert rep["nfe_total"] == {"random": 3, "zero_order": 4 * 3}[name]
        assert any("stopped early" in n for n in rep["notes"])
    # a rank ensemble's scores are relative: refused with a message on the node
    g = with_strategy(search_graph(seed=9, candidates=4, top_k=1, steps=3, prefix="early_rel"), "random",
                      {"budget_nfe": 0})
    g["43"] = {"class_type": PREFIX + "VerifierEnsemble", "inputs": {"mode": "mean_rank", "verifier_1": ["5", 0],
                                                                     "weight_1": 1.0}}
    g["6"]["inputs"]["verifier"] = ["43", 0]
    g["42"] = {"class_type": PREFIX + "EarlyStop", "inputs": {
        "mode": "plateau", "target_score": 0.0, "patience": 2, "min_improvement": 0.0,
        "strategy": g["6"]["inputs"]["strategy"]}}
    g["6"]["inputs"]["strategy"] = ["42", 0]
    err = execution_error(comfy.run(g))
    assert err is not None and "relative" in err["exception_message"]


@pytest.mark.parametrize("name", [n for n in STRATEGIES if n != "random"])
def test_every_strategy_refuses_a_budget_below_one_generation(comfy, name):
    sampler = "euler_ancestral" if name == "particles" else "euler"
    g = with_strategy(search_graph(seed=1, candidates=4, steps=4, sampler=sampler, prefix=f"tiny_budget_{name}"),
                      name, {"budget_nfe": 3})
    err = execution_error(comfy.run(g))
    assert err is not None and "too small" in err["exception_message"], (name, err)
