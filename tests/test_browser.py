"""A real browser against a real server: headless Chromium opens the ComfyUI
editor the server ships (the 2024 host's legacy LiteGraph UI, or current
ComfyUI's comfyui-frontend-package), and through the app's own code

- finds every node type of this pack that /object_info lists;
- loads every workflow in workflows/ with ``app.loadGraphData`` and sees no
  missing node types (the app's own list, passed to extensions'
  ``afterConfigureGraph``), no dialog or toast (missing nodes, missing models,
  schema validation, link fixes), no node drawn in error, no node drawn over
  another once the editor has sized them; the editor's own graph→prompt
  conversion equals tools/ui_to_api.py's;
- presses Run (``app.queuePrompt``): the prompt the editor sends, model names
  mapped to tiny files and sizes shrunk on the way (a Playwright route), is
  accepted by the server with no validation error and runs without an
  execution error.

Needs Chromium at $INFSCALE_CHROMIUM (default /usr/bin/chromium; Debian
package `chromium`) and the `playwright` pip package (no browser download: it
drives that executable).  Skips, saying so, when either is absent.

With INFSCALE_SCREENSHOTS=<folder> and the current frontend, the editor with
the SD1.5 random search workflow and a pack node's tooltip are saved there as
PNG (the README's docs/screenshots/ come from such a run)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
CHROMIUM = os.environ.get("INFSCALE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = os.environ.get("INFSCALE_SCREENSHOTS")
# Without these Chromium waits on the network (component updates, sync, QUIC
# probes) on a closed machine; headless needs no GPU nor sandbox in a container.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
UI_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}

sys.path.insert(0, os.path.join(REPO, "tools"))
from comfy_server import execution_error  # noqa: E402
from ui_to_api import ui_to_api  # noqa: E402
# published file names -> tiny test files; the sizes for queued workflows; the text attention mask LTX-Video
# needs from its stand-in text encoder; the fixture that puts the tiny SDXL / SD3 checkpoints on the server
from workflow_server import TINY, server, shrink, with_text_attention_mask  # noqa: E402,F401

if not os.path.isfile(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set INFSCALE_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright (pip install -r .ci/requirements-current.txt)")

READY_JS = """() => !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph
    && LiteGraph.registered_node_types && LiteGraph.registered_node_types.KSampler)"""

HOOK_JS = """() => {
    window.__infscale = {missing: null};
    app.registerExtension({
        name: "infscale.browser-test",
        afterConfigureGraph(missing) {
            window.__infscale.missing = (missing || []).map(t => typeof t === "object" ? t.type : t);
        },
    });
    return {current: !!(window.comfyAPI && window.comfyAPI.app), nodes: Object.keys(LiteGraph.registered_node_types)};
}"""

# dialogs and toasts of either frontend that are on screen now
VISIBLE_JS = """() => {
    const sel = ".comfy-missing-nodes, .comfy-modal, .p-dialog, .p-toast-message, [role=dialog], [role=alert]";
    return Array.from(document.querySelectorAll(sel))
        .filter(e => e.offsetParent !== null
                     || getComputedStyle(e).position === "fixed" && getComputedStyle(e).display !== "none")
        .filter(e => e.innerText.trim())
        .map(e => e.className + ": " + e.innerText.trim().slice(0, 500));
}"""

LOAD_JS = """async (wf) => {
    window.__infscale.missing = null;
    await app.loadGraphData(wf);
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    const nodes = app.graph.nodes || app.graph._nodes;
    return {missing: window.__infscale.missing,
            nodes: nodes.map(n => ({id: n.id, type: n.type, has_errors: !!n.has_errors, title: n.title,
                                    box: [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT,
                                          n.size[0], n.size[1] + LiteGraph.NODE_TITLE_HEIGHT]}))};
}"""

CLOSE_JS = """() => {
    if (app.ui && app.ui.dialog && app.ui.dialog.close) app.ui.dialog.close();
}"""


class Editor:
    def __init__(self, page, errors, current_frontend, registered):
        self.page, self.errors = page, errors
        self.current_frontend, self.registered = current_frontend, registered

    def evaluate(self, js, arg=None):
        return self.page.evaluate(js, arg)


@pytest.fixture(scope="module")
def editor(comfy):
    # Current frontend (1.27.10) on a first visit: the template browser opens over
    # the canvas; and registering Comfy.Canvas.NavigationMode sets two settings
    # not registered yet, which throws an uncaught TypeError (its bug, not the
    # pack's) unless they already have these values. The 2024 host ignores them.
    comfy.post("/settings", {"Comfy.TutorialCompleted": True,
                             "Comfy.Canvas.NavigationMode": "legacy",
                             "Comfy.Canvas.LeftMouseClickBehavior": "panning",
                             "Comfy.Canvas.MouseWheelScroll": "zoom"})
    profile = tempfile.mkdtemp(prefix="infscale-chromium-")
    pw = sync_api.sync_playwright().start()
    ctx = None
    try:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 820})
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        errors: list = []
        page.on("pageerror", lambda e: errors.append(f"{e}\n{getattr(e, 'stack', '')}"))
        page.goto(comfy.base, wait_until="load", timeout=120_000)
        page.wait_for_function(READY_JS, timeout=120_000, polling=250)
        info = page.evaluate(HOOK_JS)
        ed = Editor(page, errors, info["current"], set(info["nodes"]))
        _close_dialogs(ed)
        yield ed
    finally:
        if ctx is not None:
            ctx.close()
        pw.stop()
        shutil.rmtree(profile, ignore_errors=True)


def test_pack_nodes_registered_in_editor(comfy, editor):
    pack = {k for k in comfy.object_info() if k.startswith("InfScale_")}
    assert "InfScale_SearchLoop" in pack
    assert pack <= editor.registered, f"not in the editor: {sorted(pack - editor.registered)}"
    assert not editor.errors, editor.errors


def _one_node_workflow(node_type: str, inputs=(), widgets=()) -> dict:
    node = {"id": 1, "type": node_type, "pos": [100, 100], "size": [320, 120], "flags": {}, "order": 0,
            "mode": 0, "inputs": [dict(name=n, type=t, link=None) for n, t in inputs], "outputs": [],
            "properties": {}, "widgets_values": list(widgets)}
    return {"last_node_id": 1, "last_link_id": 0, "nodes": [node], "links": [], "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def test_editor_checks_see_failures(comfy, editor):
    """The hooks the workflow test relies on do report a missing node type and a
    prompt the server refuses, in this frontend."""
    got = editor.evaluate(LOAD_JS, _one_node_workflow("InfScale_NoSuchNode"))
    assert got["missing"] == ["InfScale_NoSuchNode"]
    shown = editor.evaluate(VISIBLE_JS)
    assert any("InfScale_NoSuchNode" in s for s in shown), shown
    _close_dialogs(editor)
    assert not editor.evaluate(VISIBLE_JS)
    # a SaveImage with nothing connected: "Required input is missing"
    editor.evaluate(LOAD_JS, _one_node_workflow("SaveImage", [("images", "IMAGE")], ["x"]))
    with editor.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST",
                                     timeout=60_000) as resp:
        editor.evaluate("() => { app.queuePrompt(0, 1); }")
    assert resp.value.status == 400 and resp.value.json().get("node_errors"), resp.value.json()
    _close_dialogs(editor)
    editor.errors.clear()


def _close_dialogs(editor):
    editor.evaluate(CLOSE_JS)
    for _ in range(3):
        if not editor.evaluate(VISIBLE_JS):
            break
        editor.page.keyboard.press("Escape")
        editor.page.wait_for_timeout(300)


def _skip_if_host_lacks(comfy, wf):
    lacking = sorted({n["type"] for n in wf["nodes"]} - UI_ONLY - set(comfy.object_info()))
    if lacking and not any(t.startswith("InfScale_") for t in lacking):
        pytest.skip(f"this ComfyUI ({comfy.version}) lacks stock nodes {lacking}")


def _overlaps(nodes: list) -> list:
    """Pairs of nodes whose boxes (title bar included), as the editor laid them
    out, intersect: the editor grows a node to fit its widgets, so a saved size
    that is too small puts it over its neighbour."""
    out = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["box"], b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                out.append(f"{a['title']} #{a['id']} / {b['title']} #{b['id']}")
    return out


def _with_defaults(prompt: dict, info: dict) -> dict:
    """class_type and inputs per node as the server reads them: an optional widget
    left out filled with its default (the editor sends it, the converter may not),
    inputs the node does not declare dropped (the 2024 editor sends LoadImage's
    upload button as `upload: "image"`; the server ignores it)."""
    out = {}
    for nid, node in prompt.items():
        spec_in = info[node["class_type"]]["input"]
        declared = {**spec_in.get("required", {}), **spec_in.get("optional", {})}
        inputs = {k: v for k, v in node["inputs"].items() if k in declared}
        for name, spec in spec_in.get("optional", {}).items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if name not in inputs and "default" in opts:
                inputs[name] = opts["default"]
        out[nid] = (node["class_type"], inputs)
    return out


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_loads_in_editor(comfy, editor, path):
    """Loaded as shipped, what a user who opens the file sees; and the editor's
    own graph->prompt conversion equals tools/ui_to_api.py's, whose output
    test_workflows.py validates and runs."""
    wf = json.load(open(path))
    _skip_if_host_lacks(comfy, wf)
    editor.errors.clear()
    got = editor.evaluate(LOAD_JS, wf)
    shown = editor.evaluate(VISIBLE_JS)
    assert got["missing"] == [], f"missing node types: {got['missing']}; on screen: {shown}"
    assert not shown, f"dialogs/toasts after loading {os.path.basename(path)}: {shown}"
    assert sorted(n["id"] for n in got["nodes"]) == sorted(n["id"] for n in wf["nodes"])
    assert not [n for n in got["nodes"] if n["has_errors"]], got["nodes"]
    overlaps = _overlaps(got["nodes"])
    assert not overlaps, f"nodes drawn over each other once the editor sized them: {overlaps}"
    info = comfy.object_info()
    editors = _with_defaults(editor.evaluate("async () => (await app.graphToPrompt()).output"), info)
    ours = _with_defaults(ui_to_api(wf, info), info)
    assert editors == ours
    assert not editor.errors, editor.errors
    if SCREENSHOTS and editor.current_frontend and os.path.basename(path) == "sd15_random_search.json":
        _workflow_screenshot(editor, wf, "sd15_random_search")
        _tooltip_screenshot(editor)


def _cheap(prompt: dict) -> dict:
    """The editor's prompt with tiny model files and small sizes: only values change."""
    for node in prompt.values():
        for k, v in node["inputs"].items():
            if isinstance(v, str) and v in TINY:
                node["inputs"][k] = TINY[v]
    return with_text_attention_mask(shrink(prompt))


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_queued_from_editor(comfy, editor, path, request):
    """Run pressed in the editor: the server finds no validation error in the
    prompt the editor sends (model names mapped to tiny files, sizes shrunk on
    the way) and runs it."""
    wf = json.load(open(path))
    _skip_if_host_lacks(comfy, wf)
    request.getfixturevalue("server")  # the tiny SDXL / SD3 checkpoints and the input image
    for n in wf["nodes"]:  # img2img: the input image the workflow names
        if n["type"] == "LoadImage" and n.get("mode", 0) == 0:
            img = os.path.join(comfy.input_dir, n["widgets_values"][0])
            if not os.path.exists(img):
                from PIL import Image
                Image.new("RGB", (64, 64), (200, 120, 40)).save(img)
    info = comfy.get("/object_info")  # file lists may have grown since
    for node in ui_to_api(wf, info).values():
        for name, v in node["inputs"].items():
            if isinstance(v, str) and v in TINY:
                spec = {**info[node["class_type"]]["input"].get("required", {}),
                        **info[node["class_type"]]["input"].get("optional", {})}.get(name)
                choices = spec[0] if spec and isinstance(spec[0], list) else \
                    (spec[1].get("options", []) if spec and len(spec) > 1 and isinstance(spec[1], dict) else [])
                if TINY[v] not in choices:
                    pytest.skip(f"no tiny stand-in {TINY[v]} for {v} on this server (test_workflows.py builds it)")
    editor.errors.clear()
    editor.evaluate(LOAD_JS, wf)

    def rewrite(route):
        body = json.loads(route.request.post_data)
        body["prompt"] = _cheap(body["prompt"])
        route.continue_(post_data=json.dumps(body))

    editor.page.route("**/prompt", rewrite)
    try:
        with editor.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST",
                                         timeout=60_000) as resp:
            editor.evaluate("() => { app.queuePrompt(0, 1); }")
        body = resp.value.json()
    finally:
        editor.page.unroute("**/prompt", rewrite)
    assert resp.value.status == 200 and not body.get("node_errors"), \
        f"validation errors: {json.dumps(body)[:3000]}"
    entry = comfy.wait(body["prompt_id"], timeout=600)
    assert execution_error(entry) is None, execution_error(entry)
    shown = editor.evaluate(VISIBLE_JS)
    assert not [s for s in shown if "rror" in s], shown
    assert not editor.errors, editor.errors


def _save_png(data: bytes, name: str):
    """Palette PNG: a screenshot of the editor is mostly flat colour, so 256
    colours keep it sharp and small."""
    import io
    from PIL import Image
    os.makedirs(SCREENSHOTS, exist_ok=True)
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    img.save(os.path.join(SCREENSHOTS, name), optimize=True)


TIDY_JS = """async (name) => {
    // current frontend only: no minimap over the graph, no render stats, and one
    // tab named after the file instead of one "Unsaved Workflow (n)" per load
    const ext = app.extensionManager;
    if (!ext || !ext.setting || !ext.workflow) return false;
    await ext.setting.set("Comfy.Minimap.Visible", false);
    await ext.setting.set("Comfy.Graph.CanvasInfo", false);
    await app.loadGraphData(window.__infscale.wf, true, true, name);
    const ws = ext.workflow;
    for (const w of [...ws.openWorkflows]) if (w !== ws.activeWorkflow) await ws.closeWorkflow(w);
    // the whole graph, whatever view the file saved
    if (ext.command && ext.command.execute) await ext.command.execute("Comfy.Canvas.FitView");
    return true;
}"""


def _workflow_screenshot(editor, wf: dict, name: str):
    editor.page.evaluate("(wf) => { window.__infscale.wf = wf; }", wf)
    editor.evaluate(TIDY_JS, name)
    editor.page.mouse.move(2, 400)
    editor.page.wait_for_timeout(800)
    _save_png(editor.page.screenshot(), name + ".png")


TOOLTIP_NODE = "InfScale_NoiseCandidateGenerator"


def _tooltip_screenshot(editor):
    """A pack node alone on the canvas, the pointer on its first widget: the
    current frontend shows the input's tooltip there."""
    if TOOLTIP_NODE not in editor.registered:
        return
    page = editor.page
    box = page.evaluate("""(type) => {
        app.graph.clear();
        const node = LiteGraph.createNode(type);
        node.pos = [80, 100];
        app.graph.add(node);
        app.canvas.ds.scale = 1.4; app.canvas.ds.offset = [0, 0];
        app.graph.setDirtyCanvas(true, true); app.canvas.draw(true, true);
        const w = node.widgets[0];
        const r = app.canvas.canvas.getBoundingClientRect();
        const ds = app.canvas.ds;
        const y = node.pos[1] + (w.y ?? w.last_y ?? 0) + 10;
        const x = node.pos[0] + node.size[0] / 2;
        return {x: r.left + (x + ds.offset[0]) * ds.scale, y: r.top + (y + ds.offset[1]) * ds.scale,
                left: r.left + (node.pos[0] + ds.offset[0]) * ds.scale,
                top: r.top + (node.pos[1] - LiteGraph.NODE_TITLE_HEIGHT + ds.offset[1]) * ds.scale,
                w: node.size[0] * ds.scale, h: (node.size[1] + LiteGraph.NODE_TITLE_HEIGHT) * ds.scale};
    }""", TOOLTIP_NODE)
    page.mouse.move(box["x"] - 5, box["y"] - 5)
    page.mouse.move(box["x"], box["y"])
    page.wait_for_timeout(1500)  # the tooltip delay
    clip = {"x": box["left"] - 24, "y": box["top"] - 48, "width": box["w"] + 420, "height": box["h"] + 84}
    _save_png(page.screenshot(clip=clip), "tooltip_noise_candidate_generator.png")
