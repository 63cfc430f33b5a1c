"""Coarse-to-fine: search cheaply on a coarser schedule, re-render the best at full steps.

Any algorithm whose finalists carry a starting noise (random, zero-order,
evolution) runs on ``host.with_steps(coarse_steps)`` with the budget minus the
re-render cost; its top ``rerender`` finalists are then generated again on the
full host from the same noises (and sampler seeds), scored, and the best
``top_k`` of those are the finalists (``rerender`` 0: max(top_k, 4), fewer if
the budget cannot hold that many coarse and full generations).  Path algorithms (paths, particles) have
no single starting noise to replay, so they are refused.

The report's candidates are the re-rendered ones with their full-step scores;
``settings["coarse_scores"]`` holds their coarse scores in the same order and
``settings["coarse_report"]`` the inner search's report.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import torch

from .common import TopK, check_budget, checked_scores, generation_nfe, payload, render
from .host import SearchHost
from .report import CandidateResult, SearchReport

# inner(host, budget_nfe, top_k) -> (report, finalists)
Inner = Callable[[SearchHost, int, int], Tuple[SearchReport, List[Dict[str, Any]]]]

REPLAYABLE = ("random", "zero_order", "evolution")


def coarse_to_fine(host: SearchHost, inner: Inner, *, algorithm: str, coarse_steps: int, budget_nfe: int,
                   rerender: int = 0, top_k: int = 1, verifier: str = "verifier") -> Tuple[SearchReport, List[Dict[str, Any]]]:
    if algorithm not in REPLAYABLE:
        raise ValueError(f"coarse-to-fine re-renders finalists from their starting noise, which '{algorithm}' does "
                         f"not have (its samples are built along a path of re-noised or resampled states); use it "
                         f"with one of: {', '.join(REPLAYABLE)}, or set coarse_steps to 0")
    if not 1 <= coarse_steps < host.steps:
        raise ValueError(f"coarse_steps must be between 1 and the full step count minus one ({host.steps - 1}), "
                         f"got {coarse_steps}")
    full_gen = generation_nfe(host)
    coarse = host.with_steps(int(coarse_steps))
    coarse_gen = generation_nfe(coarse)
    if not rerender:  # default: max(top_k, 4), as many as the budget holds with their coarse generation
        rerender = max(1, min(max(top_k, 4), int(budget_nfe) // (full_gen + coarse_gen)))
    if not 1 <= top_k <= rerender:
        raise ValueError(f"top_k must be between 1 and the number re-rendered at full steps ({rerender}), got {top_k}")
    coarse_budget = int(budget_nfe) - rerender * full_gen
    check_budget(budget_nfe, rerender * full_gen + rerender * coarse_gen,
                 f"coarse-to-fine re-rendering {rerender} finalist(s) at full steps after a coarse search")
    inner_report, inner_final = inner(coarse, coarse_budget, rerender)
    if len(inner_final) < rerender:
        raise ValueError(f"the coarse search returned {len(inner_final)} finalists, fewer than the {rerender} to re-render")
    if any(f["noise"] is None for f in inner_final):
        raise ValueError(f"coarse-to-fine: '{algorithm}' returned a finalist without a starting noise")
    noises = torch.cat([f["noise"] for f in inner_final])
    seeds = [f["seed"] for f in inner_final]
    latents, nfe = render(host, noises, seeds)
    labels = [f"{f['result'].noise_id} (coarse rank {i + 1})" for i, f in enumerate(inner_final)]
    scores = checked_scores(host.score(latents), rerender, labels, verifier)
    report = SearchReport(algorithm=f"coarse_to_fine({algorithm})", top_k=top_k, verifier=verifier,
                          nfe_per_generation=full_gen, rerender_nfe=nfe,
                          settings={"coarse_steps": int(coarse_steps), "rerender": int(rerender),
                                    "budget_nfe": int(budget_nfe), "coarse_nfe": inner_report.nfe_total,
                                    "coarse_scores": [f["result"].score for f in inner_final],
                                    "coarse_report": inner_report.to_dict()})
    keep = TopK(top_k)
    results: Dict[int, CandidateResult] = {}
    for i, f in enumerate(inner_final):
        res = f["result"]
        results[i] = CandidateResult(index=i, seed=res.seed, score=scores[i], nfe=full_gen, noise_id=labels[i])
        keep.offer(scores[i], i, payload(latents[i:i + 1], noises[i:i + 1], seeds[i]))
    report.trace = [dict(t) for t in inner_report.trace]
    report.nfe_total = inner_report.nfe_total + nfe
    report.trace.append({"round": len(report.trace), "nfe": report.nfe_total, "best": max(scores), "full_steps": True})
    report.candidates = [results[i] for i in range(rerender)]
    report.finalize()
    return report, keep.finalists(results)
