"""The demo model end to end through a real ComfyUI server (bench tier, CPU): on 50 prompts, random search and
successive halving at their defaults raise the held-out judge's accuracy over one sample by more than 2 standard
errors (bench/demo_quality.py; its recorded run is bench/results/demo_quality.json), and the demo's graph runs."""
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (os.path.join(REPO, "bench"), os.path.join(REPO, "tools", "demo_model"), os.path.join(REPO, "tools")):
    if p not in sys.path:
        sys.path.insert(0, p)

import comfy_server  # noqa: E402


def test_search_beats_one_sample_through_comfyui(tmp_path):
    import demo_quality
    d = demo_quality.run(50, log=lambda *a: None)
    (tmp_path / "demo_quality.json").write_text(json.dumps(d, indent=1))
    r = d["results"]
    print("\n" + demo_quality.markdown(d))
    assert d["meta"]["prompts"] == 50 and len(d["per_prompt"]) == 50
    for row in d["per_prompt"]:   # the budget: both searches spend at most 8 generations' NFEs
        assert row["nfe"]["random"] <= 8 * d["meta"]["steps"] and row["nfe"]["halving"] <= 8 * d["meta"]["steps"]
    for m in ("random", "halving"):
        assert r[m]["gain_over_one_sample"] > 2 * r[m]["se"] > 0, (m, r)
    # the model leaves search headroom: one sample is wrong now and then (about one in seven at the recorded run),
    # some candidate of the 8 is right far more often, and the model is not hopeless
    assert 0.1 < r["one_sample"] < 0.92 and r["any_of_8"] - r["one_sample"] > 0.05, r


def test_demo_graph_runs(tmp_path):
    """tools/demo.py's graph (stock KSampler baseline, the ranked grid, the plot, the report) on the demo model."""
    import pathlib
    import build
    import comfy_graphs as G
    import demo
    from judge import load_judge, verdicts
    path = comfy_server.comfyui_dir()
    files = build.ensure_files(path, os.path.join(comfy_server.CACHE, "demo-model"))
    models = G.model_folders(str(tmp_path / "models"), files)
    client = comfy_server.launch(path, pathlib.Path(tmp_path), models)
    try:
        entry = client.run_ok(demo.graph(demo.PROMPT, demo.SEED, 4))
    finally:
        comfy_server.shutdown(client)
    out = entry["outputs"]
    report = json.loads(out["12"]["text"][0])
    assert len(report["candidates"]) == 4 and report["best"]["seed"] in range(demo.SEED, demo.SEED + 4)
    grid = client.output_file(out["9"]["images"][0])
    from PIL import Image
    assert Image.open(grid).size[0] == 4 * (demo.TILE + 4) + 4     # 4 tiles of 3x enlarged 64 px images
    base = client.output_file(out["15"]["images"][0])
    assert Image.open(base).size == (64, 64)
    # the stock KSampler's sample at the first seed is Search Loop's candidate at that seed
    cands = [client.output_file(i) for i in out["17"]["images"]]
    ranked = sorted(report["candidates"], key=lambda c: c["rank"])
    first = next(i for i, c in enumerate(ranked) if c["seed"] == demo.SEED)
    import numpy as np
    a = np.asarray(Image.open(base), dtype=np.int16)
    b = np.asarray(Image.open(cands[first]), dtype=np.int16)
    assert np.abs(a - b).max() <= 2
    judge = load_judge()
    assert len(verdicts(judge, [base, cands[0]], demo.PROMPT)) == 2
