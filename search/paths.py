"""Search over paths (Paths-N, Ma et al. 2025 §3.2).

1. N starting noises (seeds base+i) are denoised to the search-start level
   (``host.index_at_level(start_level)``, paper: 0.11).
2. Each round, at nominal level ℓ: every one of the N states is forward-noised
   M times (``host.renoise``, fresh seeded unit noise) to ``index_at_level(ℓ+Δf)``
   (clipped to index 0, never later than where the state already is), then
   denoised to ``index_at_level(ℓ+Δf−Δb)`` (the end of the schedule once that
   is ≤ 0; always at least one step further than before).  The x0-prediction
   of each of the N·M rows is scored (at the end of the schedule: the final
   latent) and the top N rows survive.  ℓ ← ℓ + Δf − Δb.
3. At the end of the schedule the top-k survivors are the finalists (the
   paper's closing random search among the survivors).

Budget: before each round the search checks that the round *and* denoising
its N survivors to the end still fit; if not, it denoises the current N
states straight to the end and stops.  It therefore needs at least
N × (NFEs per generation) and never exceeds the budget; ``nfe_total`` is what
was spent.  Paths have no single starting noise, so finalists have
``noise=None``; ``CandidateResult.nfe`` is the NFEs along that row's lineage.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

from .common import (TAG_PATHS, TopK, check_budget, check_top_k, checked_scores, derived_noise, end_level, finalist,
                     generation_nfe, top_k_indices)
from .host import SearchHost, derive_seed, final_latents
from .noise import seeds_for, wrap_seed
from .registry import Algorithm, Param
from .report import CandidateResult, Finalist, SearchReport


def paths_search(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1, verifier: str = "verifier",
                 **params) -> Tuple[SearchReport, List[Finalist]]:
    p = ALGORITHM.resolve(params)
    ALGORITHM.check_sampler(host.sampler_name)
    N, M, T = p["paths"], p["noises_per_path"], int(host.steps)
    start_level, forward, backward = p["start_level"], p["forward"], p["backward"]
    check_top_k(top_k, N, "the number of paths")
    gen = generation_nfe(host)
    check_budget(budget_nfe, N * gen, f"search over paths with {N} paths (one generation per path)")
    base = wrap_seed(seed)
    # at least one step is left to search over (a start level of 0 would be the end of the schedule)
    s_idx = min(max(int(host.index_at_level(float(start_level))), 0), T - 1)
    report = SearchReport(algorithm="paths", top_k=top_k, verifier=verifier, nfe_per_generation=gen,
                          settings={"paths": N, "noises_per_path": M, "start_level": float(start_level),
                                    "forward": float(forward), "backward": float(backward),
                                    "budget_nfe": int(budget_nfe), "start_index": s_idx, "rounds": []})
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
    level, rnd = float(start_level), 0
    final_rows = None  # (latents, labels, lineage nfe) of rows that reached the end
    final_scores: List[float] = []

    while state.index < T:
        f_level = min(1.0, level + forward)
        f_idx = min(max(int(host.index_at_level(f_level)), 0), state.index)
        target = level + forward - backward
        b_idx = T if target <= 0 else int(host.index_at_level(target))
        b_idx = min(max(b_idx, state.index + 1), T)
        round_cost = N * M * host.nfe(f_idx, b_idx)
        if spent + round_cost + N * host.nfe(b_idx, T) > budget_nfe:
            # no room for another round: finish the N survivors without search
            from_idx, finish = state.index, host.nfe(state.index, T)
            fin_seeds = [derive_seed(base, TAG_PATHS, rnd + 1, i, 0, 1) for i in range(N)]
            state, _ = host.sample(state, T, fin_seeds)
            recipes = [{"seed": r["seed"], "ops": r["ops"] + [("sample", 0.0, fs)]} for r, fs in zip(recipes, fin_seeds)]
            spent += N * finish
            lineage_nfe = [n + finish for n in lineage_nfe]
            latents = final_latents(state)
            final_scores = checked_scores(host.score(latents), N, labels, verifier)
            final_rows = (latents, labels, lineage_nfe, recipes)
            report.settings["finished_without_search_from_index"] = from_idx
            break
        rnd += 1
        rows = [p for p in range(N) for _ in range(M)]  # parent-major: row p*M + m
        noise_seeds = [derive_seed(base, TAG_PATHS, rnd, p, m, 0) for p in range(N) for m in range(M)]
        run_seeds = [derive_seed(base, TAG_PATHS, rnd, p, m, 1) for p in range(N) for m in range(M)]
        expanded = state.select(rows)
        renoised = host.renoise(expanded, f_idx, derived_noise(expanded.noise[0:1], noise_seeds))
        new_state, x0 = host.sample(renoised, b_idx, run_seeds)
        spent += round_cost
        at_end = b_idx == T
        cand = final_latents(new_state) if at_end else x0
        row_labels = [f"{labels[p]} r{rnd} m{m}" for p in range(N) for m in range(M)]
        scores = checked_scores(host.score(cand), N * M, row_labels, verifier)
        keep = top_k_indices(scores, N)
        row_nfe = [lineage_nfe[p] + host.nfe(f_idx, b_idx) for p in range(N) for _ in range(M)]
        row_recipes = [{"seed": recipes[p]["seed"],
                        "ops": recipes[p]["ops"] + [("renoise", float(host.level(f_idx)), noise_seeds[j]),
                                                    ("sample", end_level(host, b_idx), run_seeds[j])]}
                       for j, p in enumerate(rows)]
        report.settings["rounds"].append({"round": rnd, "renoise_index": f_idx, "end_index": b_idx,
                                          "kept_rows": keep, "scores": scores})
        report.trace.append({"round": rnd, "nfe": spent, "best": scores[keep[0]], "level": target,
                             "index": b_idx})
        if at_end:
            final_rows = (cand, row_labels, row_nfe, row_recipes)
            final_scores = scores
        state = new_state.select(keep)
        labels = [row_labels[i] for i in keep]
        lineage_nfe = [row_nfe[i] for i in keep]
        recipes = [row_recipes[i] for i in keep]
        level = target

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
    report.finalize()
    return report, keeper.finalists(results)



def _check(p: Dict[str, Any]) -> None:
    if p["backward"] <= p["forward"]:
        raise ValueError(f"paths: backward ({p['backward']}) must be larger than forward ({p['forward']}), or the "
                         "search never reaches the end of the schedule")


def _coarse(p: Dict[str, Any], candidates: int) -> Tuple[int, int, float]:
    """Coarse-to-fine: a paths search offers its N paths (all replayed by default); replaying one lineage on
    the full schedule costs this many full generations (it re-walks its re-noised stretches)."""
    st, fw, bw = p["start_level"], p["forward"], p["backward"]
    rounds = math.ceil(st / (bw - fw)) if st > 0 and bw > fw else 0
    return p["paths"], p["paths"], (1.0 - st) + rounds * min(1.0, bw)


ALGORITHM = Algorithm(
    name="paths", run=paths_search, title="Search over Paths", node="PathsStrategy",
    description=("Search over paths (Paths-N, Ma et al. 2025): N noises denoised to the search start; then "
                 "repeatedly each is re-noised M times forward by delta_f and denoised back by delta_b, the "
                 "x0-predictions are scored and the best N kept, until the schedule ends. Levels are fractions "
                 "of the model's own noise timeline (1 = pure noise, 0 = clean), mapped onto your schedule. "
                 "Needs a single-step sampler (see the README's sampler table)."),
    params=(
        Param("paths", 2, "N paths kept each round.", min=1, max=256),
        Param("noises_per_path", 2, "M re-noisings of each path per round.", min=1, max=64),
        Param("start_level", 0.11, "Noise level where the search starts (paper: 0.11).", min=0.0, max=1.0, step=0.01),
        Param("forward", 0.78, "Forward re-noising interval in noise level (paper: 0.78).", min=0.0, max=1.0,
              step=0.01),
        Param("backward", 0.81, "Backward denoising interval (paper: 0.81); must exceed forward so each round makes "
                                "progress.", min=0.01, max=1.0, step=0.01),
    ),
    samplers="segmentable", replay="recipe", check=_check, coarse=_coarse)
