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
  other weight is zero, so the other channels stay exactly zero through the
  network (GroupNorm/LayerNorm scales and biases are zero there too).  The
  trained parts are the sub-tensors on the trained channels (``pack``), a few
  MB; ``unpack`` puts them back into the full shapes.  ComfyUI computes the
  same network, zeros included.  Training runs on ``NarrowUNet``: the same
  arithmetic on the trained channels only (whole GroupNorm groups and whole
  attention heads; the LayerNorms count the zero channels in their
  statistics), whose state dict is the trained parts.
* **VAE**: ComfyUI's TAESD (``comfy.taesd.taesd``: 64-channel convolutions, no
  normalisation), which comfy.sd.VAE reads from ``first_stage_model.taesd_*``;
  trained the same way on a few channels of each layer (``TAESD_DECODER``,
  ``TAESD_ENCODER``); a residual Block left untrained is zero, i.e. a ReLU.
  Training runs on ``narrow_taesd``.
* **Text encoder**: the full-size CLIP-L that ComfyUI builds for SD1 (its shape
  is fixed there), **frozen**: seeded random weights (tests/tiny_models.py's
  generator, seed ``CLIP_SEED``) with every layer's output projections zero
  (``CLIP_ZERO``), so that each layer passes its input through and the context
  of a prompt is the final LayerNorm of its token embeddings plus position
  embeddings: distinct words give distinct, nearly orthogonal 768-d vectors,
  which the UNet's cross-attention learns to read.  The same code builds it at
  training and at set-up time, so it is never shipped.

``build.py check-nets`` runs ``NarrowUNet`` / ``narrow_taesd`` against
ComfyUI's classes on the same weights; ``build.py check-text`` compares the
contexts training uses with ComfyUI's CLIPTextEncode on the assembled file.

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

import hashlib
import math
import os
import sys
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
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
WIDTH = 80           # trained channels of the 320: 2 of the 8 attention heads, whole GroupNorm groups
TIME_WIDTH = 128     # trained units of the 1280-wide time embedding
FF_WIDTH = 160       # trained units of each 1280-wide feed-forward half (GEGLU)
CLIP_SEED = 0        # the frozen text encoder: tests/tiny_models.py's fill, kind sd15, this seed ...
CLIP_ZERO = (".self_attn.out_proj.", ".mlp.fc2.")   # ... with its layers' output projections zero (see build.clip_state)
LATENT = 8           # 64 px images -> 8 x 8 latents
SD15_SCALE = 0.18215  # comfy.latent_formats.SD15.scale_factor: the TAESD's vae_scale

# TAESD (comfy.taesd.taesd: nn.Sequential, index -> layer): the output channels trained in each convolution and
# residual Block; a Block left out is all zeros, i.e. ReLU(x) (its skip is the identity, then ReLU).
TAESD_DECODER = {1: 48, 3: 48, 4: 48, 5: 48, 7: 48, 8: 48, 9: 48, 12: 32, 13: 32, 17: 16, 19: 3}  # + Clamp 0, ReLU 2,
TAESD_ENCODER = {0: 16, 2: 32, 3: 32, 6: 48, 7: 48, 10: 48, 11: 48, 12: 48, 14: 4}            # Upsample 6, 11, 16
TAESD_BLOCKS = {"taesd_decoder.": (3, 4, 5, 8, 9, 10, 13, 14, 15, 18), "taesd_encoder.": (1, 3, 4, 5, 7, 8, 9, 11, 12, 13)}
TAESD_INPUT = {"taesd_decoder.": 4, "taesd_encoder.": 3}


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


def _taesd_widths(prefix: str):
    """layer index -> (input width, output width) of the trained layers of one TAESD half."""
    table = TAESD_DECODER if prefix == "taesd_decoder." else TAESD_ENCODER
    widths, prev = {}, TAESD_INPUT[prefix]
    for i in sorted(table):
        widths[i] = (prev, table[i])
        prev = table[i]
    return widths


def taesd_index(key: str, shape) -> Optional[List[torch.Tensor]]:
    """The trained indices of TAESD tensor ``key`` (``taesd_encoder.*`` / ``taesd_decoder.*``), or None for a
    tensor of a layer that stays zero."""
    prefix = next(p for p in TAESD_INPUT if key.startswith(p))
    layer = int(key[len(prefix):].split(".")[0])
    widths = _taesd_widths(prefix)
    if layer not in widths:
        return None
    w_in, w_out = widths[layer]
    if ".conv." in key:          # a Block: square convolutions on its width
        w_in = w_out
    idx = [_first(w_out)]
    if len(shape) > 1:
        idx += [_first(w_in)] + [_first(s) for s in shape[2:]]
    return idx


def pack(state: Dict[str, torch.Tensor], index: Callable) -> Dict[str, torch.Tensor]:
    """The trained sub-tensors of a full state dict (tensors of untrained layers are left out)."""
    out = {}
    for k, v in state.items():
        idx = index(k, v.shape)
        if idx is None:
            continue
        out[k] = v[torch.meshgrid(*idx, indexing="ij")].contiguous() if idx else v.clone()
    return out


def unpack(parts: Dict[str, torch.Tensor], shapes: Dict[str, torch.Size], index: Callable,
           dtype=torch.float32) -> Dict[str, torch.Tensor]:
    """Full tensors of ``shapes`` (zeros) with the trained sub-tensors put back."""
    trained = {k for k, shape in shapes.items() if index(k, shape) is not None}
    missing = sorted(trained - set(parts))
    extra = sorted(set(parts) - trained)
    if missing or extra:
        raise ValueError(f"trained parts do not fit the layout: missing {missing[:5]}, unexpected {extra[:5]}")
    out = {}
    for k, shape in shapes.items():
        full = torch.zeros(shape, dtype=dtype)
        idx = index(k, shape)
        if idx is not None:
            want = tuple(len(i) for i in idx)
            if tuple(parts[k].shape) != want:
                raise ValueError(f"trained part {k} is {tuple(parts[k].shape)}, the layout takes {want}")
            full[torch.meshgrid(*idx, indexing="ij")] = parts[k].to(dtype)
        out[k] = full
    return out


# --- the trained parts as networks of their own (training runs on these; build.py checks them against ComfyUI's) ---
def timestep_embedding(t: torch.Tensor, dim: int = 320, max_period: float = 10000.0) -> torch.Tensor:
    """comfy.ldm.modules.diffusionmodules.util.timestep_embedding: [cos, sin] of t x geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class PaddedLayerNorm(nn.Module):
    """LayerNorm(full) on a vector whose channels beyond these ``n`` are zero: the statistics count the zeros."""

    def __init__(self, n: int, full: int = 320, eps: float = 1e-5):
        super().__init__()
        self.full, self.eps = full, eps
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        m = x.sum(-1, keepdim=True) / self.full
        v = (x * x).sum(-1, keepdim=True) / self.full - m * m
        return (x - m) * torch.rsqrt(v + self.eps) * self.weight + self.bias


class Attention(nn.Module):
    """comfy CrossAttention on the trained channels: heads of 40 (SD1.5's 8 heads of 320 / 8)."""

    def __init__(self, w: int, context_dim: Optional[int] = None):
        super().__init__()
        self.to_q = nn.Linear(w, w, bias=False)
        self.to_k = nn.Linear(context_dim or w, w, bias=False)
        self.to_v = nn.Linear(context_dim or w, w, bias=False)
        self.to_out = nn.Sequential(nn.Linear(w, w), nn.Dropout(0.0))
        self.heads = w // 40

    def forward(self, x, context=None, rows=None):
        """``context``: one row per distinct context, ``rows`` (batch) picks each sample's (k, v computed once)."""
        b, n, w = x.shape
        c = x if context is None else context
        k, v = self.to_k(c), self.to_v(c)
        if rows is not None:
            k, v = k[rows], v[rows]
        q = self.to_q(x)
        split = lambda t: t.view(t.shape[0], t.shape[1], self.heads, 40).transpose(1, 2)  # noqa: E731
        o = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(o.transpose(1, 2).reshape(b, n, w))


class GEGLU(nn.Module):
    def __init__(self, w: int, f: int):
        super().__init__()
        self.proj = nn.Linear(w, 2 * f)

    def forward(self, x):
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class TransformerBlock(nn.Module):
    def __init__(self, w: int, f: int):
        super().__init__()
        self.attn1, self.attn2 = Attention(w), Attention(w, 768)
        self.ff = nn.Module()
        self.ff.net = nn.Sequential(GEGLU(w, f), nn.Dropout(0.0), nn.Linear(f, w))
        self.norm1, self.norm2, self.norm3 = PaddedLayerNorm(w), PaddedLayerNorm(w), PaddedLayerNorm(w)

    def forward(self, x, context, rows):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context, rows) + x
        return self.ff.net(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, w: int, f: int):
        super().__init__()
        self.norm = nn.GroupNorm(w // 10, w, eps=1e-6)
        self.proj_in = nn.Conv2d(w, w, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(w, f)])
        self.proj_out = nn.Conv2d(w, w, 1)

    def forward(self, x, context, rows):
        b, c, h, wd = x.shape
        t = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        t = self.transformer_blocks[0](t, context, rows)
        return self.proj_out(t.transpose(1, 2).reshape(b, c, h, wd)) + x


class ResBlock(nn.Module):
    def __init__(self, w_in: int, w: int, t: int, group: int):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(w_in // group, w_in), nn.SiLU(), nn.Conv2d(w_in, w, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(t, w))
        self.out_layers = nn.Sequential(nn.GroupNorm(w // 10, w), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(w, w, 3, padding=1))
        self.skip_connection = nn.Conv2d(w_in, w, 1) if w_in != w else nn.Identity()

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class NarrowUNet(nn.Module):
    """ComfyUI's UNetModel in the layout ``UNET`` computed on its trained channels only; its state dict is the
    trained parts (``pack`` of the full one, ``unpack`` back).  Input and output as UNetModel's: x (n x 4 x h x w,
    the model input x / sqrt(sigma^2 + 1)), timesteps (n), context; eps out."""

    def __init__(self, w: int = WIDTH, t: int = TIME_WIDTH, f: int = FF_WIDTH):
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(320, t), nn.SiLU(), nn.Linear(t, t))
        self.input_blocks = nn.ModuleList([
            nn.ModuleList([nn.Conv2d(4, w, 3, padding=1)]),
            nn.ModuleList([ResBlock(w, w, t, 10), SpatialTransformer(w, f)])])
        self.output_blocks = nn.ModuleList([
            nn.ModuleList([ResBlock(2 * w, w, t, 20), SpatialTransformer(w, f)]),   # 640 channels: groups of 20
            nn.ModuleList([ResBlock(2 * w, w, t, 20)])])
        self.out = nn.Sequential(nn.GroupNorm(w // 10, w), nn.SiLU(), nn.Conv2d(w, 4, 3, padding=1))

    def forward(self, x, timesteps, context, rows=None):
        emb = self.time_embed(timestep_embedding(timesteps))
        h0 = self.input_blocks[0][0](x)
        h1 = self.input_blocks[1][1](self.input_blocks[1][0](h0, emb), context, rows)
        # no middle block: the first output block concatenates the last input block's output with itself
        h = self.output_blocks[0][0](torch.cat([h1, h1], 1), emb)
        h = self.output_blocks[0][1](h, context, rows)
        h = self.output_blocks[1][0](torch.cat([h, h0], 1), emb)
        return self.out(h)


class Block(nn.Module):
    """comfy.taesd.taesd.Block with an identity skip (its input and output widths are equal)."""

    def __init__(self, w: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(w, w, 3, padding=1))
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + x)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


def narrow_taesd(prefix: str) -> nn.Sequential:
    """One half of ComfyUI's TAESD on its trained channels (zero Blocks are their ReLU); state dict = the parts."""
    decoder = prefix == "taesd_decoder."
    n = 20 if decoder else 15
    widths = _taesd_widths(prefix)
    layers = []
    for i in range(n):
        if decoder and i == 0:
            layers.append(Clamp())
        elif decoder and i == 2:
            layers.append(nn.ReLU())
        elif decoder and i in (6, 11, 16):
            layers.append(nn.Upsample(scale_factor=2))
        elif i in TAESD_BLOCKS[prefix]:
            layers.append(Block(widths[i][1]) if i in widths else nn.ReLU())
        else:
            w_in, w_out = widths[i]
            stride = 2 if (not decoder and i in (2, 6, 10)) else 1
            bias = not ((not decoder and i in (2, 6, 10)) or (decoder and i in (7, 12, 17)))
            layers.append(nn.Conv2d(w_in, w_out, 3, stride=stride, padding=1, bias=bias))
    return nn.Sequential(*layers)


# --- the verifier (open_clip) ----------------------------------------------------------------------------------------
VERIFIER_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 96, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 3},
}
TOKEN_TABLE = "token_embedding.weight"


# --- the judge ---------------------------------------------------------------------------------------------------------
HEADS = (2, 4, 3, 9)      # size, colour, shape, cell (shapes_data.labels)


class Judge(nn.Module):
    """A CNN with one classification head per attribute: 64 -> 32 -> 16 -> 8 px, then a 1x1 bottleneck kept
    spatial (the cell is a where, not a what)."""

    def __init__(self):
        super().__init__()

        def block(i, o, s):
            return [nn.Conv2d(i, o, 3, stride=s, padding=1), nn.GroupNorm(4, o), nn.SiLU()]
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, padding=2), nn.SiLU(), *block(16, 24, 2), *block(24, 32, 2), *block(32, 48, 1),
            *block(48, 64, 2), nn.Conv2d(64, 16, 1), nn.SiLU(), nn.Flatten(), nn.Linear(16 * 64, 96), nn.SiLU())
        self.head = nn.Linear(96, sum(HEADS))

    def forward(self, x01: torch.Tensor) -> List[torch.Tensor]:
        """x01: n x 3 x 64 x 64 in [0, 1] -> one logits tensor per attribute."""
        return list(self.head(self.features(x01 * 2 - 1)).split(HEADS, dim=1))

    @torch.no_grad()
    def predict(self, x01: torch.Tensor) -> torch.Tensor:
        """n x 4 predicted labels (as shapes_data.labels)."""
        return torch.stack([h.argmax(1) for h in self(x01)], 1)


# --- the frozen CLIP-L's embeddings (what a prompt's context depends on) -------------------------------------------
CLIP_KEYS = {"token": ("transformer.text_model.embeddings.token_embedding.weight", (49408, 768), "Embedding"),
             "position": ("transformer.text_model.embeddings.position_embedding.weight", (77, 768), "Embedding"),
             "norm_weight": ("transformer.text_model.final_layer_norm.weight", (768,), "LayerNorm"),
             "norm_bias": ("transformer.text_model.final_layer_norm.bias", (768,), "LayerNorm")}


def clip_fingerprint(tensors) -> str:
    """sha256 (16 hex digits) of the text encoder's embeddings and final LayerNorm (fp16), the tensors its
    contexts depend on (CLIP_KEYS names -> tensors)."""
    h = hashlib.sha256()
    for name in sorted(CLIP_KEYS):
        h.update(name.encode())
        h.update(tensors[name].to(torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def clip_embeddings() -> dict:
    """The frozen CLIP-L's embeddings and final LayerNorm (fp16) without ComfyUI: tests/tiny_models.py's fill of
    those keys (seed CLIP_SEED), the values build.clip_state gives them."""
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import tiny_models
    return {name: tiny_models._fill("cond_stage_model." + key, shape, torch.float32, owner, CLIP_SEED,
                                    "sd15").to(torch.float16)
            for name, (key, shape, owner) in CLIP_KEYS.items()}
