"""Verifier ensembles.

* ``mean_rank`` (the paper's rule, Ma et al. 2025): each member ranks the
  candidates (1 = worst ... N = best, ties get the average of the ranks they
  span); the ensemble score is the weighted mean rank, so higher is better and
  the range is [1, N].
* ``zscore``: each member's scores are standardised over the candidates
  ((s - mean) / std, std 0 -> 0), then averaged with the weights.

Both are *relative*: a candidate's score depends on the others scored with it.
The search therefore keeps every member's raw scores and recombines them over
all candidates seen so far (``combine``), so micro-batching never changes the
result.  Ensembles nest: an ensemble member of the same mode is flattened into
its members (weights multiplied), which is exactly the flat ensemble.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .protocol import Capabilities, Declared, capabilities, name_of, preview_kwargs

MODES = ("mean_rank", "zscore")


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N of a 1-D tensor (1 = smallest); ties get their average rank."""
    x = x.double().reshape(-1)
    n = x.numel()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty(n, dtype=torch.float64)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def mean_rank(matrix: torch.Tensor, weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """matrix: N candidates x M members (higher is better) -> N scores."""
    m = matrix.reshape(matrix.shape[0], -1)
    w = _weights(weights, m.shape[1])
    ranks = torch.stack([average_ranks(m[:, j]) for j in range(m.shape[1])], dim=1)
    return (ranks * w).sum(1).float()


def zscore(matrix: torch.Tensor, weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """A -inf score (a remote grader's failed answer) stays -inf and is left out of its member's mean and
    standard deviation; a member with weight 0 does not count at all."""
    m = matrix.reshape(matrix.shape[0], -1).double()
    w = _weights(weights, m.shape[1])
    ok = torch.isfinite(m)
    cnt = ok.sum(0, keepdim=True).clamp(min=1)
    mf = torch.where(ok, m, torch.zeros_like(m))
    mu = mf.sum(0, keepdim=True) / cnt
    sd = (torch.where(ok, (m - mu) ** 2, torch.zeros_like(m)).sum(0, keepdim=True) / cnt).sqrt()
    z = torch.where(sd > 0, (mf - mu) / sd.clamp(min=1e-300), torch.zeros_like(m))
    z = torch.where(ok, z, m)  # -inf (NaN / +inf are refused by the search's own check)
    return (z * w).where(w > 0, torch.zeros_like(z)).sum(1).float()


def _weights(weights: Optional[Sequence[float]], m: int) -> torch.Tensor:
    w = torch.ones(m, dtype=torch.float64) if weights is None else torch.tensor(list(weights), dtype=torch.float64)
    if w.numel() != m:
        raise ValueError(f"{w.numel()} weights for {m} verifiers")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("ensemble weights must be >= 0 and not all 0")
    return w / w.sum()


class EnsembleVerifier(Declared):
    """Combines member verifiers (anything with ``score(images, prompt)`` and ``name``): a relative
    verifier of the protocol in ``verifiers/protocol.py`` (its scores are recombined there)."""

    def __init__(self, members: Sequence, weights: Optional[Sequence[float]] = None, mode: str = "mean_rank"):
        if mode not in MODES:
            raise ValueError(f"ensemble mode must be one of {MODES}, got '{mode}'")
        if not members:
            raise ValueError("an ensemble needs at least one verifier")
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members):
            raise ValueError(f"{len(weights)} weights for {len(members)} verifiers")
        flat, flat_w = [], []
        for v, w in zip(members, weights):
            if capabilities(v).prefilter:
                raise ValueError("a pre-filter cannot be an ensemble member (it screens candidates one at a time "
                                 "over the whole search): make the ensemble the pre-filter's main verifier")
            if isinstance(v, EnsembleVerifier) and v.mode == mode:
                inner = _weights(v.weights, len(v.members))
                flat.extend(v.members)
                flat_w.extend((w * inner).tolist())
            elif isinstance(v, EnsembleVerifier):
                raise ValueError(f"cannot nest a '{v.mode}' ensemble in a '{mode}' ensemble: use one mode")
            else:
                flat.append(v)
                flat_w.append(w)
        _weights(flat_w, len(flat))  # validates
        caps = [capabilities(v) for v in flat]
        levels = {float(c.preview_level) for c in caps if c.needs_preview}
        if len(levels) > 1:
            raise ValueError(f"the ensemble's self-consistency members want previews at different noise levels "
                             f"({', '.join(f'{x:g}' for x in sorted(levels))}): give them one level")
        native = {c.video_native for c in caps}
        if len(native) > 1:
            raise ValueError("the ensemble mixes video-native verifiers (they score whole clips) with image "
                             "verifiers (they score frames): use one kind per ensemble")
        self.caps = Capabilities(batched=all(c.batched for c in caps), relative=True, video_native=native.pop(),
                                 needs_prompt=any(c.needs_prompt for c in caps), needs_preview=bool(levels),
                                 preview_level=levels.pop() if levels else None)
        self.members: List = flat
        self.weights: List[float] = flat_w
        self.mode = mode

    def capabilities(self) -> Capabilities:
        return self.caps

    def inner_verifiers(self) -> List:
        return list(self.members)

    @property
    def name(self) -> str:
        parts = ", ".join(f"{w:g}*{name_of(v)}" for v, w in zip(self.members, self.weights))
        return f"ensemble[{self.mode}]({parts})"

    @property
    def member_names(self) -> List[str]:
        names, seen = [], {}
        for v in self.members:
            n = name_of(v)
            seen[n] = seen.get(n, 0) + 1
            names.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
        return names

    def score_members(self, images: torch.Tensor, prompt, previews: Optional[torch.Tensor] = None) -> torch.Tensor:
        """N x M raw member scores (``previews``: for self-consistency members, see verifiers/self_consistency.py)."""
        cols = [v.score(images, prompt, **preview_kwargs(v, previews)).float().cpu().reshape(-1) for v in self.members]
        return torch.stack(cols, dim=1)

    def combine(self, matrix: torch.Tensor) -> torch.Tensor:
        return (mean_rank if self.mode == "mean_rank" else zscore)(matrix, self.weights)

    def score(self, images: torch.Tensor, prompt, previews: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores relative to this batch (used where the whole population is scored at once)."""
        return self.combine(self.score_members(images, prompt, previews))
