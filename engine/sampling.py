"""How candidates are sampled: the model, conditioning and sampler in the graph
(KSampler widgets, SAMPLER + SIGMAS as SamplerCustom takes them, or a GUIDER as
SamplerCustomAdvanced), run over any micro-batch of starting noises, and the
stock nodes' own calls for batch-1 re-renders."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch

import comfy.model_management as mm
import comfy.sample
import comfy.samplers

from . import compat, memory
from .noise import per_candidate_noise, per_candidate_noise_supported
from .progress import Progress, throw_if_interrupted
from ..search import NFECounter, UnknownNFEError, candidate_noises, nfe_per_generation, plan_micro_batch
from ..search.report import PhaseClock


class SearchInputError(ValueError):
    """Bad input: the message says what, why and what to do."""


# --------------------------------------------------------------------------- ComfyUI's sampler objects and calls
def sampler_names():
    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names():
    return list(comfy.samplers.KSampler.SCHEDULERS)


def compute_sigmas(model, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    """The sigmas a stock KSampler uses for these widgets."""
    ks = comfy.samplers.KSampler(compat.ksampler_target(model), steps=steps, device=model.load_device,
                                 sampler=sampler_name, scheduler=scheduler, denoise=denoise,
                                 model_options=model.model_options)
    return ks.sigmas.detach().cpu()


def sampler_function_name(sampler) -> str:
    fn = getattr(sampler, "sampler_function", None)
    return getattr(fn, "__name__", "") or ""


def sample_with_sampler(model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
                        noise_mask, callback, seed, guider=None):
    """One sampling run with an explicit SAMPLER + SIGMAS: what SamplerCustom
    does, or SamplerCustomAdvanced when a GUIDER is given."""
    if guider is not None:
        return guider.sample(noise, latent_image, sampler, sigmas, denoise_mask=noise_mask,
                             callback=callback, disable_pbar=True, seed=seed).to(mm.intermediate_device())
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
                                      noise_mask=noise_mask, callback=callback, disable_pbar=True, seed=seed)


def sample_like_ksampler(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                         denoise, noise_mask, callback, seed):
    """Exactly the call a stock KSampler node makes (nodes.common_ksampler)."""
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise=denoise, noise_mask=noise_mask, callback=callback, disable_pbar=True,
                               seed=seed)


# --------------------------------------------------------------------------- model facts
def latent_channels(model) -> Optional[int]:
    lf = compat.model_object(model, "latent_format")
    ch = getattr(lf, "latent_channels", None)
    if ch is None and getattr(lf, "latent_rgb_factors", None) is not None:
        ch = len(lf.latent_rgb_factors)
    return ch


def latent_out(model, x: torch.Tensor) -> torch.Tensor:
    """A sampler-internal latent (a callback's x0) in LATENT space, as VAE Decode takes it."""
    return model.model.process_latent_out(x.float())


def noise_scaling_coefficients(model, sigma: float, max_denoise: bool) -> tuple:
    """(a, b) with ComfyUI's ``noise_scaling(sigma, noise, latent, max_denoise) = a*noise + b*latent``,
    read off the model's own function (EPS, v-prediction, flow/CONST, EDM alike)."""
    ms = compat.model_object(model, "model_sampling")
    s = torch.tensor([float(sigma)])
    one, zero = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    a = ms.noise_scaling(s.view(1, 1, 1, 1), one.clone(), zero.clone(), max_denoise=max_denoise)
    b = ms.noise_scaling(s.view(1, 1, 1, 1), zero.clone(), one.clone(), max_denoise=max_denoise)
    return float(a.reshape(-1)[0]), float(b.reshape(-1)[0])


def starts_at_max_denoise(model, sigma0: float) -> bool:
    """KSAMPLER.max_denoise: does a run starting at ``sigma0`` start from pure noise?"""
    max_sigma = float(compat.model_object(model, "model_sampling").sigma_max)
    return math.isclose(max_sigma, float(sigma0), rel_tol=1e-05) or float(sigma0) > max_sigma


def percent_to_sigma(model, percent: float) -> float:
    return float(compat.model_object(model, "model_sampling").percent_to_sigma(float(percent)))


# --------------------------------------------------------------------------- the plan
@dataclass
class Generated:
    latents: torch.Tensor        # B x C x H x W (video: B x C x T x H x W), final samples on the intermediate device
    nfe: int                     # model calls per candidate
    batch: int                   # micro-batch size it ran in
    x0: Optional[torch.Tensor] = None  # the last step's x0-prediction (LATENT space), when asked for


class SamplingPlan:
    """How candidates are sampled: KSampler widgets, SAMPLER + SIGMAS
    (SamplerCustom) or GUIDER (+ SAMPLER/SIGMAS, SamplerCustomAdvanced)."""

    stop = None  # a device thread's threading.Event (engine/devices.py): set = stop at the next model call

    def __init__(self, model, positive, negative, latent: Dict[str, Any], cfg: float, sampler_name: str,
                 scheduler: str, steps: int, denoise: float, sampler=None, sigmas=None, guider=None,
                 clock: Optional[PhaseClock] = None, model_2=None, switch_step: int = 0):
        self.guider = guider
        self.model = compat.guider_model(guider) if guider is not None else model
        self.positive, self.negative, self.cfg = positive, negative, cfg
        self.sampler_name, self.scheduler, self.steps, self.denoise = sampler_name, scheduler, steps, denoise
        self.clock = clock or PhaseClock()
        if guider is None and sampler is None and sigmas is None:
            self.mode = "ksampler"
        else:
            self.mode = "guider" if guider is not None else "custom"
        self.base_sampler = sampler if sampler is not None else comfy.samplers.sampler_object(sampler_name)
        if sigmas is None:
            sigmas = compute_sigmas(self.model, steps, sampler_name, scheduler, denoise)
        self.sigmas = sigmas.detach().cpu().float()
        if self.sigmas.numel() < 2:
            raise SearchInputError("the schedule has no step to run (denoise 0, or empty SIGMAS): "
                                   "raise denoise/steps, or connect SIGMAS with at least one step")
        self.latent = latent
        self.template = self._template(latent)
        self.noise_mask = latent.get("noise_mask")
        self.guide_frames = guide_frames(positive if guider is None else
                                         (getattr(guider, "original_conds", None) or {}).get("positive"))
        self.separable = per_candidate_noise_supported(self.base_sampler)
        self.model_2, self.switch = None, 0
        if model_2 is not None:
            self._two_experts(model_2, int(switch_step))

    def on_device(self, model, model_2=None, guider=None, stop=None) -> "SamplingPlan":
        """This plan sampling with a device clone of its model (and of model_2, and a GUIDER bound to the clone):
        the same widgets, sigmas, conditioning and template; its own phase clock (the host times the parallel
        run as one phase)."""
        p = copy.copy(self)
        p.model, p.model_2, p.guider, p.stop = model, model_2, guider, stop
        p.clock = PhaseClock()
        return p

    @property
    def device(self) -> str:
        return str(self.model.load_device)

    def _two_experts(self, model_2, switch: int) -> None:
        """Wan 2.2 14B's two experts: ``self.model`` samples steps 0..switch, ``model_2`` the rest, as two
        KSamplerAdvanced chained in ComfyUI's templates (the first returns with leftover noise, the second
        adds none)."""
        if self.mode != "ksampler":
            raise SearchInputError("a second model (two experts) works with the KSampler widgets only: disconnect "
                                   "sampler / sigmas / guider, or leave model_2 empty")
        if self.denoise != 1.0:
            raise SearchInputError(f"a second model (two experts) samples the whole schedule, as two chained "
                                   f"KSamplerAdvanced do: set denoise to 1.0 (it is {self.denoise})")
        steps = int(self.sigmas.numel() - 1)
        if not 1 <= switch < steps:
            raise SearchInputError(f"switch_step must be between 1 and steps - 1 ({steps - 1}) when model_2 is "
                                   f"connected, got {switch}: it is the first KSamplerAdvanced's end_at_step")
        other = compute_sigmas(model_2, self.steps, self.sampler_name, self.scheduler, self.denoise)
        if other.shape != self.sigmas.shape or not torch.allclose(other.float(), self.sigmas, rtol=0, atol=1e-6):
            raise SearchInputError("the two models give different noise schedules for these widgets (a different "
                                   "shift?): apply the same ModelSamplingSD3 shift to both experts")
        if latent_channels(model_2) != latent_channels(self.model):
            raise SearchInputError("model_2 works on a different latent than model: connect the two experts of "
                                   "one model family")
        self.model_2, self.switch = model_2, switch

    def _experts(self, sigmas: torch.Tensor):
        """(model, sigmas) runs that make one run over ``sigmas``: split at the switch when it falls inside."""
        if self.model_2 is None:
            return [(self.model, sigmas)]
        s_switch = float(self.sigmas[self.switch])
        vals = sigmas.tolist()
        if vals[-1] >= s_switch:
            return [(self.model, sigmas)]
        if vals[0] <= s_switch:
            return [(self.model_2, sigmas)]
        k = next(i for i, v in enumerate(vals) if v <= s_switch)
        return [(self.model, sigmas[:k + 1]), (self.model_2, sigmas[k:])]

    # ---------------------------------------------------------------- validation
    def _template(self, latent: Dict[str, Any]) -> torch.Tensor:
        samples = latent["samples"]
        dims = compat.latent_dimensions(self.model)
        if samples.ndim not in (4, 5):
            raise SearchInputError(f"expected an image latent (B x C x H x W) or a video latent (B x C x T x H x W), "
                                   f"got shape {tuple(samples.shape)}")
        if samples.ndim == 5 and dims != 3:
            raise SearchInputError(
                f"the latent is a video latent (5-D, shape {tuple(samples.shape)}) but this model samples images: "
                "use a video model (Wan, HunyuanVideo, LTX-Video...) with it, or an image latent with this model")
        if samples.ndim == 4 and dims == 3:
            raise SearchInputError(
                f"this is a video model but the latent is a 4-D image latent (shape {tuple(samples.shape)}): make "
                "a video latent for it (Empty Hunyuan Latent Video for Wan 2.1 / HunyuanVideo, Wan22 Image To "
                "Video Latent for Wan 2.2 5B, Empty LTXV Latent Video for LTX-Video); length 1 gives one frame")
        if samples.shape[0] != 1:
            raise SearchInputError(
                f"the latent has batch size {samples.shape[0]}: SearchLoop makes its own candidates, so give it "
                "a batch-1 latent (Empty Latent Image with batch_size 1, or one VAE-encoded image)")
        if samples.ndim == 5 and samples.shape[2] == 0:
            raise SearchInputError(
                f"the video latent has 0 frames (shape {tuple(samples.shape)}): there is nothing to sample. Give "
                "Search Loop a latent with at least one frame: raise length on the empty latent node (Empty Hunyuan "
                "Latent Video, Wan22 Image To Video Latent, Empty LTXV Latent Video...), or trim fewer frames "
                "(Trim Video Latent's trim_amount must be below the latent's frame count)")
        if any(int(d) == 0 for d in samples.shape[-2:]) or samples.shape[1] == 0:
            raise SearchInputError(
                f"the latent has an empty dimension (shape {tuple(samples.shape)}): there is nothing to sample. "
                "Make it with a width, height and channel count of at least 1 (an Empty Latent node for this model)")
        fixed = compat.fix_empty_latent_channels(self.model, samples)
        want = latent_channels(self.model)
        if want is not None and fixed.shape[1] != want:
            raise SearchInputError(
                f"the latent has {fixed.shape[1]} channels but this model works on {want}-channel latents: "
                "make the latent for this model (Empty Latent Image for it, or VAE Encode with its own VAE)")
        return fixed

    @property
    def video(self) -> bool:
        """Candidates are videos (5-D latents)."""
        return self.template.ndim == 5

    # ---------------------------------------------------------------- facts
    def sampler_function(self) -> str:
        """The sampler's name as the sampler table (search/samplers.py) knows it."""
        return self.sampler_name if self.mode == "ksampler" else sampler_function_name(self.base_sampler)

    @property
    def sampler_label(self) -> str:
        return self.sampler_name if self.mode != "custom" else self.sampler_function()

    def nfe_per_generation(self) -> Optional[int]:
        try:
            return nfe_per_generation(self.sampler_function(), self.sigmas.tolist())
        except UnknownNFEError:
            return None

    def cfg_multiplier(self) -> int:
        if self.guider is not None:
            cfg = getattr(self.guider, "cfg", 1.0)
            return 2 if (cfg != 1.0 and len(getattr(self.guider, "original_conds", {}) or {}) > 1) else 1
        return 1 if self.cfg == 1.0 else 2

    def micro_batch(self, n: int, requested: int) -> int:
        """Candidates sampled together.  1 when the sampler's noise cannot be kept per candidate, or when it
        chooses its own steps (an adaptive step-size controller sees the whole batch).  On the CPU, 1 unless
        ``requested``: one model call then takes what a stock KSampler's does, so Cancel lands within one step
        and memory holds one candidate."""
        if not self.separable or self.nfe_per_generation() is None:
            return 1
        if self.model.load_device.type == "cpu" and not requested:
            return 1
        per = memory.memory_per_candidate(self.model, self.template.shape, self.cfg_multiplier())
        if self.model_2 is not None and per is not None:
            per = max(per, memory.memory_per_candidate(self.model_2, self.template.shape, self.cfg_multiplier()) or 0)
        return plan_micro_batch(n, memory.free_memory(self.model), per, requested, cap=64)

    # ---------------------------------------------------------------- sampling
    def generate(self, noises: torch.Tensor, seeds: Sequence[int], progress: Progress,
                 sigmas: Optional[torch.Tensor] = None, latent_image: Optional[torch.Tensor] = None,
                 want_x0: bool = False, sampler=None) -> Generated:
        """Samples a micro-batch from the given starting noises; row j's
        in-sampler randomness is keyed by ``seeds[j]``.  ``sigmas`` (a segment
        of the schedule) and ``latent_image`` (B rows) default to the whole
        schedule and the template latent; the sampler starts from
        ``noise_scaling(sigmas[0], noise, latent_image)`` as ComfyUI defines it.
        ``sampler`` overrides the plan's (an x0 probe runs one Euler step)."""
        b = noises.shape[0]
        if latent_image is None:
            latent_image = self.template.expand(b, *self.template.shape[1:]).clone()
        sigmas = self.sigmas if sigmas is None else sigmas
        box: Dict[str, Any] = {}

        def on_call(counter):
            throw_if_interrupted(self.stop)
            progress.advance(b)

        def wrap(fn):
            def wrapped(model, x, sigmas, *args, **kwargs):
                counter = NFECounter(model, on_call=on_call)
                with per_candidate_noise(seeds, seeds[0], self.template.shape):
                    out = fn(counter, x, sigmas, *args, **kwargs)
                box["calls"] = counter.calls
                return out
            wrapped.__name__ = getattr(fn, "__name__", "sampler")
            return wrapped

        base = self.base_sampler if sampler is None else sampler
        wrapped = comfy.samplers.KSAMPLER(wrap(base.sampler_function), extra_options=dict(base.extra_options),
                                          inpaint_options=dict(base.inpaint_options))

        def callback(step, x0, x, total):
            if want_x0:
                box["x0"] = x0
            progress.preview(x0)
        with self.clock.phase("denoise"):
            noise, lat = noises.to(self.template.dtype), latent_image.to(self.template.dtype)
            calls = 0
            for model, part in self._experts(sigmas):  # one run, or two experts chained at the switch
                out = sample_with_sampler(model, noise, self.cfg, wrapped, part, self.positive, self.negative, lat,
                                          self.noise_mask, callback, int(seeds[0]), self.guider)
                calls += box.get("calls", 0)
                noise, lat = torch.zeros_like(out), out  # the next expert adds no noise, as KSamplerAdvanced
            box["calls"] = calls
        x0 = None
        if want_x0 and box.get("x0") is not None:
            x0 = latent_out(self.model, box["x0"]).to(out.device, out.dtype)
        return Generated(latents=out, nfe=box.get("calls", 0), batch=b, x0=x0)

    def render_stock(self, seed: Optional[int], noise: Optional[torch.Tensor], progress: Progress,
                     nfe_hint: int) -> torch.Tensor:
        """One candidate at batch 1 through exactly the call the stock node makes: KSampler (a seed, KSampler
        widgets), SamplerCustom (a seed, SAMPLER + SIGMAS) or SamplerCustomAdvanced (a NOISE: the given
        starting ``noise`` with ``seed`` as its in-sampler seed, or a GUIDER)."""
        if noise is None:
            noise = comfy.sample.prepare_noise(self.template, seed, None)
        steps_total = max(1, self.sigmas.numel() - 1)
        start = progress.value

        def callback(step, x0, x, total):
            throw_if_interrupted()
            progress.set(start + (step + 1) * nfe_hint // steps_total, x0)

        s = int(seed) if seed is not None else 0
        if self.model_2 is not None:  # two KSamplerAdvanced: leftover noise at the switch, then no noise added
            mid = comfy.sample.sample(self.model, noise, self.steps, self.cfg, self.sampler_name, self.scheduler,
                                      self.positive, self.negative, self.template, denoise=1.0, disable_noise=False,
                                      start_step=0, last_step=self.switch, force_full_denoise=False,
                                      noise_mask=self.noise_mask, callback=callback, disable_pbar=True, seed=s)
            zeros = torch.zeros(mid.size(), dtype=mid.dtype, layout=mid.layout, device="cpu")
            return comfy.sample.sample(self.model_2, zeros, self.steps, self.cfg, self.sampler_name, self.scheduler,
                                       self.positive, self.negative, mid, denoise=1.0, disable_noise=True,
                                       start_step=self.switch, last_step=10000, force_full_denoise=True,
                                       noise_mask=self.noise_mask, callback=callback, disable_pbar=True, seed=s)
        if self.mode == "ksampler":
            return sample_like_ksampler(self.model, noise, self.steps, self.cfg, self.sampler_name,
                                        self.scheduler, self.positive, self.negative, self.template,
                                        self.denoise, self.noise_mask, callback, s)
        return sample_with_sampler(self.model, noise, self.cfg, self.base_sampler, self.sigmas,
                                   self.positive, self.negative, self.template, self.noise_mask,
                                   callback, s, self.guider)

    def initial_noises(self, seeds: Sequence[int]) -> torch.Tensor:
        return candidate_noises(self.template.shape, seeds, dtype=self.template.dtype)


def guide_frames(conditioning) -> int:
    """The latent frames that LTXV Add Guide appended after the video (its keyframe_idxs in the conditioning),
    counted as LTXV Crop Guides counts them: sampled with the video, but not part of it."""
    for item in conditioning or []:
        values = item[1] if isinstance(item, (list, tuple)) else item
        idx = values.get("keyframe_idxs") if isinstance(values, dict) else None
        if idx is not None:
            return int(torch.unique(idx[:, 0]).shape[0])
    return 0
