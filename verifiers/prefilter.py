"""A pre-filter: a cheap verifier screens every candidate and the expensive one scores only the promising ones.

The self-supervised verifier (``self_consistency``, needing only a CLIP image
encoder) or any other cheap verifier is the *screen*; the *main* verifier (an
ImageReward, a VLM grader, an ensemble) scores a candidate only when its screen
score is among the best ``keep`` fraction of every candidate screened so far,
itself included.  The first ``warmup`` candidates are always scored, so the
fraction has something to stand on.

The rule reads the candidates in the order the search scored them, one at a
time, so a candidate's fate never depends on the micro-batch it came in.  Final
scores: the main verifier's (recombined over the scored candidates when the
main verifier is an ensemble); a candidate it never scored ranks below every
scored one, ordered by its screen score.  That makes the pre-filter a
*relative* verifier (its scores are recombined over the whole search, see
``verifiers/protocol.py``).

Member matrix: the main verifier's member columns (NaN where it did not score),
then the screen's score.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch

from .protocol import Capabilities, Declared, capabilities, member_names_of, name_of, preview_kwargs, recombine

SCREEN_PREFIX = "screen:"


def admits(screened: Sequence[float], value: float, keep: float, warmup: int) -> bool:
    """The sequential keep rule for one candidate: kept when it is among the first ``warmup`` or its screen
    ``value`` is among the best ``keep`` fraction of every candidate screened so far (``screened``, the ones
    before it, in order), itself included; ties keep it.  Also the rule of a video search's latent-preview
    pruning (``engine/video.py``)."""
    n = len(screened) + 1
    if n <= int(warmup):
        return True
    better = sum(1 for s in screened if s > value)
    return better < math.ceil(float(keep) * n)


class SequentialGate:
    """:func:`admits` applied candidate after candidate, in order, remembering every screen score seen: the
    decisions for a run of candidates are the same however it is cut into calls (micro-batches)."""

    def __init__(self, keep: float, warmup: int, screened: Sequence[float] = ()):
        self.keep, self.warmup = float(keep), int(warmup)
        self.screened: List[float] = [float(v) for v in screened]

    def __call__(self, values: Sequence[float]) -> List[bool]:
        out = []
        for v in values:
            out.append(admits(self.screened, float(v), self.keep, self.warmup))
            self.screened.append(float(v))
        return out


def place_below(out: torch.Tensor, scored: torch.Tensor, screen: torch.Tensor) -> torch.Tensor:
    """``out`` with the rows not ``scored`` (a bool mask) ranked below every scored row, ordered by their
    ``screen`` value (best first, then by row number); the scored rows keep their values."""
    out = out.clone().float()
    finite = out[scored][torch.isfinite(out[scored])]  # a remote grader's failed answer (-inf) ranks last
    floor = float(finite.min()) if finite.numel() else 0.0
    rest = (~scored).nonzero().reshape(-1).tolist()
    rest.sort(key=lambda i: (-float(screen[i]), i))  # best screen score first
    for r, i in enumerate(rest):
        out[i] = floor - 1.0 - r / max(1, len(rest))
    return out


class PrefilterVerifier(Declared):

    def __init__(self, screen, main, keep: float = 0.5, warmup: int = 8):
        for role, v in (("screen", screen), ("main verifier", main)):
            if isinstance(v, PrefilterVerifier):
                raise ValueError(f"the {role} is itself a pre-filter: chain them the other way round (one "
                                 "pre-filter whose main verifier is an ensemble)")
        screen_caps, main_caps = capabilities(screen), capabilities(main)
        if screen_caps.relative:
            raise ValueError(f"the screen '{name_of(screen)}' is relative (an ensemble): its "
                             "score of a candidate changes with the others, so it cannot screen one at a time; "
                             "screen with a single verifier")
        if not 0.0 < float(keep) <= 1.0:
            raise ValueError(f"keep is the fraction the main verifier scores, in (0, 1], got {keep}")
        if int(warmup) < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        levels = {float(c.preview_level) for c in (screen_caps, main_caps) if c.needs_preview}
        if len(levels) > 1:
            raise ValueError(f"the screen and the main verifier want previews at different noise levels "
                             f"({', '.join(f'{x:g}' for x in sorted(levels))}): give them one level")
        self.caps = Capabilities(batched=screen_caps.batched and main_caps.batched, relative=True,
                                 needs_prompt=screen_caps.needs_prompt or main_caps.needs_prompt,
                                 needs_preview=bool(levels), preview_level=levels.pop() if levels else None,
                                 prefilter=True)
        self.screen, self.main = screen, main
        self.keep, self.warmup = float(keep), int(warmup)

    def capabilities(self) -> Capabilities:
        return self.caps

    def inner_verifiers(self) -> List:
        return [self.screen, self.main]

    @property
    def name(self) -> str:
        return f"prefilter({name_of(self.screen)} keeps {self.keep:g} -> {name_of(self.main)})"

    @property
    def main_members(self) -> List[str]:
        return member_names_of(self.main)

    @property
    def member_names(self) -> List[str]:
        return self.main_members + [SCREEN_PREFIX + name_of(self.screen)]

    # ------------------------------------------------------------------ scoring
    @staticmethod
    def _call(v, images, prompt, previews, members: bool) -> torch.Tensor:
        kw = preview_kwargs(v, previews)
        if members and capabilities(v).relative:
            return v.score_members(images, prompt, **kw).float().cpu().reshape(images.shape[0], -1)
        return v.score(images, prompt, **kw).float().cpu().reshape(-1, 1)

    def admits(self, screened: List[float], value: float) -> bool:
        """The rule for one candidate: ``screened`` = the screen scores before it, in order."""
        return admits(screened, value, self.keep, self.warmup)

    def screen_rows(self, images: torch.Tensor, prompt, previews: Optional[torch.Tensor] = None,
                    history: Optional[torch.Tensor] = None, group: int = 1,
                    aggregate: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """B x (M + 1) member rows for a batch, the candidates before it given as ``history`` (their rows).

        ``group`` > 1: the rows are the frames of video candidates, ``group`` consecutive frames each; the
        screen's frame scores are combined per candidate by ``aggregate`` ((n, group) -> n), the rule runs
        per candidate, the main verifier scores every frame of the kept candidates, and each frame's screen
        column holds its candidate's combined screen score."""
        b, k = images.shape[0], max(1, int(group))
        if b % k:
            raise ValueError(f"{b} frames do not split into candidates of {k} frames")
        m = len(self.main_members)
        screen = self._call(self.screen, images, prompt, previews, members=False)[:, 0]
        if not bool(torch.isfinite(screen).all()):
            raise ValueError(f"the screen '{name_of(self.screen)}' returned a non-finite score: "
                             "check its weights, or run the VAE in fp32 (--fp32-vae)")
        if k > 1:
            per = screen.reshape(-1, k)
            screen = (aggregate(per) if aggregate is not None else per.mean(dim=1)).float().reshape(-1)
        seen = [] if history is None or history.numel() == 0 else history[::k, -1].tolist()
        gate = SequentialGate(self.keep, self.warmup, seen)
        keep = [r for j, ok in enumerate(gate(screen.tolist())) if ok for r in range(j * k, (j + 1) * k)]
        rows = torch.full((b, m + 1), float("nan"))
        rows[:, -1] = screen.repeat_interleave(k)
        if keep:
            idx = torch.as_tensor(keep, dtype=torch.long)
            sub_prev = previews[idx] if previews is not None else None
            rows[idx, :m] = self._call(self.main, images[idx], prompt, sub_prev, members=True).reshape(len(keep), m)
        return rows

    def score_members(self, images: torch.Tensor, prompt, previews: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.screen_rows(images, prompt, previews)

    def combine(self, matrix: torch.Tensor) -> torch.Tensor:
        mat = matrix.float().reshape(matrix.shape[0], -1)
        m = mat.shape[1] - 1
        scored = ~torch.isnan(mat[:, 0])
        out = torch.zeros(mat.shape[0])
        if scored.any():
            out[scored] = recombine(self.main, mat[scored, :m])
        return place_below(out, scored, mat[:, -1])

    def score(self, images: torch.Tensor, prompt, previews: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores relative to this batch (the whole batch screened in order)."""
        return self.combine(self.score_members(images, prompt, previews))


def is_prefilter(verifier) -> bool:
    return capabilities(verifier).prefilter


def summary(verifier, matrix: torch.Tensor) -> Optional[dict]:
    """What a pre-filter saved, from the search's member matrix: None for any other verifier."""
    if not is_prefilter(verifier):
        return None
    mat = matrix.float().reshape(matrix.shape[0], -1)
    n = int(mat.shape[0])
    scored = int((~torch.isnan(mat[:, 0])).sum()) if n else 0
    return {"screen": name_of(verifier.screen), "main": name_of(verifier.main),
            "keep": verifier.keep, "warmup": verifier.warmup, "screened": n, "main_scored": scored,
            "main_skipped": n - scored}


def note(pre: dict, unit: str = "images") -> str:
    return (f"pre-filter: {pre['main']} scored {pre['main_scored']} of the {pre['screened']} {unit} {pre['screen']} "
            f"screened (keep {pre['keep']:g}, warm-up {pre['warmup']}); the {pre['main_skipped']} it skipped rank "
            "below, by their screen score")


__all__ = ["PrefilterVerifier", "admits", "SequentialGate", "place_below", "is_prefilter", "summary", "note", "SCREEN_PREFIX"]
