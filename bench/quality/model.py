"""The benchmark's models, all trained from scratch on scikit-learn's 8x8 handwritten digits.

* a class-conditional EPS diffusion model (MLP; k-diffusion-style sigmas from
  SD's VP-discrete table, x = x0 + σ·ε, input scaled by 1/√(σ²+1));
* the **verifier**: an MLP classifier on split A (the diffusion model's split),
  score = log p(class | x0);
* the **judge**: a small CNN on split B, another seed, never seen by the
  search; its accuracy, log p and penultimate features (for the Fréchet
  distance) measure what the search really bought.

Pixels are scaled to [-1, 1]; shape 1x1x8x8.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for p in (REPO, os.path.join(REPO, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from toy_host import ToyHost, VPDiscrete  # noqa: E402  (the protocol-exact host of the tests)


@dataclass
class Data:
    x: torch.Tensor        # N x 1 x 8 x 8 in [-1, 1]
    y: torch.Tensor        # N
    split_a: torch.Tensor  # indices: diffusion model + verifier
    split_b: torch.Tensor  # indices: judge


def load_digits_data(seed: int = 0) -> Data:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.6 * len(y))
    return Data(x, y, perm[:cut], perm[cut:])


def timestep_embedding(t: torch.Tensor, dim: int = 32) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([a.sin(), a.cos()], dim=1)


class EpsMLP(nn.Module):
    def __init__(self, hidden: int = 256, classes: int = 10):
        super().__init__()
        self.cls = nn.Embedding(classes, 32)
        self.net = nn.Sequential(nn.Linear(64 + 32 + 32, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 64))

    def forward(self, x_in, t, y):
        h = torch.cat([x_in.flatten(1), timestep_embedding(t), self.cls(y)], dim=1)
        return self.net(h).reshape(x_in.shape)


class Diffusion:
    """The EPS model with its VP-discrete sigmas; ``denoiser(c)`` is D(x, σ) for class c."""

    def __init__(self, net: EpsMLP, sched: VPDiscrete):
        self.net, self.sched = net, sched
        self._t = {}  # sigma -> timestep (schedules repeat their sigmas)

    def denoise(self, x: torch.Tensor, sigma: float, y: torch.Tensor) -> torch.Tensor:
        t = self._t.get(sigma)
        if t is None:
            t = self._t[sigma] = self.sched.timestep(sigma)
        t = torch.full((x.shape[0],), t)
        c_in = 1.0 / math.sqrt(sigma * sigma + 1.0)
        return x - sigma * self.net(x * c_in, t, y)

    def denoiser(self, c):
        """D(x, σ) for class ``c``, or for one class per row when ``c`` is a tensor (then the host must
        run all rows in one call: micro_batch 0)."""
        def d(x, sigma):
            y = c if torch.is_tensor(c) else torch.full((x.shape[0],), int(c), dtype=torch.long)
            return self.denoise(x, sigma, y)
        return d


def train_diffusion(data: Data, steps: int, seed: int = 1, batch: int = 256, lr: float = 2e-3, log=print,
                    hidden: int = 256) -> Diffusion:
    torch.manual_seed(seed)  # training only; the search never touches the global RNG
    sched = VPDiscrete()
    net = EpsMLP(hidden=hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    xa, ya = data.x[data.split_a], data.y[data.split_a]
    g = torch.Generator().manual_seed(seed)
    sig_table = sched.sigmas.float()
    for it in range(steps):
        idx = torch.randint(len(ya), (batch,), generator=g)
        x0, y = xa[idx], ya[idx]
        t = torch.randint(0, 1000, (batch,), generator=g)
        sigma = sig_table[t].reshape(-1, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=g)
        x = x0 + sigma * eps
        pred = net(x / (sigma ** 2 + 1).sqrt(), t, y)
        loss = F.mse_loss(pred, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_sched.step()
        if log and (it + 1) % max(1, steps // 4) == 0:
            log(f"  diffusion step {it + 1}/{steps}: loss {loss.item():.4f}")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Diffusion(net, sched)


class VerifierMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                 nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)


class JudgeCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def features(self, x):
        return self.conv(x)

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier(make_net, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int, noise: float = 0.1,
                     batch: int = 128, lr: float = 2e-3) -> nn.Module:
    torch.manual_seed(seed)  # before the weights are initialised; training only, the search never uses it
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(y), (batch,), generator=g)
        xb = x[idx] + noise * torch.randn(x[idx].shape, generator=g)  # robust to slightly off samples
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def class_scorer(verifier: nn.Module, c):
    def score(latents: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(verifier(latents), dim=1)
        if torch.is_tensor(c):
            return lp[torch.arange(len(c)), c]
        return lp[:, int(c)]
    return score


def digits_host(diffusion: Diffusion, verifier: nn.Module, c, *, steps: int, sampler: str = "euler",
                micro_batch: int = 0) -> ToyHost:
    """The SearchHost of one prompt (class c) over the trained model; a tensor ``c`` (one class per row)
    gives a host that samples many prompts' single candidates at once (baselines)."""
    return ToyHost(diffusion.denoiser(c), class_scorer(verifier, c), shape=(1, 1, 8, 8), steps=steps,
                   sampler=sampler, prediction="eps", micro_batch=micro_batch, schedule=diffusion.sched)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    from scipy import linalg
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean, _ = linalg.sqrtm(c1 @ c2, disp=False)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))
