"""One entry point for every search algorithm: a :class:`Strategy` plus a host.

``run_strategy(strategy, host, candidates=N, top_k=k, seed=s)`` returns
``(SearchReport, finalists)`` (:class:`~.report.Finalist`, best first).  The
algorithm comes from the registry (``search/registry.py``), which also holds
every parameter's default and range.  The NFE budget is
``strategy.budget_nfe``, or N × (NFEs per full generation on the host) when
that is 0.  With ``coarse_steps`` > 0 the algorithm runs on a coarser schedule
and its finalists are re-rendered at full steps (:mod:`search.coarse_to_fine`;
``strategy.rerender``: how many, 0 = the default).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .coarse_to_fine import coarse_to_fine
from .dispatch import AtSteps
from .common import generation_nfe
from .host import SearchHost
from .registry import get
from .report import Finalist, SearchReport
from .stopping import StopRule


@dataclass(frozen=True)
class Strategy:
    """What a strategy node hands SearchLoop: plain data."""
    name: str
    params: Dict[str, Any] = field(default_factory=dict)
    budget_nfe: int = 0
    coarse_steps: int = 0
    rerender: int = 0   # coarse-to-fine: finalists re-rendered at full steps (0 = the default)
    stop: Optional[StopRule] = None   # early stopping (search/stopping.py); None = spend the whole budget

    def resolved(self) -> Dict[str, Any]:
        """Every parameter, defaults filled in and checked (raises ValueError naming the bad one)."""
        return get(self.name).resolve(self.params)


def budget_of(strategy: Strategy, candidates: int, generation: int) -> int:
    """The search's NFE budget, the one rule: the strategy's own budget, or N full generations."""
    return int(strategy.budget_nfe) or int(candidates) * int(generation)


def run_strategy(strategy: Strategy, host: SearchHost, *, top_k: int, seed: int, candidates: int = 0,
                 budget_nfe: int = 0, verifier: str = "verifier", dispatch=None,
                 member_names=()) -> Tuple[SearchReport, List[Finalist]]:
    """``budget_nfe``: the budget already worked out (:func:`budget_of`); 0 = work it out from ``candidates``.
    ``dispatch`` / ``member_names``: the work on other executors (``search/dispatch.py``: random search's
    chunks, successive halving's rounds)."""
    alg = get(strategy.name)
    params = alg.resolve(strategy.params)
    alg.check_sampler(host.sampler_name)
    budget = int(budget_nfe) or budget_of(strategy, candidates, generation_nfe(host))
    if budget <= 0:
        raise ValueError(f"the NFE budget must be positive, got {budget} (candidates {candidates})")
    extra = {}
    if dispatch is not None:
        if not alg.dispatch:
            raise ValueError(f"'{alg.title}' cannot hand its candidates to a dispatcher: random search, successive "
                             "halving, search over paths, zero-order search and evolution can")
        extra = {"dispatch": dispatch, "member_names": tuple(member_names)}

    stop = strategy.stop if strategy.stop is not None and strategy.stop.active else None
    if stop is not None and bool(getattr(host, "relative", False)):
        raise ValueError("early stopping compares each score with a target or with earlier scores, but this "
                         "verifier's scores are relative (a rank or z-score ensemble re-ranks every candidate as "
                         "more arrive): use an ensemble that adds its members' raw scores, or turn early stopping off")

    if strategy.coarse_steps and dispatch is not None:
        if bool(getattr(host, "relative", False)):
            raise ValueError("coarse-to-fine ranks its coarse and full-step candidates together for a relative "
                             "verifier (a rank or z-score ensemble), which a search spread over several machines does "
                             "not do: use an ensemble that adds its members' raw scores, or run it on one machine")
        extra["dispatch"] = AtSteps(dispatch, int(strategy.coarse_steps))

    def run(h: SearchHost, b: int, k: int):
        return alg.run(h, seed=seed, budget_nfe=b, top_k=k, verifier=verifier, stop=stop, **extra, **params)

    if strategy.coarse_steps:
        rerender, factor = int(strategy.rerender), 1.0
        if alg.coarse is not None:  # a lineage: how many finalists it offers, what one replay costs
            most, default, factor = alg.coarse(params, int(candidates))
            rerender = min(rerender or default, most)
        report, finalists = coarse_to_fine(host, run, algorithm=alg.name, coarse_steps=int(strategy.coarse_steps),
                                           budget_nfe=budget, rerender=rerender, top_k=top_k,
                                           verifier=verifier, replay_factor=factor)
    else:
        report, finalists = run(host, budget, top_k)
    report.settings.setdefault("budget_nfe", budget)
    report.settings["params"] = params
    if report.nfe_total < budget:
        report.notes.append(f"spent {report.nfe_total} of the {budget}-NFE budget: "
                            + report.settings.get("unspent_reason", "the rest holds no further full step of the "
                                                  "algorithm"))
    return report, finalists
