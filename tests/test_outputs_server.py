"""Real-server tier for the output nodes and the editor-facing details:
ranked grid, score plot, PNG metadata round trip, tooltips, one category."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from graphs import PREFIX, search_graph


def test_every_input_of_every_pack_node_has_a_tooltip_and_one_category(comfy):
    info = comfy.object_info()
    ours = {k: v for k, v in info.items() if k.startswith(PREFIX)}
    assert len(ours) >= 20
    missing = []
    for nid, spec in ours.items():
        assert spec["category"] == "inference scaling", nid
        assert spec.get("description"), f"{nid} has no description"
        for section in ("required", "optional"):
            for name, entry in spec["input"].get(section, {}).items():
                opts = entry[1] if len(entry) > 1 else {}
                if not opts.get("tooltip"):
                    missing.append(f"{nid}.{name}")
    assert not missing, f"inputs without a tooltip: {missing}"


def test_grid_plot_and_png_metadata_round_trip(comfy):
    g = search_graph(seed=77, candidates=4, top_k=3, micro_batch=2, prefix="outs")
    g["20"] = {"class_type": PREFIX + "RankedGrid", "inputs": {"images": ["6", 2], "scores": ["6", 3], "columns": 2}}
    g["21"] = {"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": "grid"}}
    g["22"] = {"class_type": PREFIX + "ScorePlot", "inputs": {"scores": ["6", 3], "width": 320, "height": 200}}
    g["23"] = {"class_type": "SaveImage", "inputs": {"images": ["22", 0], "filename_prefix": "plot"}}
    g["24"] = {"class_type": PREFIX + "SaveSearchImage",
               "inputs": {"images": ["6", 0], "scores": ["6", 3], "filename_prefix": "winner"}}
    workflow = {"nodes": [{"id": 1, "type": "InfScale_SearchLoop"}], "links": [], "version": 0.4}
    entry = comfy.run_ok(g, extra_data={"extra_pnginfo": {"workflow": workflow}})
    report = json.loads(entry["outputs"]["8"]["text"][0])

    grid = np.asarray(Image.open(comfy.output_file(entry["outputs"]["21"]["images"][0])))
    assert grid.shape[1] == 2 * (64 + 4) + 4 and grid.shape[0] > 2 * 64  # 3 tiles in 2 columns, captions under
    plot = np.asarray(Image.open(comfy.output_file(entry["outputs"]["23"]["images"][0])))
    assert plot.shape == (200, 320, 3)

    png = Image.open(comfy.output_file(entry["outputs"]["24"]["images"][0]))
    chunks = png.text
    assert json.loads(chunks["workflow"]) == workflow  # ComfyUI's own chunk: dropping the PNG restores the graph
    prompt = json.loads(chunks["prompt"])
    assert prompt["6"]["class_type"] == PREFIX + "SearchLoop"
    saved = json.loads(chunks["infscale_search"])
    assert saved["candidates"] == report["candidates"] and saved["nfe_total"] == report["nfe_total"]
    assert saved["algorithm"] == "random" and saved["best"]["seed"] == report["best"]["seed"]
    assert np.array_equal(np.asarray(png.convert("RGB")),
                          np.asarray(Image.open(comfy.output_file(entry["outputs"]["7"]["images"][0])).convert("RGB")))


def test_every_node_taking_images_refuses_an_empty_batch(comfy):
    """Issue #18, item 4: an IMAGE batch of 0 images is an error naming the empty batch, never a placeholder."""
    from comfy_server import execution_error
    from graphs import batch_score_graph
    base = batch_score_graph({"30": {"class_type": PREFIX + "CLIPScoreVerifierLoader",
                                     "inputs": {"arch": "ViT-L-14", "weights": "tiny-clip.safetensors",
                                                "mode": "cosine"}}}, ["30", 0], batch=2)
    base["40"] = {"class_type": "InfScaleTest_EmptyImage", "inputs": {"size": 64}}
    empty = ["40", 0]
    cases = {
        "Verifier Score": ("20", {"class_type": PREFIX + "VerifierScore",
                                  "inputs": {"images": empty, "verifier": ["30", 0], "prompt": "x"}}),
        "Best Pick": ("41", {"class_type": PREFIX + "BestPick",
                             "inputs": {"images": empty, "scores": ["20", 0], "top_k": 1}}),
        "Ranked Grid": ("41", {"class_type": PREFIX + "RankedGrid",
                               "inputs": {"images": empty, "scores": ["20", 0], "columns": 2}}),
        "Save Image with Search Metadata": ("41", {"class_type": PREFIX + "SaveSearchImage",
                                                   "inputs": {"images": empty, "scores": ["20", 0],
                                                              "filename_prefix": "empty"}}),
    }
    for name, (nid, node) in cases.items():
        g = json.loads(json.dumps(base))
        g[nid] = node
        if nid == "41" and node["class_type"] != PREFIX + "SaveSearchImage":
            g["42"] = {"class_type": "PreviewImage", "inputs": {"images": ["41", 0]}}
        err = execution_error(comfy.run(g))
        assert err is not None, f"{name} accepted an empty batch"
        assert name in err["exception_message"] and "empty" in err["exception_message"], err["exception_message"]
