"""Pieces shared by the algorithms that run over a :class:`~.host.SearchHost`:
score checking, budgets, the top-k keeper that makes :class:`~.report.Finalist`
objects, derived noise and full generations."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .host import SearchHost, final_latents
from .noise import candidate_noises
from .report import CandidateResult, Finalist

# Tags that separate the derived random streams of the algorithms (derive_seed's first part after the base seed).
TAG_ZO, TAG_PATHS, TAG_PARTICLES, TAG_EVOLUTION = 0x2050, 0x9A75, 0xF4C1, 0xE701
TAG_TREE = 0x7EE5


class NonFiniteScoreError(ValueError):
    pass


def checked_scores(scores: torch.Tensor, n: int, labels: Sequence[str], verifier: str = "verifier") -> List[float]:
    """The scores as floats, refused (with the first bad sample named) when a count is wrong or one is
    NaN / +inf.  The one NaN check of the pack: every algorithm and the composable scorer use it.  -inf is
    kept: a remote grader set to score a failed answer -inf (verifiers/remote.py) ranks that sample last."""
    s = scores.detach().float().cpu().reshape(-1)
    if s.numel() != n:
        raise ValueError(f"the {verifier} returned {s.numel()} scores for {n} samples")
    out = s.tolist()
    bad = [lab for lab, v in zip(labels, out) if not (math.isfinite(v) or v == -math.inf)]
    if bad:
        raise NonFiniteScoreError(
            f"the {verifier} returned a non-finite score (NaN or inf) for {len(bad)} sample(s), first: {bad[0]}. "
            "The verifier's weights or the decoded images are broken: check the verifier file, or run the VAE "
            "in fp32 (--fp32-vae) if it overflows in fp16.")
    return out


def score_x0(host: SearchHost, latents: torch.Tensor) -> torch.Tensor:
    """Scores of x0-predictions (part-way previews, not finished candidates): the host's ``score_preview``
    when it has one (ComfyUI's host keeps previews out of the held-out verifier's sample), else ``score``."""
    return getattr(host, "score_preview", host.score)(latents)


def top_k_indices(scores: Sequence[float], k: int) -> List[int]:
    """Indices of the k highest scores, best first; ties go to the lower index."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order[:max(0, k)]


def generation_nfe(host: SearchHost) -> int:
    """NFEs per row of one full generation on this host (index 0 to the end)."""
    n = int(host.nfe(0, host.steps))
    if n <= 0:
        raise ValueError("the host's schedule has no steps, so nothing can be searched")
    return n


def derived_noise(like: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """Unit Gaussian noise shaped like one row of ``like``, one row per derived seed."""
    return candidate_noises(like.shape, seeds, dtype=like.dtype)


def check_budget(budget_nfe: int, need: int, what: str) -> None:
    if int(budget_nfe) < need:
        raise ValueError(f"an NFE budget of {budget_nfe} is too small for {what}, which needs at least {need} NFEs; "
                         "raise the budget (or the candidates), or lower the algorithm's size")


def check_top_k(top_k: int, most: int, what: str) -> None:
    if not 1 <= int(top_k) <= int(most):
        raise ValueError(f"top_k ({top_k}) must be between 1 and {what} ({most}): lower top_k or raise the budget")


def finalist(latent: torch.Tensor, noise: Optional[torch.Tensor] = None, seed: Optional[int] = None,
             recipe: Optional[Dict[str, Any]] = None, batch: Optional[int] = None) -> Finalist:
    """A finalist without its result yet (the keeper attaches it)."""
    rec = None if recipe is None else {"seed": int(recipe["seed"]), "ops": [tuple(op) for op in recipe["ops"]]}
    return Finalist(latent=latent.detach().clone(), result=None,  # type: ignore[arg-type]
                    noise=None if noise is None else noise.detach().clone(),
                    seed=None if seed is None else int(seed), recipe=rec, batch=batch)


class TopK:
    """Keeps the k best candidates seen (ties: the earlier candidate wins), so
    memory stays O(k) however long the search runs."""

    def __init__(self, k: int):
        self.k = max(1, int(k))
        self.items: List[tuple] = []  # (score, index, Finalist)

    def offer(self, score: float, index: int, item: Finalist) -> None:
        self.items.append((float(score), int(index), item))
        self.items.sort(key=lambda t: (-t[0], t[1]))
        del self.items[self.k:]

    def finalists(self, results: Dict[int, CandidateResult]) -> List[Finalist]:
        out = []
        for _, index, item in self.items:
            item.result = results[index]
            out.append(item)
        return out


def end_level(host: SearchHost, index: int) -> float:
    """A schedule position as a noise level for a recipe: the end of the schedule is 0 exactly."""
    return 0.0 if int(index) >= int(host.steps) else float(host.level(int(index)))


def render(host: SearchHost, noises: torch.Tensor, seeds: Sequence[int]) -> Tuple[torch.Tensor, int, List]:
    """Full generation of unit ``noises``: (final latents, NFEs spent in total, micro-batch of each row or Nones)."""
    state, _ = host.sample(host.start(noises), host.steps, list(seeds))
    batch = state.batch if state.batch is not None else [None] * len(state)
    return final_latents(state), int(host.nfe(0, host.steps)) * int(noises.shape[0]), list(batch)
