"""One entry point for every search algorithm: a :class:`Strategy` plus a host.

``run_strategy(strategy, host, candidates=N, top_k=k, seed=s)`` returns
``(SearchReport, finalists)`` (finalists: see :mod:`search.common`).  The NFE
budget is ``strategy.budget_nfe``, or N × (NFEs per full generation on the
host) when that is 0.  With ``coarse_steps`` > 0 the algorithm runs on a
coarser schedule and its finalists are re-rendered at full steps
(:mod:`search.coarse_to_fine`; ``params["rerender"]``, default max(top_k, 4)
capped by what the budget allows).

Parameters (``params``), with defaults:

* random: none; N = budget // NFEs per generation.
* zero_order: neighbours=2, cosine=0.95.
* paths: paths=2, noises_per_path=4, start_level=0.11, forward=0.78, backward=0.81 (segmentable sampler).
* particles: particles=0 (as many as the budget holds), interval=1, potential="max", lam=10.0,
  ess_threshold=0.0 (always resample), resampling="multinomial" (stochastic sampler).
* evolution: population=8, elites=2, tournament=2, mutation=0.2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from .coarse_to_fine import coarse_to_fine
from .common import check_budget, generation_nfe, payload
from .evolution import evolution_search
from .host import SearchHost, check_segmentable, final_latents
from .noise import Candidate, seeds_for, wrap_seed
from .paths import paths_search
from .particles import particle_search
from .random_search import random_search
from .report import SearchReport
from .zero_order import zero_order_search

ALGORITHMS = ("random", "zero_order", "paths", "particles", "evolution")
_PARAMS = {
    "random": set(),
    "zero_order": {"neighbours", "cosine"},
    "paths": {"paths", "noises_per_path", "start_level", "forward", "backward"},
    "particles": {"particles", "interval", "potential", "lam", "ess_threshold", "resampling"},
    "evolution": {"population", "elites", "tournament", "mutation"},
}


@dataclass(frozen=True)
class Strategy:
    name: str
    params: Dict[str, Any] = field(default_factory=dict)
    budget_nfe: int = 0
    coarse_steps: int = 0


def random_over_host(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1,
                     verifier: str = "verifier") -> Tuple[SearchReport, List[Dict[str, Any]]]:
    """Best of N = budget // (NFEs per generation) candidate noises (seeds base+i)."""
    gen = generation_nfe(host)
    check_budget(budget_nfe, gen, "random search (one generation)")
    n = int(budget_nfe) // gen
    seeds = seeds_for(wrap_seed(seed), 0, n)
    cands = [Candidate(i, s) for i, s in enumerate(seeds)]

    def evaluate(chunk):
        cs = [c.seed for c in chunk]
        noise = host.initial_noise(cs)
        state, _ = host.sample(host.start(noise), host.steps, cs)
        lat = final_latents(state)
        return host.score(lat), gen, [payload(lat[j:j + 1], noise[j:j + 1], s) for j, s in enumerate(cs)]

    # the host micro-batches by itself: hand it all candidates at once
    report, kept = random_search(cands, evaluate, top_k=top_k, micro_batch=n, verifier=verifier)
    best, trace = float("-inf"), []
    for c in report.candidates:  # best score against NFEs, candidate by candidate
        best = max(best, c.score)
        trace.append({"round": c.index, "nfe": (c.index + 1) * gen, "best": best})
    report.trace = trace
    report.nfe_per_generation = gen
    report.settings = {"candidates": n, "budget_nfe": int(budget_nfe)}
    by_index = {c.index: c for c in report.candidates}
    finalists = []
    for c in report.ranked()[:top_k]:
        f = dict(kept[c.index])
        f["result"] = by_index[c.index]
        finalists.append(f)
    return report, finalists


def _runner(name: str, params: Dict[str, Any], seed: int, verifier: str):
    unknown = set(params) - _PARAMS[name] - {"rerender"}
    if unknown:
        raise ValueError(f"unknown parameter(s) for {name}: {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(_PARAMS[name])) or 'none'}")
    kw = {k: v for k, v in params.items() if k in _PARAMS[name]}
    fn = {"random": random_over_host, "zero_order": zero_order_search, "paths": paths_search,
          "particles": particle_search, "evolution": evolution_search}[name]

    def run(host: SearchHost, budget: int, top_k: int):
        return fn(host, seed=seed, budget_nfe=budget, top_k=top_k, verifier=verifier, **kw)
    return run


def run_strategy(strategy: Strategy, host: SearchHost, *, candidates: int, top_k: int, seed: int,
                 verifier: str = "verifier") -> Tuple[SearchReport, List[Dict[str, Any]]]:
    name = strategy.name
    if name not in ALGORITHMS:
        raise ValueError(f"unknown search algorithm '{name}'; pick one of {', '.join(ALGORITHMS)}")
    if name == "paths":
        check_segmentable(host.sampler_name, "Search over paths")
    gen = generation_nfe(host)
    budget = int(strategy.budget_nfe) or int(candidates) * gen
    if budget <= 0:
        raise ValueError(f"the NFE budget must be positive, got {budget} (candidates {candidates})")
    params = dict(strategy.params or {})
    run = _runner(name, params, seed, verifier)
    if strategy.coarse_steps:
        rerender, factor = int(params.get("rerender", 0)), 1.0
        if name == "paths":  # a path's lineage re-walks its re-noised stretches: it costs more than one generation
            n = int(params.get("paths", 2))
            st, fw, bw = (float(params.get(k, d)) for k, d in (("start_level", 0.11), ("forward", 0.78),
                                                                ("backward", 0.81)))
            rounds = math.ceil(st / (bw - fw)) if st > 0 and bw > fw else 0
            factor = (1.0 - st) + rounds * min(1.0, bw)
            rerender = min(rerender or n, n)
        elif name == "particles":
            k = int(params.get("particles", 0)) or int(candidates)
            rerender = min(rerender or 2, k)
        report, finalists = coarse_to_fine(host, run, algorithm=name, coarse_steps=int(strategy.coarse_steps),
                                           budget_nfe=budget, rerender=rerender, top_k=top_k,
                                           verifier=verifier, replay_factor=factor)
    else:
        report, finalists = run(host, budget, top_k)
    report.settings.setdefault("budget_nfe", budget)
    return report, finalists
