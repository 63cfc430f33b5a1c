"""The self-supervised verifier of Ma et al. 2025: a candidate is good when what the model predicted part-way
agrees with what it finished with.

Score = cosine similarity between the CLIP image embeddings of a candidate's
final image and of its **preview**, the decoded x0-prediction the sampler made
at a low noise level (``preview_level``, 0.4 of the model's noise timeline by
default, the paper's sigma = 0.4).  It needs no prompt and no reward model.

Only a host that samples the candidates can make previews (Search Loop's host
does, for random search, zero-order and evolution, whose candidates run the
whole schedule): ``score(images, prompt, previews=...)``.  Without previews it
refuses with a message instead of guessing.
"""
from __future__ import annotations

from typing import Optional

import torch

from .clip_score import CLIPScoreVerifier
from .protocol import Capabilities, capabilities

PREVIEW_MESSAGE = (
    "the self-consistency verifier compares each candidate with its own x0-prediction part-way through sampling, "
    "which only Search Loop makes (with random search, zero-order or evolution). It cannot score a plain image "
    "batch (Verifier Score), be the held-out verifier, or score the part-way previews of paths, particles or "
    "successive halving: use it in Search Loop with one of those strategies, or pick another verifier")


class PreviewRequired(ValueError):
    """A preview-based verifier was asked to score images without their previews."""


class SelfConsistencyVerifier(CLIPScoreVerifier):
    name = "self_consistency"

    def __init__(self, clip_model, level: float = 0.4, batch_size: int = 32):
        super().__init__(clip_model, tokenizer=None, mode="cosine", batch_size=batch_size)
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"the preview level must lie strictly between 0 (clean) and 1 (pure noise), got {level}")
        self.level = float(level)
        self.score_range = "[-1, 1]"

    def capabilities(self) -> Capabilities:
        return Capabilities(needs_prompt=False, needs_preview=True, preview_level=self.level,
                            device=str(self.param_device()))

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts="", previews: Optional[torch.Tensor] = None) -> torch.Tensor:
        if previews is None:
            raise PreviewRequired(PREVIEW_MESSAGE)
        if images.ndim != 4 or images.shape[-1] != 3 or previews.shape != images.shape:
            raise ValueError(f"expected images and previews of one shape B x H x W x 3, got {tuple(images.shape)} "
                             f"and {tuple(previews.shape)}")
        out = []
        dev = self.param_device()
        for i in range(0, images.shape[0], self.batch_size):
            a = self.image_embeddings(images[i:i + self.batch_size].to(dev))
            b = self.image_embeddings(previews[i:i + self.batch_size].to(dev))
            out.append((a * b).sum(-1).clamp(-1.0, 1.0).float().cpu())  # round-off can pass 1
        return torch.cat(out) if out else torch.zeros(0)


def needs_preview(verifier) -> bool:
    return capabilities(verifier).needs_preview


def preview_level(verifier) -> Optional[float]:
    return capabilities(verifier).preview_level


__all__ = ["SelfConsistencyVerifier", "PreviewRequired", "PREVIEW_MESSAGE", "needs_preview", "preview_level"]
