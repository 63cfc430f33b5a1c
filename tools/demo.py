"""The demo: Search Loop through a real ComfyUI server, on the CPU, on a small trained text-to-image model.

    python tools/demo.py [OUT_DIR] [--prompt "a small yellow triangle on the right"] [--seed N] [--candidates N]

The model is tools/demo_model/: an SD1.5-family checkpoint trained on
captioned 64 x 64 shapes ("a small red circle at the top left", "a large
green square in the center", ...), with a CLIP verifier trained for it and a separate
judge that only evaluates.  The demo starts ComfyUI (the copy that
.ci/setup installs, .test-cache/ComfyUI-0.3.64, or $COMFYUI_PATH) with this pack, loads the checkpoint
with the stock CheckpointLoaderSimple, and runs one graph: Search Loop
samples the candidates (seed, seed + 1, ...) and ranks them with the
verifier; a stock KSampler + VAEDecode gives the one-sample baseline (the
same seed as the first candidate).  It writes, in OUT_DIR (default
./demo-output):

* ``demo.png``: the one-sample baseline beside the ranked grid of every
  candidate (best first, worst last; 3x enlarged), the judge's verdicts on top;
* ``ranked_grid.png``, ``baseline.png``, ``winner.png`` (64 x 64),
  ``score_plot.png``, ``report.json`` (the search report);

and prints the judge's verdict on the winner and on the first candidate.
Nothing is written outside OUT_DIR (the server's folders live in a
temporary folder inside it, removed at the end; the model files come from
the set-up's cache, or are assembled into OUT_DIR/models).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ["PYTHONDONTWRITEBYTECODE"] = "1"   # the server and this process write no __pycache__ anywhere
sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "tests"), os.path.join(HERE, "demo_model"), HERE, REPO]

import comfy_server  # noqa: E402
import build  # noqa: E402
import comfy_graphs as G  # noqa: E402

PROMPT = "a small yellow triangle on the right"
SEED = 10600   # a seed whose single sample misses the prompt (about one in seven do): what search is for
CANDIDATES = 12
TILE = 192   # the 64 px images, 3x enlarged (nearest) for the grid


def model_files(comfyui: str, out: str) -> dict:
    """The assembled checkpoint and verifier: the set-up's cache if it has them, else built into OUT/models."""
    cache = os.path.join(os.environ.get("INFSCALE_TEST_CACHE", os.path.join(REPO, ".test-cache")), "demo-model")
    files = build.cached_files(comfyui, cache)
    return files or build.ensure_files(comfyui, os.path.join(out, "models"))


def graph(prompt: str, seed: int, candidates: int) -> dict:
    g = G.base_nodes(prompt)
    g.update({
        "6": G.search_node(prompt, seed, candidates, top_k=candidates),
        "7": {"class_type": "ImageScale", "inputs": {"image": ["6", 2], "upscale_method": "nearest-exact",
                                                     "width": TILE, "height": TILE, "crop": "disabled"}},
        "8": {"class_type": "InfScale_RankedGrid", "inputs": {"images": ["7", 0], "scores": ["6", 3],
                                                              "columns": min(candidates, 6)}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ranked_grid"}},
        "10": {"class_type": "InfScale_ScorePlot", "inputs": {"scores": ["6", 3], "width": 640, "height": 400}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "score_plot"}},
        "12": {"class_type": "InfScale_ScoresToJSON", "inputs": {"scores": ["6", 3]}},
        "13": G.ksampler_node(seed),
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["1", 2]}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "baseline"}},
        "16": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "winner"}},
        "17": {"class_type": "SaveImage", "inputs": {"images": ["6", 2], "filename_prefix": "candidates"}},
    })
    return g


def compose(out: str, prompt: str, seed: int, baseline_ok: bool, winner_ok: bool, report: dict) -> str:
    """demo.png: the baseline (enlarged) beside the ranked grid, with a title line."""
    from PIL import Image, ImageDraw, ImageFont
    grid = Image.open(os.path.join(out, "ranked_grid.png")).convert("RGB")
    base = Image.open(os.path.join(out, "baseline.png")).convert("RGB").resize((TILE, TILE), Image.NEAREST)
    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    pad, head = 12, 64
    w = pad + TILE + 3 * pad + grid.width + pad
    h = head + max(TILE + 40, grid.height) + pad
    canvas = Image.new("RGB", (w, h), (24, 24, 24))
    d = ImageDraw.Draw(canvas)
    best = report["best"]
    d.text((pad, 8), f'prompt: "{prompt}"', fill=(255, 255, 255), font=font)
    d.text((pad, 34), f"one sample (seed {seed}): judge says {'matches' if baseline_ok else 'does not match'}"
                      f"  |  Search Loop, best of {len(report['candidates'])} by the CLIP verifier "
                      f"(seed {best['seed']}): judge says {'matches' if winner_ok else 'does not match'}",
           fill=(200, 200, 200), font=font)
    canvas.paste(base, (pad, head))
    d.text((pad, head + TILE + 8), "one sample", fill=(240, 240, 240), font=font)
    canvas.paste(grid, (pad + TILE + 3 * pad, head))
    path = os.path.join(out, "demo.png")
    canvas.save(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", nargs="?", default="demo-output")
    p.add_argument("--prompt", default=PROMPT, help="a caption of the model's grammar (tools/demo_model/shapes_data.py)")
    p.add_argument("--seed", type=int, default=SEED, help="the first candidate's seed (= the baseline's)")
    p.add_argument("--candidates", type=int, default=CANDIDATES)
    a = p.parse_args(argv)
    import shapes_data
    shapes_data.parse(a.prompt)  # a prompt outside the grammar: say so before starting anything
    t0 = time.time()
    out = os.path.abspath(a.out_dir)
    os.makedirs(out, exist_ok=True)
    comfyui = comfy_server.comfyui_dir()
    files = model_files(comfyui, out)
    work = tempfile.mkdtemp(prefix=".demo-work-", dir=out)
    client = None
    try:
        import pathlib
        models = G.model_folders(os.path.join(work, "models"), files)
        client = comfy_server.launch(comfyui, pathlib.Path(work), models)
        t_server = time.time() - t0
        entry = client.run_ok(graph(a.prompt, a.seed, a.candidates))
        for node_id, node in entry["outputs"].items():
            for img in node.get("images", []):
                if img.get("type") != "output":
                    continue
                prefix = img["filename"].rsplit("_", 2)[0]
                name = {"ranked_grid": "ranked_grid.png", "score_plot": "score_plot.png", "baseline": "baseline.png",
                        "winner": "winner.png"}.get(prefix)
                if name:
                    shutil.copy(client.output_file(img), os.path.join(out, name))
            for text in node.get("text", []):
                with open(os.path.join(out, "report.json"), "w") as f:
                    f.write(text)
    finally:
        if client is not None:
            comfy_server.shutdown(client)
        shutil.rmtree(work, ignore_errors=True)
    report = json.load(open(os.path.join(out, "report.json")))
    from judge import describe, load_judge, verdicts
    judge = load_judge()
    imgs = [os.path.join(out, "winner.png"), os.path.join(out, "baseline.png")]
    win_ok, base_ok = verdicts(judge, imgs, a.prompt)
    seen = describe(judge, imgs)
    compose(out, a.prompt, a.seed, base_ok, win_ok, report)
    best = report["best"]
    print(f"ComfyUI {comfy_server.comfyui_version(comfyui)}, CPU: {len(report['candidates'])} candidates, "
          f"{report['nfe_total']} NFEs, {time.time() - t0:.0f} s (server start {t_server:.0f} s)")
    print(f'prompt: "{a.prompt}"')
    print(f"  one sample (seed {a.seed}):      judge: {'MATCHES' if base_ok else 'does not match'} (sees \"{seen[1]}\")")
    print(f"  Search Loop's pick (seed {best['seed']}): judge: {'MATCHES' if win_ok else 'does not match'} "
          f"(sees \"{seen[0]}\"; verifier score {best['score']:.3f})")
    print(f"wrote {out}/demo.png, ranked_grid.png, baseline.png, winner.png, score_plot.png, report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
