"""ComfyUI's side of the search seam: a :class:`search.host.SearchHost` over the
model, sampler, VAE and verifier in the graph, made of two parts that each do
one job: the sampling lanes (``engine/lanes.py``: the sampler over segments of
the schedule, on every device, re-noising, noise levels) and the candidate
scorer (``engine/scoring.py``: decoding, video frames, previews, the verifier
through one score book).  What watches the search without choosing (the NFE
tally, the held-out verifier's sample, the image cache) is typed
(``engine/observers.py``) and shared with a coarse host (coarse-to-fine)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

import comfy.samplers

from .lanes import Lanes
from .observers import HeldOutSample, ImageCache, Tally
from .progress import Progress
from .sampling import SamplingPlan, compute_sigmas
from .scoring import Scorer
from ..search import nfe_per_generation
from ..search.host import State
from ..search.noise import candidate_noises
from ..search.schedule import resample_sigmas
from ..verifiers.protocol import ScoreBook


class ComfyHost:
    nfe_predict = 1  # an x0 probe is one Euler step

    def __init__(self, plan: SamplingPlan, vae, verifier, prompt: str, progress: Progress,
                 micro_batch: int, sigmas: Optional[torch.Tensor] = None, mask_seed: int = 0,
                 book: Optional[ScoreBook] = None, keep_images: int = 0, held_out=None, held_stride: int = 1,
                 video=None, devices=None, tally: Optional[Tally] = None, held: Optional[HeldOutSample] = None):
        self.plan = plan
        self.sigmas = (plan.sigmas if sigmas is None else sigmas).detach().cpu().float()
        self.sampler_name = plan.sampler_function()
        self.tally = tally if tally is not None else Tally()
        self.lanes = Lanes(plan, progress, micro_batch, self.sigmas, mask_seed=mask_seed, devices=devices,
                           tally=self.tally)
        self.scorer = Scorer(plan, vae, verifier, prompt, self.lanes, video=video, book=book,
                             cache=ImageCache(keep_images) if keep_images else None)
        if held is None and held_out is not None:
            held = HeldOutSample(held_out, self.scorer.held_out_book(held_out), held_stride, self.tally)
        self.held = self.scorer.held = held

    # ------------------------------------------------------------------ facts
    @property
    def micro_batch(self) -> int:
        """Rows sampled at once (SearchHost): one micro-batch per device."""
        return self.lanes.rows_at_once

    @property
    def batch(self) -> int:
        """Rows one device samples at once (halved on out-of-memory)."""
        return self.lanes.batch

    @property
    def steps(self) -> int:
        return int(self.sigmas.numel() - 1)

    @property
    def template(self) -> torch.Tensor:
        return self.plan.template

    @property
    def video(self):
        return self.scorer.video

    @property
    def book(self) -> ScoreBook:
        return self.scorer.book

    @property
    def row_nfe(self) -> List[int]:
        """Model calls counted for each row sampled, in order (what an adaptive sampler really spent)."""
        return self.tally.row_nfe

    def video_info(self) -> Dict:
        return self.scorer.video_info()

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

    def level(self, index: int) -> float:
        return self.lanes.level(index)

    def index_at_level(self, level: float) -> int:
        return self.lanes.index_at_level(level)

    # ------------------------------------------------------------------ sampling
    def _preview_index(self) -> Optional[int]:
        if self.scorer.preview_level is None or self.steps < 2:
            return None
        return min(max(self.index_at_level(self.scorer.preview_level), 1), self.steps - 1)

    def sample(self, state: State, end: int, seeds: Sequence[int]) -> Tuple[State, torch.Tensor]:
        end = int(end)
        if not state.index < end <= self.steps:
            raise ValueError(f"cannot sample from step {state.index} to {end} of a {self.steps}-step schedule")
        p = self._preview_index()
        if p is not None and end == self.steps and state.index < p:
            # split at the preview step (a segmentable sampler gives the same run); keep the x0 made there
            mid, preview, _ = self.lanes.run(state, self.sigmas[state.index:p + 1], seeds)
            out, x0, _ = self.lanes.run(State(torch.zeros_like(mid), mid, p), self.sigmas[p:end + 1], seeds)
            batch = [None] * len(state)  # two calls: never "sampled alone in one call"
            self.scorer.keep_previews(out, preview)
        else:
            out, x0, batch = self.lanes.run(state, self.sigmas[state.index:end + 1], seeds)
        self.tally.nfe += len(state) * self.nfe(state.index, end)
        if end == self.steps:
            x0 = out  # the final sample is the clean latent
        return State(torch.zeros_like(out), out, end, batch), x0

    def predict_x0(self, state: State, seeds: Sequence[int]) -> torch.Tensor:
        """The model's x0-prediction at the state: one Euler step from it, its callback's x0 kept."""
        if state.index >= self.steps:
            return state.latent
        sig = self.sigmas[state.index:state.index + 2]
        _, x0, _ = self.lanes.run(state, sig, seeds, sampler=comfy.samplers.sampler_object("euler"))
        self.tally.nfe += len(state) * self.nfe_predict
        return x0

    def renoise(self, state: State, index: int, noise: torch.Tensor) -> State:
        return self.lanes.renoise(state, index, noise)

    # ------------------------------------------------------------------ scoring
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.scorer.decode(latents)

    @property
    def relative(self) -> bool:
        return self.scorer.relative

    @property
    def scored_rows(self) -> int:
        return self.scorer.scored_rows

    def score(self, latents: torch.Tensor) -> torch.Tensor:
        return self.scorer.score(latents)

    def score_preview(self, latents: torch.Tensor) -> torch.Tensor:
        """Scores of x0-predictions part-way through the schedule: never in the held-out sample."""
        return self.scorer.score_preview(latents)

    def image_of(self, latent: torch.Tensor) -> Optional[torch.Tensor]:
        """The decoded image of a latent this host scored among its best rows, or None."""
        return self.scorer.image_of(latent)

    def rescore(self) -> torch.Tensor:
        return self.scorer.rescore()

    def member_scores(self, row: int) -> Dict[str, float]:
        return self.scorer.member_scores(row)

    def member_matrix(self, first: int, count: int) -> torch.Tensor:
        """The raw member scores (count × M) of the rows scored from row ``first`` on (sharded search)."""
        return self.scorer.member_matrix(first, count)

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
        return ComfyHost(self.plan, self.scorer.vae, self.scorer.verifier, self.scorer.prompt, self.lanes.progress,
                         self.lanes.batch, sigmas=sig.float(), mask_seed=self.lanes._mask_seed, book=self.book,
                         video=self.scorer.video, devices=self.lanes.devices, tally=self.tally, held=self.held)
