"""The main job on the embedded default: start the test ComfyUI
(.test-cache/ComfyUI-0.3.64, or $COMFYUI_PATH) with this pack, run workflows/sd15_random_search.json
on the tiny random-weight SD1.5 checkpoint and tiny CLIP verifier, and write
the winner image and the scores JSON to the folder named on the command line.

    python tools/demo.py [OUT_DIR]          (default: ./demo-output)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "tests"), HERE, REPO]

from ui_to_api import ui_to_api  # noqa: E402
import comfy_server  # noqa: E402


def main(out_dir: str) -> int:
    os.makedirs(out_dir, exist_ok=True)
    path = comfy_server.comfyui_dir()

    class Factory:  # the minimal tmp_path_factory the fixtures need
        def mktemp(self, name):
            import pathlib
            return pathlib.Path(tempfile.mkdtemp(prefix=name))

    models = comfy_server.models_dir.__wrapped__(path, Factory())
    gen = comfy_server.comfy.__wrapped__(path, models, Factory())
    client = next(gen)
    try:
        wf = json.load(open(os.path.join(REPO, "workflows", "sd15_random_search.json")))
        api = ui_to_api(wf, client.object_info(), rename={
            "v1-5-pruned-emaonly.safetensors": "tiny-sd15.safetensors",
            "ViT-L-14-openai.safetensors": "tiny-clip.safetensors"})
        for n in api.values():  # small and quick on a CPU
            if n["class_type"] == "EmptyLatentImage":
                n["inputs"].update(width=64, height=64)
            if n["class_type"] == "InfScale_SearchLoop":
                n["inputs"].update(candidates=8, top_k=2, steps=8, seed=2025)
        entry = client.run_ok(api)
        for node in entry["outputs"].values():
            for img in node.get("images", []):
                if img.get("type") == "output":
                    shutil.copy(client.output_file(img), os.path.join(out_dir, "winner.png"))
            for text in node.get("text", []):
                with open(os.path.join(out_dir, "scores.json"), "w") as f:
                    f.write(text)
        report = json.load(open(os.path.join(out_dir, "scores.json")))
        print(f"ComfyUI {comfy_server.comfyui_version(path)}: best seed {report['best']['seed']} "
              f"score {report['best']['score']:.4f} of {len(report['candidates'])} candidates, "
              f"{report['nfe_total']} NFEs -> {os.path.abspath(out_dir)}/winner.png, scores.json")
    finally:
        try:
            next(gen)
        except StopIteration:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-output"))
