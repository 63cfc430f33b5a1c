"""ImageReward (Xu et al. 2023) with the published checkpoint, in our own torch code.

The reference is ``ImageReward.score`` of the image-reward 1.5 package:

* image: resize the shorter side to 224 (bicubic), centre crop, CLIP normalisation;
* text: BERT-base-uncased tokens (+ the ``[DEC]`` / ``[ENC]`` special tokens BLIP
  adds), padded / truncated to 35;
* BLIP ViT-L/16 image embeddings; BLIP's "med" BERT runs over the text with
  cross-attention to all image tokens; its first ([CLS]) token of the last
  hidden state goes through a 5-layer linear MLP;
* score = (reward - 0.16717362830052426) / 1.0333394966054072.

Scores are standardised over ImageReward's training set: about N(0, 1) on
typical generations, unbounded in principle (most fall in [-2.5, 2.5]).

Folder layout (one folder in models/verifiers, e.g. ``ImageReward/``):
``ImageReward.pt`` (or ``.safetensors``) and ``med_config.json`` from
huggingface.co/THUDM/ImageReward, ``vocab.txt`` from
huggingface.co/google-bert/bert-base-uncased.  An optional
``vision_config.json`` ({"width", "depth", "heads", "patch_size", "image_size"})
overrides the ViT-L/16 vision tower (used by the tests for reduced models).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import Verifier
from .loading import MismatchedWeightsError, VerifierFileError, check_keys, load_state_dict, missing_weights, no_init
from .preprocess import OPENAI_MEAN, OPENAI_STD, normalize, resize_center_crop

MEAN = 0.16717362830052426  # ImageReward.ImageReward.__init__ (image-reward 1.5)
STD = 1.0333394966054072
MAX_TEXT_LENGTH = 35
PUBLISHED = ("https://huggingface.co/THUDM/ImageReward (ImageReward.pt and med_config.json) and "
             "https://huggingface.co/google-bert/bert-base-uncased (vocab.txt), all three in one folder "
             "in models/verifiers")
WEIGHT_NAMES = ("ImageReward.safetensors", "ImageReward.pt")
# BLIP ViT-L/16 as image-reward's create_vit('large', 224) builds it
VIT_L = {"width": 1024, "depth": 24, "heads": 16, "patch_size": 16, "image_size": 224, "mlp_ratio": 4.0}
# in the published checkpoint but not used for scoring
UNUSED_KEYS = ("blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight", "blip.text_proj.bias",
               "blip.text_encoder.embeddings.position_ids")


# --------------------------------------------------------------------------- BLIP ViT (timm layout)
class _ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _ViTMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class BlipVisionTransformer(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, patch_size: int, image_size: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.image_size = image_size
        n = (image_size // patch_size) ** 2
        self.patch_embed = _PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, width))
        self.blocks = nn.ModuleList([_ViTBlock(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed[:, :x.shape[1]].to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# --------------------------------------------------------------------------- BLIP "med" BERT (HF BERT layout)
def _activation(name: str):
    acts = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
            "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
    if name not in acts:
        raise VerifierFileError(f"med_config.json: hidden_act '{name}' is not supported (expected 'gelu')")
    return acts[name]


class _BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def forward(self, x, context, mask):
        b, n, c = x.shape
        h = self.heads

        def split(t):
            return t.reshape(b, t.shape[1], h, c // h).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(b, n, c)


class _BertSelfOutput(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int, eps: float):
        super().__init__()
        self.self = _BertSelfAttention(hidden, heads, kv_width)
        self.output = _BertSelfOutput(hidden, eps)

    def forward(self, x, context, mask):
        return self.output(self.self(x, context, mask), x)


class _BertIntermediate(nn.Module):
    def __init__(self, hidden: int, inner: int, act):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)
        self.act = act

    def forward(self, x):
        return self.act(self.dense(x))


class _BertOutput(nn.Module):
    def __init__(self, inner: int, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _BertLayer(nn.Module):
    def __init__(self, cfg: dict, encoder_width: int, act):
        super().__init__()
        hid, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
        self.attention = _BertAttention(hid, heads, hid, eps)
        self.crossattention = _BertAttention(hid, heads, encoder_width, eps)
        self.intermediate = _BertIntermediate(hid, cfg["intermediate_size"], act)
        self.output = _BertOutput(cfg["intermediate_size"], hid, eps)

    def forward(self, x, self_mask, image_embeds):
        x = self.attention(x, x, self_mask)
        x = self.crossattention(x, image_embeds, None)  # every image token is attended (mask of ones)
        return self.output(self.intermediate(x), x)


class _BertEmbeddings(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"], padding_idx=cfg.get("pad_token_id", 0))
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], cfg["hidden_size"])
        self.LayerNorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos)[None])


class _BertEncoder(nn.Module):
    def __init__(self, cfg: dict, encoder_width: int, act):
        super().__init__()
        self.layer = nn.ModuleList([_BertLayer(cfg, encoder_width, act) for _ in range(cfg["num_hidden_layers"])])


class MedBertModel(nn.Module):
    """BLIP's BertModel (no pooler, no token types) in multimodal mode."""

    def __init__(self, cfg: dict, encoder_width: int):
        super().__init__()
        self.embeddings = _BertEmbeddings(cfg)
        self.encoder = _BertEncoder(cfg, encoder_width, _activation(cfg.get("hidden_act", "gelu")))

    def forward(self, ids, attention_mask, image_embeds):
        x = self.embeddings(ids)
        # BLIP's extended mask: (1 - mask) * -10000 added to the scores of padded keys
        self_mask = ((1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0)
        for layer in self.encoder.layer:
            x = layer(x, self_mask, image_embeds)
        return x


class _Blip(nn.Module):
    def __init__(self, med_cfg: dict, vision_cfg: dict):
        super().__init__()
        self.visual_encoder = BlipVisionTransformer(**vision_cfg)
        self.text_encoder = MedBertModel(med_cfg, vision_cfg["width"])


class _RewardMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # same indices as image-reward's MLP (Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear):
        # no activations; dropout is the identity at inference
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Identity(), nn.Linear(1024, 128), nn.Identity(),
                                    nn.Linear(128, 64), nn.Identity(), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


class ImageRewardModel(nn.Module):
    """Same parameter names as image-reward's ``ImageReward`` module (blip.*, mlp.*)."""

    def __init__(self, med_cfg: dict, vision_cfg: Optional[dict] = None):
        super().__init__()
        vision_cfg = dict(VIT_L, **(vision_cfg or {}))
        self.image_size = vision_cfg["image_size"]
        self.blip = _Blip(med_cfg, vision_cfg)
        self.mlp = _RewardMLP(med_cfg["hidden_size"])

    def forward(self, pixels, ids, attention_mask):
        image_embeds = self.blip.visual_encoder(pixels)
        hidden = self.blip.text_encoder(ids, attention_mask, image_embeds)
        reward = self.mlp(hidden[:, 0, :])  # the [CLS] token
        return ((reward.float() - MEAN) / STD).squeeze(-1)


# --------------------------------------------------------------------------- loading
MED_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "vocab_size")


def read_med_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise missing_weights(os.path.basename(path), [os.path.dirname(path)], PUBLISHED)
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise VerifierFileError(f"'{path}' is not valid JSON ({e}); download med_config.json again "
                                "from https://huggingface.co/THUDM/ImageReward") from e
    missing = [k for k in MED_REQUIRED if k not in cfg]
    if missing:
        raise VerifierFileError(f"'{path}' is not a BLIP med config: it lacks {missing}. Use med_config.json "
                                "from https://huggingface.co/THUDM/ImageReward")
    cfg.setdefault("layer_norm_eps", 1e-12)
    if cfg.get("hidden_size") % cfg.get("num_attention_heads"):
        raise VerifierFileError(f"'{path}': hidden_size is not a multiple of num_attention_heads")
    return cfg


def read_vision_config(folder: str) -> dict:
    path = os.path.join(folder, "vision_config.json")
    if not os.path.isfile(path):
        return dict(VIT_L)
    with open(path) as f:
        cfg = json.load(f)
    unknown = set(cfg) - set(VIT_L)
    if unknown:
        raise VerifierFileError(f"'{path}': unknown keys {sorted(unknown)}; allowed: {sorted(VIT_L)}")
    return dict(VIT_L, **cfg)


def find_weights(folder: str) -> str:
    for name in WEIGHT_NAMES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    raise missing_weights("ImageReward.pt", [folder], PUBLISHED)


def load_tokenizer(folder: str):
    """bert-base-uncased's WordPiece tokenizer from vocab.txt, plus the two special
    tokens BLIP's init_tokenizer adds ([DEC] as bos, [ENC]); nothing is downloaded."""
    vocab = os.path.join(folder, "vocab.txt")
    if not os.path.isfile(vocab):
        raise missing_weights("vocab.txt", [folder], "https://huggingface.co/google-bert/bert-base-uncased (vocab.txt)")
    import inspect
    from transformers import BertTokenizer
    try:
        with open(vocab, encoding="utf-8") as f:
            # as transformers' load_vocab: the id of a token is its line number
            table = {line.rstrip("\n"): i for i, line in enumerate(f)}
        if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers 5: a token -> id map
            tok = BertTokenizer(vocab=table, do_lower_case=True)
        else:  # transformers 4
            tok = BertTokenizer(vocab_file=vocab, do_lower_case=True)
    except Exception as e:
        raise VerifierFileError(f"cannot read the tokenizer vocabulary '{vocab}': {e}. Download vocab.txt again "
                                "from https://huggingface.co/google-bert/bert-base-uncased") from e
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def adapt_state_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k not in UNUSED_KEYS}


def build_model(folder: str) -> ImageRewardModel:
    med = read_med_config(os.path.join(folder, "med_config.json"))
    vision = read_vision_config(folder)
    with no_init():
        return ImageRewardModel(med, vision)


def load_image_reward(folder: str) -> Tuple[ImageRewardModel, object]:
    """The model (fp32, CPU, eval) and tokenizer from a folder laid out as described above."""
    if not os.path.isdir(folder):
        raise missing_weights(os.path.basename(folder.rstrip("/")) or folder, [os.path.dirname(folder)], PUBLISHED)
    path = find_weights(folder)
    model = build_model(folder)
    tokenizer = load_tokenizer(folder)
    sd = adapt_state_dict(load_state_dict(path, PUBLISHED))
    check_keys(model.state_dict(), sd, path, "ImageReward (BLIP ViT-L + med BERT + MLP, per med_config.json)")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    vocab = len(tokenizer)
    if vocab > model.blip.text_encoder.embeddings.word_embeddings.num_embeddings:
        raise MismatchedWeightsError(
            f"the tokenizer in '{folder}' has {vocab} tokens but the model's vocabulary has "
            f"{model.blip.text_encoder.embeddings.word_embeddings.num_embeddings}: use bert-base-uncased's vocab.txt")
    return model.eval().requires_grad_(False), tokenizer


class ImageRewardVerifier(Verifier):
    name = "imagereward"
    score_range = "standardised reward: about N(0, 1), typically [-2.5, 2.5], unbounded"

    def __init__(self, model: ImageRewardModel, tokenizer, batch_size: int = 16):
        super().__init__(batch_size)
        self.model = model
        self.tokenizer = tokenizer

    def tokens(self, prompts: List[str], device) -> Tuple[torch.Tensor, torch.Tensor]:
        t = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TEXT_LENGTH,
                           return_tensors="pt")
        return t["input_ids"].to(device), t["attention_mask"].to(device)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(resize_center_crop(images, self.model.image_size), OPENAI_MEAN, OPENAI_STD)
        return x.to(self.param_dtype())

    def _score(self, images, prompts):
        ids, mask = self.tokens(prompts, images.device)
        return self.model(self.pixels(images), ids, mask)


def expected_keys(med_cfg: dict, vision_cfg: Optional[dict] = None) -> Dict[str, torch.Size]:
    """Key -> shape of the model for a config, built on the meta device (no memory)."""
    with torch.device("meta"):
        m = ImageRewardModel(med_cfg, vision_cfg)
    return {k: v.shape for k, v in m.state_dict().items()}
