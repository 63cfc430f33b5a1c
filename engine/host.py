"""ComfyUI's side of the search seam: a :class:`search.host.SearchHost` over the
model, sampler, VAE and verifier in the graph.

Segments.  ComfyUI samples a whole SIGMAS run in one call, starting from
``noise_scaling(sigmas[0], noise, process_latent_in(latent))`` and returning
``process_latent_out(inverse_noise_scaling(sigmas[-1], x))``.  A run stopped at
sigma > 0 therefore returns a latent that, passed back as ``latent_image`` with
zero noise over the rest of the schedule, gives the sampler exactly the x it
stopped at: EPS / v-prediction (x unchanged) and flow models alike (CONST:
the output is x / (1 - sigma), and the next run multiplies by (1 - sigma)).
A :class:`State` holds that (noise, latent) pair.

Re-noising follows the forward process q(x_b | x_a): x_b = (c_b / c_a) x_a +
sqrt(n_b^2 - (c_b n_a / c_a)^2) eps, with c (signal) and n (noise) read off
the model's own ``noise_scaling``; the result is written back as a
(noise, latent) pair that ComfyUI's scaling at sigma_b turns into x_b.

Inpainting: the unmasked area of every segment is re-composed from the
original latent and one fixed noise, so ComfyUI's inpainting blend keeps it
at the original image, noised to the current sigma, as in one stock run.
Video masks too: LTX-Video's keyframes (LTX Image To Video, LTXV Add Guide)
are a per-frame mask (B x 1 x T x 1 x 1) that ComfyUI's prepare_mask spreads
over the template's C x T x H x W; LTX's blend keeps those frames at the
clean latent (its scale_latent_inpaint adds no noise), whatever the noise."""
from __future__ import annotations

import hashlib
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import comfy.samplers

from . import compat, memory
from .progress import Progress
from .sampling import (SamplingPlan, SearchInputError, compute_sigmas, decode, noise_scaling_coefficients,
                       percent_to_sigma, starts_at_max_denoise)
from ..search import nfe_per_generation
from ..search.batching import run_in_micro_batches
from ..search.host import State
from ..search.noise import candidate_noises
from ..search.schedule import resample_sigmas
from ..verifiers.protocol import ScoreBook
from ..verifiers.self_consistency import PREVIEW_MESSAGE, PreviewRequired, preview_level
from .video import (DEFAULT as DEFAULT_VIDEO_SCORING, FrameBook, PrunedBook, causal_frame_count, decode_prefix,
                    frame_count, preview_videos, spatial_upscale)
from ..search.video import VideoInputError


class ComfyHost:
    nfe_predict = 1  # an x0 probe is one Euler step

    def __init__(self, plan: SamplingPlan, vae, verifier, prompt: str, progress: Progress,
                 micro_batch: int, sigmas: Optional[torch.Tensor] = None, mask_seed: int = 0,
                 book: Optional[ScoreBook] = None, keep_images: int = 0, held_out=None, held_stride: int = 1,
                 watch: Optional[Dict] = None, video=None, devices=None):
        self.plan = plan
        self.devices = devices  # a engine.devices.DeviceSet: each sampling call's rows cut over its devices
        # video candidates: an image verifier scores some frames of each (search/video.py), one score per video
        self.video = (video or DEFAULT_VIDEO_SCORING) if plan.video else None
        self.clock = plan.clock
        self.vae = vae
        self.verifier = verifier
        self.prompt = prompt
        self.progress = progress
        self.batch = max(1, int(micro_batch))  # rows one device samples at once
        self.sigmas = (plan.sigmas if sigmas is None else sigmas).detach().cpu().float()
        self.sampler_name = plan.sampler_function()
        self._levels: Optional[List[float]] = None
        self._video_setup(vae)
        self.book = book if book is not None else self._book(verifier, prompt, main=True)  # one per search
        self._mask = None
        self._mask_noise = None
        self._mask_seed = mask_seed
        # the decoded images of the best few rows scored (absolute verifiers): the finalist step reuses them
        # instead of decoding its finalists again
        self._keep_images = int(keep_images)
        self._images: List[Tuple[float, int, torch.Tensor, torch.Tensor]] = []  # (score, row, latent, image)
        # a self-consistency verifier scores each candidate against its x0-prediction at a noise level: a whole
        # run is split there and that prediction (the preview) kept, keyed by the final latent's bytes
        self._preview_level = preview_level(verifier)
        self._previews: Dict[bytes, torch.Tensor] = {}
        # NFEs spent and the held-out verifier's sample (search/guard.py), shared with coarse hosts:
        # every held_stride-th finished candidate is scored by it too, never to choose
        self.watch = watch if watch is not None else {
            "nfe": 0, "finished": 0, "rows": [], "held_out": held_out, "stride": max(1, int(held_stride)),
            "row_nfe": [],  # model calls counted for each row sampled, in order (what adaptive samplers really spent)
            "book": self._book(held_out, prompt) if held_out is not None else None}

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

    # ------------------------------------------------------------------ facts
    @property
    def micro_batch(self) -> int:
        """Rows sampled at once (SearchHost): one micro-batch per device."""
        lanes = len(self.devices.lanes) if self.devices is not None else 1
        return self.batch * lanes

    @property
    def steps(self) -> int:
        return int(self.sigmas.numel() - 1)

    @property
    def template(self) -> torch.Tensor:
        return self.plan.template

    def nfe(self, start: int, end: int) -> int:
        try:
            return nfe_per_generation(self.sampler_name, self.sigmas[start:end + 1].tolist())
        except Exception:
            return max(0, end - start)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        return candidate_noises(self.template.shape, seeds, dtype=self.template.dtype)

    def start(self, noise: torch.Tensor) -> State:
        lat = self.template.expand(noise.shape[0], *self.template.shape[1:]).clone()
        return State(noise.to(self.template.dtype), lat, 0)

    # ------------------------------------------------------------------ noise levels
    def _level_of_sigma(self, sigma: float) -> float:
        """1 - percent, inverting the model's percent_to_sigma by bisection."""
        if sigma <= 0:
            return 0.0
        lo, hi = 0.0, 1.0  # percent: 0 -> sigma_max, 1 -> 0
        for _ in range(50):
            mid = (lo + hi) / 2
            if percent_to_sigma(self.plan.model, mid) > sigma:
                lo = mid
            else:
                hi = mid
        return 1.0 - (lo + hi) / 2

    def level(self, index: int) -> float:
        if self._levels is None:
            self._levels = [self._level_of_sigma(float(s)) for s in self.sigmas.tolist()]
        return self._levels[int(index)]

    def index_at_level(self, level: float) -> int:
        lv = [self.level(i) for i in range(self.steps + 1)]
        return min(range(len(lv)), key=lambda i: (abs(lv[i] - level), i))

    # ------------------------------------------------------------------ sampling
    def _inpaint(self, noise: torch.Tensor, latent: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.plan.noise_mask is None:
            return noise, latent
        if self._mask is None:
            self._mask = compat.prepare_mask(self.plan.noise_mask, self.template.shape, torch.device("cpu"))[:1]
            self._mask_noise = candidate_noises(self.template.shape, [self._mask_seed], dtype=self.template.dtype)
        m = self._mask.to(latent.dtype)
        return noise * m + self._mask_noise * (1 - m), latent * m + self.template * (1 - m)

    def _fresh(self, state: State) -> bool:
        """A fresh start (unit noise over the template at index 0): sampled exactly as a stock node would."""
        return state.index == 0 and bool(torch.equal(state.latent, self.template.expand_as(state.latent)))

    def _on_oom(self, size: int, e: BaseException) -> None:
        self.batch = max(1, int(size))  # later calls start at the size that fit
        memory.free_memory_after_oom()

    def _run(self, state: State, sigmas: torch.Tensor, seeds: Sequence[int], sampler=None):
        """(latents, x0, micro-batch per row) of a sampler run over ``sigmas`` from ``state``.  With several
        devices, the rows are cut into contiguous per-device chunks sampled at once (engine/devices.py)."""
        rows = list(range(len(state)))
        seeds = [int(s) for s in seeds]
        stock = self._fresh(state) and sigmas.numel() == self.sigmas.numel()

        def run(plan: SamplingPlan, chunk: Sequence[int]):
            idx = torch.as_tensor(list(chunk), dtype=torch.long)
            noise, latent = state.noise[idx], state.latent[idx]
            if not stock:  # a whole run from a fresh start keeps the stock node's inpainting noise
                noise, latent = self._inpaint(noise, latent)
            gen = plan.generate(noise, [seeds[i] for i in chunk], self.progress, sigmas=sigmas,
                                latent_image=latent, want_x0=True, sampler=sampler)
            return gen.latents.cpu(), gen.x0.cpu(), [len(chunk)] * len(chunk), [int(gen.nfe)] * len(chunk)

        if self.devices is None or not self.devices.parallel:
            plan = self.plan if self.devices is None else self.devices.lanes[0].plan  # "devices": one GPU
            with self.clock.phase("denoise"):
                parts = run_in_micro_batches(rows, lambda chunk: run(plan, chunk), self.batch,
                                             is_oom=memory.is_oom, on_oom=self._on_oom)
            if self.devices is not None:
                self.devices.lanes[0].rows += len(rows)
        else:
            def lane_run(lane, part):
                def on_oom(size, e):
                    lane.micro_batch = max(1, int(size))
                    memory.free_memory_after_oom()
                return run_in_micro_batches(part, lambda chunk: run(lane.plan, chunk),
                                            lane.micro_batch or self.batch, is_oom=memory.is_oom,
                                            on_oom=on_oom)
            with self.clock.phase("denoise"):
                parts = [p for lane_parts in self.devices.run(rows, lane_run) for p in lane_parts]
        for p in parts:  # in row order, whichever device sampled them
            self.watch["row_nfe"].extend(p[3])
        return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                [b for p in parts for b in p[2]])

    def _preview_index(self) -> Optional[int]:
        if self._preview_level is None or self.steps < 2:
            return None
        return min(max(self.index_at_level(self._preview_level), 1), self.steps - 1)

    @staticmethod
    def _key(row: torch.Tensor) -> bytes:
        return hashlib.blake2b(row.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()

    def sample(self, state: State, end: int, seeds: Sequence[int]) -> Tuple[State, torch.Tensor]:
        end = int(end)
        if not state.index < end <= self.steps:
            raise ValueError(f"cannot sample from step {state.index} to {end} of a {self.steps}-step schedule")
        p = self._preview_index()
        if p is not None and end == self.steps and state.index < p:
            # split at the preview step (a segmentable sampler gives the same run); keep the x0 made there
            mid, preview, _ = self._run(state, self.sigmas[state.index:p + 1], seeds)
            out, x0, _ = self._run(State(torch.zeros_like(mid), mid, p), self.sigmas[p:end + 1], seeds)
            batch = [None] * len(state)  # two calls: never "sampled alone in one call"
            for j in range(out.shape[0]):
                self._previews[self._key(out[j])] = preview[j:j + 1]
        else:
            out, x0, batch = self._run(state, self.sigmas[state.index:end + 1], seeds)
        self.watch["nfe"] += len(state) * self.nfe(state.index, end)
        if end == self.steps:
            x0 = out  # the final sample is the clean latent
        return State(torch.zeros_like(out), out, end, batch), x0

    def predict_x0(self, state: State, seeds: Sequence[int]) -> torch.Tensor:
        """The model's x0-prediction at the state: one Euler step from it, its callback's x0 kept."""
        if state.index >= self.steps:
            return state.latent
        sig = self.sigmas[state.index:state.index + 2]
        _, x0, _ = self._run(state, sig, seeds, sampler=comfy.samplers.sampler_object("euler"))
        self.watch["nfe"] += len(state) * self.nfe_predict
        return x0

    def _coefficients(self, index: int, as_start: bool) -> Tuple[float, float]:
        sigma = float(self.sigmas[index])
        md = as_start and starts_at_max_denoise(self.plan.model, sigma)
        return noise_scaling_coefficients(self.plan.model, sigma, md)

    def renoise(self, state: State, index: int, noise: torch.Tensor) -> State:
        index = int(index)
        if index > state.index:
            raise ValueError("renoise goes back to a noisier (earlier) schedule position")
        if index == state.index:
            return state
        n_a, c_a = self._coefficients(state.index, as_start=False)   # nominal noise std and signal coefficient
        a_in, _ = self._coefficients(state.index, as_start=state.index == 0)  # what the state's noise is scaled by
        n_b, c_b = self._coefficients(index, as_start=False)
        a_b, _ = self._coefficients(index, as_start=True)              # what ComfyUI will scale the new noise by
        ratio = c_b / c_a
        extra = math.sqrt(max(n_b ** 2 - (ratio * n_a) ** 2, 0.0))
        new_noise = (ratio * a_in * state.noise + extra * noise.to(state.noise.dtype)) / a_b
        return State(new_noise, state.latent.clone(), index)

    # ------------------------------------------------------------------ scoring
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.devices is not None and self.devices.decoders and latents.shape[0] > 1:
            def lane_decode(lane, part):  # this device's rows (contiguous), with its own VAE copy
                lo, hi = part[0], part[-1] + 1
                return torch.cat([decode(lane.vae, latents[i:min(i + self.batch, hi)]).cpu()
                                  for i in range(lo, hi, self.batch)])
            with self.clock.phase("decode"):
                return torch.cat(self.devices.run(range(latents.shape[0]), lane_decode, count=False))
        outs = []
        for i in range(0, latents.shape[0], self.batch):
            with self.clock.phase("decode"):
                outs.append(decode(self.vae, latents[i:i + self.batch]).cpu())
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
        if self._preview_level is None:
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
        w = self.watch
        if finished and w["book"] is not None:
            pick = [j for j in range(images.shape[0]) if (w["finished"] + j) % w["stride"] == 0]
            w["finished"] += images.shape[0]
            if pick:
                with self.clock.phase("verify"):
                    w["book"].add(images[pick])
                w["rows"].extend({"row": first + j, "nfe": w["nfe"]} for j in pick)
        if self._keep_images and not self.relative:
            self._keep_best(scores, first, latents, images)
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
        w = self.watch
        if finished and w["book"] is not None:  # the held-out sample: decoded candidates only
            pick = [(p, j) for p, j in enumerate(keep) if (w["finished"] + j) % w["stride"] == 0]
            w["finished"] += b
            if pick:
                with self.clock.phase("verify"):
                    w["book"].add(images[torch.as_tensor([p for p, _ in pick], dtype=torch.long)], total=whole)
                w["rows"].extend({"row": first + j, "nfe": w["nfe"]} for _, j in pick)
        if self._keep_images and not self.relative and n_lat == t_lat:  # whole videos only: finals are whole
            self._keep_best(scores, first, latents, images)
        return scores

    def _keep_best(self, scores: torch.Tensor, first: int, latents: torch.Tensor, images: torch.Tensor) -> None:
        """Keeps the decoded images of the best rows scored so far (rows ``first`` on are these), for the
        finalist step."""
        for j, sc in enumerate(scores.tolist()):
            if math.isfinite(sc):
                self._images.append((float(sc), first + j, latents[j:j + 1].detach().cpu(), images[j:j + 1]))
        self._images.sort(key=lambda t: (-t[0], t[1]))
        del self._images[self._keep_images:]

    def image_of(self, latent: torch.Tensor) -> Optional[torch.Tensor]:
        """The decoded image of a latent this host scored among its best rows, or None."""
        for _, _, lat, img in self._images:
            if lat.shape == latent.shape and torch.equal(lat, latent.detach().cpu()):
                return img
        return None

    def rescore(self) -> torch.Tensor:
        return self.book.all()

    def member_scores(self, row: int) -> Dict[str, float]:
        return self.book.members(row)

    # ------------------------------------------------------------------ coarse-to-fine
    def with_steps(self, steps: int) -> "ComfyHost":
        steps = int(steps)
        if steps < 1:
            raise ValueError("coarse steps must be at least 1")
        if self.plan.mode == "ksampler" and self.sigmas is self.plan.sigmas:
            sig = compute_sigmas(self.plan.model, steps, self.plan.sampler_name, self.plan.scheduler,
                                 self.plan.denoise)
        else:
            sig = resample_sigmas(self.sigmas, steps)
        # one score book: a relative verifier ranks the coarse and the full candidates together
        return ComfyHost(self.plan, self.vae, self.verifier, self.prompt, self.progress, self.batch,
                         sigmas=sig.float(), mask_seed=self._mask_seed, book=self.book, watch=self.watch,
                         video=self.video, devices=self.devices)

    def member_matrix(self, first: int, count: int) -> torch.Tensor:
        """The raw member scores (count × M) of the rows scored from row ``first`` on (sharded search)."""
        return self.book.matrix()[int(first):int(first) + int(count)]
