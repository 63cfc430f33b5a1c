"""The over-optimisation guard: a held-out verifier watches the search, never steers it.

Search can fool its verifier: pushed hard enough, the candidate with the
highest search score is one the verifier over-rates, and a second verifier
(or a human) likes it less than a typical candidate.  The guard scores the
winner and a sample of the candidates with a **held-out** verifier (never used
to choose) and compares:

* the search verifier's score of the winner with the median candidate's;
* the held-out verifier's score of the winner with the median sampled
  candidate's (and the winner's percentile among them);
* the diversity of the top-k (mean pairwise RMS distance of the images).

It warns when the search score of the winner is above the median while its
held-out score is below the median of the sampled candidates: the search
improved what it optimises and made what it should mean worse.

:func:`summary` is the one place this is computed (SearchLoop and Verifier
Score both call it); the report carries the result as ``held_out``.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Optional, Sequence

import torch


def sample_stride(expected_candidates: int, samples: int) -> int:
    """Every how many finished candidates one is scored by the held-out verifier (at least 1)."""
    return max(1, math.ceil(max(1, int(expected_candidates)) / max(1, int(samples))))


def diversity(images: Optional[torch.Tensor]) -> Optional[float]:
    """Mean pairwise RMS distance between images (B × H × W × C in [0, 1]); None below two images."""
    if images is None or images.shape[0] < 2:
        return None
    x = images.detach().float().cpu().reshape(images.shape[0], -1)
    d = torch.cdist(x, x) / math.sqrt(x.shape[1])
    n = x.shape[0]
    return float(d.sum() / (n * (n - 1)))


def percentile(value: float, population: Sequence[float]) -> Optional[float]:
    """The share of ``population`` strictly below ``value`` plus half the ties, in [0, 1]."""
    if not population:
        return None
    below = sum(1 for v in population if v < value)
    ties = sum(1 for v in population if v == value)
    return (below + 0.5 * ties) / len(population)


def summary(*, search_name: str, held_out_name: str, search_scores: Sequence[float],
            winner_search: float, sampled_search: Sequence[float], sampled_held_out: Sequence[float],
            winner_held_out: float, top_k_images: Optional[torch.Tensor] = None,
            trace: Optional[List[Dict[str, float]]] = None, stride: int = 1) -> Dict[str, Any]:
    """The report's ``held_out`` section, with ``warning`` set when the guard fires."""
    med_search = statistics.median(search_scores) if search_scores else None
    med_held = statistics.median(sampled_held_out) if sampled_held_out else None
    out: Dict[str, Any] = {
        "verifier": held_out_name, "search_verifier": search_name,
        "sampled": len(sampled_held_out), "stride": int(stride),
        "winner": {"search": float(winner_search), "held_out": float(winner_held_out)},
        "median": {"search": med_search, "held_out": med_held},
        "winner_percentile": {"search": percentile(winner_search, list(search_scores)),
                              "held_out": percentile(winner_held_out, list(sampled_held_out))},
        "sampled_pairs": [[float(a), float(b)] for a, b in zip(sampled_search, sampled_held_out)],
        "top_k_diversity": diversity(top_k_images),
        "trace": list(trace or []),
        "warning": None,
    }
    if med_search is not None and med_held is not None and winner_search > med_search and winner_held_out < med_held:
        out["warning"] = (
            f"possible over-optimisation: the winner scores {winner_search:.4g} on the search verifier "
            f"({search_name}), above the median candidate's {med_search:.4g}, but {winner_held_out:.4g} on the "
            f"held-out verifier ({held_out_name}), below the median of {len(sampled_held_out)} sampled candidates "
            f"({med_held:.4g}). The search may be exploiting its verifier: look at the top-k images, lower the "
            "budget, or use an ensemble of verifiers")
    return out


def running_best_trace(rows: Sequence[Dict[str, float]]) -> List[Dict[str, float]]:
    """The held-out curve: over sampled candidates in the order they were scored, the held-out score of the
    one the search verifier rates best so far (what the search would pick among them), at its NFE count."""
    out: List[Dict[str, float]] = []
    best = None
    for r in rows:
        if best is None or r["search"] > best["search"]:
            best = r
        out.append({"nfe": float(r["nfe"]), "search": float(best["search"]), "held_out": float(best["held_out"])})
    return out


def message(h: Dict[str, Any]) -> str:
    """What the node shows when a held-out verifier watches: the warning, or the comparison that found none."""
    if h.get("warning"):
        return "WARNING: " + h["warning"]

    def f(v):
        return "n/a" if v is None else f"{v:.4g}"
    med = h["median"]
    return (f"held-out check passed: the winner scores {f(h['winner']['held_out'])} on {h['verifier']} "
            f"(median of {h['sampled']} sampled candidates {f(med['held_out'])}) and {f(h['winner']['search'])} "
            f"on the search verifier (median {f(med['search'])})")
