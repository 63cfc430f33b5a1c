"""Verifiers as ComfyUI sees them: the pure verifier plus a ModelPatcher, so
ComfyUI's model management loads it for scoring and can offload it."""
from __future__ import annotations

import threading
from typing import Dict, Sequence, Tuple, Union

import torch

from . import compat


class HostVerifier:
    """The object on a VERIFIER socket."""

    def __init__(self, verifier, description: str):
        self.verifier = verifier
        self.description = description
        load_device, offload_device = compat.verifier_devices()
        if compat.use_fp16_for_verifier(load_device):
            verifier.half()
        verifier.eval().requires_grad_(False)
        self.patcher = compat.make_patcher(verifier, load_device, offload_device)

    @property
    def name(self) -> str:
        return self.description

    def score(self, images: torch.Tensor, prompt: Union[str, Sequence[str]]) -> torch.Tensor:
        compat.throw_if_interrupted()
        compat.load_for_inference(self.patcher)
        return self.verifier.score(images, prompt)


# One model object per (kind, file, options): two loader nodes naming the same
# weights share it (and its memory).
_cache: Dict[Tuple, HostVerifier] = {}
_lock = threading.Lock()


def cached(key: Tuple, build) -> HostVerifier:
    with _lock:
        hv = _cache.get(key)
        if hv is None:
            hv = build()
            _cache[key] = hv
        return hv
