"""Verifiers as ComfyUI sees them: the pure verifier plus ModelPatchers, so
ComfyUI's model management loads its models for scoring and can offload them.

A verifier is made of *parts* (modules), each managed by one ModelPatcher that
is shared by key: a CLIPScore and an aesthetic verifier on the same CLIP file
use one CLIP model and one patcher, so it is loaded and offloaded once."""
from __future__ import annotations

import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import compat
from ..verifiers.ensemble import EnsembleVerifier

_lock = threading.RLock()
_parts: Dict[Tuple, Tuple[torch.nn.Module, object]] = {}  # key -> (module, patcher)
_cache: Dict[Tuple, "HostVerifier"] = {}


def shared_part(key: Tuple, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The module for ``key`` (built once), in the verifier dtype, with its patcher."""
    with _lock:
        if key not in _parts:
            module = build()
            load_device, offload_device = compat.verifier_devices()
            if compat.use_fp16_for_verifier(load_device):
                module.half()
            module.eval().requires_grad_(False)
            _parts[key] = (module, compat.make_patcher(module, load_device, offload_device))
        return _parts[key][0]


def _patcher_of(key: Tuple):
    return _parts[key][1]


class HostVerifier:
    """The object on a VERIFIER socket: ``score(images, prompt) -> B scores``."""

    relative = False

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
    def member_names(self) -> List[str]:
        return [self.description]

    def score(self, images: torch.Tensor, prompt: Union[str, Sequence[str]]) -> torch.Tensor:
        compat.throw_if_interrupted()
        compat.load_for_inference(self.patchers)
        return self.verifier.score(images, prompt)

    def score_members(self, images: torch.Tensor, prompt) -> torch.Tensor:
        return self.score(images, prompt).reshape(-1, 1)

    def combine(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix.reshape(-1)


def cached(key: Tuple, build: Callable[[], HostVerifier]) -> HostVerifier:
    """One HostVerifier per (kind, files, options): loader nodes naming the same
    weights share it."""
    with _lock:
        hv = _cache.get(key)
        if hv is None:
            hv = build()
            _cache[key] = hv
        return hv


def member_matrix(verifier, images: torch.Tensor, prompt) -> torch.Tensor:
    """N x M raw scores of any VERIFIER (M = 1 for a single verifier)."""
    if hasattr(verifier, "score_members"):
        return verifier.score_members(images, prompt)
    return verifier.score(images, prompt).reshape(-1, 1)


def combiner(verifier) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The recombination rule of a relative verifier (an ensemble), else None."""
    return verifier.combine if getattr(verifier, "relative", False) else None


__all__ = ["HostVerifier", "EnsembleVerifier", "shared_part", "cached", "member_matrix", "combiner"]
