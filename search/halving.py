"""Successive halving on x0-predictions: start many candidates, keep the best part-way, finish only those.

N candidate noises (seeds base+i, exactly random search's candidates, so a
stock KSampler with a finalist's seed replays it) are denoised together.  At
each prune point the x0-prediction of every live candidate (what the sampler's
last step predicted, so free of NFEs) is scored and only the best ``keep``
fraction (at least ``top_k``; ties: the lower index) goes on.  The survivors of
the last prune point are denoised to the end, scored, and the best ``top_k``
are the finalists.

Prune points are ``rounds`` noise levels evenly spaced from ``first_level`` to
``last_level``, as fractions of **your schedule's** noise span (1 = where it
starts, 0 = its clean end; the same scale as search over paths), each at the
nearest schedule step (at least one step after the previous one, before the
end).  N is the most candidates whose whole run fits the budget, so at equal
NFEs halving starts more candidates than random search finishes.

Whether pruning on x0-predictions is safe depends on the model: the report's
``settings["rank_correlation"]`` gives, for each prune point, the Spearman
rank correlation between the candidates' scores there and their final scores,
over the candidates that reached the end (a value near 0 means that prune was
close to a coin toss).  Needs a single-step (segmentable) sampler.

Early stopping: one observation per prune point (the best x0 score); when the
rule fires the ``top_k`` best are finished at once.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .common import (TopK, check_budget, check_top_k, checked_scores, finalist, generation_nfe, score_x0,
                     top_k_indices)
from .host import SearchHost, final_latents
from .noise import seeds_for, wrap_seed
from .paths import relative_levels
from .registry import Algorithm, Param
from .report import CandidateResult, Finalist, SearchReport
from .stopping import StopRule, Stopper


def prune_points(host: SearchHost, rounds: int, first_level: float, last_level: float) -> List[int]:
    """The schedule indices of the prune points (strictly increasing, between 1 and T-1; may be fewer than
    ``rounds`` on a short schedule)."""
    T = int(host.steps)
    rel = relative_levels(host)
    if rounds == 1:
        levels = [float(first_level)]
    else:
        levels = [first_level + (last_level - first_level) * r / (rounds - 1) for r in range(rounds)]
    out: List[int] = []
    for lv in levels:
        i = min(range(T + 1), key=lambda j: (abs(rel[j] - lv), j))
        i = max(i, (out[-1] + 1) if out else 1)
        if i <= T - 1:
            out.append(i)
    return out


def survivors(n: int, keep: float, rounds: int, top_k: int) -> List[int]:
    """Live candidates in each stage: n, then ceil(previous * keep) at each prune point (at least top_k)."""
    out = [int(n)]
    for _ in range(rounds):
        out.append(min(out[-1], max(int(top_k), math.ceil(out[-1] * float(keep) - 1e-9))))
    return out


def cost_of(host: SearchHost, live: Sequence[int], points: Sequence[int]) -> int:
    """NFEs of a run with ``live[s]`` candidates in stage s (stages split at the prune points)."""
    bounds = [0] + list(points) + [int(host.steps)]
    return sum(int(live[s]) * int(host.nfe(bounds[s], bounds[s + 1])) for s in range(len(bounds) - 1))


def plan_cost(host: SearchHost, n: int, keep: float, points: Sequence[int], top_k: int) -> int:
    return cost_of(host, survivors(n, keep, len(points), top_k), points)


def fill_last_stage(host: SearchHost, live: List[int], points: Sequence[int], budget_nfe: int) -> List[int]:
    """The planned survivors with the last stage widened by what the budget has left (never beyond the
    candidates alive before the last prune), so the budget is spent as far as whole runs allow."""
    if not points:
        return list(live)
    left = int(budget_nfe) - cost_of(host, live, points)
    per = int(host.nfe(points[-1], int(host.steps)))
    out = list(live)
    out[-1] = min(out[-2], out[-1] + max(0, left) // max(1, per))
    return out


def candidates_for_budget(host: SearchHost, budget_nfe: int, keep: float, points: Sequence[int], top_k: int) -> int:
    """The most starting candidates whose whole run fits the budget (0 if not even top_k fit)."""
    n = 0
    while plan_cost(host, n + 1, keep, points, top_k) <= int(budget_nfe):
        n += 1
    return n


def spearman(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (average ranks for ties); None below 3 pairs or with a constant side."""
    if len(a) < 3:
        return None

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for t in range(i, j + 1):
                r[order[t]] = (i + j) / 2.0
            i = j + 1
        return r

    ra, rb = ranks(list(a)), ranks(list(b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


def _scores(host: SearchHost, latents, labels, verifier, final: bool) -> List[float]:
    """Scores of these rows; with a relative verifier, recombined over every row scored so far."""
    first = int(getattr(host, "scored_rows", 0))
    s = checked_scores(host.score(latents) if final else score_x0(host, latents), len(labels), labels, verifier)
    if bool(getattr(host, "relative", False)):
        s = host.rescore().reshape(-1).tolist()[first:first + len(labels)]
    return s


def halving_search(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1, verifier: str = "verifier",
                   stop: StopRule = None, **params) -> Tuple[SearchReport, List[Finalist]]:
    p = ALGORITHM.resolve(params)
    ALGORITHM.check_sampler(host.sampler_name)
    keep, T = float(p["keep"]), int(host.steps)
    gen = generation_nfe(host)
    check_budget(budget_nfe, gen * int(top_k), f"successive halving with top_k {top_k} (one generation each)")
    points = prune_points(host, int(p["rounds"]), float(p["first_level"]), float(p["last_level"]))
    n = int(p["starts"]) or candidates_for_budget(host, budget_nfe, keep, points, top_k)
    check_top_k(top_k, n, "the number of candidates")
    need = plan_cost(host, n, keep, points, top_k)
    check_budget(budget_nfe, need, f"successive halving with {n} candidates")
    live_plan = survivors(n, keep, len(points), top_k)
    if not p["starts"]:
        live_plan = fill_last_stage(host, live_plan, points, budget_nfe)
    base = wrap_seed(seed)
    report = SearchReport(algorithm="halving", top_k=top_k, verifier=verifier, nfe_per_generation=gen,
                          settings={"started": n, "keep": keep, "budget_nfe": int(budget_nfe),
                                    "prune_indices": points, "prune_levels": [relative_levels(host)[i] for i in points],
                                    "planned_survivors": live_plan, "stages": [], "rank_correlation": []})
    if not points:
        report.notes.append(f"successive halving: a {T}-step schedule has no step to prune at between the start and "
                            "the end, so this was a random search")
    seeds = seeds_for(base, 0, n)
    noise = host.initial_noise(seeds)
    state = host.start(noise)
    alive = list(range(n))              # candidate index of each live row
    early: Dict[int, List[float]] = {}  # candidate -> its x0 scores at the prune points it reached
    spent = 0
    stopper = Stopper(stop, "prune rounds")
    for r, point in enumerate(points):
        start = state.index
        state, x0 = host.sample(state, point, [seeds[i] for i in alive])
        spent += len(alive) * int(host.nfe(start, point))
        labels = [f"halving x0 at step {point}: candidate {i} (seed {seeds[i]})" for i in alive]
        sc = _scores(host, x0, labels, verifier, final=False)
        for i, v in zip(alive, sc):
            early.setdefault(i, []).append(v)
        fired = stopper.see(max(sc), spent)
        k = top_k if fired else live_plan[r + 1]
        best = top_k_indices(sc, k)
        report.settings["stages"].append({"index": point, "live": len(alive), "candidates": list(alive),
                                          "kept": [alive[j] for j in best], "scores": sc})
        report.trace.append({"round": r + 1, "nfe": spent, "best": max(sc), "index": point})
        state = state.select(best)
        alive = [alive[j] for j in best]
        if fired:
            break
    start = state.index
    state, _ = host.sample(state, T, [seeds[i] for i in alive])
    spent += len(alive) * int(host.nfe(start, T))
    latents = final_latents(state)
    labels = [f"halving candidate {i} (seed {seeds[i]})" for i in alive]
    final = _scores(host, latents, labels, verifier, final=True)
    keeper = TopK(top_k)
    results: Dict[int, CandidateResult] = {}
    for row, (i, v) in enumerate(zip(alive, final)):
        results[i] = CandidateResult(index=i, seed=seeds[i], score=v, nfe=gen, noise_id=labels[row])
        keeper.offer(v, i, finalist(latents[row:row + 1], noise[i:i + 1], seeds[i]))
    for r in range(len(report.settings["stages"])):
        rho = spearman([early[i][r] for i in alive], final)
        report.settings["rank_correlation"].append(rho)
    report.trace.append({"round": len(report.settings["stages"]) + 1, "nfe": spent, "best": max(final), "index": T})
    report.candidates = [results[i] for i in sorted(results)]
    report.settings["finished"] = len(alive)
    report.nfe_total = spent
    stopper.close(report, budget_nfe, spent)
    if spent < int(budget_nfe) and not stopper.fired:
        if p["starts"]:
            report.settings["unspent_reason"] = (f"starts is fixed at {n} (0 sizes the search from the budget), so "
                                                 "the rest was left")
        else:
            report.settings["unspent_reason"] = (f"one more candidate would need "
                                                 f"{plan_cost(host, n + 1, keep, points, top_k) - need} NFEs and one "
                                                 f"more finisher {int(host.nfe(points[-1], T)) if points else gen}")
    report.finalize()
    return report, keeper.finalists(results)


def _check(p: Dict[str, Any]) -> None:
    if p["rounds"] > 1 and not p["first_level"] > p["last_level"]:
        raise ValueError(f"successive halving: first_level ({p['first_level']}) must be above last_level "
                         f"({p['last_level']}): prune points go from noisy to clean")


ALGORITHM = Algorithm(
    name="halving", run=halving_search, title="Successive Halving (x0 pruning)", node="SuccessiveHalvingStrategy",
    description=("Successive halving on x0-predictions (in the spirit of TTSnap / LatSearch): start more candidates "
                 "than random search could finish, score each one's x0-prediction part-way (no extra NFEs) and "
                 "finish only the best fraction. The report gives the rank correlation between the early and the "
                 "final scores, so you can see whether pruning was safe for your model. Finalists replay in a stock "
                 "KSampler from their seed. Needs a single-step sampler."),
    params=(
        Param("starts", 0, "Candidates started; 0 = as many as the budget holds (more than random search could "
                           "finish).", min=0, max=65536),
        Param("keep", 0.5, "Fraction of the live candidates kept at each prune point (at least top_k).",
              min=0.05, max=0.95, step=0.05),
        Param("rounds", 1, "Prune points.", min=1, max=16),
        Param("first_level", 0.4, "Noise level of the first prune point, as a fraction of your schedule's noise "
                                  "span (1 = start, 0 = clean). Earlier (higher) prunes save more but their "
                                  "x0-predictions predict the final score less well.", min=0.05, max=0.95, step=0.05),
        Param("last_level", 0.2, "With rounds > 1: noise level of the last prune point (same scale; below "
                                 "first_level); the others lie evenly between.", min=0.05, max=0.95, step=0.05),
    ),
    samplers="segmentable", finalists="noise", check=_check)
