"""Search algorithms over diffusion starting noises, as plain torch code.

Nothing in this package imports ComfyUI: the host (ComfyUI, or a test double)
is reached through the small :class:`~.host.SearchHost` protocol, so every
algorithm can be unit-tested with a toy denoiser.
"""
from .noise import candidate_noise, candidate_noises, Candidate
from .nfe import NFECounter, nfe_per_generation, UnknownNFEError
from .batching import run_in_micro_batches, plan_micro_batch
from .report import CandidateResult, SearchReport
from .random_search import random_search, top_k_indices
from .host import SearchHost, State, derive_seed, check_segmentable, check_stochastic, UnsupportedSamplerError
from .zero_order import zero_order_search, neighbour
from .paths import paths_search
from .particles import particle_search, resample_indices, effective_sample_size
from .evolution import evolution_search
from .coarse_to_fine import coarse_to_fine
from .strategies import Strategy, run_strategy, random_over_host, ALGORITHMS

__all__ = [
    "candidate_noise", "candidate_noises", "Candidate",
    "NFECounter", "nfe_per_generation", "UnknownNFEError",
    "run_in_micro_batches", "plan_micro_batch",
    "CandidateResult", "SearchReport",
    "random_search", "top_k_indices",
    "SearchHost", "State", "derive_seed", "check_segmentable", "check_stochastic", "UnsupportedSamplerError",
    "zero_order_search", "neighbour", "paths_search", "particle_search", "resample_indices",
    "effective_sample_size", "evolution_search", "coarse_to_fine",
    "Strategy", "run_strategy", "random_over_host", "ALGORITHMS",
]
