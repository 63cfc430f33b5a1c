"""The one place that knows how ComfyUI versions differ.

Supported: ComfyUI 0.3.64 and later (the V3 node schema, ``nodes/v3.py``).
Everything here is a feature check, never a version number; the rest of
``nodes/`` calls these functions instead of testing for features itself."""
from __future__ import annotations

import inspect
from typing import List

import torch

import comfy.model_management as mm
import comfy.sample
import comfy.k_diffusion.sampling as kds

# ancestral samplers draw their noise from a generator seeded with extra_args["seed"] (every supported
# ComfyUI; older ones drew it from torch's global RNG)
SEEDED_DEFAULT_NOISE = "seed" in inspect.signature(kds.default_noise_sampler).parameters

InterruptProcessingException = mm.InterruptProcessingException


def oom_exception_types() -> tuple:
    """Exception types that mean out-of-memory.  ComfyUI's ``OOM_EXCEPTION`` is trusted only when it is
    specific (older releases set it to plain ``Exception`` on the CPU)."""
    types: List[type] = [torch.cuda.OutOfMemoryError]
    if getattr(torch, "OutOfMemoryError", None) is not None:
        types.append(torch.OutOfMemoryError)
    host = getattr(mm, "OOM_EXCEPTION", None)
    if host is not None and host is not Exception:
        types.append(host)
    return tuple(types)


def model_object(model, name: str):
    """``model_sampling`` / ``latent_format`` of a ModelPatcher."""
    return model.get_model_object(name)


def fix_empty_latent_channels(model, latent: torch.Tensor) -> torch.Tensor:
    """ComfyUI's own fix: an all-zero 4-channel latent becomes the model's channel count (16 for SD3/FLUX)."""
    return comfy.sample.fix_empty_latent_channels(model, latent)


def latent_dimensions(model) -> int:
    """The model's latent dimensions: 3 for a video model (B x C x T x H x W latents), 2 for an image model
    (a latent format without ``latent_dimensions`` is an image one)."""
    return int(getattr(model_object(model, "latent_format"), "latent_dimensions", 2))


def ksampler_target(model):
    """What ``comfy.samplers.KSampler`` takes: the ModelPatcher."""
    return model


def prepare_mask(noise_mask: torch.Tensor, shape, device) -> torch.Tensor:
    """The noise mask at latent resolution, as the samplers use it."""
    from comfy.sampler_helpers import prepare_mask as fn
    return fn(noise_mask, shape, device)


def guider_model(guider):
    return guider.model_patcher


def latent_rgb(model):
    """``(latent_format, factors C x 3, bias 3 or None)``: the linear latent -> RGB preview ComfyUI draws
    while sampling (``latent_rgb_factors`` of the model's latent format, applied to the model-space latent),
    or None when the latent format has no such factors."""
    fmt = model_object(model, "latent_format")
    factors = getattr(fmt, "latent_rgb_factors", None)
    if factors is None:
        return None
    bias = getattr(fmt, "latent_rgb_factors_bias", None)
    return (fmt, torch.tensor(factors, dtype=torch.float32),
            None if bias is None else torch.tensor(bias, dtype=torch.float32))
