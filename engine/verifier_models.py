"""Verifiers as ComfyUI sees them: the pure verifier plus ModelPatchers, so
ComfyUI's model management loads its models for scoring and can offload them.

A verifier is made of *parts* (modules), each managed by one ModelPatcher that
is shared by key: a CLIPScore and an aesthetic verifier on the same CLIP file
use one CLIP model and one patcher, so it is loaded and offloaded once.

Memory.  A verifier lives as long as something holds it: ComfyUI's cache of
node outputs (the loader node's VERIFIER), a running search, or the pack's own
short list of the most recently loaded ones (``KEEP`` verifiers, ``KEEP_PARTS``
parts, so re-running a graph does not reload them).  Both tables are weak
beyond that list: when ComfyUI drops the loader's output (another file picked,
the node removed, "Unload models" / ``/free``, which also unloads every patcher
from the device), the models go with it."""
from __future__ import annotations

import threading
from dataclasses import replace
import weakref
from collections import OrderedDict
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

import comfy.model_management as mm
import comfy.model_patcher

from .progress import throw_if_interrupted
from ..verifiers.protocol import Capabilities, SingleVerifier, capabilities

KEEP = 4         # verifiers the pack itself keeps alive (most recently loaded first to stay)
KEEP_PARTS = 8   # shared parts (CLIP models, heads) likewise


class Part:
    """One shared module and the ModelPatcher that loads / offloads it; ``companion``: what goes with the module
    and lives exactly as long as the part (an open_clip model's tokenizer), or None."""
    __slots__ = ("module", "patcher", "companion", "__weakref__")

    def __init__(self, module, patcher, companion=None):
        self.module, self.patcher, self.companion = module, patcher, companion


_lock = threading.RLock()
_parts: "weakref.WeakValueDictionary[Tuple, Part]" = weakref.WeakValueDictionary()
_cache: "weakref.WeakValueDictionary[Tuple, HostVerifier]" = weakref.WeakValueDictionary()
_recent_parts: "OrderedDict[Tuple, Part]" = OrderedDict()
_recent: "OrderedDict[Tuple, HostVerifier]" = OrderedDict()


def _touch(table: OrderedDict, key: Tuple, value, keep: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > keep:
        table.popitem(last=False)


def live() -> Dict[str, int]:
    """How many verifiers and parts are alive now (for tests and diagnostics)."""
    with _lock:
        return {"verifiers": len(_cache), "parts": len(_parts), "kept_verifiers": len(_recent),
                "kept_parts": len(_recent_parts)}


def shared_part(key: Tuple, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The module for ``key`` (built once while anything holds it), in the verifier dtype, with its patcher."""
    return _shared(key, lambda: (build(), None)).module


def shared_part_with(key: Tuple, build: Callable[[], Tuple[torch.nn.Module, object]]) -> Tuple[torch.nn.Module, object]:
    """:func:`shared_part` for a build that returns ``(module, companion)``: the companion (an open_clip model's
    tokenizer) is kept on the part, so it is bounded and released exactly as the module's part is."""
    part = _shared(key, build)
    return part.module, part.companion


def _shared(key: Tuple, build: Callable[[], Tuple[torch.nn.Module, object]]) -> Part:
    with _lock:
        part = _parts.get(key)
        if part is None:
            module, companion = build()
            load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
            if load_device.type == "cuda" and mm.should_use_fp16(load_device):
                cast = getattr(module, "cast_for_gpu", None)  # a module choosing its half dtype (VLMs: bf16)
                cast(bool(mm.should_use_bf16(load_device))) if cast else module.half()
            module.eval().requires_grad_(False)
            size = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
            patcher = comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device,
                                                       size=size)
            part = Part(module, patcher, companion)
            _parts[key] = part
        _touch(_recent_parts, key, part, KEEP_PARTS)
        return part


def _part_of(key: Tuple) -> Part:
    with _lock:
        part = _parts.get(key)
        if part is None:
            raise RuntimeError(f"verifier part {key[:2]} was released before its verifier was built")
        return part


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
        self.parts = [_part_of(k) for k in part_keys]  # held: the parts live as long as this verifier
        self.patchers = [p.patcher for p in self.parts]
        covered = {id(p) for part in self.parts for p in part.module.parameters()}
        stray = [n for n, p in verifier.named_parameters() if id(p) not in covered]
        if stray:
            raise RuntimeError(f"verifier parameters outside any managed part: {stray[:3]}")
        verifier.eval().requires_grad_(False)

    @property
    def name(self) -> str:
        return self.description

    def capabilities(self) -> Capabilities:
        """The wrapped verifier's, on the device ComfyUI loads it onto for scoring."""
        return replace(capabilities(self.verifier), device=str(self.patchers[0].load_device))

    def inner_verifiers(self):
        return [self.verifier]

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
        _touch(_recent, key, hv, KEEP)
        return hv


__all__ = ["HostVerifier", "shared_part", "shared_part_with", "cached", "live", "KEEP", "KEEP_PARTS"]
