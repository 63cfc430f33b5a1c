"""HPS v2 / v2.1 (Wu et al. 2023): open_clip ViT-H-14 fine-tuned on human preferences.

Score, as ``hpsv2.score``: image_features @ text_features of the normalised
open_clip embeddings, i.e. the cosine similarity, in [-1, 1] (typical
generations score about 0.2-0.35).

Preprocessing as hpsv2's ``preprocess_val`` (``light_augmentation=True``): the
longer side is resized to 224 (bicubic, antialiased, on the float image), the
shorter one padded with black to a centred 224 x 224 square, then CLIP
normalisation.

Weights: ``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt`` from
huggingface.co/xswu/HPSv2 in models/verifiers: a dict whose 'state_dict' holds
the open_clip ViT-H-14 state dict (same keys as open_clip's own ViT-H-14),
read with ``torch.load(weights_only=True)``.  A custom architecture: an
open_clip model-config JSON next to the weights, with the same stem.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from .base import Verifier
from .clip_score import adapt_state_dict, build_open_clip
from .loading import MismatchedWeightsError, check_keys, load_state_dict
from .preprocess import OPENAI_MEAN, OPENAI_STD, normalize

ARCH = "ViT-H-14"
PUBLISHED = "https://huggingface.co/xswu/HPSv2 (HPS_v2_compressed.pt or HPS_v2.1_compressed.pt)"


def load_hps(weights_path: str):
    """open_clip ViT-H-14 (or the JSON config beside the weights) with the HPS weights; fp32, CPU, eval."""
    model, tokenizer = build_open_clip(ARCH, weights_path)
    sd = load_state_dict(weights_path, PUBLISHED)
    try:
        sd = adapt_state_dict(model, sd)
    except (AssertionError, RuntimeError, KeyError, ValueError) as e:
        check_keys(model.state_dict(), sd, weights_path, f"open_clip '{ARCH}' (HPS)")
        raise MismatchedWeightsError(f"'{weights_path}' does not fit open_clip '{ARCH}': {e}") from e
    check_keys(model.state_dict(), sd, weights_path, f"open_clip '{ARCH}' (HPS)")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return model.eval().requires_grad_(False), tokenizer


def resize_longest_and_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """images: B x H x W x 3 in [0, 1] -> B x 3 x size x size: hpsv2's ResizeMaxSize (fill 0)."""
    x = images.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = size / float(max(h, w))
    if scale == 1.0:  # hpsv2 leaves such an image as it is
        return x
    nh, nw = round(h * scale), round(w * scale)
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    ph, pw = size - nh, size - nw
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)


class HPSVerifier(Verifier):
    name = "hps"
    score_range = "[-1, 1] (cosine; typically 0.2-0.35)"

    def __init__(self, clip_model, tokenizer, version: str = "v2.1", batch_size: int = 16):
        super().__init__(batch_size)
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.version = version
        size = getattr(clip_model.visual, "image_size", 224)
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_longest_and_pad(images, self.image_size)
        if x.shape[-2:] != (self.image_size, self.image_size):
            # hpsv2 would fail on such an image (longer side exactly the model size, not square): pad it
            ph, pw = self.image_size - x.shape[-2], self.image_size - x.shape[-1]
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
        x = normalize(x, OPENAI_MEAN, OPENAI_STD).to(self.param_dtype())
        return F.normalize(self.clip.encode_image(x).float(), dim=-1)

    def text_embeddings(self, prompts: List[str]) -> torch.Tensor:
        return self.cached_text(prompts, lambda todo: F.normalize(
            self.clip.encode_text(self.tokenizer(todo).to(self.param_device())).float(), dim=-1))

    def _score(self, images, prompts):
        return (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1)
