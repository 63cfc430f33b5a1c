"""Coarse-to-fine: search cheaply on a coarser schedule, re-render the best at full steps.

Any algorithm whose finalists carry a starting noise (registry ``finalists="noise"``:
random, zero-order, evolution) runs on ``host.with_steps(coarse_steps)`` with the
budget minus the re-render cost; its top ``rerender`` finalists are then
generated again on the full host from the same noises (and sampler seeds),
scored, and the best ``top_k`` of those are the finalists (``rerender`` 0:
max(top_k, 4), fewer if the budget cannot hold that many coarse and full
generations).  Algorithms whose finalists carry a recipe (paths, particles)
replay each finalist's lineage on the full schedule instead.

The report's candidates are the re-rendered ones with their full-step scores;
``settings["coarse_scores"]`` holds their coarse scores in the same order and
``settings["coarse_report"]`` the inner search's report.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .common import TopK, check_budget, checked_scores, derived_noise, finalist, generation_nfe, render
from .host import SearchHost, State, final_latents
from .registry import get
from .report import CandidateResult, Finalist, SearchReport

# inner(host, budget_nfe, top_k) -> (report, finalists)
Inner = Callable[[SearchHost, int, int], Tuple[SearchReport, List[Finalist]]]


def _replay_plan(host: SearchHost, recipe: Dict[str, Any], close: bool = True) -> List[Tuple[str, int, int]]:
    """The recipe's operations as positions of ``host``'s schedule (``close``: ending with a sample to the
    end)."""
    plan, index = [], 0
    for op, level, s in recipe["ops"]:
        if op == "renoise":
            target = min(int(host.index_at_level(float(level))), index)
        else:
            target = int(host.steps) if float(level) <= 0.0 else int(host.index_at_level(float(level)))
            target = min(max(target, index + 1), int(host.steps))
        plan.append((op, target, int(s)))
        index = target
    if close and index < int(host.steps):  # a recipe always ends clean; on a coarser/finer grid make sure
        plan.append(("sample", int(host.steps), int(recipe["ops"][-1][2]) if recipe["ops"] else int(recipe["seed"])))
    return plan


def replay_cost(host: SearchHost, recipe: Dict[str, Any]) -> int:
    cost, index = 0, 0
    for op, target, _ in _replay_plan(host, recipe):
        if op == "sample":
            cost += int(host.nfe(index, target))
        index = target
    return cost


def replay(host: SearchHost, recipe: Dict[str, Any]) -> Tuple[torch.Tensor, int]:
    """Re-makes a path/particle sample on ``host``'s schedule: the same starting
    noise, re-noisings and sampler seeds, at the positions of the same noise levels."""
    state, _, nfe = lineage(host, recipe, close=True)
    return final_latents(state), nfe


def lineage(host: SearchHost, recipe: Dict[str, Any], close: bool = False
            ) -> Tuple[State, Optional[torch.Tensor], int]:
    """The state a recipe's operations leave its row in on ``host``'s own schedule (a path or particle part-way;
    ``close``: sampled on to the end, as :func:`replay` does), the x0-prediction of its last sampling segment
    (None if it has none) and the NFEs spent."""
    state = host.start(host.initial_noise([int(recipe["seed"])]))
    x0, nfe = None, 0
    for op, target, s in _replay_plan(host, recipe, close=close):
        if op == "renoise":
            if target < state.index:
                state = host.renoise(state, target, derived_noise(state.noise[0:1], [s]))
        elif target > state.index:
            start = state.index
            state, x0 = host.sample(state, target, [s])
            nfe += int(host.nfe(start, target))
    return state, x0, nfe


def coarse_to_fine(host: SearchHost, inner: Inner, *, algorithm: str, coarse_steps: int, budget_nfe: int,
                   rerender: int = 0, top_k: int = 1, verifier: str = "verifier",
                   replay_factor: float = 1.0) -> Tuple[SearchReport, List[Finalist]]:
    """``replay_factor``: a path/particle finalist's replay costs about this many
    full generations (paths re-walk their re-noised stretches); the budget keeps
    that much per finalist for the full-step stage."""
    if get(algorithm).finalists == "recipe":
        return _coarse_to_fine_recipes(host, inner, algorithm=algorithm, coarse_steps=coarse_steps,
                                       budget_nfe=budget_nfe, rerender=rerender, top_k=top_k, verifier=verifier,
                                       replay_factor=replay_factor)
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
    if any(f.noise is None for f in inner_final):
        raise ValueError(f"coarse-to-fine: '{algorithm}' returned a finalist without a starting noise")
    noises = torch.cat([f.noise for f in inner_final])
    seeds = [f.seed for f in inner_final]
    latents, nfe, batch = render(host, noises, seeds)
    labels = [f"{f.result.noise_id or f.result.seed} (coarse rank {i + 1})" for i, f in enumerate(inner_final)]
    scores = checked_scores(host.score(latents), rerender, labels, verifier)
    report = SearchReport(algorithm=f"coarse_to_fine({algorithm})", top_k=top_k, verifier=verifier,
                          nfe_per_generation=full_gen,
                          settings={"coarse_steps": int(coarse_steps), "rerender": int(rerender), "full_steps_nfe": nfe,
                                    "budget_nfe": int(budget_nfe), "coarse_nfe": inner_report.nfe_total,
                                    "coarse_scores": [f.result.score for f in inner_final],
                                    "coarse_report": inner_report.to_dict()})
    keep = TopK(top_k)
    results: Dict[int, CandidateResult] = {}
    for i, f in enumerate(inner_final):
        res = f.result
        results[i] = CandidateResult(index=i, seed=res.seed, score=scores[i], nfe=full_gen, noise_id=labels[i])
        keep.offer(scores[i], i, finalist(latents[i:i + 1], noises[i:i + 1], seeds[i], batch=batch[i]))
    report.trace = [dict(t) for t in inner_report.trace]
    report.nfe_total = inner_report.nfe_total + nfe
    report.trace.append({"round": len(report.trace), "nfe": report.nfe_total, "best": max(scores), "full_steps": True})
    report.candidates = [results[i] for i in range(rerender)]
    _carry(inner_report, report)
    report.finalize()
    return report, keep.finalists(results)


def _coarse_to_fine_recipes(host: SearchHost, inner: Inner, *, algorithm: str, coarse_steps: int, budget_nfe: int,
                            rerender: int, top_k: int, verifier: str,
                            replay_factor: float) -> Tuple[SearchReport, List[Finalist]]:
    if not 1 <= coarse_steps < host.steps:
        raise ValueError(f"coarse_steps must be between 1 and the full step count minus one ({host.steps - 1}), "
                         f"got {coarse_steps}")
    full_gen = generation_nfe(host)
    coarse = host.with_steps(int(coarse_steps))
    per_replay = max(full_gen, int(round(full_gen * max(1.0, float(replay_factor)))))
    if not rerender:
        rerender = max(top_k, 2)
    if not 1 <= top_k <= rerender:
        raise ValueError(f"top_k must be between 1 and the number re-rendered at full steps ({rerender}), got {top_k}")
    reserve = rerender * per_replay
    coarse_budget = int(budget_nfe) - reserve
    if coarse_budget <= 0:
        raise ValueError(f"an NFE budget of {budget_nfe} is too small for coarse-to-fine {algorithm}: re-rendering "
                         f"{rerender} finalist(s) at full steps needs about {reserve} NFEs before any coarse search; "
                         "raise the budget or lower the number of finalists")
    inner_report, inner_final = inner(coarse, coarse_budget, rerender)
    if any(f.recipe is None for f in inner_final):
        raise ValueError(f"coarse-to-fine: '{algorithm}' returned a finalist without its recipe")
    spent = inner_report.nfe_total
    latents, labels, costs, chosen = [], [], [], []
    for i, f in enumerate(inner_final):
        cost = replay_cost(host, f.recipe)
        if spent + cost > int(budget_nfe):
            break
        lat, nfe = replay(host, f.recipe)
        spent += nfe
        latents.append(lat)
        costs.append(nfe)
        chosen.append(f)
        labels.append(f"{f.result.noise_id} (coarse rank {i + 1}, replayed at full steps)")
    if len(chosen) < top_k:
        raise ValueError(f"coarse-to-fine {algorithm}: the budget of {budget_nfe} NFEs left room to replay only "
                         f"{len(chosen)} finalist(s) at full steps, fewer than top_k ({top_k}); raise the budget")
    lat = torch.cat(latents)
    scores = checked_scores(host.score(lat), len(chosen), labels, verifier)
    report = SearchReport(algorithm=f"coarse_to_fine({algorithm})", top_k=top_k, verifier=verifier,
                          nfe_per_generation=full_gen,
                          settings={"coarse_steps": int(coarse_steps), "rerender": len(chosen),
                                    "full_steps_nfe": sum(costs),
                                    "budget_nfe": int(budget_nfe), "coarse_nfe": inner_report.nfe_total,
                                    "coarse_scores": [f.result.score for f in chosen],
                                    "coarse_report": inner_report.to_dict()})
    keep = TopK(top_k)
    results: Dict[int, CandidateResult] = {}
    for i, f in enumerate(chosen):
        results[i] = CandidateResult(index=i, seed=None, score=scores[i], nfe=costs[i], noise_id=labels[i])
        keep.offer(scores[i], i, finalist(lat[i:i + 1], recipe=f.recipe))
    report.trace = [dict(t) for t in inner_report.trace]
    report.nfe_total = spent
    report.trace.append({"round": len(report.trace), "nfe": spent, "best": max(scores), "full_steps": True})
    report.candidates = [results[i] for i in range(len(chosen))]
    _carry(inner_report, report)
    report.finalize()
    return report, keep.finalists(results)


def _carry(inner: SearchReport, report: SearchReport) -> None:
    """The coarse search's notes and early stop, stated against the whole budget."""
    report.notes.extend(inner.notes)
    es = inner.settings.get("early_stop")
    if es is not None:
        es = dict(es, nfe_spent=report.nfe_total, budget_nfe=int(report.settings["budget_nfe"]))
        es["nfe_saved"] = max(0, es["budget_nfe"] - report.nfe_total) if es["stopped"] else 0
        report.settings["early_stop"] = es
        if es["stopped"]:
            report.settings["unspent_reason"] = inner.settings.get("unspent_reason", "early stopping")
