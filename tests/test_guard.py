"""The over-optimisation guard (search/guard.py): its statistics by hand, then on a real server with a held-out
verifier constructed to be anti-correlated (the warning must appear) or correlated (it must not)."""
import json
import statistics

import pytest
import torch

from search import guard

# --- core: the statistics ------------------------------------------------------------------------


def test_summary_warns_only_when_the_winner_rises_on_search_and_falls_below_the_held_out_median():
    search = [0.1, 0.2, 0.3, 0.4, 0.9]
    held_anti = [0.9, 0.8, 0.7, 0.6, 0.1]
    s = guard.summary(search_name="a", held_out_name="b", search_scores=search, winner_search=0.9,
                      sampled_search=search, sampled_held_out=held_anti, winner_held_out=0.1)
    assert s["median"] == {"search": 0.3, "held_out": 0.7}
    assert s["winner_percentile"] == {"search": pytest.approx(0.9), "held_out": pytest.approx(0.1)}
    assert s["warning"] and "over-optimisation" in s["warning"] and "b" in s["warning"]
    held_corr = [0.2, 0.4, 0.6, 0.8, 1.8]
    s = guard.summary(search_name="a", held_out_name="b", search_scores=search, winner_search=0.9,
                      sampled_search=search, sampled_held_out=held_corr, winner_held_out=1.8)
    assert s["warning"] is None and guard.message(s).startswith("held-out check passed")
    # a winner at the median of the search verifier (nothing was optimised): no warning either
    s = guard.summary(search_name="a", held_out_name="b", search_scores=[1, 1, 1], winner_search=1,
                      sampled_search=[1, 1, 1], sampled_held_out=[3, 2, 1], winner_held_out=0)
    assert s["warning"] is None


def test_diversity_is_the_mean_pairwise_rms_distance():
    a = torch.zeros(1, 2, 2, 3)
    b = torch.full((1, 2, 2, 3), 0.5)
    c = torch.ones(1, 2, 2, 3)
    d = guard.diversity(torch.cat([a, b, c]))
    assert d == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert guard.diversity(a) is None and guard.diversity(None) is None


def test_running_best_trace_follows_what_the_search_would_pick():
    rows = [{"nfe": 4, "search": 0.1, "held_out": 5.0}, {"nfe": 8, "search": 0.3, "held_out": 2.0},
            {"nfe": 12, "search": 0.2, "held_out": 9.0}, {"nfe": 16, "search": 0.5, "held_out": 1.0}]
    t = guard.running_best_trace(rows)
    assert [(x["nfe"], x["search"], x["held_out"]) for x in t] == [(4, 0.1, 5.0), (8, 0.3, 2.0), (12, 0.3, 2.0),
                                                                    (16, 0.5, 1.0)]


def test_sample_stride_bounds_the_held_out_cost():
    assert guard.sample_stride(8, 32) == 1 and guard.sample_stride(64, 32) == 2 and guard.sample_stride(100, 32) == 4
    assert guard.percentile(2, [1, 2, 3]) == pytest.approx(0.5) and guard.percentile(1, []) is None


# --- server: SearchLoop and Verifier Score with a held-out verifier ---------------------------------

PREFIX = "InfScale_"


def _aesthetic(mlp):
    return {"class_type": PREFIX + "AestheticVerifierLoader",
            "inputs": {"clip_arch": "ViT-L-14", "clip_weights": "tiny-clip-768.safetensors", "aesthetic_weights": mlp}}


@pytest.mark.parametrize("held,warns", [("tiny-aesthetic-negated.pth", True), ("tiny-aesthetic-doubled.pth", False)])
def test_search_loop_guard_warns_on_an_anti_correlated_held_out_verifier(comfy, held, warns):
    from graphs import search_graph
    g = search_graph(seed=3, candidates=6, top_k=2, steps=3, prefix=f"guard_{warns}")
    g["5"] = _aesthetic("tiny-aesthetic.pth")
    g["50"] = _aesthetic(held)
    g["6"]["inputs"]["held_out_verifier"] = ["50", 0]
    g["51"] = {"class_type": PREFIX + "ScorePlot", "inputs": {"scores": ["6", 3], "width": 320, "height": 200}}
    g["52"] = {"class_type": "SaveImage", "inputs": {"images": ["51", 0], "filename_prefix": f"guard_plot_{warns}"}}
    entry = comfy.run_ok(g)
    rep = json.loads(entry["outputs"]["8"]["text"][0])
    h = rep["held_out"]
    assert h["sampled"] == 6 and h["stride"] == 1  # 6 candidates: every one sampled
    search = [c["score"] for c in rep["candidates"]]
    pairs = h["sampled_pairs"]
    factor = -1.0 if warns else 2.0  # the held-out head is the search head times this
    for s, ho in pairs:
        assert ho == pytest.approx(factor * s, rel=1e-3, abs=1e-4)
    assert h["median"]["search"] == pytest.approx(statistics.median(search))
    assert h["winner"]["held_out"] == pytest.approx(factor * h["winner"]["search"], rel=1e-3, abs=1e-4)
    assert h["top_k_diversity"] is not None and h["top_k_diversity"] > 0
    assert len(h["trace"]) == 6 and h["trace"][-1]["nfe"] == 6 * 3
    ui = entry["outputs"]["6"]["text"][0]  # what the node shows
    if warns:
        assert h["warning"] and ui.startswith("WARNING: possible over-optimisation")
        assert h["warning"] in rep["notes"]
    else:
        assert h["warning"] is None and ui.startswith("held-out check passed")
    assert entry["outputs"]["52"]["images"]  # the plot with the held-out curve


def test_verifier_score_guard_and_same_verifier_refusal(comfy):
    from comfy_server import execution_error
    from graphs import batch_score_graph
    nodes = {"30": _aesthetic("tiny-aesthetic.pth"), "31": _aesthetic("tiny-aesthetic-negated.pth")}
    g = batch_score_graph(nodes, ["30", 0], batch=4)
    g["20"]["inputs"]["held_out_verifier"] = ["31", 0]
    entry = comfy.run_ok(g)
    rep = json.loads(entry["outputs"]["8"]["text"][0])
    assert rep["held_out"]["warning"] and entry["outputs"]["20"]["text"][0].startswith("WARNING")
    assert rep["held_out"]["sampled"] == 4
    g["20"]["inputs"]["held_out_verifier"] = ["30", 0]
    err = execution_error(comfy.run(g))
    assert err is not None and "different verifier" in err["exception_message"]
