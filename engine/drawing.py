"""Pictures of a search: the ranked grid and the score-vs-NFE plot, drawn with
PIL (which ComfyUI already has; no plotting library).  No ComfyUI import:
tested directly."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable default font
    except TypeError:
        return ImageFont.load_default()


def to_pil(image: torch.Tensor) -> Image.Image:
    # exactly as ComfyUI's Save Image converts (scale, clip, truncate), so pixels match its files
    a = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB")).astype(np.float32) / 255.0).unsqueeze(0)


def ranked_grid(images: torch.Tensor, labels: Sequence[str], columns: int = 4, pad: int = 4) -> torch.Tensor:
    """images B x H x W x 3 (already in rank order) -> 1 x H' x W' x 3, each
    tile captioned with its label on a dark band under it."""
    b, h, w, _ = images.shape
    cols = max(1, min(int(columns), b))
    rows = (b + cols - 1) // cols
    fsize = max(10, min(24, w // 12))
    font = _font(fsize)
    band = fsize + 8
    canvas = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + band + pad) + pad), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for i in range(b):
        r, c = divmod(i, cols)
        x, y = pad + c * (w + pad), pad + r * (h + band + pad)
        canvas.paste(to_pil(images[i]), (x, y))
        draw.text((x + 4, y + h + 4), labels[i] if i < len(labels) else "", fill=(240, 240, 240), font=font)
    return to_tensor(canvas)


def score_plot(series: Dict[str, List[Sequence[float]]], title: str = "", width: int = 640,
               height: int = 400, y_label: str = "best score",
               right_series: Optional[Dict[str, List[Sequence[float]]]] = None,
               right_label: str = "held-out") -> torch.Tensor:
    """Line plot of best score vs cumulative NFEs: ``series`` maps a name to
    [(nfe, score), ...]; ``right_series`` (dashed) are drawn against their own
    axis on the right (a held-out verifier's units).  Returns 1 x height x width x 3."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = _font(12)
    # a -inf point (a remote grader's failed answer before any success) has no place on the axis
    series = {k: [p for p in v if math.isfinite(p[1])] for k, v in series.items()}
    right_series = {k: [p for p in v if math.isfinite(p[1])] for k, v in (right_series or {}).items()}
    right_series = {k: v for k, v in right_series.items() if v}
    left, right, top, bottom = 64, (64 if right_series else 16), 28, 44
    pts = [p for s in series.values() for p in s] + [p for s in right_series.values() for p in s]
    d.text((left, 6), title, fill=(0, 0, 0), font=font)
    d.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    if not pts:
        d.text((left + 10, top + 10), "no data", fill=(0, 0, 0), font=font)
        return to_tensor(img)
    x0, x1 = 0.0, max(p[0] for p in pts) or 1.0
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    span = y1 - y0
    y0, y1 = y0 - 0.05 * span, y1 + 0.05 * span

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))
    for k in range(5):  # ticks
        xv = x0 + (x1 - x0) * k / 4
        yv = y0 + (y1 - y0) * k / 4
        X, _ = px(xv, y0)
        _, Y = px(x0, yv)
        d.line([X, height - bottom, X, height - bottom + 4], fill=(0, 0, 0))
        d.text((X - 10, height - bottom + 6), f"{xv:.0f}", fill=(0, 0, 0), font=font)
        d.line([left - 4, Y, left, Y], fill=(0, 0, 0))
        d.text((4, Y - 6), f"{yv:.3g}", fill=(0, 0, 0), font=font)
    d.text((width // 2 - 20, height - 18), "NFEs", fill=(0, 0, 0), font=font)
    d.text((4, top - 20), y_label, fill=(0, 0, 0), font=font)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    for n, (name, s) in enumerate(series.items()):
        col = colours[n % len(colours)]
        path = [px(x, y) for x, y in s]
        if len(path) == 1:
            X, Y = path[0]
            d.ellipse([X - 3, Y - 3, X + 3, Y + 3], fill=col)
        else:
            # a step plot: the best so far holds until the next improvement
            steps: List[tuple] = []
            for i, p in enumerate(path):
                if i:
                    steps.append((p[0], steps[-1][1]))
                steps.append(p)
            d.line(steps, fill=col, width=2)
        d.text((width - right - 150, top + 6 + 14 * n), name, fill=col, font=font)
    if right_series:
        rp = [p for s in right_series.values() for p in s]
        r0, r1 = min(p[1] for p in rp), max(p[1] for p in rp)
        if r1 - r0 < 1e-12:
            r0, r1 = r0 - 0.5, r1 + 0.5
        rs = r1 - r0
        r0, r1 = r0 - 0.05 * rs, r1 + 0.05 * rs

        def ry(y):
            return height - bottom - (y - r0) / (r1 - r0) * (height - top - bottom)
        for k in range(5):
            yv = r0 + (r1 - r0) * k / 4
            Y = ry(yv)
            d.line([width - right, Y, width - right + 4, Y], fill=(0, 0, 0))
            d.text((width - right + 6, Y - 6), f"{yv:.3g}", fill=(0, 0, 0), font=font)
        d.text((width - right - 40, top - 20), right_label + " (right)", fill=(0, 0, 0), font=font)
        for m, (name, s) in enumerate(right_series.items()):
            col = colours[(len(series) + m) % len(colours)]
            pts_r = [(px(x, y0)[0], ry(y)) for x, y in s]
            steps = []
            for i, p in enumerate(pts_r):
                if i:
                    steps.append((p[0], steps[-1][1]))
                steps.append(p)
            for a, b in zip(steps, steps[1:]):  # dashed: every other short piece
                n_d = max(1, int(math.hypot(b[0] - a[0], b[1] - a[1]) // 6))
                for t in range(0, n_d, 2):
                    p0 = (a[0] + (b[0] - a[0]) * t / n_d, a[1] + (b[1] - a[1]) * t / n_d)
                    p1 = (a[0] + (b[0] - a[0]) * (t + 1) / n_d, a[1] + (b[1] - a[1]) * (t + 1) / n_d)
                    d.line([p0, p1], fill=col, width=2)
            if len(steps) == 1:
                X, Y = steps[0]
                d.ellipse([X - 3, Y - 3, X + 3, Y + 3], outline=col)
            d.text((width - right - 150, top + 6 + 14 * (len(series) + m)), name + " - -", fill=col, font=font)
    return to_tensor(img)


def caption(rank: int, score: float, seed: Optional[int], label: str = "") -> str:
    s = f"#{rank}  {score:.4g}"
    if seed is not None:
        s += f"  seed {seed}"
    return s + (f"  {label}" if label else "")
