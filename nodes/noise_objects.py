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
