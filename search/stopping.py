"""Early stopping: a search stops paying once it has its answer.

A :class:`StopRule` says when: the best score reaches ``target``, or the best
has not risen by more than ``min_improvement`` over the last ``patience``
observations.  A :class:`Stopper` applies it to the scores an algorithm sees,
one observation at a time, in a fixed order, so where a search stops depends
only on the seed and the scores, never on how the host micro-batches.

What an observation is depends on the algorithm (its module says):

* random search, zero-order, evolution, successive halving: each finished
  candidate, in candidate order (patience counts candidates);
* paths and particles, whose candidates all finish together at the end of the
  schedule: the best x0-prediction score at each scoring round (patience
  counts rounds); when the rule fires they stop branching / resampling and
  finish only their ``top_k`` best, so the rest of the budget is saved.

The report's ``settings["early_stop"]`` states the rule, whether and why it
fired, where, and the NFEs saved against the budget.

Micro-batching: :meth:`Stopper.horizon` is the number of further observations
that are certain to be used (the rule cannot fire before the last of them).
Random search samples at most that many candidates per host call, so a
candidate is never paid for and then thrown away, and the stop (and the
winner) is the same for every micro-batch size: a plateau rule samples up to
``patience`` candidates at a time, a target rule one at a time (any candidate
may reach it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class StopRule:
    target: Optional[float] = None    # stop once the best score is >= this
    patience: int = 0                 # stop after this many observations without a rise > min_improvement (0 = off)
    min_improvement: float = 0.0

    def __post_init__(self):
        if self.target is not None and not math.isfinite(float(self.target)):
            raise ValueError(f"early stopping: the target score must be a finite number, got {self.target}")
        if int(self.patience) < 0:
            raise ValueError(f"early stopping: patience must be 0 (off) or more, got {self.patience}")
        if not float(self.min_improvement) >= 0.0:
            raise ValueError(f"early stopping: min_improvement must be 0 or more, got {self.min_improvement}")

    @property
    def active(self) -> bool:
        return self.target is not None or int(self.patience) > 0

    def to_dict(self) -> Dict[str, Any]:
        return {"target": self.target, "patience": int(self.patience), "min_improvement": float(self.min_improvement)}


class Stopper:
    """Applies a rule to a stream of observed scores.  ``see(score)`` returns
    True from the observation at which the rule fires on (it stays fired)."""

    def __init__(self, rule: Optional[StopRule], unit: str = "candidates", minimum: int = 1):
        self.rule = rule if rule is not None and rule.active else None
        self.unit = unit
        self.minimum = max(1, int(minimum))  # never fires before this many observations (top_k finalists)
        self.best = -math.inf
        self.reference = -math.inf   # the best at the last rise that counted (> min_improvement)
        self.since = 0               # observations since that rise
        self.seen = 0
        self.reason: Optional[str] = None
        self.at: Optional[int] = None  # observations seen when it fired (1-based count)
        self.nfe_at: Optional[int] = None

    @property
    def fired(self) -> bool:
        return self.reason is not None

    def see(self, score: float, nfe: Optional[int] = None) -> bool:
        if self.rule is None:
            return False
        if self.fired:
            return True
        self.seen += 1
        s = float(score)
        self.best = max(self.best, s)
        if s > self.reference + float(self.rule.min_improvement) or self.reference == -math.inf:
            self.reference, self.since = s, 0
        else:
            self.since += 1
        if self.seen < self.minimum:
            pass
        elif self.rule.target is not None and self.best >= float(self.rule.target):
            self.reason = f"the best score {self.best:.6g} reached the target {float(self.rule.target):.6g}"
        elif self.rule.patience and self.since >= int(self.rule.patience):
            self.reason = (f"the best score rose by no more than {float(self.rule.min_improvement):.6g} over the last "
                           f"{int(self.rule.patience)} {self.unit}")
        if self.fired:
            self.at, self.nfe_at = self.seen, nfe
        return self.fired

    def horizon(self) -> Optional[int]:
        """How many further observations the rule certainly uses: it cannot fire before the last of them
        (None: no rule, or it never fires, so any number).  Once fired: 0."""
        if self.rule is None:
            return None
        if self.fired:
            return 0
        least = max(1, self.minimum - self.seen)   # it never fires before `minimum` observations
        out = None
        if self.rule.target is not None:
            out = least
        if self.rule.patience:
            # without a rise it fires once `since` reaches patience; a rise only pushes that further away
            first = 1 if self.reference == -math.inf else 0  # the first observation is always a rise
            wait = max(least, int(self.rule.patience) + first - self.since)
            out = wait if out is None else min(out, wait)
        return out

    def report(self, budget_nfe: int, spent: int) -> Optional[Dict[str, Any]]:
        """The report's ``settings["early_stop"]`` (None when no rule is set)."""
        if self.rule is None:
            return None
        return {"rule": self.rule.to_dict(), "unit": self.unit, "stopped": self.fired, "reason": self.reason,
                "at": self.at, "nfe_at_stop": self.nfe_at, "nfe_spent": int(spent), "budget_nfe": int(budget_nfe),
                "nfe_saved": max(0, int(budget_nfe) - int(spent)) if self.fired else 0}

    def close(self, report, budget_nfe: int, spent: int) -> None:
        """Writes the outcome into a SearchReport (settings and, when it fired, a note)."""
        info = self.report(budget_nfe, spent)
        if info is None:
            return
        report.settings["early_stop"] = info
        if self.fired:
            report.settings["unspent_reason"] = f"early stopping: {self.reason}"
            report.notes.append(f"stopped early after {self.at} {self.unit} ({spent} of {int(budget_nfe)} NFEs, "
                                f"{info['nfe_saved']} saved): {self.reason}")
