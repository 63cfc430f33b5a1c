"""Captioned procedural shapes at 64 x 64: the demo model's data.

Every image is drawn from a caption of a finite grammar,
``"a {size} {colour} {shape} {where}"``, e.g. "a small red circle at the top
left" (where: the nine cells of a 3 x 3 grid), with 4 colours, 3 shapes and 2
sizes: 216 captions (``CAPTIONS``).  The drawing adds what the caption leaves
open: the exact centre (jittered inside its cell), radius, colour shade and a
light, slightly tinted background with a gradient.  Shapes are drawn 4x
supersampled and box-filtered (anti-aliased).  Pure torch, no ComfyUI, fully
determined by the seed: ``make_batch(n, seed)`` gives the same images on any
machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

SIZE = 64
COLOURS = ("red", "green", "blue", "yellow")
RGB = ((0.88, 0.12, 0.12), (0.12, 0.66, 0.22), (0.15, 0.30, 0.92), (0.95, 0.80, 0.10))
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
RADIUS = ((6.0, 7.0), (10.0, 11.5))           # half extent in pixels, per size
WHERE = ("at the top left", "at the top", "at the top right", "on the left", "in the center", "on the right",
         "at the bottom left", "at the bottom", "at the bottom right")
CELL = SIZE / 3.0
JITTER = 2.0                                  # pixels around the cell centre


@dataclass(frozen=True)
class Spec:
    """What a caption says: size, colour, shape indices and the cell (0-8, row by row) of the object."""
    size: int
    colour: int
    shape: int
    where: int

    @property
    def caption(self) -> str:
        return f"a {SIZES[self.size]} {COLOURS[self.colour]} {SHAPES[self.shape]} {WHERE[self.where]}"


SPECS: Tuple[Spec, ...] = tuple(Spec(s, c, h, w) for s in range(len(SIZES)) for c in range(len(COLOURS))
                                for h in range(len(SHAPES)) for w in range(len(WHERE)))
CAPTIONS: Tuple[str, ...] = tuple(s.caption for s in SPECS)
INDEX = {c: i for i, c in enumerate(CAPTIONS)}


def parse(caption: str) -> Spec:
    """The Spec of a caption of the grammar (ValueError otherwise)."""
    i = INDEX.get(caption.strip().lower())
    if i is None:
        raise ValueError(f"not a caption of the demo grammar: {caption!r} (e.g. {CAPTIONS[0]!r}: "
                         f"a small|large {'|'.join(COLOURS)} {'|'.join(SHAPES)} {' | '.join(WHERE)})")
    return SPECS[i]


def sample_specs(n: int, g: torch.Generator) -> List[Spec]:
    """n captions drawn uniformly from CAPTIONS."""
    return [SPECS[int(i)] for i in torch.randint(len(SPECS), (n,), generator=g)]


def render(specs: Sequence[Spec], g: torch.Generator, device="cpu", supersample: int = 4) -> torch.Tensor:
    """Images (n x 3 x 64 x 64 in [0, 1]) of ``specs``; every random draw comes from ``g`` (on the CPU), in a fixed
    order, so the images do not depend on ``device``."""
    n = len(specs)
    jit = (torch.rand(n, 2, generator=g) * 2 - 1) * JITTER
    lo = torch.tensor([RADIUS[s.size][0] for s in specs])
    hi = torch.tensor([RADIUS[s.size][1] for s in specs])
    rad = lo + (hi - lo) * torch.rand(n, generator=g)
    shade = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.05
    bg = 0.90 + 0.07 * torch.rand(n, 1, generator=g) + (torch.rand(n, 3, generator=g) * 2 - 1) * 0.025
    grad = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.05

    ss = SIZE * supersample
    c = (torch.arange(ss, dtype=torch.float32, device=device) + 0.5) / supersample
    yy, xx = c.view(1, ss, 1), c.view(1, 1, ss)
    cell = torch.tensor([s.where for s in specs])
    cx = ((cell % 3).float() + 0.5) * CELL + jit[:, 0]
    cy = ((cell // 3).float() + 0.5) * CELL + jit[:, 1]
    dx = xx - cx.to(device).view(n, 1, 1)
    dy = yy - cy.to(device).view(n, 1, 1)
    r = rad.to(device).view(n, 1, 1)
    shape_idx = torch.tensor([s.shape for s in specs], device=device).view(n, 1, 1)
    circle = dx * dx + dy * dy <= r * r
    square = torch.maximum(dx.abs(), dy.abs()) <= 0.86 * r
    triangle = (dy >= -r) & (dy <= 0.85 * r) & (dx.abs() <= (dy + r) * 0.62)
    m = torch.where(shape_idx == 0, circle, torch.where(shape_idx == 1, square, triangle))
    cover = F.avg_pool2d(m.float().unsqueeze(1), supersample)                     # n x 1 x 64 x 64
    fg = (torch.tensor([RGB[s.colour] for s in specs]) + shade).clamp(0, 1).to(device)
    grid = (torch.arange(SIZE, dtype=torch.float32, device=device) - SIZE / 2) / SIZE
    back = (bg.to(device).view(n, 3, 1, 1) + grad[:, 0].to(device).view(n, 1, 1, 1) * grid.view(1, 1, 1, SIZE)
            + grad[:, 1].to(device).view(n, 1, 1, 1) * grid.view(1, 1, SIZE, 1)).clamp(0, 1)
    return (back + cover * (fg.view(n, 3, 1, 1) - back)).clamp(0, 1)


def make_batch(n: int, seed: int, device="cpu") -> Tuple[torch.Tensor, List[Spec]]:
    """n random (image, spec) pairs, fully determined by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    specs = sample_specs(n, g)
    return render(specs, g, device), specs


def labels(specs: Sequence[Spec]) -> torch.Tensor:
    """n x 4 long tensor: size, colour, shape, cell."""
    return torch.tensor([[s.size, s.colour, s.shape, s.where] for s in specs], dtype=torch.long)


def matches(pred: torch.Tensor, spec: Spec) -> torch.Tensor:
    """Rows of ``pred`` (m x 4, as labels()) that show ``spec``: every attribute right."""
    return (pred == torch.tensor([spec.size, spec.colour, spec.shape, spec.where])).all(1)


def ascii_summary() -> str:
    return f"{len(CAPTIONS)} captions, e.g. {CAPTIONS[0]!r}"


if __name__ == "__main__":  # a contact sheet of 32 samples: python tools/demo_model/shapes_data.py out.png
    import sys
    from PIL import Image
    x, sp = make_batch(32, seed=0)
    sheet = x.view(4, 8, 3, SIZE, SIZE).permute(0, 3, 1, 4, 2).reshape(4 * SIZE, 8 * SIZE, 3)
    Image.fromarray((sheet * 255).round().byte().numpy()).save(sys.argv[1] if len(sys.argv) > 1 else "shapes.png")
    for i, s in enumerate(sp):
        print(i, s.caption)
    print(ascii_summary())
