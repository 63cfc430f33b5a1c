"""Batched image preprocessing on the verifier's device, in torch.

Mirrors the usual CLIP transform (resize the shorter side with bicubic
interpolation, centre crop, normalise).  Resizing happens on the GPU in torch,
not in PIL, so scores differ from a PIL pipeline by interpolation round-off
(about 1e-3 in cosine similarity on natural images)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """images: B x H x W x 3 in [0, 1] -> B x 3 x size x size in [0, 1]."""
    x = images.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, :, top:top + size, left:left + size].clamp(0, 1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s
