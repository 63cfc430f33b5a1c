"""NOISE objects in ComfyUI's protocol (``.seed`` and ``.generate_noise(latent)``),
usable by SamplerCustomAdvanced on current ComfyUI."""
from __future__ import annotations

from typing import Sequence


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
