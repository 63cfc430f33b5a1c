"""The verifier protocol: what travels on a VERIFIER socket, and the one place
where relative (ensemble) scores are recombined.

A verifier scores images: ``score(images B×H×W×3 in [0, 1], prompt) -> B``
float scores, higher is better.  Every verifier also answers in *members*:
``score_members`` gives B×M raw scores (M = 1 for a single verifier, one
column per member for an ensemble) and ``combine`` turns any N×M matrix into N
scores.  A verifier is **relative** when a candidate's score depends on the
other candidates (mean rank, z-score): its scores must then be recombined over
every candidate of a search, not per micro-batch.  :class:`ScoreBook` does
that for every consumer (SearchLoop's host, Verifier Score), so the search core
only ever sees scores.
"""
from __future__ import annotations

import math
from typing import List, Optional, Protocol, Sequence, Union, runtime_checkable

import torch

Prompts = Union[str, Sequence[str]]


def is_video_native(verifier) -> bool:
    """A *video-native* verifier (``video_native = True``) scores whole clips: ``score(clips, prompt)`` with
    ``clips`` B x k x H x W x 3 (the k frames picked of each candidate video, in time order) -> B scores.  The
    other verifiers score images, and a video candidate's score is then the mean or min of its frames' scores.
    A video reward model plugs into the search through this attribute alone."""
    return bool(getattr(verifier, "video_native", False))


@runtime_checkable
class VerifierProtocol(Protocol):
    relative: bool

    @property
    def name(self) -> str: ...

    @property
    def member_names(self) -> List[str]: ...

    def score(self, images: torch.Tensor, prompt: Prompts) -> torch.Tensor:
        """B scores (float32, CPU), higher is better; relative verifiers: relative to this batch."""

    def score_members(self, images: torch.Tensor, prompt: Prompts) -> torch.Tensor:
        """B × M raw member scores (M = 1 for a single verifier)."""

    def combine(self, matrix: torch.Tensor) -> torch.Tensor:
        """N × M member scores of N candidates -> N scores."""


class SingleVerifier:
    """The member part of the protocol for a verifier that is its own only member."""
    relative = False

    @property
    def member_names(self) -> List[str]:
        return [self.name]  # type: ignore[attr-defined]

    def score_members(self, images: torch.Tensor, prompt: Prompts) -> torch.Tensor:
        return self.score(images, prompt).float().cpu().reshape(-1, 1)  # type: ignore[attr-defined]

    def combine(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix.reshape(matrix.shape[0], -1)[:, 0].float()


def recombine(verifier, matrix: torch.Tensor) -> torch.Tensor:
    """N scores from an N × M member matrix: the verifier's own rule (mean rank, z-score) for a relative
    verifier, the single column otherwise."""
    m = matrix.float().reshape(matrix.shape[0], -1)
    if getattr(verifier, "relative", False):
        return verifier.combine(m).float().reshape(-1)
    return m[:, 0]


class ScoreBook:
    """Every image scored in one search, as raw member scores, numbered in the order scored.

    ``add`` returns the new rows' scores: an absolute verifier's own scores, or
    for a relative verifier its combination over *every* row so far; ``all``
    recombines every row over every row (what a final ranking uses)."""

    def __init__(self, verifier, prompt: Prompts):
        self.verifier = verifier
        self.prompt = prompt
        self.relative = bool(getattr(verifier, "relative", False))
        self._rows: List[torch.Tensor] = []
        self._scores: List[torch.Tensor] = []
        self.count = 0

    @property
    def member_names(self) -> List[str]:
        names = list(getattr(self.verifier, "member_names", []) or [])
        return names or [getattr(self.verifier, "name", "verifier")]

    def add_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        m = matrix.detach().float().cpu().reshape(matrix.shape[0], -1)
        self._rows.append(m)
        self.count += m.shape[0]
        if not self.relative:
            s = m[:, 0].clone()
            self._scores.append(s)
            return s
        return recombine(self.verifier, self.matrix())[-m.shape[0]:]

    def add(self, images: torch.Tensor, previews: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores the images (B × H × W × 3) and books them.  ``previews``: the decoded x0-predictions the
        candidates made part-way, for a verifier that needs them (``needs_preview``, the self-consistency
        verifier or an ensemble holding one); a verifier that needs them refuses to score without."""
        kw = {"previews": previews} if getattr(self.verifier, "needs_preview", False) else {}
        if callable(getattr(self.verifier, "screen_rows", None)):  # a pre-filter reads the rows before (prefilter.py)
            return self.add_matrix(self.verifier.screen_rows(images, self.prompt, history=self.matrix(), **kw))
        if self.relative:
            return self.add_matrix(self.verifier.score_members(images, self.prompt, **kw))
        return self.add_matrix(self.verifier.score(images, self.prompt, **kw).reshape(-1, 1))

    def matrix(self) -> torch.Tensor:
        return torch.cat(self._rows) if self._rows else torch.zeros(0, 1)

    def all(self) -> torch.Tensor:
        if not self.relative:
            return torch.cat(self._scores) if self._scores else torch.zeros(0)
        return recombine(self.verifier, self.matrix())

    def members(self, row: int) -> dict:
        """A row's raw member scores by member name (relative verifiers) or {} for a single verifier."""
        if not self.relative:
            return {}
        # a pre-filter's main verifier leaves the rows it skipped NaN: they are left out
        return {k: v for k, v in zip(self.member_names, self.matrix()[int(row)].tolist()) if math.isfinite(v)}

    def columns(self):
        """(member name, its scores, the row numbers they belong to) for each member: a pre-filter's main
        verifier skips rows (NaN in its columns), every other member scores each row."""
        for name, col in zip(self.member_names, self.matrix().T):
            rows = (~torch.isnan(col)).nonzero().reshape(-1).tolist()
            yield name, col[rows], rows


__all__ = ["VerifierProtocol", "SingleVerifier", "ScoreBook", "recombine", "Prompts"]
