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

__all__ = [
    "candidate_noise", "candidate_noises", "Candidate",
    "NFECounter", "nfe_per_generation", "UnknownNFEError",
    "run_in_micro_batches", "plan_micro_batch",
    "CandidateResult", "SearchReport",
    "random_search", "top_k_indices",
]
