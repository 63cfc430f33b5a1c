"""Loaders of the verifiers read from a folder in models/verifiers: ImageReward, PickScore, HPSv3."""
from __future__ import annotations

from typing import Callable

from . import Loader
from .files import folder_choices, folder_key, resolve_folder, subfolder_path
from .. import files
from ..verifier_models import HostVerifier, cached
from ...verifiers import hpsv3, image_reward, pick_score
from ...verifiers.loading import missing_weights


def folder_inputs(markers, default: str, tooltip: str) -> Callable[[], dict]:
    """The one ``folder`` widget: the subfolders holding one of the ``markers`` files."""
    def inputs():
        names, extra = folder_choices(markers, default)
        return {"required": {"folder": (names, dict(extra, tooltip=tooltip))}}
    return inputs


def folder_loader(kind: str, published: str, build: Callable):
    """``validate(folder)`` and ``load(folder)`` of a verifier built by ``build(path, folder)`` from its folder,
    cached by the folder's files."""
    def validate(folder):
        if subfolder_path(folder) is None:
            return str(missing_weights(f"{folder}/ (a folder)", files.verifier_folders(), published))
        return True

    def load(folder):
        path = resolve_folder(folder, published)
        return cached((kind,) + folder_key(path), lambda: build(path, folder))
    return validate, load


def build_image_reward(path, folder):
    model, tokenizer = image_reward.load_image_reward(path)
    return HostVerifier(image_reward.ImageRewardVerifier(model, tokenizer), f"imagereward({folder})")


def build_pick_score(path, folder):
    model, tokenizer, settings = pick_score.load_pick_score(path)
    return HostVerifier(pick_score.PickScoreVerifier(model, tokenizer, settings), f"pickscore({folder})")


def build_hpsv3(path, folder):
    model, tokenizer, image_token_id = hpsv3.load_hpsv3(path)
    return HostVerifier(hpsv3.HPSv3Verifier(model, tokenizer, image_token_id), f"hpsv3({folder})")


def _entry(name, node, title, description, markers, default, tooltip, published, build):
    validate, load = folder_loader(name, published, build)
    return Loader(name, node, title, description, folder_inputs(markers, default, tooltip), load, validate)


LOADERS = [
    _entry("imagereward", "ImageRewardVerifierLoader", "Load ImageReward Verifier",
           "ImageReward verifier (Xu et al. 2023): BLIP image-text model + MLP, trained on human preference "
           "rankings. Score = standardised reward (reward - 0.1672) / 1.0333: about N(0, 1) on typical "
           "generations, usually within [-2.5, 2.5], unbounded; higher is better. Reads a folder in "
           "models/verifiers with ImageReward.pt, med_config.json (THUDM/ImageReward) and vocab.txt "
           "(google-bert/bert-base-uncased).",
           image_reward.WEIGHT_NAMES, "ImageReward",
           "Folder in models/verifiers holding ImageReward.pt and med_config.json (from "
           "huggingface.co/THUDM/ImageReward) and vocab.txt (from google-bert/bert-base-uncased).",
           image_reward.PUBLISHED, build_image_reward),
    _entry("pickscore", "PickScoreVerifierLoader", "Load PickScore Verifier",
           "PickScore verifier (Kirstain et al. 2023): CLIP-H/14 fine-tuned on Pick-a-Pic preferences. "
           "Score = logit_scale.exp() * cos(image, text) = 100 * cosine for the published model, so in "
           "[-100, 100], typically 18-24; higher is better. Reads a folder in models/verifiers with "
           "yuvalkirstain/PickScore_v1 and the processor files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K.",
           pick_score.SINGLE_FILES + pick_score.INDEX_FILES, "PickScore_v1",
           "Folder in models/verifiers with config.json + model.safetensors (or pytorch_model.bin) of "
           "yuvalkirstain/PickScore_v1 and preprocessor_config.json + tokenizer files of "
           "laion/CLIP-ViT-H-14-laion2B-s32B-b79K.",
           pick_score.PUBLISHED, build_pick_score),
    _entry("hpsv3", "HPSv3VerifierLoader", "Load HPSv3 Verifier",
           "HPSv3 verifier (Human Preference Score v3, Ma et al. 2025): Qwen2-VL-7B with a reward head, "
           "trained on human preferences over a wide range of generators. It reads the image and the "
           "prompt in the package's rating instruction; score = mu of its (mu, sigma) at the <|Reward|> "
           "token: unbounded, higher is better. Runs in bf16 (about 16 GB of weights). Reads a folder in "
           "models/verifiers with HPSv3.safetensors (MizzenAI/HPSv3) and config.json + tokenizer.json "
           "(Qwen/Qwen2-VL-7B-Instruct, not its weights).",
           hpsv3.WEIGHT_NAMES, "HPSv3",
           "Folder in models/verifiers holding HPSv3.safetensors (from huggingface.co/MizzenAI/HPSv3) and "
           "config.json + tokenizer.json (from huggingface.co/Qwen/Qwen2-VL-7B-Instruct; its weights are "
           "not needed: the HPSv3 file holds the whole model).",
           hpsv3.PUBLISHED, build_hpsv3),
]
