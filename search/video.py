"""Video candidates: which frames an image verifier scores, and how their scores make one.

A video latent is 5-D, ``B x C x T x H x W``; the search algorithms never look
inside a latent, so they run on it unchanged.  What is particular to video is
scoring: an image verifier scores ``k`` decoded frames of each candidate and
the candidate's score is their ``mean`` or ``min``.  Nothing here imports
ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

PICKS = ("first/middle/last", "evenly spaced", "first")
AGGREGATES = ("mean", "min")


class VideoInputError(ValueError):
    """A frame count or setting that does not fit the video: the message says what to do."""


def frame_indices(total: int, frames: int, pick: str) -> List[int]:
    """The frames (0-based, increasing, distinct) scored of a ``total``-frame video.

    ``first/middle/last``: frames 0, (total-1)//2 and total-1 (``frames`` is not used);
    ``evenly spaced``: ``frames`` frames from the first to the last, evenly spaced (rounded);
    ``first``: frame 0 alone (a causal VAE then decodes one latent frame per candidate)."""
    total = int(total)
    if total < 1:
        raise VideoInputError(f"a video with {total} frames has nothing to score")
    if pick == "first/middle/last":
        idx = [0, (total - 1) // 2, total - 1]
    elif pick == "first":
        idx = [0]
    elif pick == "evenly spaced":
        k = int(frames)
        if k < 1:
            raise VideoInputError(f"frames must be at least 1, got {k}")
        if k == 1:
            idx = [(total - 1) // 2]
        else:
            idx = [int(round(i * (total - 1) / (k - 1))) for i in range(k)]
    else:
        raise VideoInputError(f"unknown frame pick {pick!r}: use one of {', '.join(PICKS)}")
    return sorted(set(idx))


def aggregate(scores: torch.Tensor, how: str) -> torch.Tensor:
    """(B, k) frame scores -> (B,) candidate scores."""
    s = scores.float()
    if how == "mean":
        return s.mean(dim=1)
    if how == "min":
        return s.min(dim=1).values
    raise VideoInputError(f"unknown frame aggregate {how!r}: use one of {', '.join(AGGREGATES)}")


@dataclass(frozen=True)
class VideoScoring:
    """How a video candidate is scored with an image verifier."""

    pick: str = "first/middle/last"
    frames: int = 3
    aggregate: str = "mean"
    # latent-preview pruning: a candidate is decoded only when its preview score is among the best
    # ``preview_keep`` fraction seen so far (1 = off); the first ``preview_warmup`` are always decoded
    preview_keep: float = 1.0
    preview_warmup: int = 2

    def __post_init__(self):
        if self.pick not in PICKS:
            raise VideoInputError(f"unknown frame pick {self.pick!r}: use one of {', '.join(PICKS)}")
        if self.aggregate not in AGGREGATES:
            raise VideoInputError(f"unknown frame aggregate {self.aggregate!r}: use one of {', '.join(AGGREGATES)}")
        if int(self.frames) < 1:
            raise VideoInputError(f"frames must be at least 1, got {self.frames}")
        if not 0.0 < float(self.preview_keep) <= 1.0:
            raise VideoInputError(f"preview_keep is the fraction of candidates decoded, in (0, 1], got "
                                  f"{self.preview_keep}")
        if int(self.preview_warmup) < 0:
            raise VideoInputError(f"preview_warmup must be >= 0, got {self.preview_warmup}")

    @property
    def pruning(self) -> bool:
        return float(self.preview_keep) < 1.0

    def indices(self, total: int) -> List[int]:
        return frame_indices(total, self.frames, self.pick)

    @property
    def wanted(self) -> int:
        """The frames scored per video that this scoring asks for: three for first/middle/last, ``frames`` when
        evenly spaced, one for the first frame."""
        return {"first/middle/last": 3, "first": 1}.get(self.pick, int(self.frames))

    def shortfall(self, total: int) -> Optional[str]:
        """What to tell the user when ``total``-frame videos have fewer distinct frames than this scoring asks
        for (each of them is then scored once), or None."""
        got = len(self.indices(total))
        if got >= self.wanted:
            return None
        if self.pick == "evenly spaced":
            fix = f"set frames to {total} or fewer in Video Scoring, or make longer videos"
        else:
            fix = "make longer videos, or pick 'first' in Video Scoring"
        return (f"Video Scoring asks for {self.wanted} frames per video ({self.pick}), but each video has only "
                f"{total} frame{'s' if total != 1 else ''}: {got} {'were' if got != 1 else 'was'} scored; {fix}")

    def select(self, videos: torch.Tensor) -> torch.Tensor:
        """``B x T x H x W x 3`` videos -> ``(B*k) x H x W x 3`` frames, candidate by candidate."""
        if videos.ndim != 5:
            raise VideoInputError(f"expected videos as B x T x H x W x 3, got shape {tuple(videos.shape)}")
        idx = torch.as_tensor(self.indices(videos.shape[1]), dtype=torch.long)
        return videos[:, idx].reshape(-1, *videos.shape[2:])

    def combine(self, frame_scores: torch.Tensor, k: int) -> torch.Tensor:
        """``(B*k,)`` frame scores, candidate by candidate -> ``(B,)`` candidate scores."""
        s = frame_scores.reshape(-1)
        if s.numel() % int(k):
            raise VideoInputError(f"{s.numel()} frame scores do not split into candidates of {k} frames")
        return aggregate(s.reshape(-1, int(k)), self.aggregate)

    def to_dict(self, total: Optional[int] = None) -> dict:
        """The settings, for a report.  With ``total`` (the videos' frame count), ``frames`` is the number of
        frames actually scored per video, and ``frames_requested`` what was asked for when that was more."""
        out = {"pick": self.pick, "frames": int(self.frames), "aggregate": self.aggregate}
        if total is not None:
            out["frames"] = len(self.indices(total))
            if out["frames"] < self.wanted:
                out["frames_requested"] = self.wanted
        if self.pruning:
            out.update(preview_keep=float(self.preview_keep), preview_warmup=int(self.preview_warmup))
        return out


def latent_frames_needed(frame_count: Callable[[int], int], latent_frames: int, frame: int) -> int:
    """How many leading latent frames a causal video VAE needs to decode pixel ``frame`` (0-based):
    the fewest ``L`` whose decode, ``frame_count(L)`` frames, reaches it.  ``frame_count`` is the VAE's
    temporal upscale (ComfyUI's ``VAE.upscale_ratio[0]``; Wan: ``L -> 4 L - 3``)."""
    t = int(latent_frames)
    if not 0 <= int(frame) < int(frame_count(t)):
        raise VideoInputError(f"frame {frame} is not in a {frame_count(t)}-frame video")
    for n in range(1, t + 1):
        if int(frame_count(n)) > int(frame):
            return n
    return t


def latent_frame_of(frame_count: Callable[[int], int], latent_frames: int, frame: int) -> int:
    """The latent frame (0-based) that pixel ``frame`` is decoded from, in a causal video VAE."""
    return latent_frames_needed(frame_count, latent_frames, frame) - 1


def split_videos(frames: torch.Tensor, frames_per_video: int) -> torch.Tensor:
    """An IMAGE batch of ``N*T`` frames (video after video) -> ``N x T x H x W x 3``."""
    t = int(frames_per_video)
    n = int(frames.shape[0])
    if t < 1:
        raise VideoInputError(f"frames_per_video must be at least 1, got {t}")
    if n % t:
        raise VideoInputError(f"the IMAGE batch has {n} frames, which is not a whole number of {t}-frame videos: "
                              "set frames_per_video to the frame count of one video (VAE Decode of a video "
                              "latent gives frames video after video)")
    return frames.reshape(n // t, t, *frames.shape[1:])
