"""Verifiers as ComfyUI sees them: the pure verifier plus ModelPatchers, so
ComfyUI's model management loads its models for scoring and can offload them.

A verifier is made of *parts* (modules), each managed by one ModelPatcher that
is shared by key: a CLIPScore and an aesthetic verifier on the same CLIP file
use one CLIP model and one patcher, so it is loaded and offloaded once."""
from __future__ import annotations

import threading
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

import comfy.model_management as mm
import comfy.model_patcher

from .progress import throw_if_interrupted
from ..verifiers.protocol import SingleVerifier

_lock = threading.RLock()
_parts: Dict[Tuple, Tuple[torch.nn.Module, object]] = {}  # key -> (module, patcher)
_cache: Dict[Tuple, "HostVerifier"] = {}


def shared_part(key: Tuple, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The module for ``key`` (built once), in the verifier dtype, with its patcher."""
    with _lock:
        if key not in _parts:
            module = build()
            load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
            if load_device.type == "cuda" and mm.should_use_fp16(load_device):
                module.half()
            module.eval().requires_grad_(False)
            size = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
            patcher = comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device,
                                                       size=size)
            _parts[key] = (module, patcher)
        return _parts[key][0]


def _patcher_of(key: Tuple):
    return _parts[key][1]


class HostVerifier(SingleVerifier):
    """The object on a VERIFIER socket (``verifiers/protocol.py``): ``score(images, prompt) -> B scores``,
    with the verifier's models loaded for scoring by ComfyUI's model management."""

    def __init__(self, verifier, description: str, part_keys: Optional[Sequence[Tuple]] = None):
        """``part_keys``: the shared parts (see :func:`shared_part`) that hold all
        of the verifier's parameters; None = the whole verifier is one part."""
        self.verifier = verifier
        self.description = description
        if part_keys is None:
            key = ("verifier", description, id(verifier))
            shared_part(key, lambda: verifier)
            part_keys = [key]
        self.patchers = [_patcher_of(k) for k in part_keys]
        covered = {id(p) for k in part_keys for p in _parts[k][0].parameters()}
        stray = [n for n, p in verifier.named_parameters() if id(p) not in covered]
        if stray:
            raise RuntimeError(f"verifier parameters outside any managed part: {stray[:3]}")
        verifier.eval().requires_grad_(False)

    @property
    def name(self) -> str:
        return self.description

    @property
    def needs_preview(self) -> bool:
        return bool(getattr(self.verifier, "needs_preview", False))

    @property
    def preview_level(self):
        return getattr(self.verifier, "preview_level", None)

    def score(self, images: torch.Tensor, prompt: Union[str, Sequence[str]], **kw) -> torch.Tensor:
        throw_if_interrupted()
        mm.load_models_gpu(list(self.patchers))  # ComfyUI may offload other models to make room
        return self.verifier.score(images, prompt, **kw)


def cached(key: Tuple, build: Callable[[], HostVerifier]) -> HostVerifier:
    """One HostVerifier per (kind, files, options): loader nodes naming the same
    weights share it."""
    with _lock:
        hv = _cache.get(key)
        if hv is None:
            hv = build()
            _cache[key] = hv
        return hv


__all__ = ["HostVerifier", "shared_part", "cached"]
