"""Search algorithms over diffusion starting noises, as plain torch code.

Nothing in this package imports ComfyUI: the host (ComfyUI, or a test double)
is reached through the small :class:`~.host.SearchHost` protocol, so every
algorithm can be unit-tested with a toy denoiser.  The algorithms are kept in
a registry by name (:mod:`.registry`); :func:`run_strategy` runs any of them.
"""
from .noise import candidate_noise, candidate_noises, Candidate
from .nfe import NFECounter, nfe_per_generation, UnknownNFEError
from .samplers import SAMPLERS, SamplerFacts
from .batching import run_in_micro_batches, plan_micro_batch
from .report import CandidateResult, Finalist, PhaseClock, SearchReport
from .registry import Algorithm, Param, UnsupportedSamplerError, algorithms, get as get_algorithm
from .common import NonFiniteScoreError, checked_scores, top_k_indices
from .host import SearchHost, State, derive_seed
from .random_search import random_search
from .zero_order import zero_order_search, neighbour
from .paths import paths_search
from .particles import particle_search, resample_indices, effective_sample_size
from .evolution import evolution_search
from .halving import halving_search
from .coarse_to_fine import coarse_to_fine
from .stopping import StopRule, Stopper
from .strategies import Strategy, budget_of, run_strategy

__all__ = [
    "candidate_noise", "candidate_noises", "Candidate",
    "NFECounter", "nfe_per_generation", "UnknownNFEError", "SAMPLERS", "SamplerFacts",
    "run_in_micro_batches", "plan_micro_batch",
    "CandidateResult", "Finalist", "PhaseClock", "SearchReport",
    "Algorithm", "Param", "UnsupportedSamplerError", "algorithms", "get_algorithm",
    "NonFiniteScoreError", "checked_scores", "top_k_indices",
    "SearchHost", "State", "derive_seed",
    "random_search", "zero_order_search", "neighbour", "paths_search", "particle_search", "resample_indices",
    "effective_sample_size", "evolution_search", "halving_search", "coarse_to_fine",
    "StopRule", "Stopper", "Strategy", "budget_of", "run_strategy",
]
