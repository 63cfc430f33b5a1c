"""The search report: what every search returns and the SCORES type carries."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class CandidateResult:
    index: int
    seed: Optional[int]
    score: float
    nfe: int
    noise_id: str = ""
    rank: int = 0  # 1 = best; filled by SearchReport.finalize
    verifier_scores: Dict[str, float] = field(default_factory=dict)
    final_score: Optional[float] = None  # score of the batch-1 re-render, when re-rendered


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
    rerender_nfe: int = 0

    def finalize(self) -> "SearchReport":
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
