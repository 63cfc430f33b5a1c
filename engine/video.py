"""Video candidates on ComfyUI's side: frame scoring through a :class:`FrameBook`
(and :class:`PrunedBook`, which prunes on the latent preview first).

A video latent (``B x C x T x H x W``) decodes to ``B x T x H x W x 3``
frames (ComfyUI's ``VAE.decode``); an image verifier scores ``k`` of them
per candidate (``search.video.VideoScoring``) and the candidate's score is
their mean or min.  Outputs that go to stock nodes (Save Video, Create
Video, Save Animated WEBP) are IMAGE batches of frames, video after video."""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..search.video import VideoInputError, VideoScoring, latent_frame_of, latent_frames_needed
from ..verifiers import prefilter
from ..verifiers.protocol import Book, ScoreBook, capabilities, name_of

DEFAULT = VideoScoring()
PREFILTER_NATIVE = ("the Verifier Pre-filter scores frames, and a video-native verifier scores whole clips: connect "
                    "the video-native verifier to Search Loop directly, or pre-filter with image verifiers")

# Video VAEs that decode causally, latent frame by latent frame (a feature cache carries the past forward and
# nothing looks ahead), so decoding the first L latent frames gives exactly the first frames of the full decode:
# Wan 2.1's and Wan 2.2's.  HunyuanVideo's VAE normalises over all frames (GroupNorm on 5-D) and LTX-Video's
# decoder is not causal, so they are decoded whole.  Keyed by the VAE model class (module, name).
CAUSAL_VAES = {("comfy.ldm.wan.vae", "WanVAE"), ("comfy.ldm.wan.vae2_2", "WanVAE")}


def frame_count(vae) -> Optional[Callable[[int], int]]:
    """A video VAE's temporal upscale ``latent frames -> pixel frames`` (its ``upscale_ratio[0]``), or None."""
    ratio = getattr(vae, "upscale_ratio", None)
    if isinstance(ratio, (tuple, list)) and callable(ratio[0]):
        return ratio[0]
    return None


def causal_frame_count(vae) -> Optional[Callable[[int], int]]:
    """:func:`frame_count` of a VAE that decodes a latent prefix exactly (``CAUSAL_VAES``); None for any other
    VAE (decoded whole)."""
    inner = getattr(vae, "first_stage_model", None)
    if inner is None or (type(inner).__module__, type(inner).__name__) not in CAUSAL_VAES:
        return None
    return frame_count(vae)


def spatial_upscale(vae) -> tuple:
    """(height, width) pixels per latent pixel of a video VAE (its ``upscale_ratio``; 8 when it has none)."""
    ratio = getattr(vae, "upscale_ratio", 8)
    if isinstance(ratio, (tuple, list)):
        return int(ratio[-2]), int(ratio[-1])
    return int(ratio), int(ratio)


def preview_videos(latents: torch.Tensor, rgb, frames: Sequence[int], frame_count: Callable[[int], int],
                   size: tuple) -> torch.Tensor:
    """Latent-preview frames ``B x k x H x W x 3`` in [0, 1] of video latents ``B x C x T x h x w``: for each
    pixel frame in ``frames``, its latent frame through ComfyUI's linear latent -> RGB preview (``rgb`` =
    ``compat.latent_rgb(model)``, applied to the model-space latent as ComfyUI's own previewer does), upscaled
    bilinearly to ``size`` (H, W) = the decoded frames' size."""
    fmt, factors, bias = rgb
    t = int(latents.shape[2])
    idx = torch.as_tensor([latent_frame_of(frame_count, t, f) for f in frames], dtype=torch.long)
    x = fmt.process_in(latents.float())[:, :, idx]                    # B x C x k x h x w
    img = torch.einsum("bckhw,cr->bkhwr", x, factors.to(x))
    if bias is not None:
        img = img + bias.to(x)
    img = ((img + 1.0) / 2.0).clamp(0, 1)                              # as ComfyUI's preview_to_image
    b, k, h, w, _ = img.shape
    img = torch.nn.functional.interpolate(img.reshape(b * k, h, w, 3).permute(0, 3, 1, 2), size=tuple(size),
                                          mode="bilinear", align_corners=False)
    return img.permute(0, 2, 3, 1).reshape(b, k, int(size[0]), int(size[1]), 3).clamp(0, 1)


def decode_prefix(frame_count: Optional[Callable[[int], int]], latent_frames: int, frames: Sequence[int]) -> int:
    """How many leading latent frames to decode so that every frame in ``frames`` is exact: all of them for a
    VAE that is not causal (``frame_count`` None)."""
    t = int(latent_frames)
    if frame_count is None or not frames:
        return t
    return latent_frames_needed(frame_count, t, max(frames))


class FrameBook(Book):
    """A score book (``verifiers.protocol.Book``) over candidates that are videos: each candidate's scored frames are booked as
    rows of the image verifier's book (a relative verifier combines over every frame scored so far), and
    every score handed out is per candidate, aggregated over its frames."""

    def __init__(self, verifier, prompt, scoring: VideoScoring):
        self.book = ScoreBook(verifier, prompt)
        self.scoring = scoring
        self.relative = self.book.relative
        caps = capabilities(verifier)
        # a video-native verifier (verifiers/protocol.py) scores each candidate's picked frames as one clip
        self.native = caps.video_native
        # a pre-filter screens each candidate from its frames, aggregated as the scoring says (prefilter.py)
        self.prefilter = verifier if caps.prefilter else None
        if self.prefilter is not None and any(capabilities(v).video_native for v in (verifier.screen, verifier.main)):
            raise VideoInputError(PREFILTER_NATIVE)
        self.k: Optional[int] = None
        self.total: Optional[int] = None

    @property
    def member_names(self) -> List[str]:
        return self.book.member_names

    @property
    def count(self) -> int:
        return self.book.count // self.k if self.k else 0

    def frames(self, videos: torch.Tensor, total: Optional[int] = None) -> torch.Tensor:
        """The frames scored of ``B x T x H x W x 3`` videos, ``(B*k) x H x W x 3``.  ``total``: the frame count
        of the whole videos when ``videos`` holds only their first frames (a causal VAE's prefix decode)."""
        t = int(videos.shape[1] if total is None else total)
        if self.total is not None and t != self.total:
            raise VideoInputError(f"candidates of one search have {self.total} frames, this one {t}")
        idx = self.scoring.indices(t)
        if idx[-1] >= videos.shape[1]:
            raise VideoInputError(f"frame {idx[-1]} is scored but only the first {videos.shape[1]} frames were "
                                  "decoded")
        self.total = t
        self.k = len(idx)
        return videos[:, torch.as_tensor(idx, dtype=torch.long)].reshape(-1, *videos.shape[2:])

    def add(self, videos: torch.Tensor, previews: Optional[torch.Tensor] = None,
            total: Optional[int] = None) -> torch.Tensor:
        """Scores and books ``B x T x H x W x 3`` videos.  ``previews``: the decoded x0-predictions of the same
        videos part-way through the schedule (a self-consistency verifier; decoded as far as ``videos``):
        each scored frame is paired with the same frame of its preview."""
        frames = self.frames(videos, total)
        paired = None
        if previews is not None:
            if tuple(previews.shape) != tuple(videos.shape):
                raise VideoInputError(f"previews of shape {tuple(previews.shape)} do not match the videos' "
                                      f"{tuple(videos.shape)}")
            if self.native:
                raise VideoInputError("a video-native verifier scores clips, not frames against their previews")
            idx = torch.as_tensor(self.scoring.indices(self.total), dtype=torch.long)
            paired = previews[:, idx].reshape(-1, *previews.shape[2:])
        return self._add_frames(frames, int(videos.shape[0]), paired)

    def add_picked(self, clips: torch.Tensor, total: int) -> torch.Tensor:
        """Books frames already picked: ``B x k x H x W x 3``, the scored frames of ``total``-frame videos."""
        t = int(total)
        if self.total is not None and t != self.total:
            raise VideoInputError(f"candidates of one search have {self.total} frames, this one {t}")
        k = len(self.scoring.indices(t))
        if clips.ndim != 5 or clips.shape[1] != k:
            raise VideoInputError(f"expected the {k} scored frames of each video, got shape {tuple(clips.shape)}")
        self.total, self.k = t, k
        return self._add_frames(clips.reshape(-1, *clips.shape[2:]), int(clips.shape[0]))

    def _add_frames(self, frames: torch.Tensor, b: int, previews: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.prefilter is not None:  # the rule runs per candidate, on its k frames' aggregated screen score
            rows = self.prefilter.screen_rows(frames, self.book.prompt, previews=previews,
                                              history=self.book.matrix(), group=self.k,
                                              aggregate=lambda s: self.scoring.combine(s.reshape(-1), self.k))
            return self.scoring.combine(self.book.add_matrix(rows), self.k)
        if self.native:  # one row per candidate: its k frames as a B x k x H x W x 3 clip
            clips = frames.reshape(b, -1, *frames.shape[1:])
            self.k = 1
            return self.book.add(clips)
        return self.scoring.combine(self.book.add(frames, previews), self.k)

    def all(self) -> torch.Tensor:
        return self.scoring.combine(self.book.all(), self.k) if self.k else torch.zeros(0)

    def matrix(self) -> torch.Tensor:
        """Raw member scores per candidate, each member aggregated over the candidate's frames."""
        m = self.book.matrix()
        if not self.k:
            return m
        cols = [self.scoring.combine(m[:, j], self.k) for j in range(m.shape[1])]
        return torch.stack(cols, dim=1)

    def info(self) -> Dict:
        """What the report records: the frame count, the frames scored and how they combine; ``note`` when the
        videos have fewer frames than the scoring asks for (shown on the node and among the report's notes)."""
        out = self.scoring.to_dict(self.total)
        if self.native:
            out["aggregate"] = "the verifier's own (video-native)"
        if self.total is not None:
            out.update(frames_per_video=int(self.total), scored_frames=self.scoring.indices(self.total))
            note = self.scoring.shortfall(self.total)
            if note:
                out["note"] = note
        return out


class PrunedBook(Book):
    """Latent-preview pruning in front of a :class:`FrameBook`: each candidate's scored frames are first made
    from its latent (``preview_videos``) and scored by the search's own verifier; the candidate is decoded and
    scored for real only when its preview score is among the best ``preview_keep`` fraction of every candidate
    seen so far, in the search's order (``prefilter.admits``: the pre-filter's rule, so the decision never
    depends on the micro-batch).  A pruned candidate ranks below every decoded one, by its preview score; the
    scores are therefore relative (recombined over the whole search), as a pre-filter's are."""

    relative = True
    PREVIEW_PREFIX = "preview:"

    def __init__(self, verifier, prompt, scoring: VideoScoring):
        caps = capabilities(verifier)
        if caps.relative:
            raise VideoInputError(
                f"pruning by latent preview ranks each candidate's preview by the verifier's own score, one at a "
                f"time; '{name_of(verifier)}' is relative (an ensemble or a pre-filter: its "
                "score of a candidate changes with the others): use a single verifier, or set preview_keep to 1")
        if caps.needs_preview:
            raise VideoInputError(
                "pruning by latent preview scores a latent's RGB preview alone, which the self-consistency "
                "verifier cannot score (it compares a video with its own x0-prediction): set preview_keep to 1, "
                "or put the self-consistency verifier in a Verifier Pre-filter as its screen")
        self.inner = FrameBook(verifier, prompt, scoring)
        self.preview = FrameBook(verifier, prompt, scoring)
        self.scoring = scoring
        self.gate = prefilter.SequentialGate(scoring.preview_keep, scoring.preview_warmup)
        self.decoded: List[Optional[int]] = []   # each candidate's row in ``inner``, None when pruned
        self.name = name_of(verifier)

    @property
    def count(self) -> int:
        return len(self.decoded)

    @property
    def k(self):
        return self.inner.k or self.preview.k

    @property
    def total(self):
        return self.inner.total or self.preview.total

    @property
    def member_names(self) -> List[str]:
        return self.inner.member_names + [self.PREVIEW_PREFIX + self.name]

    def screen(self, previews: torch.Tensor, total: int) -> List[bool]:
        """Scores ``B x k x H x W x 3`` preview frames (the scored frames of ``total``-frame videos) and decides,
        candidate by candidate: True = decode it."""
        scores = self.preview.add_picked(previews, total).tolist()
        if not all(math.isfinite(v) for v in scores):
            raise VideoInputError(f"the verifier '{self.name}' returned a non-finite score for a latent preview: "
                                  "set preview_keep to 1")
        return self.gate(scores)

    def add(self, videos: Optional[torch.Tensor], decode: List[bool], total: Optional[int]) -> torch.Tensor:
        """Books a batch: ``videos`` are the decoded candidates (those with ``decode`` True, in order);
        ``total`` as for :meth:`FrameBook.add`."""
        n = self.inner.count
        if videos is not None and videos.shape[0]:
            self.inner.add(videos, total=total)
        for d in decode:
            self.decoded.append(n if d else None)
            n += 1 if d else 0
        return self.all()[-len(decode):] if decode else torch.zeros(0)

    def all(self) -> torch.Tensor:
        inner = self.inner.all() if self.inner.count else torch.zeros(0)
        scored = torch.as_tensor([d is not None for d in self.decoded], dtype=torch.bool)
        out = torch.zeros(len(self.decoded))
        rows = [d for d in self.decoded if d is not None]
        if rows:
            out[scored] = inner[torch.as_tensor(rows, dtype=torch.long)].float()
        return prefilter.place_below(out, scored, torch.as_tensor(self.gate.screened, dtype=torch.float32))

    def matrix(self) -> torch.Tensor:
        """Per candidate: the verifier's member scores (NaN where pruned), then its preview score."""
        m = len(self.inner.member_names)
        out = torch.full((len(self.decoded), m + 1), float("nan"))
        if self.inner.count:
            inner = self.inner.matrix()
            for i, d in enumerate(self.decoded):
                if d is not None:
                    out[i, :m] = inner[d]
        if self.decoded:
            out[:, -1] = torch.as_tensor(self.gate.screened, dtype=torch.float32)
        return out

    def info(self) -> Dict:
        out = self.inner.info() if self.inner.total is not None else self.preview.info()
        decoded = sum(1 for d in self.decoded if d is not None)
        out.update(preview_decoded=decoded, preview_pruned=len(self.decoded) - decoded)
        return out


def score_videos(verifier, prompt, videos: torch.Tensor, scoring: VideoScoring) -> torch.Tensor:
    """Scores of ``B x T x H x W x 3`` videos by one verifier, as a search scores them."""
    return FrameBook(verifier, prompt, scoring).add(videos)


def as_frames(images: torch.Tensor) -> torch.Tensor:
    """``N x T x H x W x 3`` videos -> an IMAGE batch of ``N*T`` frames, video after video (images pass through)."""
    return images.reshape(-1, *images.shape[-3:]) if images.ndim == 5 else images
