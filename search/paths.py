"""Search over paths (Paths-N, Ma et al. 2025 §3.2), placed on the user's schedule.

Levels (``start_level``, ``forward`` Δf, ``backward`` Δb) are fractions of the
**user's schedule's own noise span**: with ``level(i)`` the host's noise level
of schedule position i, the relative level of i is
``(level(i) − level(T)) / (level(0) − level(T))`` (1 = where the schedule
starts, 0 = its clean end).  For a full text-to-image schedule this is the
model's noise timeline; for an img2img schedule that starts part-way it is
that part.  Positions are the nearest schedule indices.

1. N starting noises (seeds base+i) are denoised to the search start
   ``s`` = the index at ``start_level`` (at least 1, at most T−1).
2. Each round, from index c: every one of the N states is forward-noised
   M times (``host.renoise``, fresh seeded unit noise) to f = the index at
   rel(c)+Δf, **at least one step back** (f ≤ c−1), then denoised to b = the
   index at rel(c)+Δf−Δb (the end once that is ≤ 0), **at least one step
   further** (b ≥ c+1).  The x0-prediction of each of the N·M rows is scored
   (at the end of the schedule: the final latent) and the top N rows survive
   (ties: the lower row index, rows numbered parent-major).
3. At the end of the schedule the top-k rows of the last round are the
   finalists (the paper's closing random search among the survivors).

Budget (whole budget spent where it can be):

* ``paths`` = 0 sizes N from the budget: the most paths whose complete search
  fits (at least 1), and the **last round** (the one that reaches the end)
  takes as many re-noisings per path as the rest of the budget holds (at
  least M).  A fixed ``paths`` keeps M in every round and reports what it
  left unspent.
* A round runs only if it and denoising its N survivors to the end still fit.
* With ``paths`` = 0, a budget under ``min_generations`` (4) generations is
  random search's candidates exactly (``settings["fallback"]``, and a note):
  at two generations paths measured below random search on the benchmark
  (one path, one round), and under four it did not beat it.
* When a regular round no longer fits, the search tries one last round
  straight to the end (renoise to f, or less far back when that is too
  expensive) with at least 2 re-noisings per path; only when even that does not
  fit are the N states denoised to the end without search, and the report
  says so (``notes``, ``settings["unspent_reason"]``).  With a start index ≥ 2
  any budget of two generations or more therefore has a search round.

Paths have no single starting noise, so finalists have ``noise=None`` and a
``recipe``; ``CandidateResult.nfe`` is the NFEs along that row's lineage.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

from .common import (TAG_PATHS, TopK, check_budget, check_top_k, checked_scores, derived_noise, end_level, finalist,
                     generation_nfe, score_x0, top_k_indices)
from .host import SearchHost, derive_seed, final_latents
from .noise import seeds_for, wrap_seed
from .random_search import random_fallback
from .registry import Algorithm, Param
from .report import CandidateResult, Finalist, SearchReport
from .stopping import StopRule, Stopper


def relative_levels(host: SearchHost) -> List[float]:
    """The relative noise level of every schedule position (1 at index 0, 0 at the end)."""
    T = int(host.steps)
    lv = [float(host.level(i)) for i in range(T + 1)]
    top, bottom = lv[0], lv[T]
    span = top - bottom
    if not span > 0:  # a degenerate schedule: fall back on positions
        return [1.0 - i / T for i in range(T + 1)]
    return [(v - bottom) / span for v in lv]


def _nearest(rel: List[float], level: float) -> int:
    return min(range(len(rel)), key=lambda i: (abs(rel[i] - level), i))


def search_start(host: SearchHost, start_level: float, rel: Optional[List[float]] = None) -> int:
    rel = rel or relative_levels(host)
    return min(max(_nearest(rel, float(start_level)), 1), int(host.steps) - 1)


def next_round(host: SearchHost, index: int, forward: float, backward: float,
               rel: Optional[List[float]] = None) -> Tuple[int, int]:
    """(renoise index f, end index b) of a round that starts at schedule position ``index``."""
    rel = rel or relative_levels(host)
    T = int(host.steps)
    here = rel[index]
    f = min(max(_nearest(rel, min(1.0, here + forward)), 0), index - 1)
    target = here + forward - backward
    b = T if target <= 1e-9 else _nearest(rel, target)
    return f, min(max(b, index + 1), T)


def round_plan(host: SearchHost, start_level: float, forward: float, backward: float) -> Tuple[int, List[Tuple[int, int]]]:
    """The search start and every regular round's (f, b) up to the end of the schedule."""
    rel = relative_levels(host)
    T = int(host.steps)
    s = search_start(host, start_level, rel)
    rounds, c = [], s
    while c < T:
        f, b = next_round(host, c, forward, backward, rel)
        rounds.append((f, b))
        c = b
    return s, rounds


def plan_cost(host: SearchHost, n: int, m: int, s: int, rounds: List[Tuple[int, int]]) -> int:
    """NFEs of a complete search with n paths and m re-noisings per path per round."""
    return n * int(host.nfe(0, s)) + sum(n * m * int(host.nfe(f, b)) for f, b in rounds)


def paths_for_budget(host: SearchHost, budget_nfe: int, m: int, start_level: float, forward: float,
                     backward: float) -> int:
    """The most paths whose complete search fits ``budget_nfe`` (at least 1)."""
    s, rounds = round_plan(host, start_level, forward, backward)
    per = plan_cost(host, 1, m, s, rounds)
    return max(1, int(budget_nfe) // max(per, 1))


def paths_search(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1, verifier: str = "verifier",
                 stop: StopRule = None, **params) -> Tuple[SearchReport, List[Finalist]]:
    p = ALGORITHM.resolve(params)
    ALGORITHM.check_sampler(host.sampler_name)
    M, T = p["noises_per_path"], int(host.steps)
    start_level, forward, backward = p["start_level"], p["forward"], p["backward"]
    gen = generation_nfe(host)
    budget = int(budget_nfe)
    if not p["paths"] and budget < int(p["min_generations"]) * gen:
        check_budget(budget, gen, "search over paths (one generation)")
        return random_fallback(host, algorithm="paths", seed=seed, budget_nfe=budget, top_k=top_k, verifier=verifier,
                               stop=stop, why=f"a {budget}-NFE budget is under {p['min_generations']} generations "
                               f"({int(p['min_generations']) * gen} NFEs), where paths measured below random search")
    N = p["paths"] or paths_for_budget(host, budget, M, start_level, forward, backward)
    check_budget(budget, N * gen, f"search over paths with {N} paths (one generation per path)")
    check_top_k(top_k, N, "the number of paths")
    base = wrap_seed(seed)
    rel = relative_levels(host)
    s_idx, plan = round_plan(host, start_level, forward, backward)
    report = SearchReport(algorithm="paths", top_k=top_k, verifier=verifier, nfe_per_generation=gen,
                          settings={"paths": N, "noises_per_path": M, "start_level": float(start_level),
                                    "forward": float(forward), "backward": float(backward),
                                    "budget_nfe": budget, "start_index": s_idx,
                                    "planned_rounds": [list(r) for r in plan], "rounds": []})
    if budget < 4 * gen:
        report.notes.append(f"paths: a {budget}-NFE budget is under four generations ({4 * gen} NFEs), which holds "
                            f"{N} path(s) and few re-noisings; at two generations paths fell below random search "
                            "in the benchmarks (bench/README.md): random search is the better choice here")
    seeds = seeds_for(base, 0, N)
    state = host.start(host.initial_noise(seeds))
    spent = 0
    if s_idx > 0:
        state, _ = host.sample(state, s_idx, seeds)
        spent += N * host.nfe(0, s_idx)
    labels = [f"paths p{i} (seed {s})" for i, s in enumerate(seeds)]
    lineage_nfe = [host.nfe(0, s_idx)] * N
    # how each row was made, replayable on another schedule (coarse-to-fine)
    recipes = [{"seed": s, "ops": [("sample", end_level(host, s_idx), s)] if s_idx > 0 else []} for s in seeds]
    rnd = 0
    final_rows = None  # (latents, labels, lineage nfe, recipes) of rows that reached the end
    final_scores: List[float] = []
    # observations: the best x0 score of each round that does not reach the end; when the rule fires the
    # top_k paths are finished without further search
    stopper = Stopper(stop, "rounds")

    def finish_without_search(state, labels, lineage_nfe, recipes, rnd):
        """The rows of ``state`` denoised to the end (fresh sampler seeds), scored: (rows, scores, NFEs)."""
        n = len(state)
        fin_seeds = [derive_seed(base, TAG_PATHS, rnd + 1, i, 0, 1) for i in range(n)]
        cost = host.nfe(state.index, T)
        state, _ = host.sample(state, T, fin_seeds)
        recipes = [{"seed": r["seed"], "ops": r["ops"] + [("sample", 0.0, fs)]} for r, fs in zip(recipes, fin_seeds)]
        latents = final_latents(state)
        scores = checked_scores(host.score(latents), n, labels, verifier)
        return (latents, labels, [x + cost for x in lineage_nfe], recipes), scores, n * cost

    while state.index < T:
        c = state.index
        f_idx, b_idx = next_round(host, c, forward, backward, rel)
        left = budget - spent
        m = M
        if N * M * host.nfe(f_idx, b_idx) + N * host.nfe(b_idx, T) > left:
            # no room for a regular round: one last round straight to the end, renoising as far back as fits
            b_idx, m = T, 0
            for f in range(f_idx, c):
                most = left // max(1, N * host.nfe(f, T))
                if most >= 2:
                    f_idx, m = f, int(most)
                    break
            if m == 0:
                # not even that: finish the N survivors without search
                final_rows, final_scores, cost = finish_without_search(state, labels, lineage_nfe, recipes, rnd)
                spent += cost
                report.settings["finished_without_search_from_index"] = c
                need = N * 2 * host.nfe(c - 1, T)
                if rnd == 0:
                    report.notes.append(
                        f"paths: the {budget}-NFE budget holds no search round for {N} path(s) (the smallest, "
                        f"2 re-noisings one step back, needs {N * host.nfe(0, s_idx) + need} NFEs), so this was "
                        f"{N} plain sample(s), below random search at equal NFE: raise the budget to at least two "
                        "generations, or lower paths")
                else:
                    report.notes.append(f"paths: after {rnd} round(s) the rest of the budget held no further round, "
                                        f"so the paths were finished from step {c} without search")
                break
        elif b_idx == T and not p["paths"]:
            m = max(M, left // max(1, N * host.nfe(f_idx, T)))  # the last round spends what is left
        rnd += 1
        rows = [q for q in range(N) for _ in range(m)]  # parent-major: row q*m + j
        noise_seeds = [derive_seed(base, TAG_PATHS, rnd, q, j, 0) for q in range(N) for j in range(m)]
        run_seeds = [derive_seed(base, TAG_PATHS, rnd, q, j, 1) for q in range(N) for j in range(m)]
        expanded = state.select(rows)
        renoised = host.renoise(expanded, f_idx, derived_noise(expanded.noise[0:1], noise_seeds))
        new_state, x0 = host.sample(renoised, b_idx, run_seeds)
        round_cost = N * m * host.nfe(f_idx, b_idx)
        spent += round_cost
        at_end = b_idx == T
        cand = final_latents(new_state) if at_end else x0
        row_labels = [f"{labels[q]} r{rnd} m{j}" for q in range(N) for j in range(m)]
        scores = checked_scores(host.score(cand) if at_end else score_x0(host, cand), N * m, row_labels, verifier)
        keep = top_k_indices(scores, N)
        row_nfe = [lineage_nfe[q] + host.nfe(f_idx, b_idx) for q in range(N) for _ in range(m)]
        row_recipes = [{"seed": recipes[q]["seed"],
                        "ops": recipes[q]["ops"] + [("renoise", float(host.level(f_idx)), noise_seeds[j]),
                                                    ("sample", end_level(host, b_idx), run_seeds[j])]}
                       for j, q in enumerate(rows)]
        report.settings["rounds"].append({"round": rnd, "renoise_index": f_idx, "end_index": b_idx,
                                          "noises_per_path": m, "kept_rows": keep, "scores": scores})
        report.trace.append({"round": rnd, "nfe": spent, "best": scores[keep[0]], "level": rel[b_idx],
                             "index": b_idx})
        if at_end:
            final_rows = (cand, row_labels, row_nfe, row_recipes)
            final_scores = scores
        state = new_state.select(keep)
        labels = [row_labels[i] for i in keep]
        lineage_nfe = [row_nfe[i] for i in keep]
        recipes = [row_recipes[i] for i in keep]
        if not at_end and stopper.see(scores[keep[0]], spent):
            n = min(top_k, N)  # the survivors are best first: finish the top_k without search
            final_rows, final_scores, cost = finish_without_search(state.select(range(n)), labels[:n],
                                                                   lineage_nfe[:n], recipes[:n], rnd)
            spent += cost
            break

    latents, row_labels, row_nfe, row_recipes = final_rows
    results: Dict[int, CandidateResult] = {}
    keeper = TopK(top_k)
    for i, (lab, sc) in enumerate(zip(row_labels, final_scores)):
        results[i] = CandidateResult(index=i, seed=None, score=sc, nfe=row_nfe[i], noise_id=lab)
        keeper.offer(sc, i, finalist(latents[i:i + 1], recipe=row_recipes[i]))
    if not report.trace or report.trace[-1]["nfe"] != spent:
        report.trace.append({"round": rnd + 1, "nfe": spent, "best": max(final_scores), "level": 0.0, "index": T})
    report.candidates = [results[i] for i in sorted(results)]
    report.nfe_total = spent
    stopper.close(report, budget, spent)
    if spent < budget and not stopper.fired:
        if "finished_without_search_from_index" in report.settings:
            report.settings["unspent_reason"] = "the rest of the budget held no further search round"
        elif p["paths"]:
            report.settings["unspent_reason"] = (f"paths is fixed at {N} (0 sizes the search from the budget), so "
                                                 "the rest was left")
        else:
            report.settings["unspent_reason"] = (f"another path would need {plan_cost(host, 1, M, s_idx, plan)} NFEs "
                                                 f"and a further re-noising in the last round "
                                                 f"{N * host.nfe(report.settings['rounds'][-1]['renoise_index'], T)}")
    report.finalize()
    return report, keeper.finalists(results)


def _check(p: Dict[str, Any]) -> None:
    if p["backward"] <= p["forward"]:
        raise ValueError(f"paths: backward ({p['backward']}) must be larger than forward ({p['forward']}), or the "
                         "search never reaches the end of the schedule")


def _coarse(p: Dict[str, Any], candidates: int) -> Tuple[int, int, float]:
    """Coarse-to-fine: a paths search offers its N paths (all replayed by default; 2 when N comes from the
    budget); replaying one lineage on the full schedule costs this many full generations (it re-walks its
    re-noised stretches)."""
    st, fw, bw = p["start_level"], p["forward"], p["backward"]
    rounds = math.ceil(st / (bw - fw)) if st > 0 and bw > fw else 0
    n = int(p["paths"]) or 2
    return n, n, (1.0 - st) + rounds * min(1.0, bw)


ALGORITHM = Algorithm(
    name="paths", run=paths_search, title="Search over Paths", node="PathsStrategy",
    description=("Search over paths (Paths-N, Ma et al. 2025): N noises denoised to the search start; then "
                 "repeatedly each is re-noised M times forward by delta_f and denoised back by delta_b, the "
                 "x0-predictions are scored and the best N kept, until the schedule ends. Levels are fractions "
                 "of YOUR schedule's noise span (1 = its start, 0 = clean), each round at least one step back and "
                 "one step on. Spends the whole budget (more paths, more re-noisings in the last round). With paths "
                 "0, a budget under min_generations (4) runs random search's candidates instead, since paths "
                 "measured below random search there; with a fixed paths count, below two generations it cannot "
                 "search and under four the report warns. Needs a "
                 "single-step sampler (see the README's sampler table)."),
    params=(
        Param("paths", 0, "N paths kept each round; 0 = as many as the budget holds.", min=0, max=256),
        Param("noises_per_path", 2, "M re-noisings of each path per round (the last round takes what the budget "
                                    "has left).", min=1, max=64),
        Param("start_level", 0.6, "Where the search starts, as a fraction of your schedule's noise span (1 = its "
                                  "start, 0 = clean; paper: 0.11 on 30+ steps).", min=0.0, max=1.0, step=0.01),
        Param("forward", 0.2, "Forward re-noising interval, same units (paper: 0.78); at least one step.",
              min=0.0, max=1.0, step=0.01),
        Param("backward", 0.4, "Backward denoising interval (paper: 0.81); must exceed forward so each round makes "
                               "progress; at least one step.", min=0.01, max=1.0, step=0.01),
        Param("min_generations", 4, "With paths = 0: a budget under this many generations runs random search's "
                                    "candidates instead (paths measured below random search at two generations); "
                                    "2 = search from two generations on.", min=1, max=64, optional=True),
    ),
    samplers="segmentable", finalists="recipe", check=_check, coarse=_coarse)
