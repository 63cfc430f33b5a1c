"""Qwen vision-language models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) as verifier backbones: the folder of
published Hugging Face files, loaded by the pack (safetensors / weights-only), and the one batched
forward pass the VLM verifiers read their answer-token probabilities from (``verifiers/vqascore.py``,
``verifiers/vlm_rubric.py``).

Folder layout (one folder in models/verifiers, e.g. ``Qwen2.5-VL-7B-Instruct/``): the files of
huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct (or -3B-, or Qwen/Qwen3-VL-{2B,4B,8B}-Instruct):
``config.json``, ``model.safetensors`` or the ``model-*.safetensors`` shards with
``model.safetensors.index.json``, ``preprocessor_config.json``, the tokenizer files (``tokenizer.json``,
``tokenizer_config.json``, ``vocab.json``, ``merges.txt``) and the chat template (``chat_template.json``,
``chat_template.jinja`` or inside ``tokenizer_config.json``).  Nothing is downloaded.

Images.  B x H x W x 3 in [0, 1] are resized on the model's device, in torch, to the processor's own
size rule (``smart_resize``: both sides multiples of patch x merge, aspect kept, pixels within
[min_pixels, max_pixels]; ``max_pixels`` is the verifier's setting), bicubic with antialiasing, then
normalised and cut into the processor's patch layout.  An image already of such a size is not
resampled, and then gives the processor's pixel values exactly.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .loading import (VerifierFileError, check_keys, folder_weight_files, load_state_dict, missing_weights,
                      no_init, read_json)

PUBLISHED = ("https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct (or Qwen/Qwen2.5-VL-3B-Instruct, "
             "Qwen/Qwen3-VL-8B-Instruct, Qwen/Qwen3-VL-4B-Instruct, Qwen/Qwen3-VL-2B-Instruct): every file of the "
             "repository (config.json, the model*.safetensors weights and their index, preprocessor_config.json, "
             "tokenizer and chat-template files), as one folder in models/verifiers")

# config.json's model_type -> the transformers class (and the version that brought it)
ARCHS = {
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "4.45"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "4.49"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "4.57"),
}
SINGLE_FILES = ("model.safetensors",)
INDEX_FILES = ("model.safetensors.index.json",)
DEFAULT_MAX_PIXELS = 512 * 28 * 28  # at most 512 visual tokens per image at Qwen2.5-VL's 28-px token


def _read_json(path: str, what: str) -> dict:
    return read_json(path, what, PUBLISHED)


def model_type(folder: str) -> str:
    """config.json's model_type, or '' when the folder has no readable config."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            return str(json.load(f).get("model_type", ""))
    except (OSError, ValueError, UnicodeDecodeError):
        return ""


def is_vlm_folder(folder: str) -> bool:
    return model_type(folder) in ARCHS and any(os.path.isfile(os.path.join(folder, f))
                                               for f in SINGLE_FILES + INDEX_FILES)


def weight_files(folder: str) -> List[str]:
    return folder_weight_files(folder, PUBLISHED, SINGLE_FILES, INDEX_FILES)


def to_model_keys(sd: Dict[str, torch.Tensor], expected: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The published key layout -> the transformers class's: Qwen2(.5)-VL files name the vision tower
    ``visual.*`` and the language model ``model.*``; transformers >= 4.52 nests both under ``model.``
    (``model.visual.*``, ``model.language_model.*``).  Keys already in the class's layout stay."""
    exp = set(expected)
    nested = any(k.startswith("model.language_model.") for k in exp)
    if not nested:
        return dict(sd)
    out = {}
    for k, v in sd.items():
        if k in exp:
            out[k] = v
        elif k.startswith("visual."):
            out["model." + k] = v
        elif k.startswith("model.") and not re.match(r"model\.(language_model|visual)\.", k):
            out["model.language_model." + k[len("model."):]] = v
        else:
            out[k] = v
    return out


def model_class(config_type: str):
    import transformers
    name, version = ARCHS[config_type]
    cls = getattr(transformers, name, None)
    if cls is None:
        raise VerifierFileError(f"this transformers ({transformers.__version__}) has no {name}: {config_type} needs "
                                f"transformers >= {version}. Update ComfyUI's requirements (pip install -U "
                                "transformers), or pick a folder of an older Qwen-VL")
    return cls


def load_config(folder: str):
    from transformers import AutoConfig
    cfg = _read_json(os.path.join(folder, "config.json"), "config.json")
    kind = str(cfg.get("model_type", ""))
    if kind not in ARCHS:
        raise VerifierFileError(f"'{folder}/config.json' is a '{kind or '?'}' model, not one of the Qwen-VL models "
                                f"this verifier runs ({', '.join(sorted(ARCHS))}). Pick a folder with {PUBLISHED}")
    model_class(kind)
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise VerifierFileError(f"cannot read '{folder}/config.json' as a {kind} config ({e}); download it again "
                                f"from {PUBLISHED}") from e


def load_processor(folder: str):
    from transformers import AutoProcessor
    if not any(os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer.json", "vocab.json")):
        raise missing_weights("tokenizer.json", [folder], PUBLISHED)
    _read_json(os.path.join(folder, "preprocessor_config.json"), "preprocessor_config.json")
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise VerifierFileError(f"cannot load the processor (tokenizer, image settings, chat template) from "
                                f"'{folder}': {e}. Copy every non-weight file of {PUBLISHED}") from e
    if not getattr(processor, "chat_template", None) and not getattr(processor.tokenizer, "chat_template", None):
        raise missing_weights("chat_template.json (or chat_template.jinja)", [folder], PUBLISHED)
    return processor


def image_settings(folder: str) -> dict:
    """Patch geometry, normalisation and pixel bounds from preprocessor_config.json."""
    cfg = _read_json(os.path.join(folder, "preprocessor_config.json"), "preprocessor_config.json")
    size = cfg.get("size") or {}
    return {
        "patch_size": int(cfg.get("patch_size", 14)),
        "merge_size": int(cfg.get("merge_size", 2)),
        "temporal_patch_size": int(cfg.get("temporal_patch_size", 2)),
        "mean": tuple(float(x) for x in cfg.get("image_mean", (0.48145466, 0.4578275, 0.40821073))),
        "std": tuple(float(x) for x in cfg.get("image_std", (0.26862954, 0.26130258, 0.27577711))),
        "min_pixels": int(cfg.get("min_pixels") or size.get("shortest_edge") or 56 * 56),
        "max_pixels": int(cfg.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280),
    }


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> Tuple[int, int]:
    """The Qwen-VL processors' size rule (transformers' ``smart_resize``)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"the images' aspect ratio must be below 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class QwenVL(torch.nn.Module):
    """A Qwen-VL model with its processor: the shared part of the VLM verifiers (one per folder)."""

    def __init__(self, model, processor, settings: dict, description: str = "qwen-vl"):
        super().__init__()
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.settings = dict(settings)
        self.description = description
        self.image_token = getattr(processor, "image_token", "<|image_pad|>")
        self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(self.image_token))
        cfg_id = getattr(model.config, "image_token_id", None)
        if cfg_id is not None and int(cfg_id) != self.image_token_id:
            raise VerifierFileError(f"{description}: the tokenizer's {self.image_token} is id {self.image_token_id}, "
                                    f"config.json says {cfg_id}: the tokenizer and weights come from different "
                                    f"models; copy both from one repository of {PUBLISHED}")
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        params = inspect.signature(model.forward).parameters
        self._kw_type_ids = "mm_token_type_ids" in params
        self._keep = "logits_to_keep" if "logits_to_keep" in params else (
            "num_logits_to_keep" if "num_logits_to_keep" in params else None)
        self._prompt_cache: Dict[str, List[int]] = {}

    # --------------------------------------------------------------------- ComfyUI's half precision
    def cast_for_gpu(self, bf16_ok: bool) -> None:
        """Half precision for the GPU: bfloat16 where the device has it (Qwen-VL's own dtype; its activations
        overflow float16), else float16.  Parameters only: buffers (the rotary frequencies) stay float32, as
        transformers' from_pretrained(torch_dtype=...) leaves them."""
        dt = torch.bfloat16 if bf16_ok else torch.float16
        for p in self.parameters():
            if p.is_floating_point():
                p.data = p.data.to(dt)

    def param_device(self) -> torch.device:
        return next(self.parameters()).device

    def param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --------------------------------------------------------------------- inputs
    def answer_token(self, answer: str) -> int:
        """The first token of ``answer``, as t2v-metrics takes it (``tokenizer.encode(answer)[0]``)."""
        ids = self.tokenizer.encode(answer, add_special_tokens=False)
        if not ids:
            raise ValueError(f"the answer {answer!r} has no tokens: give a word such as 'Yes'")
        return int(ids[0])

    def pixel_values(self, images: torch.Tensor, max_pixels: Optional[int] = None):
        """images B x H x W x 3 in [0, 1] -> (pixel values (B*h*w) x D in the model's dtype, grid (B x 3))."""
        s = self.settings
        factor = s["patch_size"] * s["merge_size"]
        h, w = int(images.shape[1]), int(images.shape[2])
        hi = int(max_pixels) if max_pixels else s["max_pixels"]
        rh, rw = smart_resize(h, w, factor, min(s["min_pixels"], hi), hi)
        x = images.to(self.param_device()).permute(0, 3, 1, 2).float()
        if (rh, rw) != (h, w):
            x = F.interpolate(x, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(s["mean"], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(s["std"], device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        b, c = x.shape[:2]
        p, m, t = s["patch_size"], s["merge_size"], s["temporal_patch_size"]
        gh, gw = rh // p, rw // p
        x = x.reshape(b, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1).reshape(b * gh * gw, c * t * p * p)
        grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=x.device)
        return x.to(self.param_dtype()), grid

    def prompt_ids(self, question: str, n_image_tokens: int) -> List[int]:
        """Token ids of the chat turn (the image, then ``question``) and the assistant's answer header."""
        key = f"{n_image_tokens}\x00{question}"
        ids = self._prompt_cache.get(key)
        if ids is None:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if text.count(self.image_token) != 1:
                raise VerifierFileError(f"{self.description}: the chat template gives {text.count(self.image_token)} "
                                        f"{self.image_token} markers for one image; copy the chat template of "
                                        f"{PUBLISHED}")
            text = text.replace(self.image_token, self.image_token * n_image_tokens)
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._prompt_cache) > 256:
                self._prompt_cache.clear()
            self._prompt_cache[key] = ids
        return list(ids)

    @torch.no_grad()
    def last_logits(self, images: torch.Tensor, questions: List[str], max_pixels: Optional[int] = None,
                    continuation: Sequence[int] = (), keep: int = 1) -> torch.Tensor:
        """One batched forward pass over (image i, question i) with ``continuation`` token ids appended to the
        answer; left padding.  Returns the float32 logits of the last ``keep`` positions, B x keep x V:
        position -1-len(continuation) is the answer's first token."""
        if len(questions) != images.shape[0]:
            raise ValueError(f"{len(questions)} questions for {images.shape[0]} images")
        pixels, grid = self.pixel_values(images, max_pixels)
        per_image = int(grid[0].prod()) // self.settings["merge_size"] ** 2
        rows = [self.prompt_ids(q, per_image) + list(continuation) for q in questions]
        n = max(len(r) for r in rows)
        dev = self.param_device()
        ids = torch.full((len(rows), n), int(self.pad_id), dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, n - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, n - len(r):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        kw = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid, use_cache=False)
        if self._kw_type_ids:
            kw["mm_token_type_ids"] = (ids == self.image_token_id).to(torch.int)
        if self._keep:
            kw[self._keep] = keep
        inner = getattr(self.model, "model", None)
        if inner is not None and hasattr(inner, "rope_deltas"):
            inner.rope_deltas = None  # state from an earlier call; recomputed from these inputs
        out = self.model(**kw)
        return out.logits[:, -keep:].float()


def load_qwen_vl(folder: str) -> QwenVL:
    """The Qwen-VL model of a published folder (weights in the file's dtype, CPU, eval) and its processor."""
    if not os.path.isdir(folder):
        raise missing_weights(f"{os.path.basename(folder.rstrip('/')) or folder}/ (a folder)",
                              [os.path.dirname(folder.rstrip("/"))], PUBLISHED)
    config = load_config(folder)
    files = weight_files(folder)
    processor = load_processor(folder)
    settings = image_settings(folder)
    sd: Dict[str, torch.Tensor] = {}
    for p in files:
        sd.update(load_state_dict(p, PUBLISHED))
    floats = [v.dtype for v in sd.values() if v.is_floating_point()]
    dtype = max(set(floats), key=floats.count) if floats else torch.float32
    cls = model_class(config.model_type)
    saved = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with no_init():
            model = cls(config)
    finally:
        torch.set_default_dtype(saved)
    expected = model.state_dict()
    sd = to_model_keys(sd, list(expected))
    tied = bool(getattr(config, "tie_word_embeddings", False) or
                getattr(getattr(config, "text_config", None), "tie_word_embeddings", False))
    ignore = ("lm_head.",) if tied and not any(k.startswith("lm_head.") for k in sd) else ()
    check_keys(expected, sd, files[0] if len(files) == 1 else folder,
               f"transformers {cls.__name__} (per config.json)", ignore=ignore)
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                          strict=False, assign=True)
    if ignore:
        model.tie_weights()
    model = model.eval().requires_grad_(False)
    return QwenVL(model, processor, settings, description=f"{config.model_type}({os.path.basename(folder)})")


__all__ = ["PUBLISHED", "ARCHS", "QwenVL", "load_qwen_vl", "is_vlm_folder", "smart_resize", "to_model_keys",
           "DEFAULT_MAX_PIXELS"]
