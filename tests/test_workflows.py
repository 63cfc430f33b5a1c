"""Every workflow in workflows/ converts against the live /object_info and runs."""
import glob
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
from ui_to_api import ui_to_api  # noqa: E402

WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
TINY = {"v1-5-pruned-emaonly.safetensors": "tiny-sd15.safetensors",
        "open_clip_model.safetensors": "tiny-clip.safetensors"}


def test_there_are_workflows():
    assert WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_converts_and_runs(comfy, path):
    wf = json.load(open(path))
    info = comfy.object_info()
    api = ui_to_api(wf, info, rename=TINY)
    assert not any(n["class_type"] in ("Note", "MarkdownNote") for n in api.values())
    for nid, node in api.items():
        spec = info[node["class_type"]]["input"]
        for name in spec.get("required", {}):
            assert name in node["inputs"], f"{path}: node {nid} lacks required input {name}"
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "InfScale_SearchLoop":
            node["inputs"].update(candidates=3, top_k=1, steps=3)
    comfy.run_ok(api)
