"""The sampling lanes of a search: the plan's sampler run over segments of the
schedule, one micro-batch at a time on each device (``engine/devices.py``),
halved on out-of-memory; the noise levels of the schedule; re-noising.
Candidate scoring is ``engine/scoring.py``; ``engine/host.py`` puts the two
together as the search's host.

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

import math
from typing import List, Optional, Sequence, Tuple

import torch

from . import compat, memory
from .observers import Tally
from .progress import Progress
from .sampling import SamplingPlan, noise_scaling_coefficients, percent_to_sigma, starts_at_max_denoise
from ..search.batching import run_in_micro_batches
from ..search.host import State
from ..search.noise import candidate_noises


class Lanes:
    """Runs the sampler for the host: ``run(state, sigmas, seeds)`` -> (latents, x0, micro-batch per row)."""

    def __init__(self, plan: SamplingPlan, progress: Progress, micro_batch: int, sigmas: torch.Tensor,
                 mask_seed: int = 0, devices=None, tally: Optional[Tally] = None):
        self.plan = plan
        self.devices = devices  # a engine.devices.DeviceSet: each sampling call's rows cut over its devices
        self.clock = plan.clock
        self.progress = progress
        self.batch = max(1, int(micro_batch))  # rows one device samples at once
        self.sigmas = sigmas
        self.tally = tally if tally is not None else Tally()
        self._levels: Optional[List[float]] = None
        self._mask = None
        self._mask_noise = None
        self._mask_seed = mask_seed

    @property
    def template(self) -> torch.Tensor:
        return self.plan.template

    @property
    def steps(self) -> int:
        return int(self.sigmas.numel() - 1)

    @property
    def rows_at_once(self) -> int:
        """Rows sampled at once: one micro-batch per device."""
        return self.batch * (len(self.devices.lanes) if self.devices is not None else 1)

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

    def run(self, state: State, sigmas: torch.Tensor, seeds: Sequence[int], sampler=None):
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
            self.tally.row_nfe.extend(p[3])
        return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                [b for p in parts for b in p[2]])

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
