"""The verifier protocol."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Callable, List, Sequence, Union

import torch

from .protocol import Capabilities, SingleVerifier

Prompts = Union[str, Sequence[str]]


def as_prompt_list(prompts: Prompts, n: int) -> List[str]:
    """One prompt for every image: a single string is repeated, a list must have n items."""
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) == 1:
        return prompts * n
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} images; give one prompt, or one per image")
    return prompts


class Verifier(SingleVerifier, torch.nn.Module):
    """Base class of the model verifiers (``verifiers/protocol.py`` is the protocol every VERIFIER
    follows). Subclasses implement ``_score(images, prompts)`` on a chunk.

    * ``images``: float tensor B x H x W x 3 in [0, 1] (ComfyUI's IMAGE layout);
    * ``prompts``: one string or one per image;
    * returns a float32 CPU tensor of B scores, higher is better.

    Scoring runs on the device the module's parameters are on (the node layer
    moves it there through ComfyUI's model management) in the module's dtype.
    """

    name: str = "verifier"
    score_range: str = ""
    CAPABILITIES = Capabilities()  # batched, absolute, reads the prompt; a subclass declares its own

    TEXT_CACHE_SIZE = 64  # prompts whose text embedding is kept (least recently used dropped first)

    def __init__(self, batch_size: int = 32):
        super().__init__()
        self.batch_size = batch_size
        self._text_cache: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()

    def cached_text(self, prompts: List[str], encode: Callable[[List[str]], torch.Tensor]) -> torch.Tensor:
        """Text embeddings of ``prompts`` (one row each), encoding only those not cached: a search scores
        one prompt many times.  The cache is bounded (LRU, ``TEXT_CACHE_SIZE`` prompts) and keyed by device
        and dtype; moving the module clears it."""
        dev, dt = str(self.param_device()), self.param_dtype()
        todo = [p for p in dict.fromkeys(prompts) if (p, dev, dt) not in self._text_cache]
        if todo:
            for p, v in zip(todo, encode(todo)):
                self._text_cache[(p, dev, dt)] = v
        out = []
        for p in prompts:
            self._text_cache.move_to_end((p, dev, dt))
            out.append(self._text_cache[(p, dev, dt)])
        while len(self._text_cache) > max(self.TEXT_CACHE_SIZE, len(set(prompts))):
            self._text_cache.popitem(last=False)
        return torch.stack(out)

    def _apply(self, fn, *args, **kwargs):
        self._text_cache.clear()  # device/dtype moves invalidate cached text embeddings
        return super()._apply(fn, *args, **kwargs)

    def capabilities(self) -> Capabilities:
        """The class's ``CAPABILITIES``, on the device its parameters are on now."""
        return replace(self.CAPABILITIES, device=str(self.param_device()))

    # plain methods, not properties: ComfyUI's ModelPatcher sets attributes such
    # as ``.device`` on the modules it manages
    def param_device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in list(self.parameters()) + list(self.buffers()))

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Prompts = "") -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape B x H x W x 3, got {tuple(images.shape)}")
        plist = as_prompt_list(prompts, images.shape[0])
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            chunk = images[i:i + self.batch_size].to(self.param_device(), non_blocking=True)
            out.append(self._score(chunk, plist[i:i + self.batch_size]).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def _score(self, images: torch.Tensor, prompts: List[str]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
