"""The nodes in ComfyUI's V3 schema (nodes/v3.py) are the nodes the classic declarations made: every node's
/object_info (IDs, names, widget names and order, types, defaults, options, tooltips, outputs) equals the record
taken from the classic nodes (tests/fixtures/object_info_v1.json: /object_info of every InfScale_ node of the
last release with classic nodes, served by ComfyUI 0.3.64 with this suite's model folders and an empty endpoint
list).  Saved workflows map widget values by position, so nothing here may ever change; a new input is optional
and trailing, and its node's record is extended by hand."""
from __future__ import annotations

import json
import os

from comfy_server import REPO, set_endpoints
from graphs import search_graph

RECORD = os.path.join(REPO, "tests", "fixtures", "object_info_v1.json")
PREFIX = "InfScale_"
# what ComfyUI fills in for an output node of the V3 schema whether it asks or not
OUTPUT_NODE_HIDDEN = {"PROMPT", "EXTRA_PNGINFO"}


def without_help(spec):
    """An input's spec without its tooltip: help text may improve, what a saved workflow holds may not."""
    if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict):
        return [spec[0], {k: v for k, v in spec[1].items() if k != "tooltip"}] + spec[2:]
    return spec


def comparable(info: dict) -> dict:
    """A node's /object_info without what only the serving code decides: hidden inputs are compared by kind
    (the V3 schema names them itself; the node still gets them under its own names), absent deprecated /
    experimental flags are False.  The help text (description, input and output tooltips) is left out: it may
    be improved (``test_every_node_reads_as_help``)."""
    inp = info["input"]
    return {
        "name": info["name"], "display_name": info["display_name"],
        "category": info["category"], "python_module": info["python_module"],
        "output_node": bool(info["output_node"]),
        "deprecated": bool(info.get("deprecated")), "experimental": bool(info.get("experimental")),
        "input": {g: {k: without_help(v) for k, v in inp[g].items()} for g in ("required", "optional")
                  if inp.get(g)},
        "input_order": {g: info["input_order"][g] for g in ("required", "optional") if inp.get(g)},
        "output": info["output"], "output_is_list": info["output_is_list"], "output_name": info["output_name"],
    }


def hidden_kinds(info: dict) -> set:
    return {v[0] if isinstance(v, list) else v for v in info["input"].get("hidden", {}).values()}


def test_every_node_serves_the_object_info_the_classic_node_served(comfy):
    with open(RECORD, encoding="utf-8") as f:
        record = json.load(f)
    set_endpoints(comfy)  # the record's state: the operator lists no worker pool and no grader
    now = {k: v for k, v in comfy.get("/object_info").items() if k.startswith(PREFIX)}
    assert sorted(now) == sorted(record), "node IDs are forever"
    for nid, old in record.items():
        new = now[nid]
        a, b = comparable(old), comparable(new)
        for key in a:
            assert b[key] == a[key], f"{nid}: {key} changed:\n was {json.dumps(a[key])[:1500]}\n now {json.dumps(b[key])[:1500]}"
        missing = hidden_kinds(old) - hidden_kinds(new)
        assert not missing, f"{nid}: hidden inputs {missing} no longer filled in"
        extra = hidden_kinds(new) - hidden_kinds(old)
        assert not extra or (new["output_node"] and extra <= OUTPUT_NODE_HIDDEN), f"{nid}: new hidden {extra}"


def test_every_node_reads_as_help(comfy):
    """What the editor shows on hovering any of the pack's nodes: a description that says what the node is for
    (eight words or more), a tooltip on every input that is more than its name, and one on every output."""
    for nid, info in comfy.get("/object_info").items():
        if not nid.startswith(PREFIX):
            continue
        assert len(info["description"].split()) >= 8, (nid, info["description"])
        for group in ("required", "optional"):
            for name, spec in (info["input"].get(group) or {}).items():
                tip = spec[1].get("tooltip", "") if isinstance(spec, list) and len(spec) > 1 and \
                    isinstance(spec[1], dict) else ""
                words = tip.replace("_", " ").split()
                assert len(words) >= 3 and tip.strip().lower() != name.replace("_", " ").lower(), (nid, name, tip)
        tips = info.get("output_tooltips") or []
        assert len(tips) == len(info["output"]) and all(t and len(t.split()) >= 3 for t in tips), (nid, tips)


def test_the_operators_pools_and_graders_show_at_the_next_request(comfy):
    """define_schema runs again for each /object_info: the endpoint file is read at each request."""
    set_endpoints(comfy, worker_pools={"pool-a": {"urls": ["http://127.0.0.1:9"]}},
                  graders={"grader-a": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}})
    try:
        info = comfy.get(f"/object_info/{PREFIX}SearchWorkers")[f"{PREFIX}SearchWorkers"]
        assert "pool-a" in info["input"]["required"]["worker_urls"][0]
        info = comfy.get(f"/object_info/{PREFIX}RemoteVLMVerifier")[f"{PREFIX}RemoteVLMVerifier"]
        assert "grader-a" in info["input"]["required"]["base_url"][0]
        set_endpoints(comfy)
        info = comfy.get(f"/object_info/{PREFIX}SearchWorkers")[f"{PREFIX}SearchWorkers"]
        assert "pool-a" not in info["input"]["required"]["worker_urls"][0]
    finally:
        set_endpoints(comfy)


def test_a_combo_value_not_offered_is_refused_before_the_run(comfy):
    """ComfyUI checks a V3 node's combos against their options (nodes/v3.py keeps the option list as the
    type; 0.3.64 lets any value of a "COMBO" type through): a workflow's value outside the list never runs."""
    g = search_graph(seed=3, candidates=2, top_k=1, prefix="schema_combo")
    g["6"]["inputs"]["sampler_name"] = "no-such-sampler"
    code, body = comfy.queue(g)
    assert code == 400, body
    errors = body["node_errors"]["6"]["errors"]
    assert any(e["type"] == "value_not_in_list" and e["extra_info"]["input_name"] == "sampler_name"
               for e in errors), errors
