"""Real-server tier for verifiers I: the aesthetic loader, the ensemble node and
missing files, through a real ComfyUI process."""
from __future__ import annotations

import json

import pytest

from graphs import PREFIX, aesthetic_node, batch_score_graph, search_graph


def report(entry, node="8"):
    return json.loads(entry["outputs"][node]["text"][0])


def test_nodes_are_listed_with_their_files(comfy):
    info = comfy.object_info()
    a = info[PREFIX + "AestheticVerifierLoader"]["input"]
    assert "tiny-aesthetic.pth" in a["required"]["aesthetic_weights"][0]
    assert "sac+logos+ava1-l14-linearMSE.pth" in a["required"]["aesthetic_weights"][0]  # fetchable by download
    assert a["optional"]["download_missing"][1]["default"] is False
    e = info[PREFIX + "VerifierEnsemble"]["input"]
    assert e["required"]["mode"][0] == ["mean_rank", "zscore"]
    assert [k for k in e["optional"] if k.startswith("verifier_")] == [f"verifier_{i}" for i in range(2, 7)]


def test_aesthetic_loader_scores_a_batch_on_the_server(comfy):
    entry = comfy.run_ok(batch_score_graph({"30": aesthetic_node()}, ["30", 0]))
    cands = report(entry)["candidates"]
    assert len(cands) == 3
    assert len({round(c["score"], 6) for c in cands}) == 3, "different images must get different scores"
    assert "aesthetic(tiny-aesthetic.pth" in report(entry)["verifier"]


def test_ensemble_node_mean_rank_on_the_server(comfy):
    nodes = {"30": aesthetic_node(),
             "31": {"class_type": PREFIX + "CLIPScoreVerifierLoader",
                    "inputs": {"arch": "ViT-L-14", "weights": "tiny-clip-768.safetensors", "mode": "cosine"}},
             "32": {"class_type": PREFIX + "VerifierEnsemble",
                    "inputs": {"mode": "mean_rank", "verifier_1": ["30", 0], "weight_1": 1.0,
                               "verifier_2": ["31", 0], "weight_2": 1.0}}}
    entry = comfy.run_ok(batch_score_graph(nodes, ["32", 0]))
    rep = report(entry)
    scores = sorted(c["score"] for c in rep["candidates"])
    # each score is the mean of two ranks in 1..3: a multiple of 0.5, summing to 2 * (1 + 2 + 3) / 2
    assert all(abs(s * 2 - round(s * 2)) < 1e-6 and 1 <= s <= 3 for s in scores)
    assert sum(scores) == pytest.approx(6.0)
    assert rep["verifier"].startswith("ensemble[mean_rank](")
    # the member scores travel with each candidate
    assert all(len(c["verifier_scores"]) == 2 for c in rep["candidates"])


def test_search_with_an_ensemble_is_independent_of_micro_batch(comfy):
    runs = []
    for mb in (1, 4):
        g = search_graph(seed=321, candidates=4, top_k=1, micro_batch=mb, prefix=f"ens{mb}")
        g["30"] = aesthetic_node()
        g["31"] = {"class_type": PREFIX + "VerifierEnsemble",
                   "inputs": {"mode": "mean_rank", "verifier_1": ["30", 0], "weight_1": 1.0,
                              "verifier_2": ["5", 0], "weight_2": 1.0}}
        g["6"]["inputs"]["verifier"] = ["31", 0]
        entry = comfy.run_ok(g)
        rep = report(entry)
        runs.append([(c["seed"], c["score"]) for c in rep["candidates"]])
        assert {c["rank"] for c in rep["candidates"]} == {1, 2, 3, 4}
    assert runs[0] == runs[1]


def test_missing_aesthetic_file_is_a_validation_error_without_download(comfy):
    g = batch_score_graph({"30": aesthetic_node(mlp="sac+logos+ava1-l14-linearMSE.pth")}, ["30", 0])
    code, body = comfy.queue(g)
    assert code == 400
    text = json.dumps(body)
    assert "sac+logos+ava1-l14-linearMSE.pth" in text and "Searched" in text
    assert "camenduru/improved-aesthetic-predictor" in text and "download_missing" in text


def test_mismatched_aesthetic_head_is_a_clear_node_error(comfy):
    from comfy_server import execution_error
    # the 768-d head on the 32-d tiny CLIP
    entry = comfy.run(batch_score_graph({"30": aesthetic_node(clip="tiny-clip.safetensors")}, ["30", 0]))
    err = execution_error(entry)
    assert err is not None and "needs CLIP ViT-L-14" in err["exception_message"]
    assert err["node_type"] == PREFIX + "AestheticVerifierLoader"


def _self_consistency(level=0.4):
    return {"class_type": PREFIX + "SelfConsistencyVerifierLoader",
            "inputs": {"arch": "ViT-L-14", "weights": "tiny-clip.safetensors", "level": level}}


def _clip(mode="cosine"):
    return {"class_type": PREFIX + "CLIPScoreVerifierLoader",
            "inputs": {"arch": "ViT-L-14", "weights": "tiny-clip.safetensors", "mode": mode}}


def _prefilter(screen, main, keep=0.5, warmup=1):
    return {"class_type": PREFIX + "VerifierPrefilter",
            "inputs": {"screen": screen, "verifier": main, "keep": keep, "warmup": warmup}}


def test_a_self_consistency_prefilter_in_search_loop_and_a_prefilter_in_verifier_score(comfy):
    """The self-supervised verifier as a free pre-filter: it screens every candidate, CLIPScore scores only the
    admitted ones, the winner is a scored one, and the report says how many were skipped."""
    from comfy_server import execution_error
    g = search_graph(seed=12, candidates=6, top_k=1, steps=4, prefix="prefilter")
    g["30"] = _self_consistency()
    g["31"] = _clip()
    g["5"] = _prefilter(["30", 0], ["31", 0], keep=0.3, warmup=1)
    rep = report(comfy.run_ok(g))
    pre = rep["settings"]["prefilter"]
    assert pre["screened"] == 6 and 1 <= pre["main_scored"] < 6 and pre["main_skipped"] == 6 - pre["main_scored"]
    assert any(n.startswith("pre-filter:") for n in rep["notes"])
    scored = [c for c in rep["candidates"] if any(not k.startswith("screen:") for k in c["verifier_scores"])]
    skipped = [c for c in rep["candidates"] if c not in scored]
    assert len(scored) == pre["main_scored"] and rep["candidates"][0] in scored  # the first is in the warm-up
    assert all(list(c["verifier_scores"]) == ["screen:self_consistency[0.4](ViT-L-14, tiny-clip.safetensors)"]
               for c in skipped)
    assert max(c["score"] for c in skipped) < min(c["score"] for c in scored)
    assert rep["best"]["seed"] in {c["seed"] for c in scored}
    # in Verifier Score, with a screen that needs no preview; a self-consistency screen is refused there
    rep = report(comfy.run_ok(batch_score_graph({"30": _clip(), "31": _clip("clipscore"),
                                                 "32": _prefilter(["30", 0], ["31", 0], keep=0.5, warmup=0)},
                                                ["32", 0], batch=4)))
    assert rep["settings"]["prefilter"]["screened"] == 4 and rep["settings"]["prefilter"]["main_scored"] >= 1
    err = execution_error(comfy.run(batch_score_graph({"30": _self_consistency(), "31": _clip(),
                                                       "32": _prefilter(["30", 0], ["31", 0])}, ["32", 0])))
    assert err is not None and "Search Loop" in err["exception_message"]


def test_self_consistency_verifier_in_search_loop(comfy):
    """The self-supervised verifier: each candidate against its own x0-prediction at noise level 0.4, through
    SearchLoop (random search and zero-order), alone and in an ensemble; refused where no preview exists."""
    from comfy_server import execution_error
    from graphs import search_graph
    from strategy_graphs import with_strategy
    g = search_graph(seed=12, candidates=3, top_k=1, steps=4, prefix="selfc")
    g["5"] = _self_consistency()
    entry = comfy.run_ok(g)
    rep = report(entry)
    assert rep["verifier"].startswith("self_consistency[0.4](")
    scores = {c["seed"]: c["score"] for c in rep["candidates"]}
    assert len(scores) == 3 and all(-1.0 <= s <= 1.0 for s in scores.values())
    assert rep["best"]["final_score"] == rep["best"]["score"]  # a stock re-render has no preview
    # the preview is the x0-prediction at the level: an earlier, noisier one scores differently (the tiny CLIP's
    # embeddings are nearly collinear, so the values sit close to 1, but the run is deterministic)
    g["5"] = _self_consistency(level=0.9)
    g["7"]["inputs"]["filename_prefix"] = "selfc09"
    early = {c["seed"]: c["score"] for c in report(comfy.run_ok(g))["candidates"]}
    assert early.keys() == scores.keys() and any(early[s] != scores[s] for s in scores)
    # zero-order over the same verifier, and an ensemble with a CLIPScore member
    g = with_strategy(search_graph(seed=12, candidates=4, top_k=1, steps=4, prefix="selfc_zo"), "zero_order")
    g["5"] = _self_consistency()
    assert report(comfy.run_ok(g))["algorithm"] == "zero_order"
    g = search_graph(seed=12, candidates=3, top_k=1, steps=4, prefix="selfc_ens")
    g["30"] = _self_consistency()
    g["31"] = {"class_type": PREFIX + "CLIPScoreVerifierLoader",
               "inputs": {"arch": "ViT-L-14", "weights": "tiny-clip.safetensors", "mode": "cosine"}}
    g["5"] = {"class_type": PREFIX + "VerifierEnsemble",
              "inputs": {"mode": "zscore", "verifier_1": ["30", 0], "weight_1": 1.0, "verifier_2": ["31", 0],
                         "weight_2": 1.0}}
    rep = report(comfy.run_ok(g))
    assert all(len(c["verifier_scores"]) == 2 for c in rep["candidates"])
    # refused with the reason: part-way previews (paths), a plain batch (Verifier Score), a multistep sampler
    g = with_strategy(search_graph(seed=1, candidates=4, steps=4, prefix="selfc_paths"), "paths")
    g["5"] = _self_consistency()
    err = execution_error(comfy.run(g))
    assert err is not None and "self-consistency" in err["exception_message"]
    g = batch_score_graph({"30": _self_consistency()}, ["30", 0])
    err = execution_error(comfy.run(g))
    assert err is not None and "Search Loop" in err["exception_message"]
    g = search_graph(seed=1, candidates=2, steps=4, sampler="dpmpp_2m", prefix="selfc_2m")
    g["5"] = _self_consistency()
    err = execution_error(comfy.run(g))
    assert err is not None and "dpmpp_2m" in err["exception_message"] and "Pick one of" in err["exception_message"]
