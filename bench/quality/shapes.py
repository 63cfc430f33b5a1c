"""The benchmark's second model family: procedural shapes, a rectified-flow conv U-Net.

It differs from the digits family (model.py) in every part the search sees:

* **data**: 16x16 RGB images of 10 procedurally drawn classes (disc, ring,
  square, square outline, triangle, plus, X, horizontal stripes, vertical
  stripes, checkerboard) with random position, size, stroke, stripe period,
  foreground colour (a jittered palette colour), dark tinted background with a
  gradient, and pixel noise, so every class varies a lot inside itself.
  Drawn 4x supersampled and box-filtered (anti-aliased edges).  Pixels in
  [-1, 1], shape 1x3x16x16.
* **model and schedule**: a class-conditional flow-matching (rectified flow)
  model, x = (1−σ)·x0 + σ·noise (ComfyUI's CONST, as SD3 / FLUX), trained
  with logit-normal σ (SD3) to predict the velocity noise − x0 (EMA weights);
  the network is a small conv U-Net (2x2 pixel-unshuffle, 8x8 and 4x4 levels,
  residual blocks with FiLM conditioning on σ and the class, self-attention at
  4x4), not the digits' MLP.  Sampling uses SD3's shifted schedule,
  σ = shift·t / (1 + (shift−1)·t) over evenly spaced t (shift 3), and the
  noise level of a schedule position is t (ComfyUI's ``1 − percent`` for a
  discrete-flow model), so the paper's levels land elsewhere on the σ axis
  than on the digits' VP schedule.
* **samplers**: ``euler`` and ``euler_ancestral_RF`` (ComfyUI's ancestral
  sampler for CONST models, η = 1) through :class:`FlowHost`.
* **verifier**: a small max-pooling CNN on split A (the flow model's data),
  score = log p(class | x0).  **Judge**: a different CNN (5x5 stem, strided
  convs, global average + max pooling) on split B (other images, other seed),
  never seen by the search; its penultimate features give the Fréchet
  distance against a third, reference set.

Everything is seeded and trained from scratch on one CPU thread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from model import timestep_embedding  # noqa: E402  (bench/quality on sys.path; it also sets up REPO/tests)
from toy_host import ToyHost  # noqa: E402
from search.host import derive_seed, unit_noise  # noqa: E402

CLASSES = ("disc", "ring", "square", "square outline", "triangle", "plus", "X", "horizontal stripes",
           "vertical stripes", "checkerboard")
SIZE = 16
SHAPE = (1, 3, SIZE, SIZE)
SHIFT = 3.0
# foreground colours (jittered per image)
PALETTE = ((0.9, 0.1, 0.1), (0.95, 0.55, 0.1), (0.95, 0.9, 0.15), (0.15, 0.8, 0.2), (0.1, 0.8, 0.85),
           (0.15, 0.25, 0.9), (0.8, 0.15, 0.85), (0.95, 0.95, 0.95))


# --- data ------------------------------------------------------------------------------------------------------
def _u(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def make_shapes(n: int, seed: int, *, noise: float = 0.03, supersample: int = 4):
    """``n`` images (classes i mod 10, then shuffled) and labels, fully determined by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    y = y[torch.randperm(n, generator=g)]
    ss = SIZE * supersample
    c = (torch.arange(ss, dtype=torch.float32) + 0.5) / supersample          # pixel coordinates in [0, 16]
    yy, xx = c.reshape(1, ss, 1), c.reshape(1, 1, ss)
    cx, cy = _u(g, n, 5.5, 10.5).reshape(-1, 1, 1), _u(g, n, 5.5, 10.5).reshape(-1, 1, 1)
    s = _u(g, n, 3.5, 5.5).reshape(-1, 1, 1)                                  # half extent
    w = _u(g, n, 1.3, 2.2).reshape(-1, 1, 1)                                  # stroke width
    period = _u(g, n, 2.6, 4.2).reshape(-1, 1, 1)
    ph1, ph2 = (_u(g, n, 0, 2 * math.pi).reshape(-1, 1, 1) for _ in range(2))
    dx, dy = xx - cx, yy - cy
    d = (dx * dx + dy * dy).sqrt()
    box = torch.maximum(dx.abs(), dy.abs())
    ru, rv = (dx + dy) / math.sqrt(2), (dx - dy) / math.sqrt(2)
    sq = 0.85 * s
    masks = [
        d <= s,                                                                       # disc
        (d <= s) & (d >= s - w),                                                      # ring
        box <= sq,                                                                    # square
        (box <= sq) & (box >= sq - w),                                                # square outline
        (dy >= -s) & (dy <= s) & (dx.abs() <= (dy + s) / 2),                          # triangle, apex up
        ((dx.abs() <= w / 2) & (dy.abs() <= s)) | ((dy.abs() <= w / 2) & (dx.abs() <= s)),   # plus
        ((ru.abs() <= w / 2) & (rv.abs() <= s)) | ((rv.abs() <= w / 2) & (ru.abs() <= s)),   # X
        (box <= sq) & (torch.sin(2 * math.pi * dy / period + ph1) > 0),               # horizontal stripes
        (box <= sq) & (torch.sin(2 * math.pi * dx / period + ph1) > 0),               # vertical stripes
        (box <= sq) & (torch.sin(2 * math.pi * dx / period + ph1) * torch.sin(2 * math.pi * dy / period + ph2) > 0),
    ]
    m = torch.zeros(n, ss, ss)
    for k, mk in enumerate(masks):
        sel = y == k
        m[sel] = mk.expand(n, ss, ss)[sel].float()
    cover = F.avg_pool2d(m.unsqueeze(1), supersample)                          # n x 1 x 16 x 16, anti-aliased
    palette = torch.tensor(PALETTE)
    fg = (palette[torch.randint(len(palette), (n,), generator=g)] + _u(g, 3 * n, -0.1, 0.1).reshape(n, 3)).clamp(0, 1)
    # dark, slightly tinted backgrounds
    bg = (_u(g, n, 0.0, 0.3).reshape(n, 1) + _u(g, 3 * n, -0.08, 0.08).reshape(n, 3)).clamp(0, 1)
    grid = (torch.arange(SIZE, dtype=torch.float32) - SIZE / 2) / SIZE
    grad = (_u(g, n, -0.2, 0.2).reshape(-1, 1, 1, 1) * grid.reshape(1, 1, 1, SIZE)
            + _u(g, n, -0.2, 0.2).reshape(-1, 1, 1, 1) * grid.reshape(1, 1, SIZE, 1))
    back = (bg.reshape(n, 3, 1, 1) + grad).clamp(0, 1)
    img = back + cover * (fg.reshape(n, 3, 1, 1) - back)
    img = img + noise * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 2 - 1).contiguous(), y


@dataclass
class ShapesData:
    xa: torch.Tensor   # split A: flow model + verifier
    ya: torch.Tensor
    xb: torch.Tensor   # split B: judge
    yb: torch.Tensor
    xr: torch.Tensor   # reference set: Fréchet distance, real-image reference row
    yr: torch.Tensor


def load_shapes_data(n_a: int = 6000, n_b: int = 3000, n_ref: int = 2000) -> ShapesData:
    xa, ya = make_shapes(n_a, seed=100)
    xb, yb = make_shapes(n_b, seed=200)
    xr, yr = make_shapes(n_ref, seed=300)
    return ShapesData(xa, ya, xb, yb, xr, yr)


# --- the flow model -------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, ch: int, emb: int):
        super().__init__()
        self.n1, self.n2 = nn.GroupNorm(8, ch), nn.GroupNorm(8, ch)
        self.c1, self.c2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)
        self.film = nn.Linear(emb, 2 * ch)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, x, e):
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, 1)
        h = self.n2(h) * (1 + scale) + shift
        return x + self.c2(F.silu(h))


class FlowUNet(nn.Module):
    """Velocity v(x, σ, class) on 3x16x16.  The image is pixel-unshuffled to 12x8x8 (a 2x2 "patchify", as
    latent models see their input); a 8x8 level (c1 channels) and a 4x4 level (c2 channels, two residual
    blocks around a self-attention over its 16 positions) with one skip; pixel-shuffled back."""

    def __init__(self, c1: int = 32, c2: int = 64, emb: int = 64, classes: int = 10):
        super().__init__()
        self.cls = nn.Embedding(classes, emb)
        self.temb = nn.Sequential(nn.Linear(32, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(12, c1, 3, padding=1)
        self.b1 = ResBlock(c1, emb)
        self.down = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.b2 = ResBlock(c2, emb)
        self.attn = nn.MultiheadAttention(c2, 4, batch_first=True)
        self.attn_norm = nn.GroupNorm(8, c2)
        self.b2b = ResBlock(c2, emb)
        self.up = nn.Conv2d(c2, c1, 1)
        self.b3 = ResBlock(c1, emb)
        self.out_norm = nn.GroupNorm(8, c1)
        self.out = nn.Conv2d(c1, 12, 3, padding=1)

    def forward(self, x, sigma, y):
        e = F.silu(self.temb(timestep_embedding(sigma * 1000.0)) + self.cls(y))
        h1 = self.b1(self.inp(F.pixel_unshuffle(x, 2)), e)
        h = self.b2(self.down(h1), e)
        t = self.attn_norm(h).flatten(2).transpose(1, 2)             # 16 tokens at 4x4
        h = h + self.attn(t, t, t, need_weights=False)[0].transpose(1, 2).reshape(h.shape)
        h = self.b2b(h, e)
        h = self.b3(F.interpolate(self.up(h), scale_factor=2, mode="nearest") + h1, e)
        return F.pixel_shuffle(self.out(F.silu(self.out_norm(h))), 2)


class ShiftedFlowSchedule:
    """SD3's discrete-flow sigmas: σ(t) = shift·t / (1 + (shift−1)·t) at evenly spaced t; level = t."""

    def __init__(self, shift: float = SHIFT):
        self.shift = float(shift)

    def sigma(self, t: float) -> float:
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def schedule(self, steps: int) -> torch.Tensor:
        ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return torch.tensor([self.sigma(float(t)) for t in ts], dtype=torch.float32)

    def level(self, sigma: float) -> float:
        s = min(max(float(sigma), 0.0), 1.0)
        return s / (self.shift - (self.shift - 1.0) * s)


class Flow:
    """The trained velocity net as a k-diffusion denoiser: D(x, σ) = x − σ·v(x, σ, class)."""

    def __init__(self, net: FlowUNet, sched: ShiftedFlowSchedule):
        self.net, self.sched = net, sched

    def denoise(self, x: torch.Tensor, sigma: float, y: torch.Tensor) -> torch.Tensor:
        s = torch.full((x.shape[0],), float(sigma))
        return x - float(sigma) * self.net(x, s, y)


def train_flow(x0s: torch.Tensor, ys: torch.Tensor, steps: int, seed: int = 1, batch: int = 128, lr: float = 2e-3,
               ema_decay: float = 0.995, log=print, c1: int = 32, c2: int = 64, emb: int = 64) -> Flow:
    torch.manual_seed(seed)  # training only; the search never touches the global RNG
    net = FlowUNet(c1=c1, c2=c2, emb=emb)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    ema = [p.detach().clone() for p in net.parameters()]
    for it in range(steps):
        idx = torch.randint(len(ys), (batch,), generator=g)
        x0, y = x0s[idx], ys[idx]
        sigma = torch.sigmoid(torch.randn(batch, generator=g))        # logit-normal (0, 1), as SD3
        eps = torch.randn(x0.shape, generator=g)
        s = sigma.reshape(-1, 1, 1, 1)
        x = (1 - s) * x0 + s * eps
        loss = F.mse_loss(net(x, sigma, y), eps - x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_sched.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + it) / (10 + it))
            for e, p in zip(ema, net.parameters()):
                e.mul_(d).add_(p.detach(), alpha=1 - d)
        if log and (it + 1) % max(1, steps // 4) == 0:
            log(f"  flow step {it + 1}/{steps}: loss {loss.item():.4f}")
    with torch.no_grad():
        for e, p in zip(ema, net.parameters()):
            p.copy_(e)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Flow(net, ShiftedFlowSchedule())


# --- verifier and judge ---------------------------------------------------------------------------------------
class ShapesVerifier(nn.Module):
    """The search's classifier: two conv + max-pool stages and an MLP head."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)


class ShapesJudge(nn.Module):
    """The held-out judge: 5x5 stem, strided convs, global average + max pooling, 64-d features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 24, 5, padding=2), nn.GELU(), nn.Conv2d(24, 48, 3, stride=2, padding=1),
                                  nn.GELU(), nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv2d(64, 64, 3, padding=1), nn.GELU())
        self.proj = nn.Sequential(nn.Linear(128, 64), nn.GELU())
        self.head = nn.Linear(64, 10)

    def features(self, x):
        h = self.conv(x)
        return self.proj(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))

    def forward(self, x):
        return self.head(self.features(x))


# --- the host -------------------------------------------------------------------------------------------------
class FlowHost(ToyHost):
    """tests/toy_host.py's ToyHost (prediction "flow") plus ComfyUI's ``euler_ancestral_RF`` sampler (η = 1),
    whose in-sampler noise of row j at step i is keyed by (seeds[j], i) like the toy host's ancestral one."""

    SAMPLERS = ("euler", "euler_ancestral_RF")

    def __init__(self, denoiser, scorer, *, shape=SHAPE, steps: int = 10, sampler: str = "euler", micro_batch: int = 0,
                 schedule=None, counter=None):
        if sampler not in self.SAMPLERS:
            raise ValueError(f"flow host has no sampler '{sampler}'; it has {', '.join(self.SAMPLERS)}")
        super().__init__(denoiser, scorer, shape=shape, steps=steps, sampler="euler", prediction="flow",
                         micro_batch=micro_batch, schedule=schedule or ShiftedFlowSchedule(), counter=counter)
        self.sampler_name = sampler

    def with_steps(self, steps: int) -> "FlowHost":
        return FlowHost(self.denoiser, self.scorer, shape=self.shape, steps=steps, sampler=self.sampler_name,
                        micro_batch=self.micro_batch, schedule=self.sched, counter=self.counter)

    def _run(self, x, start, end, seeds: Sequence[int]):
        x0 = None
        for i in range(start, end):
            s, s_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
            x0 = self.denoiser(x, s)
            self.counter["nfe"] += x.shape[0]
            if self.sampler_name == "euler":
                x = x + (x - x0) / s * (s_next - s)
            elif s_next == 0:
                x = x0
            else:  # comfy.k_diffusion.sampling.sample_euler_ancestral_RF, eta = 1
                sigma_down = s_next * s_next / s
                alpha_next, alpha_down = 1 - s_next, 1 - sigma_down
                renoise = math.sqrt(max(s_next ** 2 - sigma_down ** 2 * alpha_next ** 2 / alpha_down ** 2, 0.0))
                r = sigma_down / s
                x = r * x + (1 - r) * x0
                x = (alpha_next / alpha_down) * x + unit_noise(x.shape, [derive_seed(sd, i) for sd in seeds]) * renoise
        return x, x0
