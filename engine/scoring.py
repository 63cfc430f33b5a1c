"""Candidate scoring of a search: decoding (on each device's own VAE copy), a
video's frames (only the latent frames the scored frames need, pruning on the
latent preview), a self-consistency verifier's previews, and the verifier
calls through one score book.  The held-out verifier's sample and the image
cache watch it (``engine/observers.py``).  Sampling is ``engine/lanes.py``."""
from __future__ import annotations

import hashlib
from typing import Dict, Optional, Tuple

import torch

from . import compat
from .lanes import Lanes
from .observers import HeldOutSample, ImageCache
from .sampling import SamplingPlan, SearchInputError
from .vae import decode
from .video import (DEFAULT as DEFAULT_VIDEO_SCORING, FrameBook, PrunedBook, causal_frame_count, decode_prefix,
                    frame_count, preview_videos, spatial_upscale)
from ..search.video import VideoInputError
from ..verifiers.protocol import ScoreBook
from ..verifiers.self_consistency import PREVIEW_MESSAGE, PreviewRequired, preview_level


class Scorer:
    def __init__(self, plan: SamplingPlan, vae, verifier, prompt: str, lanes: Lanes, video=None,
                 book: Optional[ScoreBook] = None, cache: Optional[ImageCache] = None,
                 held: Optional[HeldOutSample] = None):
        self.plan = plan
        self.lanes = lanes            # its devices decode, and its micro-batch sizes the decode
        self.devices = lanes.devices
        self.clock = plan.clock
        self.vae = vae
        self.verifier = verifier
        self.prompt = prompt
        # video candidates: an image verifier scores some frames of each (search/video.py), one score per video
        self.video = (video or DEFAULT_VIDEO_SCORING) if plan.video else None
        self._video_setup(vae)
        self.book = book if book is not None else self._book(verifier, prompt, main=True)  # one per search
        self.cache, self.held = cache, held
        # a self-consistency verifier scores each candidate against its x0-prediction at a noise level: a whole
        # run is split there (the host's sample) and that prediction (the preview) kept, keyed by the final
        # latent's bytes
        self.preview_level = preview_level(verifier)
        self._previews: Dict[bytes, torch.Tensor] = {}

    def held_out_book(self, held_out):
        """A score book for the held-out verifier, of the same kind as the search's (frames for a video)."""
        return self._book(held_out, self.prompt)

    def _book(self, verifier, prompt, main: bool = False):
        if self.video is None:
            return ScoreBook(verifier, prompt)
        try:
            if main and self.video.pruning:
                return PrunedBook(verifier, prompt, self.video)
            return FrameBook(verifier, prompt, self.video)
        except VideoInputError as e:
            raise SearchInputError(str(e)) from e

    def _video_setup(self, vae) -> None:
        """Video: the VAE's temporal upscale (latent frames -> frames), whether it decodes a latent prefix
        exactly (a causal VAE: only the leading latent frames the scored frames need are decoded), and the
        latent -> RGB preview when pruning by preview."""
        self._frames_of = self._causal = self._rgb = None
        self._decoded_latent_frames: Optional[Tuple[int, int]] = None  # (decoded, of) for the report
        if self.video is None:
            return
        self._frames_of = frame_count(vae)
        self._causal = causal_frame_count(vae)
        if not self.video.pruning:
            return
        self._rgb = compat.latent_rgb(self.plan.model)
        if self._rgb is None:
            raise SearchInputError(
                f"preview_keep below 1 prunes candidates on ComfyUI's latent preview, which this model's latent "
                f"format ({type(compat.model_object(self.plan.model, 'latent_format')).__name__}) has no factors "
                "for: set preview_keep to 1 in Video Scoring")
        if self._frames_of is None:
            raise SearchInputError("preview_keep below 1 needs to know which latent frame each scored frame comes "
                                   "from, which this VAE does not say (no temporal upscale_ratio): set preview_keep "
                                   "to 1 in Video Scoring")

    def video_info(self) -> Dict:
        """The report's settings["video"]: the scoring, and how much of each candidate was decoded."""
        out = self.book.info()
        if self._decoded_latent_frames is not None and self._decoded_latent_frames[0] < self._decoded_latent_frames[1]:
            out["decoded_latent_frames"] = list(self._decoded_latent_frames)
        return out

    @staticmethod
    def _key(row: torch.Tensor) -> bytes:
        return hashlib.blake2b(row.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()

    def keep_previews(self, finals: torch.Tensor, previews: torch.Tensor) -> None:
        """The x0-predictions made at the preview step for these final latents (a self-consistency verifier)."""
        for j in range(finals.shape[0]):
            self._previews[self._key(finals[j])] = previews[j:j + 1]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.devices is not None and self.devices.decoders and latents.shape[0] > 1:
            def lane_decode(lane, part):  # this device's rows (contiguous), with its own VAE copy
                lo, hi = part[0], part[-1] + 1
                return torch.cat([decode(lane.vae, latents[i:min(i + self.lanes.batch, hi)]).cpu()
                                  for i in range(lo, hi, self.lanes.batch)])
            with self.clock.phase("decode"):
                return torch.cat(self.devices.run(range(latents.shape[0]), lane_decode, count=False))
        outs = []
        for i in range(0, latents.shape[0], self.lanes.batch):
            with self.clock.phase("decode"):
                outs.append(decode(self.vae, latents[i:i + self.lanes.batch]).cpu())
        return torch.cat(outs)

    @property
    def relative(self) -> bool:
        return self.book.relative

    @property
    def scored_rows(self) -> int:
        return self.book.count

    def score(self, latents: torch.Tensor) -> torch.Tensor:
        return self._score(latents, finished=True)

    def score_preview(self, latents: torch.Tensor) -> torch.Tensor:
        """Scores of x0-predictions part-way through the schedule: never in the held-out sample."""
        return self._score(latents, finished=False)

    def _preview_latents(self, latents: torch.Tensor, finished: bool) -> Optional[torch.Tensor]:
        """The x0-prediction latents kept for these final latents (a self-consistency verifier), or None; each
        is handed out once (the memory goes)."""
        if self.preview_level is None:
            return None
        if not finished:
            raise PreviewRequired(PREVIEW_MESSAGE)
        keys = [self._key(latents[j]) for j in range(latents.shape[0])]
        if any(k not in self._previews for k in keys):
            raise PreviewRequired(PREVIEW_MESSAGE)
        out = torch.cat([self._previews[k] for k in keys])
        for k in set(keys):
            del self._previews[k]
        return out

    def _score(self, latents: torch.Tensor, finished: bool) -> torch.Tensor:
        if self.video is not None:
            return self._score_videos(latents, finished)
        previews = self._preview_latents(latents, finished)
        if previews is not None:
            previews = self.decode(previews)
        images = self.decode(latents)
        first = self.book.count
        with self.clock.phase("verify"):
            scores = self.book.add(images, previews)
        if finished and self.held is not None:
            self.held.observe(images, range(images.shape[0]), images.shape[0], first, self.clock)
        if self.cache is not None and not self.relative:
            self.cache.offer(scores, first, latents, images)
        return scores

    def _score_videos(self, latents: torch.Tensor, finished: bool) -> torch.Tensor:
        """Video candidates: pruned on their latent preview (preview_keep < 1), the rest decoded (only the
        leading latent frames the scored frames need, with a causal VAE) and scored on their picked frames."""
        b, t_lat = int(latents.shape[0]), int(latents.shape[2])
        total = int(self._frames_of(t_lat)) if self._frames_of is not None else None
        idx = self.video.indices(total) if total else None
        keep = list(range(b))
        decide = None
        if isinstance(self.book, PrunedBook):
            sh, sw = spatial_upscale(self.vae)
            size = (int(latents.shape[-2]) * sh, int(latents.shape[-1]) * sw)
            with self.clock.phase("verify"):
                decide = self.book.screen(preview_videos(latents, self._rgb, idx, self._frames_of, size), total)
            keep = [j for j, d in enumerate(decide) if d]
        n_lat = decode_prefix(self._causal, t_lat, idx) if idx else t_lat
        self._decoded_latent_frames = (n_lat, t_lat)
        previews = self._preview_latents(latents, finished)  # a self-consistency verifier (never with pruning)
        images = None
        if keep:
            sub = latents if len(keep) == b else latents[torch.as_tensor(keep, dtype=torch.long)]
            images = self.decode(sub[:, :, :n_lat] if n_lat < t_lat else sub)
            if previews is not None:  # decoded as far as the videos: the same frames are paired
                previews = self.decode(previews[:, :, :n_lat] if n_lat < t_lat else previews)
        first = self.book.count
        whole = None if n_lat == t_lat else total  # a whole decode says its own frame count
        with self.clock.phase("verify"):
            if decide is not None:
                scores = self.book.add(images, decide, whole)
            else:
                scores = self.book.add(images, previews, total=whole)
        if finished and self.held is not None:  # the held-out sample: decoded candidates only
            self.held.observe(images, keep, b, first, self.clock, total=whole)
        if self.cache is not None and not self.relative and n_lat == t_lat:  # whole videos only: finals are whole
            self.cache.offer(scores, first, latents, images)
        return scores

    def rescore(self) -> torch.Tensor:
        return self.book.all()

    def member_scores(self, row: int) -> Dict[str, float]:
        return self.book.members(row)

    def image_of(self, latent: torch.Tensor) -> Optional[torch.Tensor]:
        """The decoded image of a latent this scorer kept among its best rows, or None."""
        return self.cache.image_of(latent) if self.cache is not None else None

    def member_matrix(self, first: int, count: int) -> torch.Tensor:
        """The raw member scores (count × M) of the rows scored from row ``first`` on (sharded search)."""
        return self.book.matrix()[int(first):int(first) + int(count)]
