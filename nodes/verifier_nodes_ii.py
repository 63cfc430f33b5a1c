"""Loader nodes for ImageReward, PickScore and HPS v2 / v2.1."""
from __future__ import annotations

import os
from typing import Iterable, List, Optional

from . import compat
from .verifier_host import HostVerifier, cached
from .verifier_nodes import VerifierLoader, file_key, resolve_weights
from ..verifiers import hps, image_reward, pick_score
from ..verifiers.loading import missing_weights

IMAGE_REWARD_MARKERS = image_reward.WEIGHT_NAMES
PICK_SCORE_MARKERS = pick_score.SINGLE_FILES + pick_score.INDEX_FILES


# --------------------------------------------------------------------------- model folders in models/verifiers
def model_subfolders(markers: Iterable[str]) -> List[str]:
    """Subfolders of the verifier folders that hold one of the marker files."""
    names = set()
    for base in compat.verifier_folders():
        if not os.path.isdir(base):
            continue
        for entry in os.listdir(base):
            p = os.path.join(base, entry)
            if os.path.isdir(p) and any(os.path.isfile(os.path.join(p, m)) for m in markers):
                names.add(entry)
    return sorted(names)


def subfolder_path(name: str) -> Optional[str]:
    if not name or os.path.basename(name) != name or name in (".", ".."):
        return None
    for base in compat.verifier_folders():
        p = os.path.join(base, name)
        if os.path.isdir(p):
            return p
    return None


def resolve_folder(name: str, published: str) -> str:
    path = subfolder_path(name)
    if path is None:
        raise missing_weights(f"{name or '(none selected)'}/ (a folder)", compat.verifier_folders(), published)
    return path


def folder_key(folder: str):
    """Changes when any file in the folder changes (weights, configs, tokenizer)."""
    files = sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))
    return (os.path.realpath(folder),) + tuple(file_key(os.path.join(folder, f)) for f in files)


def _folder_choices(markers, default):
    names = model_subfolders(markers)
    return names, ({"default": default} if default in names else {})


# --------------------------------------------------------------------------- nodes
class FolderVerifierLoader(VerifierLoader):
    """A verifier read from a folder in models/verifiers: subclasses set KIND and
    PUBLISHED and build the HostVerifier from the folder's path in ``build``."""
    KIND = ""
    PUBLISHED = ""

    @classmethod
    def VALIDATE_INPUTS(cls, folder):
        if subfolder_path(folder) is None:
            return str(missing_weights(f"{folder}/ (a folder)", compat.verifier_folders(), cls.PUBLISHED))
        return True

    def load(self, folder):
        path = resolve_folder(folder, self.PUBLISHED)
        return (cached((self.KIND,) + folder_key(path), lambda: self.build(path, folder)),)


class ImageRewardVerifierLoader(FolderVerifierLoader):
    DESCRIPTION = ("ImageReward verifier (Xu et al. 2023): BLIP image-text model + MLP, trained on human preference "
                   "rankings. Score = standardised reward (reward - 0.1672) / 1.0333: about N(0, 1) on typical "
                   "generations, usually within [-2.5, 2.5], unbounded; higher is better. Reads a folder in "
                   "models/verifiers with ImageReward.pt, med_config.json (THUDM/ImageReward) and vocab.txt "
                   "(google-bert/bert-base-uncased).")

    @classmethod
    def INPUT_TYPES(cls):
        names, extra = _folder_choices(IMAGE_REWARD_MARKERS, "ImageReward")
        return {"required": {
            "folder": (names, dict(extra, tooltip=(
                "Folder in models/verifiers holding ImageReward.pt and med_config.json (from "
                "huggingface.co/THUDM/ImageReward) and vocab.txt (from google-bert/bert-base-uncased)."))),
        }}

    KIND, PUBLISHED = "imagereward", image_reward.PUBLISHED

    def build(self, path, folder):
        model, tokenizer = image_reward.load_image_reward(path)
        return HostVerifier(image_reward.ImageRewardVerifier(model, tokenizer), f"imagereward({folder})")


class PickScoreVerifierLoader(FolderVerifierLoader):
    DESCRIPTION = ("PickScore verifier (Kirstain et al. 2023): CLIP-H/14 fine-tuned on Pick-a-Pic preferences. "
                   "Score = logit_scale.exp() * cos(image, text) = 100 * cosine for the published model, so in "
                   "[-100, 100], typically 18-24; higher is better. Reads a folder in models/verifiers with "
                   "yuvalkirstain/PickScore_v1 and the processor files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K.")

    @classmethod
    def INPUT_TYPES(cls):
        names, extra = _folder_choices(PICK_SCORE_MARKERS, "PickScore_v1")
        return {"required": {
            "folder": (names, dict(extra, tooltip=(
                "Folder in models/verifiers with config.json + model.safetensors (or pytorch_model.bin) of "
                "yuvalkirstain/PickScore_v1 and preprocessor_config.json + tokenizer files of "
                "laion/CLIP-ViT-H-14-laion2B-s32B-b79K."))),
        }}

    KIND, PUBLISHED = "pickscore", pick_score.PUBLISHED

    def build(self, path, folder):
        model, tokenizer, settings = pick_score.load_pick_score(path)
        return HostVerifier(pick_score.PickScoreVerifier(model, tokenizer, settings), f"pickscore({folder})")


class HPSVerifierLoader(VerifierLoader):
    DESCRIPTION = ("HPS v2 / v2.1 verifier (Human Preference Score, Wu et al. 2023): open_clip ViT-H-14 fine-tuned "
                   "on human preferences. Score = cos(image, text) of the normalised embeddings, in [-1, 1], "
                   "typically 0.2-0.35; higher is better. Weights: HPS_v2_compressed.pt or HPS_v2.1_compressed.pt "
                   "from xswu/HPSv2 in models/verifiers.")

    @classmethod
    def INPUT_TYPES(cls):
        files = compat.verifier_files()
        default = next((f for f in ("HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt") if f in files), None)
        return {"required": {
            "weights": (files, dict({"default": default} if default else {}, tooltip=(
                "HPS checkpoint in models/verifiers: HPS_v2.1_compressed.pt (v2.1) or HPS_v2_compressed.pt (v2.0) "
                "from huggingface.co/xswu/HPSv2. A JSON open_clip config next to it (same name) overrides the "
                "ViT-H-14 architecture."))),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, weights):
        if compat.verifier_path(weights) is None:
            return str(missing_weights(weights, compat.verifier_folders(), hps.PUBLISHED))
        return True

    def load(self, weights):
        path = resolve_weights(weights, hps.PUBLISHED)

        def build():
            model, tokenizer = hps.load_hps(path)
            version = "v2.1" if "2.1" in os.path.basename(path) else "v2"
            return HostVerifier(hps.HPSVerifier(model, tokenizer, version=version), f"hps[{version}]({weights})")
        return (cached(("hps",) + file_key(path), build),)
