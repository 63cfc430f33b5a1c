"""Video candidates on ComfyUI's side: the Video Scoring settings node, frame
scoring through a :class:`FrameBook`, and the ranked contact sheet.

A video latent (``B x C x T x H x W``) decodes to ``B x T x H x W x 3``
frames (ComfyUI's ``VAE.decode``); an image verifier scores ``k`` of them
per candidate (``search.video.VideoScoring``) and the candidate's score is
their mean or min.  Outputs that go to stock nodes (Save Video, Create
Video, Save Animated WEBP) are IMAGE batches of frames, video after video."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from .drawing import caption, ranked_grid
from .types import CATEGORY, SCORES, VIDEO_SCORING
from ..search.video import AGGREGATES, PICKS, VideoInputError, VideoScoring, split_videos
from ..verifiers import prefilter
from ..verifiers.protocol import ScoreBook, is_video_native

DEFAULT = VideoScoring()
PREFILTER_ON_VIDEO = ("the Verifier Pre-filter screens images one by one, which does not fit a video's frames yet: "
                      "score video candidates with the main verifier itself")


class FrameBook:
    """A :class:`ScoreBook` over candidates that are videos: each candidate's scored frames are booked as
    rows of the image verifier's book (a relative verifier combines over every frame scored so far), and
    every score handed out is per candidate, aggregated over its frames."""

    def __init__(self, verifier, prompt, scoring: VideoScoring):
        if prefilter.is_prefilter(verifier):
            raise VideoInputError(PREFILTER_ON_VIDEO)
        self.book = ScoreBook(verifier, prompt)
        self.scoring = scoring
        self.relative = self.book.relative
        # a video-native verifier (verifiers/protocol.py) scores each candidate's picked frames as one clip
        self.native = is_video_native(verifier)
        self.k: Optional[int] = None
        self.total: Optional[int] = None

    @property
    def member_names(self) -> List[str]:
        return self.book.member_names

    @property
    def count(self) -> int:
        return self.book.count // self.k if self.k else 0

    def frames(self, videos: torch.Tensor) -> torch.Tensor:
        """The frames scored of ``B x T x H x W x 3`` videos, ``(B*k) x H x W x 3``."""
        t = int(videos.shape[1])
        if self.total is not None and t != self.total:
            raise VideoInputError(f"candidates of one search have {self.total} frames, this one {t}")
        self.total = t
        self.k = len(self.scoring.indices(t))
        return self.scoring.select(videos)

    def add(self, videos: torch.Tensor, previews: Optional[torch.Tensor] = None) -> torch.Tensor:
        if previews is not None:
            raise VideoInputError("a verifier that scores against the x0-preview cannot score video candidates yet")
        frames = self.frames(videos)
        if self.native:  # one row per candidate: its k frames as a B x k x H x W x 3 clip
            clips = frames.reshape(videos.shape[0], -1, *frames.shape[1:])
            self.k = 1
            return self.book.add(clips)
        return self.scoring.combine(self.book.add(frames), self.k)

    def all(self) -> torch.Tensor:
        return self.scoring.combine(self.book.all(), self.k) if self.k else torch.zeros(0)

    def matrix(self) -> torch.Tensor:
        """Raw member scores per candidate, each member aggregated over the candidate's frames."""
        m = self.book.matrix()
        if not self.k:
            return m
        cols = [self.scoring.combine(m[:, j], self.k) for j in range(m.shape[1])]
        return torch.stack(cols, dim=1)

    def columns(self):
        """(member name, its per-candidate scores, the candidates they belong to), as ``ScoreBook.columns``."""
        m = self.matrix()
        rows = list(range(m.shape[0]))
        for name, col in zip(self.member_names, m.T):
            yield name, col, rows

    def members(self, row: int) -> dict:
        if not self.relative:
            return {}
        return dict(zip(self.member_names, self.matrix()[int(row)].tolist()))

    def info(self) -> Dict:
        """What the report records: the frame count, the frames scored and how they combine."""
        out = self.scoring.to_dict()
        if self.native:
            out["aggregate"] = "the verifier's own (video-native)"
        if self.total is not None:
            out.update(frames_per_video=int(self.total), scored_frames=self.scoring.indices(self.total))
        return out


def score_videos(verifier, prompt, videos: torch.Tensor, scoring: VideoScoring) -> torch.Tensor:
    """Scores of ``B x T x H x W x 3`` videos by one verifier, as a search scores them."""
    return FrameBook(verifier, prompt, scoring).add(videos)


def as_frames(images: torch.Tensor) -> torch.Tensor:
    """``N x T x H x W x 3`` videos -> an IMAGE batch of ``N*T`` frames, video after video (images pass through)."""
    return images.reshape(-1, *images.shape[-3:]) if images.ndim == 5 else images


class VideoScoringNode:
    DESCRIPTION = ("How Search Loop and Verifier Score score video candidates with an image verifier: which frames "
                   "of each candidate are decoded-and-scored (first / middle / last, or k evenly spaced) and how "
                   "their scores combine into the candidate's score (mean, or min: a video is as good as its worst "
                   "frame). Without this node a video is scored on its first, middle and last frames, mean.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = (VIDEO_SCORING,)
    RETURN_NAMES = ("video_scoring",)
    OUTPUT_TOOLTIPS = ("Connect to Search Loop's (or Verifier Score's) video_scoring input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pick": (list(PICKS), {"default": PICKS[0],
                                   "tooltip": "first/middle/last: three frames (frames is not used); evenly spaced: "
                                              "'frames' frames from the first to the last."}),
            "frames": ("INT", {"default": 3, "min": 1, "max": 1024,
                               "tooltip": "k, the frames scored per candidate when pick is 'evenly spaced'."}),
            "aggregate": (list(AGGREGATES), {"default": "mean",
                                             "tooltip": "How the frames' scores make the candidate's score: their "
                                                        "mean, or their min (the worst frame)."}),
        }}

    def make(self, pick, frames, aggregate):
        try:
            return (VideoScoring(pick=pick, frames=int(frames), aggregate=aggregate),)
        except VideoInputError as e:
            raise ValueError(str(e)) from e


class VideoContactSheet:
    DESCRIPTION = ("A ranked contact sheet of video candidates: one row per candidate, best first, showing the "
                   "frames its score came from, captioned rank · score · seed. Give it Search Loop's top_k_images "
                   "and scores (a video search), or Verifier Score's frames and scores.")
    CATEGORY = CATEGORY
    FUNCTION = "sheet"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("contact_sheet",)
    OUTPUT_TOOLTIPS = ("One image: the contact sheet (goes into Save Image / Preview Image).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames, video after video: Search Loop's top_k_images of a video "
                                            "search, or the batch Verifier Score scored."}),
            "scores": (SCORES, {"tooltip": "The scores that go with these videos (they say how many frames each "
                                           "video has and which frames were scored)."}),
        }}

    def sheet(self, images, scores):
        video = (scores.settings or {}).get("video")
        if not video or not video.get("frames_per_video"):
            raise ValueError("Video Contact Sheet needs the scores of a video search (or of Verifier Score with "
                             "frames_per_video set): these scores are of images; use Ranked Grid for images")
        t = int(video["frames_per_video"])
        try:
            videos = split_videos(images, t)
        except VideoInputError as e:
            raise ValueError(f"Video Contact Sheet: {e}") from e
        ranked = scores.ranked()
        if scores.algorithm == "external" and len(scores.candidates) == videos.shape[0]:
            pos = {c.index: i for i, c in enumerate(sorted(scores.candidates, key=lambda c: c.index))}
            order = [pos[c.index] for c in ranked]
        else:  # a search's top-k, already best first
            order = list(range(min(videos.shape[0], len(ranked))))
        if not order:
            raise ValueError("Video Contact Sheet got no scored video: connect the scored candidates")
        idx = torch.as_tensor(list(video.get("scored_frames") or range(t)), dtype=torch.long)
        rows = videos[torch.as_tensor(order, dtype=torch.long)][:, idx]        # n x k x H x W x 3
        tiles = rows.permute(0, 2, 1, 3, 4).reshape(rows.shape[0], rows.shape[2], -1, rows.shape[-1])
        labels = [caption(r.rank, r.score, r.seed, r.noise_id if r.seed is None else "") for r in ranked[:len(order)]]
        return (ranked_grid(tiles, labels, columns=1),)


NODES = [(VideoScoringNode, "VideoScoring", "Video Scoring"),
         (VideoContactSheet, "VideoContactSheet", "Video Contact Sheet")]
