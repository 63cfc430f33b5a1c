"""Candidate identity and starting noise.

Candidate ``i`` of a search with base seed ``s`` has seed ``s + i`` and its
starting noise is exactly what ComfyUI's ``comfy.sample.prepare_noise`` gives a
batch-1 latent for that seed: ``torch.randn`` on the CPU from a generator
seeded with the seed.  The tensor depends only on (shape, seed), never on the
micro-batch the candidate is sampled in, its position in it, or the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

# ComfyUI seeds are unsigned 64-bit; torch.Generator.manual_seed accepts that range.
SEED_MAX = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Candidate:
    """Identity of one candidate: its index in the search, its seed and, for
    noises that are not a plain seed (neighbours, mutations), an id naming how
    it was made."""

    index: int
    seed: Optional[int]
    noise_id: str = ""

    def label(self) -> str:
        if self.noise_id:
            return self.noise_id
        return f"seed {self.seed}"


def wrap_seed(seed: int) -> int:
    """Seeds past 2**64-1 wrap around, like ComfyUI's seed widget range."""
    return int(seed) & SEED_MAX


def candidate_noise(shape: Sequence[int], seed: int, dtype=torch.float32) -> torch.Tensor:
    """Starting noise of one candidate, shape ``(1, *shape[1:])``."""
    shape = [1] + list(shape)[1:]
    gen = torch.Generator(device="cpu")
    gen.manual_seed(wrap_seed(seed))
    return torch.randn(shape, dtype=dtype, generator=gen, device="cpu")


def candidate_noises(shape: Sequence[int], seeds: Iterable[int], dtype=torch.float32) -> torch.Tensor:
    """Starting noises of several candidates stacked on dim 0; row ``j`` is
    ``candidate_noise(shape, seeds[j])`` whatever the other seeds are."""
    return torch.cat([candidate_noise(shape, s, dtype) for s in seeds], dim=0)


def seeds_for(base_seed: int, start: int, count: int) -> list[int]:
    return [wrap_seed(base_seed + i) for i in range(start, start + count)]
