"""Convert a ComfyUI workflow in the editor's (LiteGraph, "UI") format into
the API format /prompt takes, using the live /object_info for input order.

UI-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) are not in
/object_info: notes are dropped, reroutes followed, primitives inlined.  Seed
widgets store an extra "control after generate" value, which is skipped.
Widget values missing at the end of a node's list (a workflow saved before
an optional widget was added) take the input's default."""
from __future__ import annotations

from typing import Any, Dict, Optional

UI_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MUTED, BYPASSED = 2, 4


def _has_control(name: str, typ, opts: Dict[str, Any]) -> bool:
    return typ == "INT" and (bool(opts.get("control_after_generate")) or name in ("seed", "noise_seed"))


def _default(typ, opts: Dict[str, Any], required: bool):
    """The value the editor would put in a new widget, or None to leave the input out."""
    if "default" in opts:
        return opts["default"]
    choices = typ if isinstance(typ, list) else opts.get("options") if typ == "COMBO" else None
    if choices is not None:
        return choices[0] if choices else None
    if not required:
        return None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(typ)


def ui_to_api(workflow: Dict[str, Any], object_info: Dict[str, Any],
              rename: Optional[Dict[str, str]] = None) -> Dict[str, Dict[str, Any]]:
    """``rename`` maps widget string values (e.g. model file names) to others."""
    rename = rename or {}
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {l[0]: l for l in workflow.get("links", [])}  # [id, from, from_slot, to, to_slot, type]

    def source(link_id):
        _, origin, slot = links[link_id][:3]
        node = nodes[origin]
        while node["type"] == "Reroute":
            lid = node["inputs"][0]["link"]
            _, origin, slot = links[lid][:3]
            node = nodes[origin]
        return node, slot

    api: Dict[str, Dict[str, Any]] = {}
    for n in workflow["nodes"]:
        t = n["type"]
        if t in UI_ONLY or n.get("mode", 0) in (MUTED, BYPASSED):
            continue
        if t not in object_info:
            raise KeyError(f"node {n['id']}: type '{t}' is not installed on this server (missing node)")
        spec = object_info[t]["input"]
        order = list(spec.get("required", {})) + list(spec.get("optional", {}))
        linked = {i["name"]: i["link"] for i in n.get("inputs", []) if i.get("link") is not None}
        wv = n.get("widgets_values", [])
        if isinstance(wv, dict):  # some nodes store a name -> value dict
            wv = [wv.get(k) for k in order]
        k = 0
        inputs: Dict[str, Any] = {}
        for name in order:
            required = name in spec.get("required", {})
            cfg = spec["required"][name] if required else spec["optional"][name]
            typ = cfg[0]
            opts = cfg[1] if len(cfg) > 1 and isinstance(cfg[1], dict) else {}
            is_widget = isinstance(typ, list) or typ in WIDGET_TYPES
            if name in linked:
                src, slot = source(linked[name])
                if src["type"] == "PrimitiveNode":
                    v = src["widgets_values"][0]
                    inputs[name] = rename.get(v, v) if isinstance(v, str) else v
                else:
                    inputs[name] = [str(src["id"]), slot]
                if is_widget and k < len(wv):
                    k += 1 + (1 if _has_control(name, typ, opts) else 0)
            elif is_widget and k < len(wv):
                v = wv[k]
                inputs[name] = rename.get(v, v) if isinstance(v, str) else v
                k += 1 + (1 if _has_control(name, typ, opts) else 0)
            elif is_widget:  # missing trailing widget value: the input's default
                v = _default(typ, opts, required)
                if v is not None:
                    inputs[name] = v
        api[str(n["id"])] = {"class_type": t, "inputs": inputs}
    return api
