"""A SearchHost (search/host.py) over any k-diffusion-style denoiser, with no ComfyUI.

* ``prediction="eps"``: x = latent + σ·noise (ComfyUI's EPS/V_PREDICTION
  noise scaling); schedules from a VP-discrete sigma table (SD's linear betas),
  noise level = timestep / 999.
* ``prediction="flow"``: x = (1−σ)·latent + σ·noise (ComfyUI's CONST, rectified
  flow); schedule linspace(1, 0), noise level = σ.

Samplers: ``euler`` and ``euler_ancestral`` (k-diffusion's formulas, η = 1;
ancestral on eps only).  In-sampler noise of row j at step i is keyed by
(seeds[j], i), so it depends neither on batch mates nor on segmenting.
``micro_batch`` > 0 runs the denoiser over chunks of that many rows.
``nfe_rows`` counts denoiser rows (the real NFE spend), ``score_rows`` verifier rows.

:class:`GaussianToy` is the analytic denoiser for data x0 ~ N(mu, s²I): its
x0-prediction E[x0 | x_σ] is exact, so the probability flow is known.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from search.host import State, derive_seed, unit_noise
from search.noise import candidate_noises


class VPDiscrete:
    """SD-style discrete sigmas (linear betas 0.00085..0.012 in sqrt space, 1000 timesteps)."""

    def __init__(self, timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        ac = torch.cumprod(1.0 - betas, 0)
        self.sigmas = ((1 - ac) / ac).sqrt()
        self.log_sigmas = self.sigmas.log()

    def sigma(self, t: float) -> float:
        t = min(max(float(t), 0.0), len(self.sigmas) - 1.0)
        lo = int(math.floor(t))
        hi = min(lo + 1, len(self.sigmas) - 1)
        w = t - lo
        return float(((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp())

    def timestep(self, sigma: float) -> float:
        if sigma <= 0:
            return 0.0
        ls = math.log(sigma)
        d = ls - self.log_sigmas
        lo = int((d >= 0).cumsum(0).argmax().clamp(max=len(self.sigmas) - 2))
        hi = lo + 1
        low, high = float(self.log_sigmas[lo]), float(self.log_sigmas[hi])
        w = min(max((low - ls) / (low - high), 0.0), 1.0)
        return (1 - w) * lo + w * hi

    def schedule(self, steps: int) -> torch.Tensor:
        ts = torch.linspace(len(self.sigmas) - 1, 0, steps, dtype=torch.float64)
        return torch.tensor([self.sigma(float(t)) for t in ts] + [0.0], dtype=torch.float32)

    def level(self, sigma: float) -> float:
        return self.timestep(sigma) / (len(self.sigmas) - 1)


class FlowSchedule:
    def schedule(self, steps: int) -> torch.Tensor:
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)

    def level(self, sigma: float) -> float:
        return float(sigma)


class GaussianToy:
    """Exact denoiser for x0 ~ N(mu, s²I); ``mu`` shaped like one latent row."""

    def __init__(self, mu: torch.Tensor, s: float, prediction: str = "eps"):
        self.mu, self.s, self.prediction = mu, float(s), prediction

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        s2 = self.s ** 2
        if self.prediction == "eps":
            return self.mu + s2 / (s2 + sigma ** 2) * (x - self.mu)
        a = 1.0 - sigma
        return self.mu + a * s2 / (a * a * s2 + sigma ** 2) * (x - a * self.mu)


class ToyHost:
    def __init__(self, denoiser: Callable[[torch.Tensor, float], torch.Tensor], scorer: Callable[[torch.Tensor], torch.Tensor],
                 *, shape=(1, 4, 8, 8), steps: int = 10, sampler: str = "euler", prediction: str = "eps",
                 micro_batch: int = 0, schedule=None, counter=None):
        if prediction not in ("eps", "flow"):
            raise ValueError(prediction)
        if sampler not in ("euler", "euler_ancestral"):
            raise ValueError(f"toy host has no sampler '{sampler}'")
        if sampler == "euler_ancestral" and prediction == "flow":
            raise ValueError("the toy host's ancestral sampler is for eps models only")
        self.denoiser, self.scorer = denoiser, scorer
        self.shape, self.prediction, self.sampler_name, self.micro_batch = tuple(shape), prediction, sampler, micro_batch
        self.sched = schedule or (VPDiscrete() if prediction == "eps" else FlowSchedule())
        self.sigmas = self.sched.schedule(steps)
        # shared with the hosts made by with_steps, so a coarse-to-fine run is counted whole
        self.counter = counter if counter is not None else {"nfe": 0, "score": 0, "calls": [], "scores": []}
        self.relative = False
        self.nfe_predict = 1

    @property
    def nfe_rows(self) -> int:
        return self.counter["nfe"]

    @property
    def score_rows(self) -> int:
        return self.counter["score"]

    @property
    def sample_calls(self):  # (start, end, rows) per call
        return self.counter["calls"]

    # --- the protocol -----------------------------------------------------------------
    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        return candidate_noises(self.shape, list(seeds))

    def start(self, noise: torch.Tensor) -> State:
        return State(noise.clone(), torch.zeros_like(noise), 0)

    def sample(self, state: State, end: int, seeds: Sequence[int]):
        if not state.index < end <= self.steps:
            raise ValueError(f"sample from index {state.index} to {end}: nothing to run or past the end")
        if len(seeds) != len(state):
            raise ValueError("one seed per row")
        self.sample_calls.append((state.index, end, len(state)))
        x = self.x_of(state)
        mb = self.micro_batch or len(state)
        outs, x0s = [], []
        for c in range(0, len(state), mb):
            xc, x0c = self._run(x[c:c + mb], state.index, end, list(seeds[c:c + mb]))
            outs.append(xc)
            x0s.append(x0c)
        x, x0 = torch.cat(outs), torch.cat(x0s)
        return State(torch.zeros_like(x), self.inverse_scale(float(self.sigmas[end]), x), end,
                     [min(mb, len(state) - c) for c in range(0, len(state), mb) for _ in range(min(mb, len(state) - c))]), x0

    def predict_x0(self, state: State, seeds: Sequence[int]) -> torch.Tensor:
        if state.index >= self.steps:
            return state.latent
        x = self.x_of(state)
        self.counter["nfe"] += x.shape[0]
        return self.denoiser(x, float(self.sigmas[state.index]))

    def nfe(self, start: int, end: int) -> int:
        return max(0, int(end) - int(start))

    def renoise(self, state: State, index: int, noise: torch.Tensor) -> State:
        if index > state.index:
            raise ValueError("renoise goes back to an earlier (noisier) index")
        si, sj = float(self.sigmas[state.index]), float(self.sigmas[index])
        x = self.x_of(state)
        if self.prediction == "eps":
            xj = x + math.sqrt(max(sj * sj - si * si, 0.0)) * noise
        else:
            r = (1 - sj) / (1 - si)
            xj = r * x + math.sqrt(max(sj * sj - (si * r) ** 2, 0.0)) * noise
        if self.prediction == "flow" and sj >= 1.0:
            return State(xj, torch.zeros_like(xj), index)
        return State(torch.zeros_like(xj), self.inverse_scale(sj, xj), index)

    def score(self, latents: torch.Tensor) -> torch.Tensor:
        self.counter["score"] += latents.shape[0]
        s = self.scorer(latents)
        self.counter["scores"].append(s.detach().float().reshape(-1))
        return s

    @property
    def scored_rows(self) -> int:
        return self.counter["score"]

    def rescore(self) -> torch.Tensor:
        return torch.cat(self.counter["scores"]) if self.counter["scores"] else torch.zeros(0)

    def level(self, index: int) -> float:
        return self.sched.level(float(self.sigmas[index]))

    def index_at_level(self, level: float) -> int:
        d = [abs(self.level(i) - level) for i in range(self.steps + 1)]
        return min(range(len(d)), key=lambda i: (d[i], i))

    def with_steps(self, steps: int) -> "ToyHost":
        return ToyHost(self.denoiser, self.scorer, shape=self.shape, steps=steps, sampler=self.sampler_name,
                       prediction=self.prediction, micro_batch=self.micro_batch, schedule=self.sched,
                       counter=self.counter)

    # --- helpers ----------------------------------------------------------------------
    def x_of(self, state: State) -> torch.Tensor:
        """The sampler's input x for a state (ComfyUI's noise_scaling)."""
        s = float(self.sigmas[state.index])
        if self.prediction == "eps":
            return state.latent + s * state.noise
        return (1 - s) * state.latent + s * state.noise

    def inverse_scale(self, sigma: float, x: torch.Tensor) -> torch.Tensor:
        return x if self.prediction == "eps" else x / (1 - sigma)

    def _run(self, x, start, end, seeds):
        x0 = None
        for i in range(start, end):
            s, s_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
            x0 = self.denoiser(x, s)
            self.counter["nfe"] += x.shape[0]
            d = (x - x0) / s
            if self.sampler_name == "euler" or s_next == 0:
                x = x + d * (s_next - s)
            else:
                s_up = min(s_next, math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
                s_down = math.sqrt(s_next ** 2 - s_up ** 2)
                x = x + d * (s_down - s)
                x = x + unit_noise(x.shape, [derive_seed(sd, i) for sd in seeds]) * s_up
        return x, x0


def target_scorer(target: torch.Tensor):
    """Score = −mean squared distance to ``target`` (higher is better)."""
    def score(latents: torch.Tensor) -> torch.Tensor:
        return -((latents - target) ** 2).flatten(1).mean(1)
    return score


def gaussian_host(*, prediction="eps", sampler="euler", steps=10, micro_batch=0, shape=(1, 4, 8, 8), s=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g) * 0.3
    target = mu + s * torch.randn(shape, generator=g)
    return ToyHost(GaussianToy(mu, s, prediction), target_scorer(target), shape=shape, steps=steps, sampler=sampler,
                   prediction=prediction, micro_batch=micro_batch)


# (algorithm, params, sampler): the strategies every shared algorithm test runs on the toy host
STRATEGIES = [
    ("random", {}, "euler"),
    ("zero_order", {"neighbours": 3, "cosine": 0.9}, "euler"),
    ("paths", {"paths": 2, "noises_per_path": 3}, "euler"),
    ("particles", {"interval": 3, "potential": "difference", "lam": 5.0}, "euler_ancestral"),
    ("particles", {"potential": "max", "ess_threshold": 0.5, "resampling": "systematic"}, "euler_ancestral"),
    ("evolution", {"population": 5, "elites": 2}, "euler"),
    ("zero_order", {}, "euler_ancestral"),
    ("evolution", {"population": 4, "elites": 1, "tournament": 3}, "euler_ancestral"),
    ("tree", {"parallel": 2}, "euler"),
    ("tree", {"screen": 3, "levels": 3, "parallel": 2}, "euler_ancestral"),
]


def mean_rank(m: torch.Tensor) -> torch.Tensor:
    """A relative verifier's rule over an N x M member matrix: each member's scores ranked, the ranks averaged."""
    r = torch.zeros_like(m)
    for j in range(m.shape[1]):
        r[m[:, j].argsort(), j] = torch.arange(m.shape[0], dtype=m.dtype)
    return r.mean(1)


def two_member_relative(hst, rescore: bool = False, recombined: bool = False):
    """``hst`` scored by a relative verifier of two members (its own score, and minus the latent's mean absolute
    value), recombined by :func:`mean_rank`: the member matrix is kept row by row as the search scores, and with
    ``rescore`` the host also recombines all of it (what the pipeline's host does at the end); with
    ``recombined`` its scores are the new rows' recombined over every row so far (what the pipeline's score book
    answers), else their first member's."""
    hst.relative = True
    book = []
    score = hst.score

    def scored(latents):
        s = score(latents)
        book.append(torch.stack([s, -latents.flatten(1).abs().mean(1)], 1))
        return mean_rank(torch.cat(book))[-s.shape[0]:] if recombined else s
    hst.score = scored
    hst.member_matrix = lambda first, count: torch.cat(book)[first:first + count]
    if rescore:
        hst.rescore = lambda: mean_rank(torch.cat(book))
    return hst
