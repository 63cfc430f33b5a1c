"""Zero-order search (ZO-N, Ma et al. 2025 §3.2).

The pivot starts as the candidate noise of the base seed and is generated and
scored first (its NFEs count against the budget).  Each round draws N
neighbours on the sphere of the pivot's norm,

    y = ‖x‖ · (t·u + √(1−t²)·w),   u = x/‖x‖,   w ⟂ u, ‖w‖ = 1,

(w: Gram–Schmidt of a seeded Gaussian; t: the cosine similarity to the pivot,
0.95 by default as in tt-scale-flux; larger t = smaller step), generates and
scores each, and moves the pivot to the best neighbour **only if it beats the
pivot's score**.  If no neighbour wins, the pivot stays and the next round
draws fresh neighbours (new seeds).  Rounds run until the budget has no room
for another generation; the last round may have fewer than N neighbours so the
budget is used the same way as random search's.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch

from .common import TAG_ZO, TopK, check_budget, check_top_k, checked_scores, derived_noise, finalist, generation_nfe, render
from .host import SearchHost, derive_seed
from .noise import wrap_seed
from .registry import Algorithm, Param
from .report import CandidateResult, Finalist, SearchReport


def neighbour(pivot: torch.Tensor, cosine: float, direction_seed: int) -> torch.Tensor:
    """A point with cosine similarity ``cosine`` to ``pivot`` and the same norm."""
    if not -1.0 <= cosine <= 1.0:
        raise ValueError(f"the cosine similarity must lie in [-1, 1], got {cosine}")
    x = pivot.reshape(-1).double()
    norm = x.norm()
    if norm == 0:
        raise ValueError("the pivot noise is zero, so it has no direction to search around")
    u = x / norm
    g = derived_noise(pivot, [direction_seed]).reshape(-1).double()
    w = g - (g @ u) * u
    w = w / w.norm()
    y = norm * (cosine * u + math.sqrt(max(0.0, 1.0 - cosine * cosine)) * w)
    return y.reshape(pivot.shape).to(pivot.dtype)


def zero_order_search(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1, verifier: str = "verifier",
                      **params) -> Tuple[SearchReport, List[Finalist]]:
    p = ALGORITHM.resolve(params)
    neighbours, cosine = p["neighbours"], p["cosine"]
    gen = generation_nfe(host)
    check_budget(budget_nfe, gen, "zero-order search (the pivot's own generation)")
    max_evals = int(budget_nfe) // gen
    check_top_k(top_k, max_evals, f"the {max_evals} generations the budget allows")

    base = wrap_seed(seed)
    report = SearchReport(algorithm="zero_order", top_k=top_k, verifier=verifier, nfe_per_generation=gen,
                          settings={"neighbours": neighbours, "cosine": float(cosine), "budget_nfe": int(budget_nfe),
                                    "pivot_moves": 0})
    keep = TopK(top_k)
    results: Dict[int, CandidateResult] = {}
    spent = 0

    pivot = host.initial_noise([base])
    latents, nfe, batch = render(host, pivot, [base])
    spent += nfe
    label = f"zo pivot (seed {base})"
    pivot_score = checked_scores(host.score(latents), 1, [label], verifier)[0]
    results[0] = CandidateResult(index=0, seed=base, score=pivot_score, nfe=gen, noise_id=label)
    keep.offer(pivot_score, 0, finalist(latents[0:1], pivot, base, batch=batch[0]))
    report.trace.append({"round": 0, "nfe": spent, "best": pivot_score, "pivot": pivot_score})
    next_index, rnd = 1, 0

    while spent + gen <= budget_nfe:
        rnd += 1
        n = min(neighbours, (int(budget_nfe) - spent) // gen)
        dir_seeds = [derive_seed(base, TAG_ZO, rnd, j, 0) for j in range(n)]
        run_seeds = [derive_seed(base, TAG_ZO, rnd, j, 1) for j in range(n)]
        noises = torch.cat([neighbour(pivot, cosine, s) for s in dir_seeds])
        latents, nfe, batch = render(host, noises, run_seeds)
        spent += nfe
        labels = [f"zo r{rnd} n{j} (pivot seed {base})" for j in range(n)]
        scores = checked_scores(host.score(latents), n, labels, verifier)
        for j in range(n):
            results[next_index] = CandidateResult(index=next_index, seed=None, score=scores[j], nfe=gen,
                                                  noise_id=labels[j])
            keep.offer(scores[j], next_index, finalist(latents[j:j + 1], noises[j:j + 1], run_seeds[j],
                                                       batch=batch[j]))
            next_index += 1
        j_best = max(range(n), key=lambda j: (scores[j], -j))
        if scores[j_best] > pivot_score:
            pivot, pivot_score = noises[j_best:j_best + 1], scores[j_best]
            report.settings["pivot_moves"] += 1
        report.trace.append({"round": rnd, "nfe": spent, "best": max(c.score for c in results.values()),
                             "pivot": pivot_score})

    report.candidates = [results[i] for i in sorted(results)]
    report.nfe_total = spent
    report.settings["rounds"] = rnd
    report.finalize()
    return report, keep.finalists(results)


ALGORITHM = Algorithm(
    name="zero_order", run=zero_order_search, title="Zero-Order Search", node="ZeroOrderStrategy",
    description=("Zero-order search (ZO-N, Ma et al. 2025): a pivot noise and N neighbours on the sphere around it; "
                 "the best neighbour becomes the pivot if it beats it, otherwise the pivot stays and fresh "
                 "neighbours are drawn; rounds until the budget is spent. Any sampler."),
    params=(
        Param("neighbours", 2, "N neighbours per round (the paper: 2 for text-to-image).", min=1, max=256),
        Param("cosine", 0.95, "Cosine similarity of each neighbour to the pivot (norm kept). LARGER = a SMALLER "
                              "step (1.0 would be the pivot itself); smaller = bigger jumps, closer to random search.",
              min=0.0, max=0.9999, step=0.005),
    ),
    samplers="any", replay="noise")
