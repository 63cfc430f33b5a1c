"""The template browser's pictures: one ``workflows/<name>.jpg`` per ``workflows/<name>.json``.

    python tools/make_thumbnails.py            # writes every thumbnail
    python tools/make_thumbnails.py --check    # exits 1 if one is missing or out of date

ComfyUI's template browser shows a custom node pack's templates with the picture
``/api/workflow_templates/<pack>/<name>.jpg``, which ComfyUI serves from the pack's ``workflows/`` folder.
The templates need model files nobody has in CI, so the picture is a drawing of the template's graph as
the editor lays it out: every node a box at its place (the pack's nodes in the pack's colour, ComfyUI's in
grey, notes in yellow) with its title, and the links between them.  Deterministic: the same JSON gives the
same JPEG bytes (Pillow's default font, fixed quality, no metadata).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys

from PIL import Image, ImageDraw, ImageFont

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKFLOWS = os.path.join(REPO, "workflows")
W, H = 512, 384          # 4:3, what the template browser's cards show
PAD = 16
BG, GRID = (32, 32, 36), (44, 44, 50)
PACK, CORE, NOTE = (52, 92, 160), (72, 72, 78), (150, 130, 50)
LINK = (150, 150, 160)
TEXT = (236, 236, 236)
TITLE_H = 26


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1
        return ImageFont.load_default()


def _title(node: dict) -> str:
    if node.get("title"):
        return node["title"]
    name = re.sub(r"^InfScale_", "", node["type"])
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)


def _kind(node: dict):
    if node["type"] in ("Note", "MarkdownNote"):
        return NOTE
    return PACK if node["type"].startswith("InfScale_") else CORE


def draw(workflow: dict, name: str) -> Image.Image:
    nodes = [n for n in workflow["nodes"] if "pos" in n]
    boxes = {}
    for n in nodes:
        x, y = (float(v) for v in (n["pos"][:2] if isinstance(n["pos"], list) else n["pos"].values()))
        w, h = (float(v) for v in (n.get("size") or [200, 80])[:2]) if isinstance(n.get("size"), list) \
            else (200.0, 80.0)
        boxes[n["id"]] = (x, y - TITLE_H, x + w, y + h)   # the editor draws the title bar above pos
    x0 = min(b[0] for b in boxes.values())
    y0 = min(b[1] for b in boxes.values())
    x1 = max(b[2] for b in boxes.values())
    y1 = max(b[3] for b in boxes.values())
    head = 30
    scale = min((W - 2 * PAD) / max(1.0, x1 - x0), (H - head - 2 * PAD) / max(1.0, y1 - y0))
    ox = PAD + ((W - 2 * PAD) - (x1 - x0) * scale) / 2
    oy = head + PAD + ((H - head - 2 * PAD) - (y1 - y0) * scale) / 2

    def at(x, y):
        return ox + (x - x0) * scale, oy + (y - y0) * scale

    img = Image.new("RGB", (W, H), BG)
    d = ImageDraw.Draw(img)
    for gx in range(0, W, 24):
        d.line([(gx, 0), (gx, H)], fill=GRID)
    for gy in range(0, H, 24):
        d.line([(0, gy), (W, gy)], fill=GRID)
    for link in workflow.get("links") or []:
        src, dst = link[1], link[3]
        if src in boxes and dst in boxes:
            a, b = boxes[src], boxes[dst]
            p = at(a[2], (a[1] + a[3]) / 2)
            q = at(b[0], (b[1] + b[3]) / 2)
            mid = (p[0] + q[0]) / 2
            d.line([p, (mid, p[1]), (mid, q[1]), q], fill=LINK, width=2)
    font = _font(max(9, min(14, int(13 * scale / 0.35))))
    for n in nodes:
        b = boxes[n["id"]]
        p, q = at(b[0], b[1]), at(b[2], b[3])
        colour = _kind(n)
        d.rounded_rectangle([p, q], radius=4, fill=tuple(int(c * 0.55) for c in colour), outline=colour, width=2)
        bar = min(q[1], p[1] + max(8.0, TITLE_H * scale))
        d.rounded_rectangle([p, (q[0], bar)], radius=4, fill=colour)
        label = _title(n)
        while label and d.textlength(label, font=font) > (q[0] - p[0]) - 6:
            label = label[:-2] + "…" if len(label) > 2 else ""
        d.text((p[0] + 3, p[1] + 1), label, fill=TEXT, font=font)
    d.rectangle([0, 0, W, head], fill=(24, 24, 28))
    d.text((PAD, 7), name.replace("_", " "), fill=TEXT, font=_font(16))
    return img


def jpeg(workflow: dict, name: str) -> bytes:
    buf = io.BytesIO()
    draw(workflow, name).save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check that every thumbnail exists and is current")
    a = p.parse_args(argv)
    stale = []
    for fn in sorted(os.listdir(WORKFLOWS)):
        if not fn.endswith(".json"):
            continue
        name = fn[:-5]
        with open(os.path.join(WORKFLOWS, fn)) as f:
            data = jpeg(json.load(f), name)
        out = os.path.join(WORKFLOWS, name + ".jpg")
        current = os.path.isfile(out) and open(out, "rb").read() == data
        if a.check:
            if not current:
                stale.append(name)
        elif not current:
            with open(out, "wb") as f:
                f.write(data)
            print(f"wrote workflows/{name}.jpg ({len(data) // 1024} KB)")
    if stale:
        print("missing or out of date (run python tools/make_thumbnails.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
