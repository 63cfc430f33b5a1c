"""The VQAScore and VLM rubric loader nodes on the real ComfyUI server, with the tiny random Qwen2.5-VL
folder (tests/tiny_verifiers.py) in the server's verifiers folder: scoring through Verifier Score and
Best Pick, in a Verifier Ensemble, and in Search Loop with a strategy that scores part-way x0-predictions."""
from __future__ import annotations

import json

import numpy as np
import pytest

from graphs import PREFIX, base_graph, search_graph

FOLDER = "tiny-qwen2.5-vl"
VQA = {"class_type": PREFIX + "VQAScoreVerifierLoader", "inputs": {
    "folder": FOLDER, "question_template": 'Does this figure show "{prompt}"? Please answer yes or no.',
    "answer": "Yes", "max_pixels": 401408, "batch_size": 8}}


def rubric(combine="mean_rank", **weights):
    inputs = {"folder": FOLDER, "combine": combine, "max_pixels": 401408, "batch_size": 2}
    for a in ("accuracy_to_prompt", "originality", "visual_quality", "internal_consistency", "emotional_resonance"):
        inputs[f"weight_{a}"] = weights.get(a, 1.0)
    return {"class_type": PREFIX + "VLMRubricVerifierLoader", "inputs": inputs}


def report_of(entry, node="8"):
    return json.loads(entry["outputs"][node]["text"][0])


def scoring_graph(verifier: dict, batch=3, seed=5):
    g = base_graph("a red apple on a table")
    g["4"]["inputs"]["batch_size"] = batch
    g["5"] = verifier
    g["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
        "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    g["12"] = {"class_type": PREFIX + "VerifierScore", "inputs": {"images": ["7", 0], "verifier": ["5", 0],
                                                                 "prompt": "a red apple on a table"}}
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["12", 0]}}
    g["13"] = {"class_type": PREFIX + "BestPick", "inputs": {"images": ["7", 0], "scores": ["12", 0], "top_k": 1}}
    g["14"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "vlm_best"}}
    return g


def test_vlm_loaders_listed_with_tooltips(comfy):
    info = comfy.object_info()
    for loader in ("VQAScoreVerifierLoader", "VLMRubricVerifierLoader"):
        node = info[PREFIX + loader]
        assert node["category"] == "inference scaling" and "higher is better" in node["description"]
        folders = node["input"]["required"]["folder"][0]
        assert FOLDER in folders and "tiny-pickscore" not in folders  # only Qwen-VL folders
        for name, spec in node["input"]["required"].items():
            assert spec[1].get("tooltip"), f"{loader}.{name} has no tooltip"


def test_vqascore_node_scores_and_best_pick(comfy):
    rep = report_of(comfy.run_ok(scoring_graph(VQA)))
    scores = [c["score"] for c in rep["candidates"]]
    assert len(scores) == 3 and all(np.isfinite(scores)) and all(0 < s < 1 for s in scores)
    assert len(set(round(s, 9) for s in scores)) == 3, "different images must get different scores"


def test_rubric_in_ensemble_and_search_loop_with_paths(comfy):
    """The rubric's aspects (mean rank) nested with VQAScore in a Verifier Ensemble, driving Search Loop with
    the paths strategy (which scores the candidates' x0-predictions part-way); and the rubric's absolute mean
    through Verifier Score."""
    g = search_graph(seed=11, candidates=3, top_k=1, steps=4, micro_batch=2, prefix="vlm_paths")
    g["30"] = rubric("mean_rank", originality=0.0)
    g["31"] = VQA
    g["5"] = {"class_type": PREFIX + "VerifierEnsemble", "inputs": {
        "mode": "mean_rank", "verifier_1": ["30", 0], "weight_1": 1.0, "verifier_2": ["31", 0], "weight_2": 1.0}}
    g["40"] = {"class_type": PREFIX + "PathsStrategy", "inputs": {
        "paths": 2, "noises_per_path": 2, "start_level": 0.3, "forward": 0.5, "backward": 0.7, "budget_nfe": 0}}
    g["6"]["inputs"]["strategy"] = ["40", 0]
    rep = report_of(comfy.run_ok(g))
    scores = [c["score"] for c in rep["candidates"]]
    assert scores and all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
    assert all(1.0 <= s for s in scores)  # mean ranks
    mean = report_of(comfy.run_ok(scoring_graph(rubric("mean"))))
    ms = [c["score"] for c in mean["candidates"]]
    assert len(ms) == 3 and all(1.0 <= s <= 10.0 for s in ms) and len(set(round(s, 9) for s in ms)) == 3


@pytest.mark.parametrize("verifier", [VQA, rubric()], ids=["vqascore", "rubric"])
def test_missing_folder_is_a_validation_error_naming_the_source(comfy, verifier):
    v = json.loads(json.dumps(verifier))
    v["inputs"]["folder"] = "missing-vlm"
    code, body = comfy.queue(scoring_graph(v))
    assert code == 400
    text = json.dumps(body)
    assert "missing-vlm" in text and "Searched" in text and "huggingface.co/Qwen/Qwen2.5-VL" in text
