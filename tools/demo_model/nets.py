"""The demo model's networks, and how their trained parts sit in the files ComfyUI loads.

**The checkpoint** is an SD1.5 single-file checkpoint (``model.diffusion_model.*``,
``cond_stage_model.*``, ``first_stage_model.*``) that ComfyUI's stock
CheckpointLoaderSimple detects as SD15:

* **UNet**: ComfyUI's own ``openaimodel.UNetModel`` in the smallest layout that
  detection still reads as SD1.5 (``UNET``): SD1.5 pins model_channels 320,
  context_dim 768 and 8 heads, so the width cannot shrink; the depth can: one
  level (no downsampling), one residual block, a transformer after it and after
  the first output block, no middle block.  Inside that 320-channel layout only
  the first ``WIDTH`` channels (and ``TIME_WIDTH`` of the 1280-wide time
  embedding, ``FF_WIDTH`` of the 1280-wide feed-forward) are trained: every
  other weight is held at zero, so the other channels stay exactly zero through
  the network (a zero-weight channel stays zero through GroupNorm/LayerNorm when
  their scale and bias are zero too).  The trained parts are the sub-tensors on
  the active channels (``pack``), a few MB; ``unpack`` puts them back into the
  full shapes.  What ComfyUI computes is the same network (the zeros included).
* **VAE**: ComfyUI's TAESD (``comfy.taesd.taesd``: 64-channel convolutions, no
  normalisation), which comfy.sd.VAE reads from ``first_stage_model.taesd_*``;
  trained the same way on ``TAESD_WIDTH`` of its 64 channels.
* **Text encoder**: the full-size CLIP-L that ComfyUI builds for SD1 (its shape
  is fixed there), **frozen with seeded random weights** (tests/tiny_models.py's
  generator, seed ``CLIP_SEED``): the same code builds it at training and at
  set-up time, so it is never shipped.  Random as it is, it maps different
  captions to clearly different 77 x 768 contexts; the UNet learns to read them.

**The verifier** is an open_clip CLIP with a small custom config
(``VERIFIER_CONFIG``: 64 px images, patch 8, 16-token context), the file pair
that the pack's CLIPScore loader reads (weights + the config JSON beside them).
Only the rows of its 49408-row token table that the captions use are trained
and shipped; the others are zero.

**The judge** (``Judge``) is a plain CNN with one head per attribute, trained
on other images (another seed stream) than the model and the verifier; it only
evaluates.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch
from torch import nn

# --- the SD1.5 UNet ------------------------------------------------------------------------------------------------
UNET = dict(
    image_size=32, in_channels=4, out_channels=4,
    model_channels=320, context_dim=768, use_linear_in_transformer=False, adm_in_channels=None,  # SD15 detection
    num_heads=8, num_head_channels=-1,                                                            # SD15's own
    num_res_blocks=[1], channel_mult=[1],          # one level at the latent's resolution, one residual block
    transformer_depth=[1],                         # cross-attention after it ...
    transformer_depth_output=[0, 1],               # ... and after the first output block (popped from the end)
    transformer_depth_middle=-2,                   # no middle block
    use_spatial_transformer=True, legacy=False, use_checkpoint=False,
    use_temporal_resblock=False, use_temporal_attention=False,
)
WIDTH = 120          # trained channels of the 320 (3 of the 8 attention heads; whole GroupNorm groups)
TIME_WIDTH = 256     # trained units of the 1280-wide time embedding
FF_WIDTH = 480       # trained units of each 1280-wide feed-forward half (GEGLU)
TAESD_WIDTH = {"taesd_encoder.": 32, "taesd_decoder.": 48}
CLIP_SEED = 0        # the frozen text encoder: tests/tiny_models.py's fill, kind sd15, this seed
LATENT = 8           # 64 px images -> 8 x 8 latents
SD15_SCALE = 0.18215  # comfy.latent_formats.SD15.scale_factor: the TAESD's vae_scale


def _first(n: int) -> torch.Tensor:
    return torch.arange(n)


def _two(n: int, half: int) -> torch.Tensor:
    return torch.cat([torch.arange(n), half + torch.arange(n)])


def unet_index(key: str, shape) -> List[torch.Tensor]:
    """The trained indices of each dimension of UNet tensor ``key`` (keys as in UNetModel.state_dict())."""
    out = []
    for d, size in enumerate(shape):
        if size == 320:
            # the sinusoidal timestep features (time_embed.0's input) are all used
            out.append(_first(320) if (key.startswith("time_embed.0.") and d == 1) else _first(WIDTH))
        elif size == 640:        # an output block's input: [h, skip] concatenated
            out.append(_two(WIDTH, 320))
        elif size == 1280:       # time embedding, or the feed-forward's hidden units (ff.net.2's input)
            out.append(_first(FF_WIDTH) if ".ff.net.2." in key else _first(TIME_WIDTH))
        elif size == 2560:       # GEGLU projection: value half, gate half
            out.append(_two(FF_WIDTH, 1280))
        else:                    # 4 latent channels, 768 context features, kernel taps
            out.append(_first(size))
    return out


def taesd_index(key: str, shape) -> List[torch.Tensor]:
    """The trained indices of each dimension of TAESD tensor ``key`` (``taesd_encoder.*`` / ``taesd_decoder.*``)."""
    width = next(w for p, w in TAESD_WIDTH.items() if key.startswith(p))
    return [_first(width) if size == 64 else _first(size) for size in shape]


def pack(state: Dict[str, torch.Tensor], index: Callable) -> Dict[str, torch.Tensor]:
    """The trained sub-tensors of a full state dict."""
    out = {}
    for k, v in state.items():
        idx = index(k, v.shape)
        out[k] = v[torch.meshgrid(*idx, indexing="ij")].contiguous() if idx else v.clone()
    return out


def unpack(parts: Dict[str, torch.Tensor], shapes: Dict[str, torch.Size], index: Callable,
           dtype=torch.float32) -> Dict[str, torch.Tensor]:
    """Full tensors of ``shapes`` (zeros) with the trained sub-tensors put back; every key must be in ``parts``."""
    missing = sorted(set(shapes) - set(parts))
    extra = sorted(set(parts) - set(shapes))
    if missing or extra:
        raise ValueError(f"trained parts do not fit the layout: missing {missing[:5]}, unexpected {extra[:5]}")
    out = {}
    for k, shape in shapes.items():
        full = torch.zeros(shape, dtype=dtype)
        idx = index(k, shape)
        full[torch.meshgrid(*idx, indexing="ij")] = parts[k].to(dtype)
        out[k] = full
    return out


def masks(state: Dict[str, torch.Tensor], index: Callable) -> Dict[str, torch.Tensor]:
    """1 on trained entries, 0 elsewhere (for training in the full layout)."""
    out = {}
    for k, v in state.items():
        m = torch.zeros(v.shape, dtype=torch.bool)
        m[torch.meshgrid(*index(k, v.shape), indexing="ij")] = True
        out[k] = m
    return out


# --- the verifier (open_clip) ----------------------------------------------------------------------------------------
VERIFIER_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 96, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 3},
}
TOKEN_TABLE = "token_embedding.weight"


# --- the judge ---------------------------------------------------------------------------------------------------------
HEADS = (3, 2, 6, 4, 9)      # count - 1, size, colour, shape, cell (shapes_data.labels)


class Judge(nn.Module):
    """A CNN with one classification head per attribute: 64 -> 32 -> 16 -> 8 px, then a 1x1 bottleneck kept
    spatial (the cell is a where, not a what)."""

    def __init__(self):
        super().__init__()

        def block(i, o, s):
            return [nn.Conv2d(i, o, 3, stride=s, padding=1), nn.GroupNorm(8, o), nn.SiLU()]
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.SiLU(), *block(32, 48, 2), *block(48, 48, 1), *block(48, 96, 2),
            *block(96, 96, 1), *block(96, 128, 2), *block(128, 128, 1), nn.Conv2d(128, 16, 1), nn.SiLU(),
            nn.Flatten(), nn.Linear(16 * 64, 192), nn.SiLU())
        self.head = nn.Linear(192, sum(HEADS))

    def forward(self, x01: torch.Tensor) -> List[torch.Tensor]:
        """x01: n x 3 x 64 x 64 in [0, 1] -> one logits tensor per attribute."""
        return list(self.head(self.features(x01 * 2 - 1)).split(HEADS, dim=1))

    @torch.no_grad()
    def predict(self, x01: torch.Tensor) -> torch.Tensor:
        """n x 5 predicted labels (as shapes_data.labels)."""
        return torch.stack([h.argmax(1) for h in self(x01)], 1)
