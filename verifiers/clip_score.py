"""CLIPScore with any open_clip architecture and a local weights file.

Two score formulas (README, "Verifiers"):
* ``cosine``: cos(E_img, E_txt), in [-1, 1];
* ``clipscore`` (Hessel et al. 2021): w * max(cos, 0) with w = 2.5, in [0, 2.5].
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Dict, List, Optional

import torch

from .base import Verifier
from .loading import MismatchedWeightsError, VerifierFileError, check_keys, load_state_dict, no_init
from .preprocess import OPENAI_MEAN, OPENAI_STD, normalize, resize_center_crop

PUBLISHED = {
    "ViT-L-14": "https://huggingface.co/timm/vit_large_patch14_clip_224.openai "
                "(open_clip_model.safetensors)",
}
GENERIC_SOURCE = ("the open_clip pretrained tag's Hugging Face repository "
                  "(open_clip.list_pretrained() names them), file open_clip_model.safetensors")


def config_beside(weights_path: str) -> Optional[str]:
    """A custom architecture: an open_clip model config JSON next to the
    weights, with the same stem (my_model.safetensors + my_model.json)."""
    stem = os.path.splitext(weights_path)[0]
    cfg = stem + ".json"
    return cfg if os.path.isfile(cfg) else None


_REGISTRY_LOCK = threading.Lock()


@contextlib.contextmanager
def registered_config(cfg_path: str):
    """The JSON model config at ``cfg_path`` under a name in open_clip's registry while the block runs (open_clip
    builds models and tokenizers by name only), and out of it afterwards: a config of one file never shows up in
    the architecture lists (``open_clip.list_models()``) or in a later build."""
    name = "its_custom__" + os.path.splitext(os.path.basename(cfg_path))[0]
    with open(cfg_path) as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise VerifierFileError(f"'{cfg_path}' is not an open_clip model config (needs vision_cfg and text_cfg)")
    from open_clip import factory
    with _REGISTRY_LOCK:  # open_clip's own registry (add_model_config keys by file stem), a module global
        missing = object()
        before = factory._MODEL_CONFIGS.get(name, missing)
        factory._MODEL_CONFIGS[name] = cfg
        try:
            yield name
        finally:
            if before is missing:
                factory._MODEL_CONFIGS.pop(name, None)
            else:
                factory._MODEL_CONFIGS[name] = before


def hf_names(model_cfg: Dict) -> List[str]:
    """The Hugging Face repositories an open_clip config needs at build time (an HF text tower or tokenizer)."""
    text = model_cfg.get("text_cfg", {}) or {}
    return list(dict.fromkeys(n for n in (text.get("hf_model_name"), text.get("hf_tokenizer_name")) if n))


@contextlib.contextmanager
def hub_offline():
    """Hugging Face Hub offline mode while open_clip builds a model: files come from the local cache or the
    build fails at once, with no DNS lookup or HTTP retry."""
    import huggingface_hub.constants as hc
    saved = hc.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE = saved


def build_open_clip(arch: str, weights_path: Optional[str] = None, allow_download: bool = False):
    """The open_clip model object for ``arch`` (or the JSON config beside the
    weights), uninitialised, on the CPU in fp32; plus its tokenizer.  An
    architecture whose text tower or tokenizer lives on the Hugging Face Hub
    is built offline unless ``allow_download``: from the local Hugging Face
    cache, or refused naming what is missing."""
    cfg = config_beside(weights_path) if weights_path else None
    if cfg is None:
        return _build_open_clip(arch, arch, None, allow_download)
    with registered_config(cfg) as name:
        return _build_open_clip(arch, name, cfg, allow_download)


def _build_open_clip(arch: str, name: str, cfg: Optional[str], allow_download: bool):
    """build_open_clip with the model config registered under ``name``."""
    import open_clip
    if name not in open_clip.list_models() and not cfg:
        raise VerifierFileError(f"open_clip has no architecture '{arch}'; known: {', '.join(open_clip.list_models()[:8])}, ...")
    what = f"the model config '{cfg}'" if cfg else f"open_clip architecture '{arch}'"
    needs = hf_names(open_clip.get_model_config(name) or {})
    offline = hub_offline() if needs and not allow_download else contextlib.nullcontext()
    try:
        with offline:
            tokenizer = open_clip.get_tokenizer(name)  # first: cheap, and it fails fast when files are missing
            with no_init():
                model = open_clip.create_model(name, pretrained=None, device="cpu")
    except Exception as e:
        if not needs:
            raise
        if allow_download:
            raise VerifierFileError(f"{what} needs the Hugging Face files of {', '.join(repr(n) for n in needs)}, "
                                    f"which could not be fetched: {e}") from e
        raise VerifierFileError(
            f"{what} needs the Hugging Face files of {', '.join(repr(n) for n in needs)} (its text tower or "
            "tokenizer), which are not in the local Hugging Face cache, and download_missing is off, so nothing "
            "was fetched. Switch download_missing on, put those files in the Hugging Face cache, or pick an "
            f"architecture with open_clip's built-in CLIP tokenizer (e.g. ViT-L-14). Detail: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return model, tokenizer


def adapt_state_dict(model, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """open_clip's own conversions for older/3rd-party layouts of the same architecture."""
    from open_clip.factory import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed
    sd = convert_state_dict(model, sd)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    if "logit_scale" in sd and model.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in sd:
        sd["logit_bias"] = torch.zeros_like(model.logit_bias)
    sd.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(sd, model)
    resize_text_pos_embed(sd, model)
    return sd


def load_open_clip(arch: str, weights_path: str, allow_download: bool = False):
    """Builds ``arch`` and loads the weights file into it, checking every key."""
    model, tokenizer = build_open_clip(arch, weights_path, allow_download)
    sd = load_state_dict(weights_path, PUBLISHED.get(arch, GENERIC_SOURCE))
    try:
        sd = adapt_state_dict(model, sd)
    except (AssertionError, RuntimeError, KeyError, ValueError) as e:
        # open_clip's resize helpers assert on foreign shapes: report the mismatch itself
        check_keys(model.state_dict(), sd, weights_path, f"open_clip '{arch}'")
        raise MismatchedWeightsError(f"'{weights_path}' does not fit open_clip '{arch}': {e}") from e
    check_keys(model.state_dict(), sd, weights_path, f"open_clip '{arch}'")
    model.load_state_dict(sd, strict=True)
    model.eval().requires_grad_(False)
    return model, tokenizer


class CLIPScoreVerifier(Verifier):
    name = "clipscore"

    def __init__(self, clip_model, tokenizer, mode: str = "clipscore", w: float = 2.5, batch_size: int = 32):
        super().__init__(batch_size)
        if mode not in ("clipscore", "cosine"):
            raise ValueError("mode must be 'clipscore' or 'cosine'")
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.mode = mode
        self.w = w
        self.score_range = "[0, 2.5]" if mode == "clipscore" else "[-1, 1]"
        from open_clip import get_model_preprocess_cfg
        cfg = get_model_preprocess_cfg(clip_model)
        size = cfg.get("size", 224)
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.mean = tuple(cfg.get("mean", OPENAI_MEAN))
        self.std = tuple(cfg.get("std", OPENAI_STD))

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(resize_center_crop(images, self.image_size), self.mean, self.std)
        e = self.clip.encode_image(x.to(self.param_dtype()))
        return torch.nn.functional.normalize(e.float(), dim=-1)

    def text_embeddings(self, prompts: List[str]) -> torch.Tensor:
        def encode(todo: List[str]) -> torch.Tensor:
            tokens = self.tokenizer(todo).to(self.param_device())
            return torch.nn.functional.normalize(self.clip.encode_text(tokens).float(), dim=-1)
        return self.cached_text(prompts, encode)

    def _score(self, images, prompts):
        cos = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1)
        if self.mode == "cosine":
            return cos
        return self.w * cos.clamp(min=0)
