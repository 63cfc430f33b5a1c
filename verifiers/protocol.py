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
only ever sees scores; :class:`Book` is the API every score book (images,
video frames, pruned videos) shares.

What a verifier can do and needs (relative, video-native, previews, a
pre-filter's screen, ...) is its :class:`Capabilities`, declared by its class
and read by everyone through :func:`capabilities`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence, Union, runtime_checkable

import torch

Prompts = Union[str, Sequence[str]]


@dataclass(frozen=True)
class Capabilities:
    """What a verifier can do and needs, declared by its class in one place (its ``capabilities()``) and read
    by every consumer through :func:`capabilities`.

    * ``batched``: scores a batch of images in shared forward passes; False when each image is its own call
      (a remote grader's request per image).
    * ``relative``: a candidate's score depends on the other candidates (an ensemble's mean rank or z-score, a
      pre-filter): its member scores are recombined over every candidate of a search (:class:`ScoreBook`).
    * ``video_native``: scores whole clips, ``score(B x k x H x W x 3, prompt) -> B`` (the k picked frames of
      each candidate video in time order); other verifiers score frames and a video's score aggregates them.
    * ``needs_prompt``: the score reads the prompt (False: image-only, e.g. the aesthetic predictor).
    * ``needs_preview``: scores a candidate against its part-way x0-prediction (``score(..., previews=)``),
      made at ``preview_level`` on the model's noise timeline (the self-consistency verifier, or a combinator
      holding one).
    * ``prefilter``: screens candidates one at a time over the whole search (``screen_rows``, a Verifier
      Pre-filter), so it reads every row booked before.
    * ``device``: where it runs (a torch device string), or None (elsewhere, or wherever its members run).
    """

    batched: bool = True
    relative: bool = False
    video_native: bool = False
    needs_prompt: bool = True
    needs_preview: bool = False
    preview_level: Optional[float] = None
    prefilter: bool = False
    device: Optional[str] = None

    def __post_init__(self):
        if self.needs_preview and self.preview_level is None:
            raise ValueError("a verifier that needs previews declares the noise level they are made at")


def capabilities(verifier) -> Capabilities:
    """The capabilities of any verifier: its own declaration (``capabilities()``), or for an object written
    against the older protocol (plain attributes ``relative``, ``video_native``, ``needs_prompt``,
    ``needs_preview`` + ``preview_level``, a callable ``screen_rows``) what those attributes say."""
    declared = getattr(verifier, "capabilities", None)
    if callable(declared):
        return declared()
    preview = bool(getattr(verifier, "needs_preview", False))
    return Capabilities(
        relative=bool(getattr(verifier, "relative", False)),
        video_native=bool(getattr(verifier, "video_native", False)),
        needs_prompt=bool(getattr(verifier, "needs_prompt", True)),
        needs_preview=preview,
        preview_level=float(verifier.preview_level) if preview else None,
        prefilter=callable(getattr(verifier, "screen_rows", None)))


def name_of(verifier) -> str:
    """A verifier's name (``verifier`` for an object without one)."""
    return str(getattr(verifier, "name", None) or "verifier")


def member_names_of(verifier) -> List[str]:
    """The names of a verifier's member columns: its ``member_names``, else its own name."""
    names = list(getattr(verifier, "member_names", None) or [])
    return names or [name_of(verifier)]


def inner_verifiers(verifier) -> List:
    """The verifiers a verifier is made of: an ensemble's members, a pre-filter's screen and main verifier, the
    verifier a ComfyUI wrapper holds (each declares them in ``inner_verifiers()``); [] for a plain verifier."""
    declared = getattr(verifier, "inner_verifiers", None)
    return list(declared()) if callable(declared) else []


def is_video_native(verifier) -> bool:
    """A *video-native* verifier scores whole clips (see :class:`Capabilities`); a video reward model plugs
    into the search by declaring it."""
    return capabilities(verifier).video_native


def preview_kwargs(verifier, previews) -> dict:
    """The keyword arguments of a ``score`` call: ``previews`` for a verifier that needs them, none otherwise."""
    return {"previews": previews} if capabilities(verifier).needs_preview else {}


class Declared:
    """A class's one declaration of its capabilities: ``CAPABILITIES``, or ``capabilities()`` where they
    depend on the instance (a preview level, the members of an ensemble, a device).  The older protocol's
    attributes (``relative``, ``video_native``, ``needs_prompt``, ``needs_preview``, ``preview_level``) stay
    readable and are read from that declaration."""

    CAPABILITIES = Capabilities()

    def capabilities(self) -> Capabilities:
        return self.CAPABILITIES

    @property
    def relative(self) -> bool:
        return self.capabilities().relative

    @property
    def video_native(self) -> bool:
        return self.capabilities().video_native

    @property
    def needs_prompt(self) -> bool:
        return self.capabilities().needs_prompt

    @property
    def needs_preview(self) -> bool:
        return self.capabilities().needs_preview

    @property
    def preview_level(self) -> Optional[float]:
        return self.capabilities().preview_level


@runtime_checkable
class VerifierProtocol(Protocol):
    def capabilities(self) -> Capabilities: ...

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


class SingleVerifier(Declared):
    """The member part of the protocol for a verifier that is its own only member."""

    @property
    def member_names(self) -> List[str]:
        return [self.name]  # type: ignore[attr-defined]

    def score_members(self, images: torch.Tensor, prompt: Prompts) -> torch.Tensor:
        return self.score(images, prompt).float().cpu().reshape(-1, 1)  # type: ignore[attr-defined]

    def combine(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix.reshape(matrix.shape[0], -1)[:, 0].float()


def recombine(verifier, matrix: torch.Tensor) -> torch.Tensor:
    """N scores from an N × M member matrix: the verifier's own rule (mean rank, z-score) for a relative
    verifier, the single column otherwise.  The one place relative scores are recombined."""
    m = matrix.float().reshape(matrix.shape[0], -1)
    if capabilities(verifier).relative:
        return verifier.combine(m).float().reshape(-1)
    return m[:, 0]


class Book:
    """The score-book API every search books its candidates through (:class:`ScoreBook` for images,
    ``engine.video.FrameBook`` for videos, ``engine.video.PrunedBook`` for videos pruned on their latent
    preview): ``add`` books a batch and returns its scores, ``all`` every candidate's score (recombined over
    all of them when ``relative``), ``matrix`` the raw member scores per candidate (NaN where a member did not
    score it), ``count`` the candidates booked, ``member_names`` the matrix's columns, ``info`` what a report
    records about the booking."""

    relative: bool = False
    count: int = 0            # the candidates booked (a property in books that derive it)
    member_names: List[str]   # the matrix's columns (a property in every book)

    def add(self, *args, **kwargs) -> torch.Tensor:  # pragma: no cover - every book defines it
        raise NotImplementedError

    def all(self) -> torch.Tensor:  # pragma: no cover - every book defines it
        raise NotImplementedError

    def matrix(self) -> torch.Tensor:  # pragma: no cover - every book defines it
        raise NotImplementedError

    def members(self, row: int) -> dict:
        """A row's raw member scores by member name (relative books) or {} for a single verifier; a member
        that did not score the row (NaN: a pre-filter's main verifier, a pruned video) is left out."""
        if not self.relative:
            return {}
        return {k: v for k, v in zip(self.member_names, self.matrix()[int(row)].tolist()) if math.isfinite(v)}

    def columns(self):
        """(member name, its scores, the row numbers they belong to) for each member: a member that skips rows
        (NaN in its column) lists only the rows it scored."""
        for name, col in zip(self.member_names, self.matrix().T):
            rows = (~torch.isnan(col)).nonzero().reshape(-1).tolist()
            yield name, col[rows], rows

    def info(self) -> Dict:
        """What a report records about this booking ({} for images)."""
        return {}


class ScoreBook(Book):
    """Every image scored in one search, as raw member scores, numbered in the order scored.

    ``add`` returns the new rows' scores: an absolute verifier's own scores, or
    for a relative verifier its combination over *every* row so far; ``all``
    recombines every row over every row (what a final ranking uses)."""

    def __init__(self, verifier, prompt: Prompts):
        self.verifier = verifier
        self.prompt = prompt
        self.caps = capabilities(verifier)
        self.relative = self.caps.relative
        self._rows: List[torch.Tensor] = []
        self._scores: List[torch.Tensor] = []
        self.count = 0

    @property
    def member_names(self) -> List[str]:
        return member_names_of(self.verifier)

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
        kw = {"previews": previews} if self.caps.needs_preview else {}
        if self.caps.prefilter:  # a pre-filter reads the rows before (prefilter.py)
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


__all__ = ["Capabilities", "capabilities", "Declared", "VerifierProtocol", "SingleVerifier", "Book", "ScoreBook",
           "recombine", "is_video_native", "inner_verifiers", "preview_kwargs", "name_of", "member_names_of", "Prompts"]
