"""PickScore (Kirstain et al. 2023): a CLIP-H/14 fine-tuned on Pick-a-Pic preferences.

Score, as in the PickScore README: ``logit_scale.exp() * cos(E_img, E_txt)`` with
transformers' CLIPModel image/text features; in [-s, s] for s = exp(logit_scale)
(s = 100 for the published model; typical scores are about 18-24).

Folder layout (one folder in models/verifiers, e.g. ``PickScore_v1/``): the files
of huggingface.co/yuvalkirstain/PickScore_v1 (``config.json`` and
``model.safetensors`` or ``pytorch_model.bin``, or their sharded form with the
``*.index.json``), plus the processor files of
huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (``preprocessor_config.json``,
``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json``, ``merges.txt``,
``special_tokens_map.json``) in the same folder.  Nothing is downloaded.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import torch

from .base import Verifier
from .loading import VerifierFileError, check_keys, folder_weight_files, load_state_dict, missing_weights, no_init
from .loading import read_json as _read_json
from .preprocess import OPENAI_MEAN, OPENAI_STD, normalize, resize_center_crop

PUBLISHED = ("https://huggingface.co/yuvalkirstain/PickScore_v1 (config.json + model weights) with the processor "
             "files of https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (preprocessor_config.json, "
             "tokenizer files) in the same folder in models/verifiers")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weight_files(folder: str) -> List[str]:
    return folder_weight_files(folder, PUBLISHED, SINGLE_FILES, INDEX_FILES)


def read_json(path: str, what: str) -> dict:
    return _read_json(path, what, PUBLISHED)


def image_settings(folder: str) -> Tuple[int, Tuple[float, ...], Tuple[float, ...]]:
    """Crop size, mean and std from preprocessor_config.json (CLIPImageProcessor's keys)."""
    cfg = read_json(os.path.join(folder, "preprocessor_config.json"), "preprocessor_config.json")
    crop = cfg.get("crop_size", cfg.get("size", 224))
    if isinstance(crop, dict):
        crop = crop.get("height", crop.get("shortest_edge", 224))
    size = cfg.get("size", crop)
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height", crop))
    if int(size) != int(crop):
        raise VerifierFileError(f"'{folder}/preprocessor_config.json': resize {size} != crop {crop} is not supported "
                                "(CLIP processors resize the shorter side to the crop size)")
    return int(crop), tuple(cfg.get("image_mean", OPENAI_MEAN)), tuple(cfg.get("image_std", OPENAI_STD))


def load_tokenizer(folder: str):
    from transformers import AutoTokenizer
    if not any(os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer.json", "vocab.json")):
        raise missing_weights("tokenizer.json", [folder], "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K "
                              "(tokenizer.json, tokenizer_config.json, vocab.json, merges.txt, special_tokens_map.json)")
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise VerifierFileError(f"cannot load the CLIP tokenizer from '{folder}': {e}. Copy the tokenizer files of "
                                "laion/CLIP-ViT-H-14-laion2B-s32B-b79K into that folder") from e


def load_pick_score(folder: str):
    """transformers CLIPModel (fp32, CPU, eval), its tokenizer and the image settings."""
    from transformers import CLIPConfig, CLIPModel
    if not os.path.isdir(folder):
        raise missing_weights(os.path.basename(folder.rstrip("/")) or folder, [os.path.dirname(folder)], PUBLISHED)
    files = weight_files(folder)
    read_json(os.path.join(folder, "config.json"), "config.json")
    try:
        config = CLIPConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise VerifierFileError(f"'{folder}/config.json' is not a CLIP config ({e}); download it again "
                                "from https://huggingface.co/yuvalkirstain/PickScore_v1") from e
    settings = image_settings(folder)
    tokenizer = load_tokenizer(folder)
    with no_init():
        model = CLIPModel(config)
    sd: Dict[str, torch.Tensor] = {}
    for p in files:
        sd.update(load_state_dict(p, PUBLISHED))
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}  # buffers in older files
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    check_keys(expected, sd, files[0] if len(files) == 1 else folder, "transformers CLIPModel (per config.json)")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=False)
    return model.eval().requires_grad_(False), tokenizer, settings


class PickScoreVerifier(Verifier):
    name = "pickscore"

    def __init__(self, clip_model, tokenizer, image_settings: Tuple[int, tuple, tuple], batch_size: int = 16):
        super().__init__(batch_size)
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.image_size, self.mean, self.std = image_settings
        self.score_range = f"[-{self.scale():.4g}, {self.scale():.4g}] (logit_scale.exp() * cosine)"

    def scale(self) -> float:
        return float(self.clip.logit_scale.detach().float().exp())

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(resize_center_crop(images, self.image_size), self.mean, self.std).to(self.param_dtype())
        pooled = self.clip.vision_model(pixel_values=x).pooler_output
        return torch.nn.functional.normalize(self.clip.visual_projection(pooled).float(), dim=-1)

    def text_embeddings(self, prompts: List[str]) -> torch.Tensor:
        def encode(todo: List[str]) -> torch.Tensor:
            dev, out = self.param_device(), []
            for p in todo:  # one at a time, as PickScore's README tokenises its prompt (padding=True)
                t = self.tokenizer([p], padding=True, truncation=True, max_length=77, return_tensors="pt")
                pooled = self.clip.text_model(input_ids=t["input_ids"].to(dev),
                                              attention_mask=t["attention_mask"].to(dev)).pooler_output
                out.append(torch.nn.functional.normalize(self.clip.text_projection(pooled).float(), dim=-1)[0])
            return torch.stack(out)
        return self.cached_text(prompts, encode)

    def _score(self, images, prompts):
        cos = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1)
        return self.clip.logit_scale.float().exp() * cos
