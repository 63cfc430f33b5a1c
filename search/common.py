"""Pieces shared by the algorithms that run over a :class:`~.host.SearchHost`.

A *finalist* is what every algorithm hands back, best first::

    {"latent": 1xCxHxW final clean latent,
     "noise":  1xCxHxW starting unit noise, or None when the candidate has no
               single starting noise (paths, particles),
     "seed":   int keying the sampler's in-sampler randomness when re-rendered
               from ``noise`` (None with no noise),
     "recipe": (paths, particles) how the sample was made, replayable on
               another schedule: {"seed": starting seed, "ops": [("sample",
               level, run seed) | ("renoise", level, noise seed), ...]},
     "result": its CandidateResult}

``CandidateResult.seed`` is set only when the starting noise is exactly
``candidate_noise(seed)``, i.e. when a stock KSampler with that seed gives the
same image; a derived noise (neighbour, mutation) has ``seed=None`` and says how
it was made in ``noise_id``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch

from .host import SearchHost, final_latents
from .noise import candidate_noises
from .random_search import NonFiniteScoreError
from .report import CandidateResult

# Tags that separate the derived random streams of the algorithms (derive_seed's first part after the base seed).
TAG_ZO, TAG_PATHS, TAG_PARTICLES, TAG_EVOLUTION = 0x2050, 0x9A75, 0xF4C1, 0xE701


def generation_nfe(host: SearchHost) -> int:
    """NFEs per row of one full generation on this host (index 0 to the end)."""
    n = int(host.nfe(0, host.steps))
    if n <= 0:
        raise ValueError("the host's schedule has no steps, so nothing can be searched")
    return n


def derived_noise(like: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """Unit Gaussian noise shaped like one row of ``like``, one row per derived seed."""
    return candidate_noises(like.shape, seeds, dtype=like.dtype)


def checked_scores(scores: torch.Tensor, n: int, labels: Sequence[str], verifier: str = "verifier") -> List[float]:
    s = scores.detach().float().cpu().reshape(-1)
    if s.numel() != n:
        raise ValueError(f"the {verifier} returned {s.numel()} scores for {n} samples")
    out = s.tolist()
    bad = [lab for lab, v in zip(labels, out) if not math.isfinite(v)]
    if bad:
        raise NonFiniteScoreError(
            f"the {verifier} returned a non-finite score (NaN or inf) for {len(bad)} sample(s), first: {bad[0]}. "
            "The verifier's weights or the decoded images are broken (e.g. a VAE overflowing in fp16).")
    return out


def check_budget(budget_nfe: int, need: int, what: str) -> None:
    if int(budget_nfe) < need:
        raise ValueError(f"an NFE budget of {budget_nfe} is too small for {what}, which needs at least {need} NFEs; "
                         "raise the budget (or the candidates), or lower the algorithm's size")


class TopK:
    """Keeps the payloads of the k best candidates seen (ties: the earlier
    candidate wins), so memory stays O(k) however long the search runs."""

    def __init__(self, k: int):
        self.k = max(1, int(k))
        self.items: List[tuple] = []  # (score, index, payload)

    def offer(self, score: float, index: int, payload: Dict[str, Any]) -> None:
        self.items.append((float(score), int(index), payload))
        self.items.sort(key=lambda t: (-t[0], t[1]))
        del self.items[self.k:]

    def finalists(self, results: Dict[int, CandidateResult]) -> List[Dict[str, Any]]:
        out = []
        for _, index, payload in self.items:
            f = dict(payload)
            f["result"] = results[index]
            out.append(f)
        return out


def payload(latent: torch.Tensor, noise: Optional[torch.Tensor], seed: Optional[int],
            recipe: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    out = {"latent": latent.detach().clone(), "noise": None if noise is None else noise.detach().clone(),
           "seed": None if seed is None else int(seed)}
    if recipe is not None:
        out["recipe"] = {"seed": int(recipe["seed"]), "ops": [tuple(op) for op in recipe["ops"]]}
    return out


def end_level(host: SearchHost, index: int) -> float:
    """A schedule position as a noise level for a recipe: the end of the schedule is 0 exactly."""
    return 0.0 if int(index) >= int(host.steps) else float(host.level(int(index)))


def render(host: SearchHost, noises: torch.Tensor, seeds: Sequence[int]):
    """Full generation of unit ``noises``: (final latents, NFEs spent in total)."""
    state, _ = host.sample(host.start(noises), host.steps, list(seeds))
    return final_latents(state), int(host.nfe(0, host.steps)) * int(noises.shape[0])
