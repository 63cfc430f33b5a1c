"""Zero-order search (ZO-N, Ma et al. 2025 §3.2), with a best-of-a-few start and an adaptive step.

Start: ``start_noises`` plain candidate noises (seeds base+i, exactly random
search's first candidates, so a stock KSampler replays them) are generated and
scored; the best (ties: the lowest index) is the first pivot.  ``start_noises``
= 1 is the paper's single starting pivot; the default 8 keeps the search from
exploiting a poor first pool (on the benchmark's hard setting the best of 4
fresh digits was wrong for a third of the prompts, all 4 for 21 %, and
neighbours of a wrong pivot were right less often than fresh noises), so up to
8 generations the search is exactly random search (the report says so).

Each round draws N neighbours on the sphere of the pivot's norm,

    y = ‖x‖ · (t·u + √(1−t²)·w),   u = x/‖x‖,   w ⟂ u, ‖w‖ = 1,

(w: Gram–Schmidt of a seeded Gaussian; t = cos θ, the cosine similarity to the
pivot; larger t = smaller step), generates and scores each, and moves the
pivot to the best neighbour **only if it beats the pivot's score** (ties: the
pivot stays; among neighbours the lowest index wins).  If no neighbour wins,
the pivot stays, fresh neighbours are drawn and the step **grows**: the angle
θ is multiplied by ``step_growth`` (capped at 90°, where a neighbour is as far
from the pivot as an independent noise); after a win it returns to the base
angle θ₀ = arccos(``cosine``).  ``step_growth`` = 1 is the paper's fixed step.

Rounds run until the budget has no room for another generation; the last
round may have fewer than N neighbours, so the whole budget is spent (in
whole generations) as random search spends it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch

from .common import TAG_ZO, TopK, check_budget, check_top_k, derived_noise, generation_nfe
from .evaluate import Evaluator, noise_finalist
from .host import SearchHost, derive_seed
from .noise import seeds_for, wrap_seed
from .registry import Algorithm, Param
from .report import CandidateResult, Finalist, SearchReport
from .stopping import StopRule, Stopper

MAX_ANGLE = math.pi / 2


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


def step_cosines(cosine: float, growth: float, rounds: int) -> List[float]:
    """The cosine of each round after ``rounds`` rounds in a row without a win (0, 1, 2...)."""
    theta0 = math.acos(min(1.0, max(-1.0, float(cosine))))
    return [math.cos(min(MAX_ANGLE, theta0 * float(growth) ** r)) if theta0 < MAX_ANGLE else float(cosine)
            for r in range(rounds)]


def zero_order_search(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1, verifier: str = "verifier",
                      stop: StopRule = None, dispatch=None, member_names=(), **params
                      ) -> Tuple[SearchReport, List[Finalist]]:
    """``dispatch``: None = every candidate on this host; else each round's noises go to the dispatcher's
    executors in chunks (``search/evaluate.py``): the same scores, pivots and finalists."""
    p = ALGORITHM.resolve(params)
    evaluate = Evaluator(host, verifier, dispatch)
    neighbours, cosine, growth = p["neighbours"], p["cosine"], p["step_growth"]
    gen = generation_nfe(host)
    check_budget(budget_nfe, gen, "zero-order search (the pivot's own generation)")
    max_evals = int(budget_nfe) // gen
    check_top_k(top_k, max_evals, f"the {max_evals} generations the budget allows")
    n_start = min(int(p["start_noises"]), max_evals)

    base = wrap_seed(seed)
    report = SearchReport(algorithm="zero_order", top_k=top_k, verifier=verifier, nfe_per_generation=gen,
                          settings={"neighbours": neighbours, "cosine": float(cosine), "budget_nfe": int(budget_nfe),
                                    "start_noises": n_start, "step_growth": float(growth), "pivot_moves": 0,
                                    "cosines": []})
    if max_evals <= int(p["start_noises"]):
        report.notes.append(f"zero-order: the budget holds {max_evals} generation(s), no more than the "
                            f"{p['start_noises']} starting noises, so this was a random search over {n_start}")
    keep = TopK(top_k)
    results: Dict[int, CandidateResult] = {}
    spent = 0
    stopper = Stopper(stop, "candidates", minimum=top_k)  # checked after each round (rounds never depend on the host)

    seeds = seeds_for(base, 0, n_start)
    starts = host.initial_noise(seeds)
    labels = [f"zo start {i} (seed {s})" for i, s in enumerate(seeds)]
    scores, latents, nfe, batch = evaluate(starts, seeds, labels)
    spent += nfe
    for i in range(n_start):
        results[i] = CandidateResult(index=i, seed=seeds[i], score=scores[i], nfe=gen, noise_id=labels[i])
        keep.offer(scores[i], i, noise_finalist(latents[i], starts[i:i + 1], seeds[i], batch=batch[i]))
        stopper.see(scores[i], (i + 1) * gen)
    i_best = max(range(n_start), key=lambda i: (scores[i], -i))
    pivot, pivot_score, pivot_label = starts[i_best:i_best + 1], scores[i_best], labels[i_best].split(" (")[0]
    report.trace.append({"round": 0, "nfe": spent, "best": pivot_score, "pivot": pivot_score})
    next_index, rnd, misses = n_start, 0, 0

    while spent + gen <= budget_nfe and not stopper.fired:
        rnd += 1
        t = step_cosines(cosine, growth, misses + 1)[-1]
        report.settings["cosines"].append(t)
        n = min(neighbours, (int(budget_nfe) - spent) // gen)
        dir_seeds = [derive_seed(base, TAG_ZO, rnd, j, 0) for j in range(n)]
        run_seeds = [derive_seed(base, TAG_ZO, rnd, j, 1) for j in range(n)]
        noises = torch.cat([neighbour(pivot, t, s) for s in dir_seeds])
        labels = [f"zo r{rnd} n{j} (pivot {pivot_label}, seed {base})" for j in range(n)]
        scores, latents, nfe, batch = evaluate(noises, run_seeds, labels)
        spent += nfe
        for j in range(n):
            results[next_index] = CandidateResult(index=next_index, seed=None, score=scores[j], nfe=gen,
                                                  noise_id=labels[j])
            keep.offer(scores[j], next_index, noise_finalist(latents[j], noises[j:j + 1], run_seeds[j],
                                                             batch=batch[j]))
            next_index += 1
            stopper.see(scores[j], spent - (n - 1 - j) * gen)
        j_best = max(range(n), key=lambda j: (scores[j], -j))
        if scores[j_best] > pivot_score:
            pivot, pivot_score = noises[j_best:j_best + 1], scores[j_best]
            pivot_label = labels[j_best].split(" (")[0]
            report.settings["pivot_moves"] += 1
            misses = 0
        else:
            misses += 1
        report.trace.append({"round": rnd, "nfe": spent, "best": max(c.score for c in results.values()),
                             "pivot": pivot_score, "cosine": t})

    report.candidates = [results[i] for i in sorted(results)]
    report.nfe_total = spent
    report.settings["rounds"] = rnd
    if dispatch is not None:
        report.settings["dispatch"] = {"executors": int(dispatch.executors()), "tasks": evaluate.tasks,
                                       "failed": dict(dispatch.dead)}
    stopper.close(report, budget_nfe, spent)
    if spent < int(budget_nfe) and not stopper.fired:
        report.settings["unspent_reason"] = (f"the remaining {int(budget_nfe) - spent} NFEs are less than one "
                                             f"generation ({gen} NFEs)")
    report.finalize()
    return report, keep.finalists(results)


ALGORITHM = Algorithm(
    name="zero_order", run=zero_order_search, title="Zero-Order Search", node="ZeroOrderStrategy",
    description=("Zero-order search (ZO-N, Ma et al. 2025): a pivot noise (the best of a few random starts) and N "
                 "neighbours on the sphere around it; the best neighbour becomes the pivot if it beats it, "
                 "otherwise the pivot stays, fresh neighbours are drawn and the step grows; rounds until the "
                 "budget is spent. Any sampler. Ties go to the lowest candidate index."),
    params=(
        Param("neighbours", 4, "N neighbours per round (the paper: 2 for text-to-image, 2-4 on ImageNet).",
              min=1, max=256),
        Param("cosine", 0.66, "Cosine similarity of each neighbour to the pivot (norm kept) for the base step. "
                             "LARGER = a SMALLER step (1.0 would be the pivot itself; tt-scale-flux uses 0.95); "
                             "smaller = bigger jumps, closer to random search.",
              min=0.0, max=0.9999, step=0.005),
        Param("start_noises", 8, "Random starting noises (random search's candidates); the best is the first "
                                 "pivot (1 = the paper's single pivot). Enough of them that the pivot is seldom "
                                 "from a poor pool; up to this many generations the search is a plain random "
                                 "search.", min=1, max=4096, optional=True),
        Param("step_growth", 1.5, "After a round in which no neighbour beats the pivot, the step angle is "
                                  "multiplied by this (up to 90 degrees); a win resets it. 1 = the paper's fixed "
                                  "step.", min=1.0, max=4.0, step=0.05, optional=True),
    ),
    samplers="any", finalists="noise", dispatch="noises")
