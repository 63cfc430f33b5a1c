"""Every workflow in workflows/ validates against the live /object_info (node
types exist, link types match input types, required inputs present, combo
values listed, numbers in range) and, converted to the API format, runs on the
real server with its model files mapped to tiny checkpoints / verifiers of the
same architecture.

The tiny SDXL checkpoint (~2 GB,
see tests/tiny_models.py) is built once into the test cache; set
INFSCALE_SKIP_SDXL=1 to skip the SDXL workflow instead."""
import glob
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
from ui_to_api import UI_ONLY, WIDGET_TYPES, ui_to_api  # noqa: E402
import workflow_server  # noqa: E402
from workflow_server import TINY, shrink, with_text_attention_mask  # noqa: E402

server = workflow_server.server  # the fixture: the server with the tiny files the workflows need

WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))


def load(path):
    with open(path) as f:
        return json.load(f)


def _spec(info, class_type, name):
    spec = info[class_type]["input"]
    for part in ("required", "optional"):
        if name in spec.get(part, {}):
            cfg = spec[part][name]
            return cfg[0], (cfg[1] if len(cfg) > 1 and isinstance(cfg[1], dict) else {})
    return None, None


def _types_match(out_type, in_type):
    if "*" in (out_type, in_type):
        return True
    return bool(set(str(out_type).split(",")) & set(str(in_type).split(",")))


def validate(wf, info, rename):
    """Problems of a UI-format workflow against /object_info, as strings (empty = valid)."""
    problems = []
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf["links"]}
    for n in wf["nodes"]:
        if n["type"] not in UI_ONLY and n["type"] not in info:
            problems.append(f"node {n['id']}: unknown type {n['type']}")
    if problems:
        return problems
    for lid, src_id, slot, dst_id, dslot, ltype in wf["links"]:
        src, dst = nodes[src_id], nodes[dst_id]
        if dst["inputs"][dslot].get("link") != lid:
            problems.append(f"link {lid}: node {dst_id} input {dslot} does not name it")
        if lid not in src["outputs"][slot].get("links", []):
            problems.append(f"link {lid}: node {src_id} output {slot} does not list it")
        while src["type"] == "Reroute":  # the real source's output type
            _, src_id, slot = links[src["inputs"][0]["link"]][:3]
            src = nodes[src_id]
        if dst["type"] in UI_ONLY:
            continue
        name = dst["inputs"][dslot]["name"]
        in_type, _ = _spec(info, dst["type"], name)
        if in_type is None:
            problems.append(f"link {lid}: {dst['type']} has no input '{name}'")
            continue
        if src["type"] == "PrimitiveNode":
            if isinstance(in_type, list) or in_type in WIDGET_TYPES:
                continue
            problems.append(f"link {lid}: a primitive feeds {dst['type']}.{name}, which is not a widget")
            continue
        out_type = info[src["type"]]["output"][slot]
        if isinstance(out_type, list):
            out_type = "COMBO"
        if not _types_match(out_type, in_type) or not _types_match(ltype, in_type):
            problems.append(f"link {lid}: {src['type']}[{slot}] ({out_type}, link says {ltype}) -> "
                            f"{dst['type']}.{name} ({in_type})")
    api = ui_to_api(wf, info, rename=rename)
    for nid, node in api.items():
        t = node["class_type"]
        spec = info[t]["input"]
        for name in spec.get("required", {}):
            if name not in node["inputs"]:
                problems.append(f"node {nid} ({t}) lacks required input {name}")
        for name, v in node["inputs"].items():
            if isinstance(v, list):  # a link
                continue
            typ, opts = _spec(info, t, name)
            choices = typ if isinstance(typ, list) else opts.get("options") if typ == "COMBO" else None
            if choices is not None:
                if v not in choices:
                    problems.append(f"node {nid} ({t}).{name} = {v!r} is not one of {choices[:8]}...")
            elif typ in ("INT", "FLOAT"):
                ok_type = isinstance(v, (int, float)) and not isinstance(v, bool) and (typ == "FLOAT" or
                                                                                      float(v).is_integer())
                if not ok_type:
                    problems.append(f"node {nid} ({t}).{name} = {v!r} is not an {typ}")
                elif ("min" in opts and v < opts["min"]) or ("max" in opts and v > opts["max"]):
                    problems.append(f"node {nid} ({t}).{name} = {v} outside [{opts.get('min')}, {opts.get('max')}]")
            elif typ == "BOOLEAN" and not isinstance(v, bool):
                problems.append(f"node {nid} ({t}).{name} = {v!r} is not a BOOLEAN")
            elif typ == "STRING" and not isinstance(v, str):
                problems.append(f"node {nid} ({t}).{name} = {v!r} is not a STRING")
    return problems


def skip_if_sdxl_is_off(server, wf):
    if "tiny-sdxl.safetensors" in json.dumps(ui_to_api(wf, server.object_info(), rename=TINY)) \
            and os.environ.get("INFSCALE_SKIP_SDXL"):
        pytest.skip("INFSCALE_SKIP_SDXL is set (the tiny SDXL checkpoint is ~2 GB)")


def test_there_are_workflows():
    names = {os.path.basename(p) for p in WORKFLOWS}
    assert {"sd15_random_search.json", "sdxl_ensemble_search.json", "sd3_guider_search.json",
            "composable_random_search.json", "img2img_search.json", "zero_order_search.json",
            "paths_search.json", "particle_search.json", "coarse_to_fine_search.json", "wan21_t2v_search.json",
            "ltxv_i2v_search.json",
            "wan22_5b_t2v_search.json", "wan22_14b_t2v_search.json"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_has_a_note(path):
    wf = load(path)
    notes = [n for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes and len(notes[0]["widgets_values"][0]) > 300, "every workflow explains its knobs in a note"
    for n in wf["nodes"]:
        assert len(n["pos"]) == 2 and len(n["size"]) == 2, f"node {n['id']} has no position/size"


def test_converter_handles_ui_only_nodes_and_defaults():
    info = {"A": {"input": {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 9}),
                                         "text": ("STRING", {"default": ""}),
                                         "mode": (["x", "y"],)},
                            "optional": {"flag": ("BOOLEAN", {"default": True}),
                                         "other": ("IMAGE",)}},
                  "output": ["IMAGE"]}}
    wf = {"nodes": [
        {"id": 1, "type": "A", "inputs": [{"name": "text", "type": "STRING", "link": 1, "widget": {"name": "text"}}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], "widgets_values": [5, "fixed", "old", "y"]},
        {"id": 2, "type": "PrimitiveNode", "outputs": [{"name": "STRING", "type": "STRING", "links": [1]}],
         "widgets_values": ["from primitive"]},
        {"id": 3, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 2}],
         "outputs": [{"name": "", "type": "IMAGE", "links": [3]}], "widgets_values": []},
        {"id": 4, "type": "A", "inputs": [{"name": "other", "type": "IMAGE", "link": 3}], "outputs": [],
         "widgets_values": [1, "randomize"]},
        {"id": 5, "type": "MarkdownNote", "widgets_values": ["# hi"]},
        {"id": 6, "type": "Note", "widgets_values": ["hi"]},
    ], "links": [[1, 2, 0, 1, 0, "STRING"], [2, 1, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"]]}
    api = ui_to_api(wf, info)
    assert set(api) == {"1", "4"}
    assert api["1"]["inputs"] == {"seed": 5, "text": "from primitive", "mode": "y", "flag": True}
    # missing trailing widget values take the defaults; the reroute is followed to node 1
    assert api["4"]["inputs"] == {"seed": 1, "text": "", "mode": "x", "flag": True, "other": ["1", 0]}


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_validates_and_runs(server, path):
    wf = load(path)
    skip_if_sdxl_is_off(server, wf)
    info = server.object_info()
    problems = validate(wf, info, TINY)
    assert not problems, f"{os.path.basename(path)}:\n" + "\n".join(problems)
    api = with_text_attention_mask(shrink(ui_to_api(wf, info, rename=TINY)))
    assert not any(n["class_type"] in UI_ONLY for n in api.values())
    with_reports(api, info)
    entry = server.run_ok(api)
    for nid, node in api.items():
        if node["class_type"] in ("SaveImage", "PreviewImage", "InfScale_SaveSearchImage", "SaveAnimatedWEBP"):
            assert entry["outputs"].get(nid, {}).get("images"), f"output node {nid} ({node['class_type']}) saved nothing"
    replay(server, api, entry, os.path.basename(path)[:-len(".json")])


# --------------------------------------------------------------------------- replay
# Every search above, and a few more below, leaves a record: its reports (timings left out) and a digest of every
# image it saved. tests/fixtures/replay/ holds the records made before the engine was rebuilt; a search must give
# the same reports and winners. On the machine that recorded them the images are the same bit for bit
# (INFSCALE_REPLAY_STRICT=1 checks that); another CPU may round a convolution differently, so by default the
# scores are compared within 1e-4 and the images within 1/255 on average.
# INFSCALE_REPLAY_RECORD=1 writes the records afresh (only where the change is meant to change results).
REPLAY = os.path.join(REPO, "tests", "fixtures", "replay")
REPORT_NODE = "InfScale_ScoresToJSON"
TIMING = ("phases", "fingerprint_s")


def with_reports(api, info):
    """A Scores to JSON node on every SCORES output of the graph (the record's reports)."""
    for nid in sorted(api):
        outs = info[api[nid]["class_type"]]["output"]
        for slot, typ in enumerate(outs):
            if typ == "INFSCALE_SCORES":
                api[f"{nid}_report{slot}"] = {"class_type": REPORT_NODE, "inputs": {"scores": [nid, slot]}}
    return api


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _image_digests(server, item_list):
    import hashlib

    import numpy as np
    from PIL import Image, ImageSequence
    out = []
    for item in item_list:
        path = server.output_file(item)
        if item.get("type") == "temp":  # Preview Image: ComfyUI's temp folder (a "temp" inside --temp-directory)
            root = os.path.join(os.path.dirname(server.output_dir), "temp")
            path = next(p for p in (os.path.join(root, "temp", item.get("subfolder", ""), item["filename"]),
                                    os.path.join(root, item.get("subfolder", ""), item["filename"]))
                        if os.path.exists(p))
        with Image.open(path) as im:
            frames = [np.asarray(f.convert("RGB"), dtype=np.uint8) for f in ImageSequence.Iterator(im)]
        arr = np.stack(frames)
        out.append({"sha256": hashlib.sha256(arr.tobytes()).hexdigest(), "shape": list(arr.shape),
                    "mean": round(float(arr.mean()), 4)})
    return out


def record_of(server, api, entry):
    rec = {"reports": {}, "images": {}}
    for nid, node in sorted(api.items()):
        out = entry["outputs"].get(nid, {})
        if node["class_type"] == REPORT_NODE:
            rec["reports"][nid] = _untimed(json.loads(out["text"][0]))
        elif out.get("images"):
            rec["images"][nid] = _image_digests(server, out["images"])
    return rec


def _close(a, b, path, problems, tol):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                problems.append(f"{path}.{k}: {'missing now' if k not in b else 'new'}")
            else:
                _close(a[k], b[k], f"{path}.{k}", problems, tol)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            problems.append(f"{path}: {len(a)} items recorded, {len(b)} now")
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]", problems, tol)
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        if not (a == b or abs(a - b) <= tol * (1 + abs(a))):
            problems.append(f"{path}: {a!r} recorded, {b!r} now")
    elif a != b:
        problems.append(f"{path}: {a!r} recorded, {b!r} now")


def compare_records(old, new, strict):
    problems = []
    _close(old["reports"], new["reports"], "reports", problems, 0.0 if strict else 1e-4)
    if set(old["images"]) != set(new["images"]):
        problems.append(f"image outputs: {sorted(old['images'])} recorded, {sorted(new['images'])} now")
    for nid in sorted(set(old["images"]) & set(new["images"])):
        for i, (a, b) in enumerate(zip(old["images"][nid], new["images"][nid])):
            if a["shape"] != b["shape"]:
                problems.append(f"images.{nid}[{i}]: shape {a['shape']} recorded, {b['shape']} now")
            elif strict and a["sha256"] != b["sha256"]:
                problems.append(f"images.{nid}[{i}]: not the recorded image bit for bit")
            elif abs(a["mean"] - b["mean"]) > 1.0:
                problems.append(f"images.{nid}[{i}]: mean pixel {a['mean']} recorded, {b['mean']} now")
    return problems


def replay(server, api, entry, name):
    rec = record_of(server, api, entry)
    path = os.path.join(REPLAY, name + ".json")
    if os.environ.get("INFSCALE_REPLAY_RECORD") == "1":
        os.makedirs(REPLAY, exist_ok=True)
        with open(path, "w") as f:
            json.dump(rec, f, indent=1, sort_keys=True)
            f.write("\n")
        return
    assert os.path.exists(path), f"no record for {name}: run with INFSCALE_REPLAY_RECORD=1 once"
    problems = compare_records(load(path), rec, os.environ.get("INFSCALE_REPLAY_STRICT") == "1")
    assert not problems, f"{name} differs from its record:\n" + "\n".join(problems[:40])


def _strategy_search(name, cls, inputs, seed, **kw):
    from graphs import PREFIX, search_graph
    g = search_graph(seed=seed, prefix=f"replay_{name}", **kw)
    g["40"] = {"class_type": PREFIX + cls, "inputs": inputs}
    g["6"]["inputs"]["strategy"] = ["40", 0]
    return g


AESTHETIC = {"class_type": "InfScale_AestheticVerifierLoader", "inputs": {
    "clip_arch": "ViT-L-14", "clip_weights": "tiny-clip-768.safetensors", "aesthetic_weights": "tiny-aesthetic.pth"}}


def _extra_searches():
    """Searches the workflows do not show: every strategy node the tests wire by hand, early stopping, a rank
    ensemble, the held-out guard, VerifierScore over candidates."""
    from graphs import PREFIX, search_graph
    out = {}
    out["halving"] = _strategy_search("halving", "SuccessiveHalvingStrategy", {
        "starts": 0, "keep": 0.5, "rounds": 2, "first_level": 0.7, "last_level": 0.4, "budget_nfe": 0},
        seed=40, candidates=4, top_k=2, steps=6, micro_batch=2)
    out["evolution"] = _strategy_search("evolution", "EvolutionStrategy", {
        "population": 3, "elites": 1, "tournament": 2, "mutation": 0.3, "budget_nfe": 0},
        seed=7, candidates=6, top_k=2, steps=3)
    out["zero_order_held_out"] = g = _strategy_search("zero_order", "ZeroOrderStrategy", {
        "neighbours": 2, "cosine": 0.9, "budget_nfe": 0}, seed=3, candidates=5, top_k=2, steps=3)
    g["44"] = json.loads(json.dumps(AESTHETIC))
    g["6"]["inputs"]["held_out_verifier"] = ["44", 0]
    out["random_early_stop_ensemble"] = g = search_graph(seed=9, candidates=6, top_k=2, steps=3, micro_batch=2,
                                                         prefix="replay_early", sampler="euler_ancestral")
    g["42"] = {"class_type": PREFIX + "EarlyStop", "inputs": {
        "mode": "plateau", "target_score": 0.0, "patience": 2, "min_improvement": 0.0}}
    g["6"]["inputs"]["strategy"] = ["42", 0]
    out["ensemble"] = g = search_graph(seed=11, candidates=4, top_k=2, steps=3, prefix="replay_ensemble",
                                       sampler="dpmpp_2m", scheduler="karras")
    g["43"] = {"class_type": PREFIX + "VerifierEnsemble", "inputs": {
        "mode": "mean_rank", "verifier_1": ["5", 0], "weight_1": 1.0, "verifier_2": ["44", 0], "weight_2": 0.5}}
    g["44"] = json.loads(json.dumps(AESTHETIC))
    g["6"]["inputs"]["verifier"] = ["43", 0]
    return out


EXTRA = sorted(_extra_searches())


@pytest.mark.parametrize("name", EXTRA)
def test_search_replays_its_record(server, name):
    api = _extra_searches()[name]
    with_reports(api, server.object_info())
    entry = server.run_ok(api)
    replay(server, api, entry, name)
