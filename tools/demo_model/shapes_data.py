"""Captioned procedural shapes at 64 x 64: the demo model's data.

Every image is drawn from a caption of a finite grammar:

* one object: ``"a {size} {colour} {shape} {where}"``, e.g. "a small red circle
  at the top left" (where: the nine cells of a 3 x 3 grid);
* two or three objects: ``"{two|three} {size} {colour} {shape}s"``, e.g. "two
  large blue squares", placed in cells at least two cells apart (so they never
  touch).

with 6 colours, 4 shapes and 2 sizes: 432 + 96 = 528 captions (``CAPTIONS``).
The drawing adds what the caption leaves open: the exact centre (jittered
inside its cell), radius, colour shade and a light, slightly tinted
background with a gradient.  Shapes are drawn 4x supersampled and box-filtered
(anti-aliased).  Pure torch, no ComfyUI, fully determined by the seed:
``make_batch(n, seed)`` gives the same images on any machine.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

SIZE = 64
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
RGB = ((0.88, 0.12, 0.12), (0.12, 0.66, 0.22), (0.15, 0.30, 0.92), (0.95, 0.82, 0.10), (0.58, 0.20, 0.78),
       (0.98, 0.52, 0.08))
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
RADIUS = ((5.0, 6.5), (9.0, 10.5))            # half extent in pixels, per size
WHERE = ("at the top left", "at the top", "at the top right", "on the left", "in the center", "on the right",
         "at the bottom left", "at the bottom", "at the bottom right")
COUNTS = (1, 2, 3)
COUNT_WORDS = {2: "two", 3: "three"}
CELL = SIZE / 3.0
JITTER = 2.5                                  # pixels around the cell centre


@dataclass(frozen=True)
class Spec:
    """What a caption says: count (1-3), size, colour, shape indices, and the cell (0-8) of a single object
    (-1 for two or three)."""
    count: int
    size: int
    colour: int
    shape: int
    where: int = -1

    @property
    def caption(self) -> str:
        if self.count == 1:
            return f"a {SIZES[self.size]} {COLOURS[self.colour]} {SHAPES[self.shape]} {WHERE[self.where]}"
        return f"{COUNT_WORDS[self.count]} {SIZES[self.size]} {COLOURS[self.colour]} {SHAPES[self.shape]}s"


def _all_specs() -> List[Spec]:
    specs = [Spec(1, s, c, h, w) for s in range(len(SIZES)) for c in range(len(COLOURS))
             for h in range(len(SHAPES)) for w in range(len(WHERE))]
    specs += [Spec(n, s, c, h) for n in (2, 3) for s in range(len(SIZES)) for c in range(len(COLOURS))
              for h in range(len(SHAPES))]
    return specs


SPECS: Tuple[Spec, ...] = tuple(_all_specs())
CAPTIONS: Tuple[str, ...] = tuple(s.caption for s in SPECS)
INDEX = {c: i for i, c in enumerate(CAPTIONS)}


def _far_sets(k: int) -> List[Tuple[int, ...]]:
    """Sets of k grid cells pairwise at least two cells apart in row or column."""
    def far(a, b):
        return max(abs(a // 3 - b // 3), abs(a % 3 - b % 3)) >= 2
    return [c for c in itertools.combinations(range(9), k) if all(far(a, b) for a, b in itertools.combinations(c, 2))]


FAR = {2: _far_sets(2), 3: _far_sets(3)}


def parse(caption: str) -> Spec:
    """The Spec of a caption of the grammar (ValueError otherwise)."""
    i = INDEX.get(caption.strip().lower())
    if i is None:
        raise ValueError(f"not a caption of the demo grammar: {caption!r} (e.g. {CAPTIONS[0]!r})")
    return SPECS[i]


def sample_specs(n: int, g: torch.Generator) -> List[Spec]:
    """n captions: one object with probability 0.6, two 0.25, three 0.15; the rest uniform."""
    u = torch.rand(n, generator=g)
    counts = torch.where(u < 0.6, 1, torch.where(u < 0.85, 2, 3))
    sz = torch.randint(len(SIZES), (n,), generator=g)
    col = torch.randint(len(COLOURS), (n,), generator=g)
    sh = torch.randint(len(SHAPES), (n,), generator=g)
    wh = torch.randint(len(WHERE), (n,), generator=g)
    return [Spec(int(k), int(s), int(c), int(h), int(w) if k == 1 else -1)
            for k, s, c, h, w in zip(counts, sz, col, sh, wh)]


def render(specs: Sequence[Spec], g: torch.Generator, device="cpu", supersample: int = 4) -> torch.Tensor:
    """Images (n x 3 x 64 x 64 in [0, 1]) of ``specs``; every random draw comes from ``g`` (on the CPU), in a fixed
    order, so the images do not depend on ``device``."""
    n = len(specs)
    cells = torch.full((n, 3), -1, dtype=torch.long)
    for i, s in enumerate(specs):
        if s.count == 1:
            cells[i, 0] = s.where
        else:
            sets = FAR[s.count]
            pick = sets[int(torch.randint(len(sets), (1,), generator=g))]
            cells[i, :s.count] = torch.tensor(pick)[torch.randperm(s.count, generator=g)]
    jit = (torch.rand(n, 3, 2, generator=g) * 2 - 1) * JITTER
    lo = torch.tensor([RADIUS[s.size][0] for s in specs])
    hi = torch.tensor([RADIUS[s.size][1] for s in specs])
    rad = lo[:, None] + (hi - lo)[:, None] * torch.rand(n, 3, generator=g)
    shade = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.05
    bg = 0.90 + 0.07 * torch.rand(n, 1, generator=g) + (torch.rand(n, 3, generator=g) * 2 - 1) * 0.025
    grad = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.05

    ss = SIZE * supersample
    c = (torch.arange(ss, dtype=torch.float32, device=device) + 0.5) / supersample
    yy, xx = c.view(1, ss, 1), c.view(1, 1, ss)
    cover = torch.zeros(n, ss, ss, device=device)
    shape_idx = torch.tensor([s.shape for s in specs], device=device).view(n, 1, 1)
    for k in range(3):
        live = (cells[:, k] >= 0).to(device).view(n, 1, 1)
        cell = cells[:, k].clamp(min=0)
        cx = ((cell % 3).float() + 0.5) * CELL + jit[:, k, 0]
        cy = ((cell // 3).float() + 0.5) * CELL + jit[:, k, 1]
        dx = xx - cx.to(device).view(n, 1, 1)
        dy = yy - cy.to(device).view(n, 1, 1)
        r = rad[:, k].to(device).view(n, 1, 1)
        circle = dx * dx + dy * dy <= r * r
        square = torch.maximum(dx.abs(), dy.abs()) <= 0.86 * r
        triangle = (dy >= -r) & (dy <= 0.85 * r) & (dx.abs() <= (dy + r) * 0.62)
        arm = 0.36 * r
        cross = ((dx.abs() <= arm) & (dy.abs() <= r)) | ((dy.abs() <= arm) & (dx.abs() <= r))
        m = torch.where(shape_idx == 0, circle, torch.where(shape_idx == 1, square,
                                                            torch.where(shape_idx == 2, triangle, cross)))
        cover = torch.maximum(cover, (m & live).float())
    cover = F.avg_pool2d(cover.unsqueeze(1), supersample)                          # n x 1 x 64 x 64
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
    """n x 5 long tensor: count - 1, size, colour, shape, cell (-1 for two or three objects)."""
    return torch.tensor([[s.count - 1, s.size, s.colour, s.shape, s.where] for s in specs], dtype=torch.long)


def matches(pred: torch.Tensor, spec: Spec) -> torch.Tensor:
    """Rows of ``pred`` (m x 5, as labels()) that show ``spec``: every attribute the caption names is right (the
    cell only for one object)."""
    want = torch.tensor([spec.count - 1, spec.size, spec.colour, spec.shape, spec.where])
    ok = (pred[:, :4] == want[:4]).all(1)
    if spec.count == 1:
        ok = ok & (pred[:, 4] == want[4])
    return ok


def ascii_summary() -> str:
    return f"{len(CAPTIONS)} captions ({sum(s.count == 1 for s in SPECS)} one-object), e.g. {CAPTIONS[0]!r}"


if __name__ == "__main__":  # a contact sheet of 32 samples: python tools/demo_model/shapes_data.py out.png
    import sys
    from PIL import Image
    x, sp = make_batch(32, seed=0)
    sheet = x.view(4, 8, 3, SIZE, SIZE).permute(0, 3, 1, 4, 2).reshape(4 * SIZE, 8 * SIZE, 3)
    Image.fromarray((sheet * 255).round().byte().numpy()).save(sys.argv[1] if len(sys.argv) > 1 else "shapes.png")
    for i, s in enumerate(sp):
        print(i, s.caption)
    print(ascii_summary())
