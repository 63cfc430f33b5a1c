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

The same loop runs elsewhere: with a :class:`Dispatcher` (worker servers,
or executors in this process) the candidates are cut into small chunks that
the executors take on demand (``search/dispatch.py``), each sampled and
scored as a shard (``search/sharded.py``) and back as scores; there is one
random search, wherever it samples.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Protocol, Sequence, Tuple

import torch

from .common import TopK, check_budget, check_top_k, checked_scores, generation_nfe, top_k_indices
from .host import SearchHost
from .noise import seeds_for, wrap_seed
from .registry import Algorithm
from .report import CandidateResult, Finalist, SearchReport
from .sharded import ShardAnswerError, ShardRows, run_shard
from .stopping import StopRule, Stopper


class Dispatcher(Protocol):
    """Where the chunks of a random search run when they do not all run on this host in order: worker servers
    (``engine/worker_search.py``), executors in this process (``search.dispatch.Pool``), or anything else
    that returns each planned chunk's :class:`ShardRows`.  The executors take the chunks on demand
    (``search/dispatch.py``)."""

    def plan(self, n: int, floor: int) -> List[Tuple[int, int]]:
        """The chunks (start, count) of ``n`` candidates, in order (``search.dispatch.plan_chunks``; ``floor``:
        this host's micro-batch)."""

    def __call__(self, plan: List[Tuple[int, int]], run_local: Callable[[int, int], ShardRows]
                 ) -> Iterable[ShardRows]:
        """One :class:`ShardRows` per planned (start, count), in any order; ``run_local`` runs one here."""

    def recombine(self, matrix: torch.Tensor) -> torch.Tensor:
        """N scores of the N x M member matrix (a relative verifier's own rule)."""


def _local(host: SearchHost, n: int, run_local: Callable[[int, int], ShardRows],
           stopper: Optional[Stopper] = None) -> Iterator[ShardRows]:
    """This host's lanes: ``host.micro_batch`` candidates a shard, in candidate order, each sized when it
    starts (an out-of-memory halving applies to the next); stops being asked when the search stops.  With an
    early-stopping rule a shard holds no more candidates than the rule certainly uses (``Stopper.horizon``), so
    none is paid for after the stop."""
    i = 0
    while i < n and not (stopper is not None and stopper.fired):
        size = int(getattr(host, "micro_batch", 0) or n)
        sure = stopper.horizon() if stopper is not None else None
        if sure is not None:
            size = min(size, sure)
        count = min(n - i, max(1, size))
        yield run_local(i, count)
        i += count


def random_search(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1, verifier: str = "verifier",
                  stop: StopRule = None, dispatch: Optional[Dispatcher] = None, member_names: Sequence[str] = (),
                  **params) -> Tuple[SearchReport, List[Finalist]]:
    """``dispatch``: None = every candidate on this host, a micro-batch at a time, in order; else the
    candidates are cut into the dispatcher's chunks, run wherever it sends them (the same candidates, scores,
    ranking and finalists whoever runs which shard).  ``member_names``: the relative verifier's members, for the
    candidates' member scores of shards that ran elsewhere."""
    ALGORITHM.resolve(params)
    gen = generation_nfe(host)
    check_budget(budget_nfe, gen, "random search (one full generation)")
    n = int(budget_nfe) // gen
    check_top_k(top_k, n, f"the {n} candidates the budget buys")
    base = wrap_seed(seed)
    seeds = seeds_for(base, 0, n)
    relative = bool(getattr(host, "relative", False))
    report = SearchReport(algorithm="random", top_k=top_k, verifier=verifier, nfe_per_generation=gen,
                          settings={"candidates": n, "budget_nfe": int(budget_nfe)})
    # the latents of the best candidates sampled here (all of them for a relative verifier, whose ranks move)
    keep = TopK(n if relative else top_k)

    def run_local(start: int, count: int) -> ShardRows:
        if dispatch is None:  # a relative verifier's ranks move: every latent is kept until the end
            return run_shard(host, base, start, count, keep=count if relative else top_k, verifier=verifier,
                             matrix=False, keep_relative=True)
        return run_shard(host, base, start, count, keep=top_k, verifier=verifier)

    stopper = Stopper(stop, "candidates", minimum=top_k)
    if dispatch is None:
        shards: Iterable[ShardRows] = _local(host, n, run_local, stopper)
        plan = None
    else:
        if stop is not None and stop.active:
            raise ValueError("early stopping reads candidates in order, which shards run elsewhere do not have")
        plan = dispatch.plan(n, max(1, int(getattr(host, "micro_batch", 0) or 1)))
        shards = sorted(dispatch(plan, run_local), key=lambda r: r.start)
        if [(r.start, r.count) for r in shards] != plan:
            raise ShardAnswerError(f"the shards that came back ({[(r.start, r.count) for r in shards]}) are not "
                                   f"the chunks planned ({plan})")
    results: Dict[int, CandidateResult] = {}
    got: List[ShardRows] = []
    spent, unseen = 0, 0
    for rows in shards:
        got.append(rows)
        spent += int(sum(rows.nfe))
        scores = rows.scores()
        for r in range(rows.count):
            j = rows.start + r
            if stopper.fired:  # sampled in the stop's micro-batch: left out, so the winner never depends on it
                unseen += 1
                continue
            results[j] = CandidateResult(index=j, seed=seeds[j], score=float(scores[r]), nfe=int(rows.nfe[r]))
            if j in rows.kept:
                keep.offer(scores[r], j, rows.kept[j])
            stopper.see(scores[r], (j + 1) * gen)
        if stopper.fired and dispatch is None:
            break
    if dispatch is not None:  # every shard's member scores, recombined over all N at once
        matrix = torch.cat([rows.rows for rows in got])
        combined = dispatch.recombine(matrix).reshape(-1).tolist()
        checked_scores(torch.tensor(combined), n, [f"seed {s}" for s in seeds], verifier)
        for i, res in results.items():
            res.score = float(combined[i])
            if relative and member_names:
                res.verifier_scores = {k: float(v) for k, v in zip(member_names, matrix[i].tolist())
                                       if math.isfinite(v)}
    elif relative:  # recombined over all N: ranks never depend on the micro-batch
        combined = host.rescore().reshape(-1).tolist()
        members = getattr(host, "member_scores", None)  # each member's raw score, for the report
        for rows in got:
            for r in range(rows.count):
                res = results.get(rows.start + r)
                if res is not None:
                    res.score = float(combined[rows.host_first + r])
                    if members is not None:
                        res.verifier_scores = members(rows.host_first + r)
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
    if plan is not None:
        report.settings["shards"] = [{"start": r.start, "count": r.count, "ran_on": r.where} for r in got]
    report.finalize()
    kept = {j: f for _, j, f in keep.items}
    order = top_k_indices([results[j].score for j in sorted(results)], top_k)
    finalists = []
    for j in order:  # a finalist scored elsewhere (or dropped from the keeper) is re-rendered from its seed
        f = kept.get(j) or Finalist(latent=None, result=None, noise=host.initial_noise([seeds[j]]),  # type: ignore
                                    seed=seeds[j], batch=None)
        f.result = results[j]
        finalists.append(f)
    return report, finalists



def random_fallback(host: SearchHost, *, algorithm: str, why: str, seed: int, budget_nfe: int, top_k: int,
                    verifier: str, stop=None, dispatch=None):
    """Random search's own candidates, scores and winner, reported under ``algorithm`` with ``why`` in its notes:
    what an algorithm runs at a budget where it measured below random search.  Finalists carry a recipe too (their
    seed's whole run), so coarse-to-fine replays them like the algorithm's lineages.  ``dispatch``: the
    algorithm's dispatcher, which hands random search's chunks out too."""
    if dispatch is not None and getattr(dispatch, "seed", 0) is None:
        dispatch.seed = int(seed)  # an in-process pool samples random search's chunks from the search's seed
    report, finalists = random_search(host, seed=seed, budget_nfe=budget_nfe, top_k=top_k, verifier=verifier,
                                      stop=stop, dispatch=dispatch)
    report.algorithm = algorithm
    report.settings["fallback"] = "random"
    report.notes.insert(0, f"{algorithm}: {why}, so this was a random search (its candidates, scores and winner "
                           "exactly)")
    left = int(budget_nfe) - report.nfe_total
    if left > 0 and "unspent_reason" not in report.settings:
        report.settings["unspent_reason"] = (f"the remaining {left} NFEs are less than one generation "
                                             f"({report.nfe_per_generation} NFEs)")
    for f in finalists:
        f.recipe = {"seed": int(f.seed), "ops": [("sample", 0.0, int(f.seed))]}
    return report, finalists


ALGORITHM = Algorithm(
    name="random", run=random_search, params=(), title="Random Search", node="RandomSearchStrategy",
    description=("Random search (best of N), the paper's strongest algorithm on FLUX: N independent noises, full "
                 "generations, keep the best. The same as SearchLoop without a strategy, plus an explicit NFE "
                 "budget. Any sampler."),
    samplers="any", finalists="noise", dispatch="chunks")
