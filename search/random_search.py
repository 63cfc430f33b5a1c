"""Random search (best-of-N): N independent starting noises (seeds base+i),
denoised fully, scored, the best k kept.  Cost: N generations' worth of NFEs,
N = budget // (NFEs per generation).

The candidates go to the host ``host.micro_batch`` at a time (sample, then
score, then the next micro-batch), so memory holds one micro-batch and the k
best latents.  With early stopping, a call holds no more candidates than the
rule certainly uses (``Stopper.horizon``: up to ``patience`` for a plateau
rule, one for a target), so none is paid for after the stop and the result is
that of any micro-batch size.  Candidate i's starting noise is exactly ComfyUI's
``prepare_noise`` for seed base+i and its in-sampler randomness is keyed by
that seed, so a stock KSampler with the winner's seed makes the winner.
With a relative verifier (an ensemble) every candidate's latent is kept and
the scores are recombined over all N at the end (``host.rescore``), so the
result never depends on the micro-batch.
"""
from __future__ import annotations

import math
from typing import List, Tuple

from .common import TopK, check_budget, check_top_k, checked_scores, finalist, generation_nfe, render
from .host import SearchHost
from .noise import seeds_for, wrap_seed
from .registry import Algorithm
from .report import CandidateResult, Finalist, SearchReport
from .stopping import StopRule, Stopper


def random_search(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1, verifier: str = "verifier",
                  stop: StopRule = None, **params) -> Tuple[SearchReport, List[Finalist]]:
    ALGORITHM.resolve(params)
    gen = generation_nfe(host)
    check_budget(budget_nfe, gen, "random search (one full generation)")
    n = int(budget_nfe) // gen
    check_top_k(top_k, n, f"the {n} candidates the budget buys")
    seeds = seeds_for(wrap_seed(seed), 0, n)
    relative = bool(getattr(host, "relative", False))
    report = SearchReport(algorithm="random", top_k=top_k, verifier=verifier, nfe_per_generation=gen,
                          settings={"candidates": n, "budget_nfe": int(budget_nfe)})
    keep = TopK(n if relative else top_k)
    results = {}
    rows = {}  # candidate index -> the host's score row (relative verifiers)
    spent, i, unseen = 0, 0, 0
    stopper = Stopper(stop, "candidates", minimum=top_k)
    while i < n and not stopper.fired:
        size = int(getattr(host, "micro_batch", 0) or n)
        sure = stopper.horizon()  # with a rule: never more than it certainly uses (no candidate paid and dropped)
        if sure is not None:
            size = min(size, sure)
        chunk = list(range(i, min(n, i + max(1, size))))
        cs = [seeds[j] for j in chunk]
        noise = host.initial_noise(cs)
        latents, nfe, batch = render(host, noise, cs)
        spent += nfe
        first = int(getattr(host, "scored_rows", 0))
        scores = checked_scores(host.score(latents), len(chunk), [f"seed {s}" for s in cs], verifier)
        for r, j in enumerate(chunk):
            if stopper.fired:  # sampled in the stop's micro-batch: left out, so the winner never depends on it
                unseen += 1
                continue
            results[j] = CandidateResult(index=j, seed=cs[r], score=scores[r], nfe=gen)
            rows[j] = first + r
            keep.offer(scores[r], j, finalist(latents[r:r + 1], noise[r:r + 1], cs[r], batch=batch[r]))
            stopper.see(scores[r], (j + 1) * gen)
        i += len(chunk)
    if relative:  # recombined over all N: ranks never depend on the micro-batch
        combined = host.rescore().reshape(-1).tolist()
        members = getattr(host, "member_scores", None)  # each member's raw score, for the report
        for j, res in results.items():
            res.score = float(combined[rows[j]])
            if members is not None:
                res.verifier_scores = members(rows[j])
        items = [(results[j].score, j, f) for _, j, f in keep.items]
        keep = TopK(top_k)
        for sc, j, f in items:
            keep.offer(sc, j, f)
    report.candidates = [results[j] for j in sorted(results)]
    best = -math.inf
    for j, res in enumerate(report.candidates):  # best score against NFEs, candidate by candidate
        best = max(best, res.score)
        report.trace.append({"nfe": (j + 1) * gen, "best": best})
    report.nfe_total = spent
    stopper.close(report, budget_nfe, spent)
    if unseen:
        report.notes.append(f"{unseen} candidate(s) sampled in the same micro-batch after the stop were left out, "
                            "so where the search stops and what it picks never depend on the micro-batch")
    report.finalize()
    return report, keep.finalists(results)


ALGORITHM = Algorithm(
    name="random", run=random_search, params=(), title="Random Search", node="RandomSearchStrategy",
    description=("Random search (best of N), the paper's strongest algorithm on FLUX: N independent noises, full "
                 "generations, keep the best. The same as SearchLoop without a strategy, plus an explicit NFE "
                 "budget. Any sampler."),
    samplers="any", replay="noise")
