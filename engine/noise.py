"""Candidate noise on ComfyUI's side: NOISE objects in its protocol (``.seed``
and ``.generate_noise(latent)``, for SamplerCustomAdvanced on current ComfyUI),
and one in-sampler noise stream per candidate while a micro-batch samples."""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import torch

import comfy.k_diffusion.sampling as kds
import comfy.samplers

from . import compat
from ..search.noise import candidate_noises


class CandidateNoise:
    """The starting noises of candidates named by their seeds: row j is
    exactly ``comfy.sample.prepare_noise`` of a batch-1 latent for seeds[j]."""

    def __init__(self, seeds: Sequence[int], index_offset: int = 0):
        self.seeds = [int(s) for s in seeds]
        self.index_offset = int(index_offset)
        self.seed = self.seeds[0]

    def generate_noise(self, input_latent):
        latent = input_latent["samples"]
        n = len(self.seeds)
        if latent.shape[0] not in (1, n):
            raise ValueError(f"this NOISE holds {n} candidates but the latent has batch size {latent.shape[0]}: "
                             f"give the sampler a batch-1 latent (or a batch of {n})")
        return candidate_noises(latent.shape, self.seeds, dtype=latent.dtype)


class ExplicitNoise:
    """A starting noise that is a tensor, not a seed (zero-order neighbours,
    evolved noises): SamplerCustomAdvanced starts from exactly this tensor."""

    def __init__(self, noise, seed: int = 0):
        self.noise = noise.detach().cpu()
        self.seed = int(seed)

    def generate_noise(self, input_latent):
        latent = input_latent["samples"]
        if tuple(latent.shape[1:]) != tuple(self.noise.shape[1:]):
            raise ValueError(f"this NOISE has shape {tuple(self.noise.shape)} but the latent is {tuple(latent.shape)}: "
                             "use it with a latent of the size the search ran at")
        return self.noise.to(latent.dtype).expand(latent.shape[0], *self.noise.shape[1:]).clone()


# Samplers whose randomness comes only from k-diffusion's two noise factories
# (or none at all).  For these, every candidate of a micro-batch gets exactly
# the noise stream a stock batch-1 run with its own seed would draw.
_SEPARABLE_MODULES = {kds.__name__, "comfy.extra_samplers.uni_pc"}


def per_candidate_noise_supported(sampler) -> bool:
    fn = getattr(sampler, "sampler_function", None)
    mod = getattr(fn, "__module__", "")
    name = getattr(fn, "__name__", "")
    if mod in _SEPARABLE_MODULES:
        return True
    # ComfyUI wraps dpm_fast / dpm_adaptive in closures defined in samplers.py
    return mod == comfy.samplers.__name__ and name in ("dpm_fast_function", "dpm_adaptive_function")


class _RowNoise:
    """One micro-batch's noise factories: each batch row gets the stream that a batch-1 stock run with seed
    ``seeds[row]`` would get."""

    def __init__(self, seeds: Sequence[int], base_seed: int, initial_shape: Sequence[int]):
        self.seeds, self.base_seed, self.initial_shape = [int(s) for s in seeds], int(base_seed), initial_shape

    def default_noise_sampler(self, orig_default, x, seed=None, *a, **k):
        if compat.SEEDED_DEFAULT_NOISE:
            off = 0 if seed is None else int(seed) - self.base_seed
            per = [orig_default(x[i:i + 1], seed=int(s) + off, *a, **k) for i, s in enumerate(self.seeds)]
            return lambda sigma, sigma_next: torch.cat([f(sigma, sigma_next) for f in per])
        # 2024 host: stock batch 1 draws from the global generator that
        # prepare_noise(seed) left behind (CPU) or seeded (CUDA).
        gens = []
        for i, s in enumerate(self.seeds):
            g = torch.Generator(device=x.device)
            g.manual_seed(int(s))
            if x.device.type == "cpu":
                torch.randn([1] + list(self.initial_shape[1:]), generator=g)  # the initial noise draw
            gens.append(g)
        return lambda sigma, sigma_next: torch.cat(
            [torch.randn([1] + list(x.shape[1:]), generator=g, device=x.device, dtype=x.dtype, layout=x.layout)
             for g in gens])

    def tree(self, orig_tree, x, sigma_min, sigma_max, seed=None, *a, **k):
        off = 0 if seed is None else int(seed) - self.base_seed
        per = [orig_tree(x[i:i + 1], sigma_min, sigma_max, seed=int(s) + off, *a, **k)
               for i, s in enumerate(self.seeds)]
        return lambda sigma, sigma_next: torch.cat([f(sigma, sigma_next) for f in per])


# k-diffusion's two factories are module globals: they are replaced once (while any thread samples a micro-batch)
# by dispatchers that look up the calling thread's micro-batch, so devices sampling in parallel threads (nodes/
# devices.py) each keep their own rows' streams; a thread with none gets the originals.
_LOCAL = threading.local()
_LOCK = threading.Lock()
_ACTIVE = [0]
_ORIGINAL = {}


def _current():
    stack = getattr(_LOCAL, "stack", None)
    return stack[-1] if stack else None


def _install() -> None:
    orig_default, orig_tree = kds.default_noise_sampler, kds.BrownianTreeNoiseSampler
    _ORIGINAL.update(default=orig_default, tree=orig_tree)

    def default_noise_sampler(x, *a, **k):
        rows = _current()
        if rows is None:
            return orig_default(x, *a, **k)
        return rows.default_noise_sampler(orig_default, x, *a, **k)

    class BrownianTreeNoiseSampler:
        def __init__(self, x, sigma_min, sigma_max, *a, **k):
            rows = _current()
            if rows is None:
                self.fn = orig_tree(x, sigma_min, sigma_max, *a, **k)
            else:
                self.fn = rows.tree(orig_tree, x, sigma_min, sigma_max, *a, **k)

        def __call__(self, sigma, sigma_next):
            return self.fn(sigma, sigma_next)

    kds.default_noise_sampler = default_noise_sampler
    kds.BrownianTreeNoiseSampler = BrownianTreeNoiseSampler


@contextlib.contextmanager
def per_candidate_noise(seeds: Sequence[int], base_seed: int, initial_shape: Sequence[int]) -> Iterator[None]:
    """While active in this thread, k-diffusion's noise factories give each batch
    row the stream that a batch-1 stock run with seed ``seeds[row]`` would get.

    ``base_seed`` is the seed passed in extra_args for this batch; samplers that
    derive extra seeds (seed + k) keep their offset per candidate."""
    with _LOCK:
        if _ACTIVE[0] == 0:
            _install()
        _ACTIVE[0] += 1
    stack = getattr(_LOCAL, "stack", None)
    if stack is None:
        stack = _LOCAL.stack = []
    stack.append(_RowNoise(seeds, base_seed, initial_shape))
    try:
        yield
    finally:
        stack.pop()
        with _LOCK:
            _ACTIVE[0] -= 1
            if _ACTIVE[0] == 0:
                kds.default_noise_sampler = _ORIGINAL["default"]
                kds.BrownianTreeNoiseSampler = _ORIGINAL["tree"]
