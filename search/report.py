"""The search report (what every search returns and the SCORES type carries),
its finalists, and the phase clock that says where the time went."""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import torch


@dataclass
class CandidateResult:
    index: int
    seed: Optional[int]   # set only when a stock KSampler with this seed makes this candidate
    score: float
    nfe: int
    noise_id: str = ""
    rank: int = 0  # 1 = best; filled by SearchReport.finalize
    verifier_scores: Dict[str, float] = field(default_factory=dict)
    final_score: Optional[float] = None  # a finalist's score as returned: its batch-1 re-render's, else its search score
    # how a finalist's output was made (docs/how-it-works.md): "ksampler" (the stock KSampler call with its seed),
    # "noise" (SamplerCustomAdvanced + its NOISE), "batched" (replayable, exact_winner off: the search's batched
    # sample), "lineage" (paths, particles: the search's own sample); "" for a candidate that is not a finalist
    replay: str = ""


@dataclass
class Finalist:
    """One of the best candidates an algorithm hands back, best first.

    ``noise``: its starting unit noise when one noise made it (random search,
    zero-order, evolution), with ``seed`` keying the sampler's in-sampler
    randomness; ``result.seed`` is set only when that noise is exactly the
    candidate noise of that seed, i.e. a stock KSampler with ``result.seed``
    makes it.  Paths and particles have no single starting noise: their
    ``recipe`` (starting seed, then ``("sample", level, run seed)`` and
    ``("renoise", level, noise seed)`` operations at noise levels) replays the
    lineage on another schedule.  ``batch``: the micro-batch it was sampled in
    when it ran the whole schedule in one call (1 = alone, as a stock node
    would), else None."""
    latent: torch.Tensor
    result: CandidateResult
    noise: Optional[torch.Tensor] = None
    seed: Optional[int] = None
    recipe: Optional[Dict[str, Any]] = None
    batch: Optional[int] = None

    @property
    def stock_node(self) -> str:
        """The stock node that makes it again exactly: "ksampler" (a KSampler with its seed), "noise"
        (SamplerCustomAdvanced with its NOISE), or "" (none: a lineage)."""
        if self.noise is not None and self.result.seed is not None and self.seed == self.result.seed:
            return "ksampler"
        return "noise" if self.noise is not None else ""


PHASES = ("denoise", "decode", "verify", "rerender", "other")


class PhaseClock:
    """Wall time and calls per phase of a search (the report's ``phases``)."""

    def __init__(self):
        self.seconds: Dict[str, float] = {p: 0.0 for p in PHASES}
        self.calls: Dict[str, int] = {p: 0 for p in PHASES}
        self._open: Optional[str] = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._open is not None:  # nested (a re-render decodes): time belongs to the outer phase
            yield
            return
        self._open = name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.calls[name] = self.calls.get(name, 0) + 1
            self._open = None

    def to_dict(self, total_seconds: Optional[float] = None) -> Dict[str, Dict[str, float]]:
        sec = dict(self.seconds)
        if total_seconds is not None:
            sec["other"] = max(0.0, float(total_seconds) - sum(v for k, v in sec.items() if k != "other"))
        return {p: {"seconds": round(sec.get(p, 0.0), 6), "calls": int(self.calls.get(p, 0))} for p in sec}


@dataclass
class SearchReport:
    algorithm: str
    candidates: List[CandidateResult] = field(default_factory=list)
    top_k: int = 1
    nfe_total: int = 0
    nfe_per_generation: Optional[int] = None
    cfg_multiplier: int = 1
    verifier: str = ""
    prompt: str = ""
    trace: List[Dict[str, float]] = field(default_factory=list)  # [{"nfe", "best"}]
    settings: Dict[str, Any] = field(default_factory=dict)
    rerender_nfe: int = 0   # NFEs of the finalist step's batch-1 exact re-renders (not part of nfe_total)
    phases: Dict[str, Dict[str, float]] = field(default_factory=dict)  # {"denoise": {"seconds", "calls"}, ...}
    notes: List[str] = field(default_factory=list)  # what the user should know (budget left unspent, ...)
    held_out: Dict[str, Any] = field(default_factory=dict)  # the over-optimisation guard (search/guard.py), if on
    verifier_failures: int = 0  # images a remote grader scored -inf for a failed answer (on_failure = -inf)

    def finalize(self) -> "SearchReport":
        """Ranks 1..N by score; ties go to the lower candidate index."""
        order = sorted(range(len(self.candidates)),
                       key=lambda i: (-self.candidates[i].score, self.candidates[i].index))
        for r, i in enumerate(order, start=1):
            self.candidates[i].rank = r
        return self

    def ranked(self) -> List[CandidateResult]:
        return sorted(self.candidates, key=lambda c: (c.rank or 10**9, c.index))

    @property
    def best(self) -> CandidateResult:
        return self.ranked()[0]

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["candidates"] = [asdict(c) for c in self.ranked()]
        d["best"] = asdict(self.best) if self.candidates else None
        return d

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=float)
