"""HPSv3 (Ma et al. 2025, "HPSv3: Towards Wide-Spectrum Human Preference Score"),
with the published checkpoint, in our own torch code.

The reference is ``HPSv3RewardInferencer.reward`` of the hpsv3 1.0.0 package:

* the model is Qwen2-VL-7B-Instruct (vision tower + language model) with a
  "ranknet" reward head (hidden -> 1024 -> ReLU -> 16 -> ReLU -> 2) read at the
  ``<|Reward|>`` token, a special token added after the tokenizer's own
  (id 151657); the head gives (mu, sigma) and the score is mu;
* the prompt is the package's instruction (rate visual quality and text
  alignment, with the text prompt), then "Please provide the overall ratings of
  this image: <|Reward|>", in a one-turn chat with the image first, under
  Qwen2-VL's chat template (default system message, generation prompt);
* the image is resized to about 256 x 28 x 28 pixels (min = max =
  200704: 448 x 448 for a square image; both sides multiples of 28, aspect
  kept), bicubic, normalised with the CLIP mean/std and cut into 14 x 14
  patches (two identical frames, merged 2 x 2): 256 image tokens;
* the package calls the language model with no position ids, so every token,
  image tokens included, has the 1-D position of its index (Qwen2-VL's
  multimodal rope then reduces to ordinary rope); this module does the same.

Scores are unbounded; higher is better.

Folder layout (one folder in models/verifiers, e.g. ``HPSv3/``):
``HPSv3.safetensors`` from huggingface.co/MizzenAI/HPSv3 (the whole model:
vision tower, language model, lm_head and rm_head, bf16 with an fp32 head), and
``config.json`` + ``tokenizer.json`` from huggingface.co/Qwen/Qwen2-VL-7B-Instruct
(not its weights).  Resizing runs in torch on the device (bicubic,
antialiased), not in PIL: scores of images that need resizing differ from the
package's by interpolation round-off.
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import Verifier
from .loading import VerifierFileError, check_keys, load_state_dict, missing_weights
from .preprocess import OPENAI_MEAN, OPENAI_STD

PUBLISHED = ("https://huggingface.co/MizzenAI/HPSv3 (HPSv3.safetensors) and "
             "https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct (config.json and tokenizer.json only, not its "
             "weights), all in one folder in models/verifiers")
WEIGHT_NAMES = ("HPSv3.safetensors",)
REWARD_TOKEN = "<|Reward|>"
UNUSED_PREFIXES = ("lm_head.",)  # in the published checkpoint, not used for scoring

# hpsv3 1.0.0, hpsv3/dataset/data_collator_qwen.py
INSTRUCTION = """
You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. 

**Visual Quality:**  
Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:
- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

**Text Alignment:**  
Assess how well the image matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.
- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.
- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.
- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.
Textual prompt - {text_prompt}


"""
PROMPT_WITH_SPECIAL_TOKEN = """
Please provide the overall ratings of this image: <|Reward|>

END
"""
# Qwen2-VL-Instruct's chat template for one user turn (image, then text) with the generation prompt
CHAT_PREFIX = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"

IMAGE_FACTOR = 28
IMAGE_PIXELS = 256 * 28 * 28  # HPSv3RewardInferencer.prepare_batch: min_pixels = max_pixels
MAX_RATIO = 200

VISION_DEFAULTS = {"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "mlp_ratio": 4, "num_heads": 16,
                   "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                   "hidden_act": "quick_gelu"}
TEXT_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = IMAGE_PIXELS,
                 max_pixels: int = IMAGE_PIXELS) -> Tuple[int, int]:
    """hpsv3.dataset.utils.smart_resize: both sides multiples of ``factor``, the area within
    [min_pixels, max_pixels], the aspect ratio kept as closely as possible."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"HPSv3: an image's aspect ratio must be below {MAX_RATIO}, got {width} x {height}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# --------------------------------------------------------------------------- vision tower (Qwen2-VL)
def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class _VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, cos, sin):
        b, n, c = x.shape  # one image per row: attention stays within the image, as Qwen2-VL's cu_seqlens
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # rope in fp32, as apply_rotary_pos_emb_vision
        q = (q.float() * cos + _rotate_half(q.float()) * sin).to(v.dtype)
        k = (k.float() * cos + _rotate_half(k.float()) * sin).to(v.dtype)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _VisionMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _VisionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, act):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _VisionAttention(dim, heads)
        self.mlp = _VisionMlp(dim, int(dim * mlp_ratio), act)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, temporal: int, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=(temporal, patch, patch),
                              stride=(temporal, patch, patch), bias=False)

    def forward(self, patches):  # N x (C * T * P * P): a stride-equals-kernel Conv3d is a linear map
        return F.linear(patches.to(self.proj.weight.dtype), self.proj.weight.reshape(self.proj.weight.shape[0], -1))


class _PatchMerger(nn.Module):
    def __init__(self, out_dim: int, dim: int, merge: int):
        super().__init__()
        self.width = dim * merge * merge
        self.ln_q = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(self.width, self.width), nn.GELU(), nn.Linear(self.width, out_dim))

    def forward(self, x):  # B x N x dim, each run of merge^2 patches is one 2 x 2 block
        return self.mlp(self.ln_q(x).reshape(x.shape[0], -1, self.width))


class QwenVisionTower(nn.Module):
    """Qwen2-VL's vision transformer (``visual.*`` of the published layout)."""

    def __init__(self, cfg: dict):
        super().__init__()
        acts = {"quick_gelu": _quick_gelu, "gelu": F.gelu, "silu": F.silu}
        if cfg["hidden_act"] not in acts:
            raise VerifierFileError(f"config.json: vision hidden_act '{cfg['hidden_act']}' is not supported")
        self.cfg = cfg
        dim, self.heads, self.merge = cfg["embed_dim"], cfg["num_heads"], cfg["spatial_merge_size"]
        self.patch_size, self.temporal = cfg["patch_size"], cfg["temporal_patch_size"]
        self.patch_embed = _PatchEmbed(cfg["in_chans"], self.temporal, self.patch_size, dim)
        self.blocks = nn.ModuleList([_VisionBlock(dim, self.heads, cfg["mlp_ratio"], acts[cfg["hidden_act"]])
                                     for _ in range(cfg["depth"])])
        self.merger = _PatchMerger(cfg["hidden_size"], dim, self.merge)

    def rope(self, gh: int, gw: int, device):
        """cos, sin (1 x 1 x N x head_dim, fp32) of the 2-D rope over the patches in merge order."""
        head_dim = self.cfg["embed_dim"] // self.heads
        d = head_dim // 2
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float, device=device) / d))
        m = self.merge
        hpos = torch.arange(gh, device=device)[:, None].expand(gh, gw)
        wpos = torch.arange(gw, device=device)[None, :].expand(gh, gw)

        def order(p):
            return p.reshape(gh // m, m, gw // m, m).permute(0, 2, 1, 3).flatten()
        freqs = torch.cat([order(hpos).float()[:, None] * inv, order(wpos).float()[:, None] * inv], dim=-1)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]

    def forward(self, patches, gh: int, gw: int):
        """patches: B x N x (C * T * P * P) in merge order -> B x N / merge^2 x hidden."""
        b, n, _ = patches.shape
        x = self.patch_embed(patches.reshape(b * n, -1)).reshape(b, n, -1)
        cos, sin = self.rope(gh, gw, x.device)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return self.merger(x)


# --------------------------------------------------------------------------- language model (Qwen2)
class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)

    def forward(self, x, cos, sin):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if self.kv_heads != self.heads:
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        # causal: every token up to the reward token is real (padding is on the right), so no padding mask
        x = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(x.transpose(1, 2).reshape(b, n, -1))


class _Mlp(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _DecoderLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        h = cfg["hidden_size"]
        self.self_attn = _Attention(h, cfg["num_attention_heads"], cfg["num_key_value_heads"])
        self.mlp = _Mlp(h, cfg["intermediate_size"])
        self.input_layernorm = _RMSNorm(h, cfg["rms_norm_eps"])
        self.post_attention_layernorm = _RMSNorm(h, cfg["rms_norm_eps"])

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class QwenLanguageModel(nn.Module):
    """Qwen2-VL's language model (``model.*`` of the published layout)."""

    def __init__(self, cfg: dict, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(vocab_size, cfg["hidden_size"])
        self.layers = nn.ModuleList([_DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = _RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])

    def rope(self, n: int, device, dtype):
        head_dim = self.cfg["hidden_size"] // self.cfg["num_attention_heads"]
        inv = 1.0 / (self.cfg["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device)
                                                .float() / head_dim))
        freqs = torch.arange(n, device=device).float()[:, None] * inv[None]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype)[None, None], emb.sin().to(dtype)[None, None]

    def forward(self, x):
        cos, sin = self.rope(x.shape[1], x.device, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class HPSv3Model(nn.Module):
    """Same parameter names as hpsv3's ``Qwen2VLRewardModelBT`` (transformers 4.45 layout: visual.*, model.*,
    rm_head.*), less lm_head, which scoring never uses."""

    def __init__(self, text_cfg: dict, vision_cfg: dict, vocab_size: int, output_dim: int = 2):
        super().__init__()
        self.visual = QwenVisionTower(vision_cfg)
        self.model = QwenLanguageModel(text_cfg, vocab_size)
        h = text_cfg["hidden_size"]
        # the package's "ranknet" head without rm_head_kwargs; dropout is the identity at inference
        self.rm_head = nn.Sequential(nn.Linear(h, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16),
                                     nn.ReLU(), nn.Linear(16, output_dim))

    def forward(self, ids, patches, gh: int, gw: int, image_token_id: int, reward_pos):
        """ids: B x L (one image per row, its tokens in order), patches: B x N x patch_dim; returns B x 2
        (mu, sigma) at ``reward_pos`` (B indices)."""
        x = self.model.embed_tokens(ids)
        img = self.visual(patches, gh, gw).to(x.dtype)
        mask = ids == image_token_id
        if int(mask.sum()) != img.shape[0] * img.shape[1]:
            raise RuntimeError(f"HPSv3: {int(mask.sum())} image tokens in the text for {img.shape[0] * img.shape[1]} "
                               "image embeddings")
        x = x.masked_scatter(mask[..., None], img)
        h = self.model(x)
        pooled = h[torch.arange(h.shape[0], device=h.device), reward_pos]
        head = self.rm_head
        return head(pooled.to(head[0].weight.dtype)).float()


# --------------------------------------------------------------------------- loading
def read_config(path: str) -> Tuple[dict, dict]:
    """(text config, vision config) from Qwen2-VL's config.json (the flat layout of Qwen2-VL-7B-Instruct, or a
    nested text_config)."""
    if not os.path.isfile(path):
        raise missing_weights(os.path.basename(path), [os.path.dirname(path)], PUBLISHED)
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise VerifierFileError(f"'{path}' is not valid JSON ({e}); download config.json again from "
                                "https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct") from e
    if not isinstance(cfg, dict) or "vision_config" not in cfg:
        raise VerifierFileError(f"'{path}' is not a Qwen2-VL config (no vision_config). Use config.json of "
                                "https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct")
    text = dict(cfg, **(cfg.get("text_config") or {}))
    missing = [k for k in TEXT_REQUIRED if k not in text]
    if missing:
        raise VerifierFileError(f"'{path}' is not a Qwen2-VL config: it lacks {missing}. Use config.json of "
                                "https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct")
    text.setdefault("num_key_value_heads", text["num_attention_heads"])
    text.setdefault("rms_norm_eps", 1e-6)
    text.setdefault("rope_theta", (text.get("rope_parameters") or {}).get("rope_theta", 1000000.0))
    text.setdefault("image_token_id", 151655)
    vision = dict(VISION_DEFAULTS, **{k: v for k, v in cfg["vision_config"].items() if k in VISION_DEFAULTS})
    if "out_hidden_size" in cfg["vision_config"]:  # Qwen2.5-VL, not the architecture HPSv3 was trained on
        raise VerifierFileError(f"'{path}' is a Qwen2.5-VL config; HPSv3 is built on Qwen2-VL: use config.json "
                                "of https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct")
    if text["hidden_size"] % text["num_attention_heads"] or vision["embed_dim"] % vision["num_heads"]:
        raise VerifierFileError(f"'{path}': a hidden size is not a multiple of its number of heads")
    return text, vision


def load_tokenizer(folder: str):
    """Qwen2-VL's tokenizer (tokenizer.json, read with the tokenizers library) plus ``<|Reward|>``, added as
    the package adds it: after every other token."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        raise missing_weights("tokenizer.json", [folder], "https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct "
                                                          "(tokenizer.json), in the HPSv3 folder")
    from tokenizers import AddedToken, Tokenizer
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises its own exception type
        raise VerifierFileError(f"cannot read the tokenizer '{path}': {e}. Download tokenizer.json again from "
                                "https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct") from e
    for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"):
        if tok.token_to_id(t) is None:
            raise VerifierFileError(f"'{path}' is not Qwen2-VL's tokenizer (it has no {t}). Use tokenizer.json of "
                                    "https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct")
    if tok.token_to_id(REWARD_TOKEN) is None:
        tok.add_special_tokens([AddedToken(REWARD_TOKEN, special=True, normalized=False)])
    return tok


def find_weights(folder: str) -> str:
    for name in WEIGHT_NAMES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    raise missing_weights(WEIGHT_NAMES[0], [folder], PUBLISHED)


def expected_keys(text_cfg: dict, vision_cfg: dict, vocab_size: int) -> Dict[str, torch.Size]:
    """Key -> shape of the model for a config, built on the meta device (no memory)."""
    with torch.device("meta"):
        m = HPSv3Model(text_cfg, vision_cfg, vocab_size)
    return {k: v.shape for k, v in m.state_dict().items()}


def load_hpsv3(folder: str, dtype: Optional[torch.dtype] = None):
    """(model, tokenizer, image_token_id) from a folder laid out as described above; on the CPU, eval, in
    ``dtype`` (default: the checkpoint's, bf16 for the published file); the reward head stays fp32, as the
    package keeps it."""
    if not os.path.isdir(folder):
        raise missing_weights(os.path.basename(folder.rstrip("/")) or folder, [os.path.dirname(folder)], PUBLISHED)
    path = find_weights(folder)
    text_cfg, vision_cfg = read_config(os.path.join(folder, "config.json"))
    tokenizer = load_tokenizer(folder)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    sd = load_state_dict(path, PUBLISHED)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(UNUSED_PREFIXES)}
    with torch.device("meta"):
        model = HPSv3Model(text_cfg, vision_cfg, vocab)
    check_keys(model.state_dict(), sd, path,
               f"HPSv3 (Qwen2-VL per '{os.path.join(folder, 'config.json')}' + reward head, "
               f"{vocab} tokens as tokenizer.json + {REWARD_TOKEN})")
    if dtype is None:
        dtype = sd["model.embed_tokens.weight"].dtype
    sd = {k: v.to(torch.float32 if k.startswith("rm_head.") else dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False), tokenizer, int(text_cfg["image_token_id"])


class HPSv3Verifier(Verifier):
    name = "hpsv3"
    score_range = "unbounded reward (mu of the model's (mu, sigma)); higher is better"

    def __init__(self, model: HPSv3Model, tokenizer, image_token_id: int, batch_size: int = 8):
        super().__init__(batch_size)
        self.model = model
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.reward_id = tokenizer.token_to_id(REWARD_TOKEN)
        self.pad_id = tokenizer.token_to_id("<|endoftext|>") or 0
        self.mean = OPENAI_MEAN
        self.std = OPENAI_STD
        self._ids: "OrderedDict[Tuple[str, int], Tuple[int, ...]]" = OrderedDict()  # (prompt, image tokens) -> ids

    def cast_for_gpu(self, bf16_ok: bool) -> None:
        """ComfyUI's half precision (nodes/verifier_models.shared_part): bfloat16 where the GPU has it (the
        published checkpoint's dtype; a 7B Qwen2's activations can overflow float16), else float16.  The reward
        head stays float32, as the package keeps it."""
        dt = torch.bfloat16 if bf16_ok else torch.float16
        for name, p in self.named_parameters():
            if p.is_floating_point() and not name.startswith("model.rm_head."):
                p.data = p.data.to(dt)

    def text(self, prompt: str, n_image_tokens: int) -> str:
        """The chat the package builds (apply_chat_template, then the processor's image-token expansion)."""
        return (CHAT_PREFIX + "<|vision_start|>" + "<|image_pad|>" * n_image_tokens + "<|vision_end|>"
                + INSTRUCTION.format(text_prompt=prompt) + PROMPT_WITH_SPECIAL_TOKEN + CHAT_SUFFIX)

    def token_ids(self, prompt: str, n_image_tokens: int) -> List[int]:
        """The token ids of one row (cached: a search scores one prompt many times)."""
        key = (prompt, n_image_tokens)
        if key not in self._ids:
            self._ids[key] = tuple(self.tokenizer.encode(self.text(prompt, n_image_tokens)).ids)
            while len(self._ids) > self.TEXT_CACHE_SIZE:
                self._ids.popitem(last=False)
        self._ids.move_to_end(key)
        return list(self._ids[key])

    def patches(self, images: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        """B x H x W x 3 in [0, 1] -> (B x N x C*T*P*P patches in Qwen2-VL's order, grid h, grid w)."""
        vc = self.model.visual.cfg
        p, t, m = vc["patch_size"], vc["temporal_patch_size"], vc["spatial_merge_size"]
        x = images.permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        rh, rw = smart_resize(h, w)
        if (rh, rw) != (h, w):
            x = F.interpolate(x, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        b, c = x.shape[:2]
        gh, gw = rh // p, rw // p
        # Qwen2VLImageProcessor: the image repeated as t frames, then (gh/m, gw/m, m, m) x (c, t, p, p)
        x = x[:, None].expand(b, t, c, rh, rw)
        x = x.reshape(b, t, c, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(b, gh * gw, c * t * p * p).to(self.param_dtype()), gh, gw

    def _score(self, images, prompts):
        patches, gh, gw = self.patches(images)
        m = self.model.visual.cfg["spatial_merge_size"]
        n_img = gh * gw // (m * m)
        rows = [self.token_ids(p, n_img) for p in prompts]
        reward_pos = []
        for r in rows:
            if r.count(self.reward_id) != 1:
                raise ValueError(f"HPSv3: the prompt must not contain {REWARD_TOKEN}")
            reward_pos.append(r.index(self.reward_id))
        # causal attention: tokens after the last reward token change nothing, so they are not run
        length = max(reward_pos) + 1
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            r = r[:length]
            ids[i, :len(r)] = torch.tensor(r)
        dev = self.param_device()
        out = self.model(ids.to(dev), patches, gh, gw, self.image_token_id,
                         torch.tensor(reward_pos, device=dev))
        return out[:, 0]  # mu


__all__ = ["HPSv3Model", "HPSv3Verifier", "load_hpsv3", "expected_keys", "read_config", "load_tokenizer",
           "smart_resize", "PUBLISHED", "REWARD_TOKEN"]
