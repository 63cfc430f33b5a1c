"""The host side of a search: sampling, decoding and scoring candidates with
the model, VAE and verifier ComfyUI has loaded.  The algorithms in ``search/``
only see ``evaluate(candidates) -> scores``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch

from . import compat
from ..search import (NFECounter, UnknownNFEError, candidate_noises, nfe_per_generation,
                      plan_micro_batch)


class SearchInputError(ValueError):
    """Bad input: the message says what, why and what to do."""


@dataclass
class Generated:
    latents: torch.Tensor        # B x C x H x W, final samples on the intermediate device
    nfe: int                     # model calls per candidate
    batch: int                   # micro-batch size it ran in
    x0: Optional[torch.Tensor] = None  # the last step's x0-prediction (LATENT space), when asked for


class SamplingPlan:
    """How candidates are sampled: KSampler widgets, SAMPLER + SIGMAS
    (SamplerCustom) or GUIDER (+ SAMPLER/SIGMAS, SamplerCustomAdvanced)."""

    def __init__(self, model, positive, negative, latent: Dict[str, Any], cfg: float, sampler_name: str,
                 scheduler: str, steps: int, denoise: float, sampler=None, sigmas=None, guider=None):
        self.guider = guider
        self.model = compat.guider_model(guider) if guider is not None else model
        self.positive, self.negative, self.cfg = positive, negative, cfg
        self.sampler_name, self.scheduler, self.steps, self.denoise = sampler_name, scheduler, steps, denoise
        if guider is None and sampler is None and sigmas is None:
            self.mode = "ksampler"
        else:
            self.mode = "guider" if guider is not None else "custom"
        self.base_sampler = sampler if sampler is not None else compat.sampler_object(sampler_name)
        if sigmas is None:
            sigmas = compat.compute_sigmas(self.model, steps, sampler_name, scheduler, denoise)
        self.sigmas = sigmas.detach().cpu().float()
        if self.sigmas.numel() < 2:
            raise SearchInputError("the schedule has no step to run (denoise 0, or empty SIGMAS): "
                                   "raise denoise/steps, or connect SIGMAS with at least one step")
        self.latent = latent
        self.template = self._template(latent)
        self.noise_mask = latent.get("noise_mask")
        self.separable = compat.per_candidate_noise_supported(self.base_sampler)

    # ---------------------------------------------------------------- validation
    def _template(self, latent: Dict[str, Any]) -> torch.Tensor:
        samples = latent["samples"]
        if samples.ndim == 5:
            raise SearchInputError(
                f"video latents (5-D, shape {tuple(samples.shape)}) are not supported yet: "
                "SearchLoop searches image models; use a 4-D image latent")
        if samples.ndim != 4:
            raise SearchInputError(f"expected a 4-D image latent (B x C x H x W), got shape {tuple(samples.shape)}")
        if samples.shape[0] != 1:
            raise SearchInputError(
                f"the latent has batch size {samples.shape[0]}: SearchLoop makes its own candidates, so give it "
                "a batch-1 latent (Empty Latent Image with batch_size 1, or one VAE-encoded image)")
        fixed = compat.fix_empty_latent_channels(self.model, samples)
        if fixed.ndim == 5:
            raise SearchInputError("this model samples video (5-D) latents, which are not supported yet")
        want = compat.latent_channels(self.model)
        if want is not None and fixed.shape[1] != want:
            raise SearchInputError(
                f"the latent has {fixed.shape[1]} channels but this model works on {want}-channel latents: "
                "make the latent for this model (Empty Latent Image for it, or VAE Encode with its own VAE)")
        return fixed

    # ---------------------------------------------------------------- facts
    @property
    def sampler_label(self) -> str:
        return self.sampler_name if self.mode != "custom" or self.base_sampler is None else \
            compat.sampler_function_name(self.base_sampler)

    def sampler_function(self) -> str:
        """The sampler's name as the NFE and segment tables know it."""
        return self.sampler_name if self.mode == "ksampler" else compat.sampler_function_name(self.base_sampler)

    def nfe_per_generation(self) -> Optional[int]:
        name = self.sampler_name if self.mode == "ksampler" else compat.sampler_function_name(self.base_sampler)
        try:
            return nfe_per_generation(name, self.sigmas.tolist())
        except UnknownNFEError:
            return None

    def cfg_multiplier(self) -> int:
        if self.guider is not None:
            cfg = getattr(self.guider, "cfg", 1.0)
            return 2 if (cfg != 1.0 and len(getattr(self.guider, "original_conds", {}) or {}) > 1) else 1
        return 1 if self.cfg == 1.0 else 2

    def micro_batch(self, n: int, requested: int) -> int:
        if not self.separable:
            return 1
        per = compat.memory_per_candidate(self.model, self.template.shape, self.cfg_multiplier())
        return plan_micro_batch(n, compat.free_memory(self.model), per, requested,
                                cap=64 if self.model.load_device.type != "cpu" else 16)

    # ---------------------------------------------------------------- sampling
    def generate(self, noises: torch.Tensor, seeds: Sequence[int], progress: "compat.Progress",
                 sigmas: Optional[torch.Tensor] = None, latent_image: Optional[torch.Tensor] = None,
                 want_x0: bool = False) -> Generated:
        """Samples a micro-batch from the given starting noises; row j's
        in-sampler randomness is keyed by ``seeds[j]``.  ``sigmas`` (a segment
        of the schedule) and ``latent_image`` (B rows) default to the whole
        schedule and the template latent; the sampler starts from
        ``noise_scaling(sigmas[0], noise, latent_image)`` as ComfyUI defines it."""
        b = noises.shape[0]
        if latent_image is None:
            latent_image = self.template.expand(b, *self.template.shape[1:]).clone()
        sigmas = self.sigmas if sigmas is None else sigmas
        box: Dict[str, Any] = {}

        def on_call(counter):
            compat.throw_if_interrupted()
            progress.advance(b)

        def wrap(fn):
            def wrapped(model, x, sigmas, *args, **kwargs):
                counter = NFECounter(model, on_call=on_call)
                with compat.per_candidate_noise(seeds, seeds[0], self.template.shape):
                    out = fn(counter, x, sigmas, *args, **kwargs)
                box["calls"] = counter.calls
                return out
            wrapped.__name__ = getattr(fn, "__name__", "sampler")
            return wrapped

        sampler = compat.wrap_sampler(self.base_sampler, wrap)

        def callback(step, x0, x, total):
            if want_x0:
                box["x0"] = x0
            progress.preview(x0)
        out = compat.sample_with_sampler(self.model, noises.to(self.template.dtype), self.cfg, sampler, sigmas,
                                         self.positive, self.negative, latent_image.to(self.template.dtype),
                                         self.noise_mask, callback, int(seeds[0]), self.guider)
        x0 = None
        if want_x0 and box.get("x0") is not None:
            x0 = compat.latent_out(self.model, box["x0"]).to(out.device, out.dtype)
        return Generated(latents=out, nfe=box.get("calls", 0), batch=b, x0=x0)

    def render_stock(self, seed: Optional[int], noise: Optional[torch.Tensor], progress: "compat.Progress",
                     nfe_hint: int) -> torch.Tensor:
        """One candidate at batch 1 through exactly the call the stock node
        makes (KSampler / SamplerCustom / SamplerCustomAdvanced)."""
        if noise is None:
            noise = compat.prepare_noise_like_stock(self.template, seed)
        steps_total = max(1, self.sigmas.numel() - 1)
        start = progress.value

        def callback(step, x0, x, total):
            compat.throw_if_interrupted()
            progress.set(start + (step + 1) * nfe_hint // steps_total, x0)

        s = int(seed) if seed is not None else 0
        if self.mode == "ksampler":
            return compat.sample_like_ksampler(self.model, noise, self.steps, self.cfg, self.sampler_name,
                                               self.scheduler, self.positive, self.negative, self.template,
                                               self.denoise, self.noise_mask, callback, s)
        return compat.sample_with_sampler(self.model, noise, self.cfg, self.base_sampler, self.sigmas,
                                          self.positive, self.negative, self.template, self.noise_mask,
                                          callback, s, self.guider)

    def initial_noises(self, seeds: Sequence[int]) -> torch.Tensor:
        return candidate_noises(self.template.shape, seeds, dtype=self.template.dtype)


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    images = vae.decode(latents)
    if images.ndim == 5:  # some hosts return B x T x H x W x C for image VAEs too
        images = images.reshape(-1, *images.shape[-3:])
    return images


def output_latent(template_latent: Dict[str, Any], samples: torch.Tensor) -> Dict[str, Any]:
    out = {k: v for k, v in template_latent.items() if k not in ("samples", "batch_index")}
    out["samples"] = samples
    return out
