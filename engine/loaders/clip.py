"""Loaders of the verifiers on an open_clip file (CLIPScore, self-consistency, the LAION aesthetic predictor) and
HPS v2; verifiers on one CLIP file share one CLIP model."""
from __future__ import annotations

import os

from . import Loader
from .files import (CLIP_DEFAULT, DOWNLOAD_TOOLTIP, clip_part, file_choices, file_key, open_clip_archs,
                    resolve_weights, validate_file)
from .. import files
from ..verifier_models import HostVerifier, cached, shared_part
from ...verifiers import aesthetic, clip_score, hps, self_consistency
from ...verifiers.loading import missing_weights

DOWNLOAD = {"download_missing": ("BOOLEAN", {"default": False, "tooltip": DOWNLOAD_TOOLTIP})}


def clip_inputs():
    """The arch and weights widgets of every loader built on an open_clip file."""
    archs = open_clip_archs()
    return {
        "arch": (archs, {"default": "ViT-L-14" if "ViT-L-14" in archs else archs[0],
                         "tooltip": "open_clip architecture of the weights file. A JSON model config next to "
                                    "the weights (same name, .json) overrides it for custom architectures."}),
        "weights": (file_choices(CLIP_DEFAULT), {
            "tooltip": "Weights in models/verifiers (safetensors, or a plain state dict): e.g. "
                       "open_clip_model.safetensors from timm/vit_large_patch14_clip_224.openai, saved as "
                       f"{CLIP_DEFAULT}."}),
    }


def clip_published(arch):
    return clip_score.PUBLISHED.get(arch, clip_score.GENERIC_SOURCE)


def validate_clip(weights, download_missing=False):
    return validate_file(weights, clip_published("ViT-L-14"), bool(download_missing))


# --------------------------------------------------------------------------- CLIPScore
def clipscore_inputs():
    return {"required": {
        **clip_inputs(),
        "mode": (["clipscore", "cosine"], {"default": "clipscore",
                                           "tooltip": "clipscore: 2.5 * max(cos, 0), range [0, 2.5]; "
                                                      "cosine: raw cosine similarity, range [-1, 1]."}),
    }, "optional": dict(DOWNLOAD)}


def load_clipscore(arch, weights, mode, download_missing=False):
    path = resolve_weights(weights, clip_published(arch), bool(download_missing))
    key, model, tokenizer = clip_part(arch, path, bool(download_missing))

    def build():
        return HostVerifier(clip_score.CLIPScoreVerifier(model, tokenizer, mode=mode),
                            f"clipscore[{mode}]({arch}, {weights})", [key])
    return cached(("clip", mode) + key, build)


# --------------------------------------------------------------------------- self-consistency
def self_consistency_inputs():
    return {"required": {
        **clip_inputs(),
        "level": ("FLOAT", {"default": 0.4, "min": 0.05, "max": 0.95, "step": 0.05,
                            "tooltip": "Noise level of the preview, on the model's own timeline (1 = pure "
                                       "noise, 0 = clean): the x0-prediction made there is compared with "
                                       "the final image. The paper uses 0.4."}),
    }, "optional": dict(DOWNLOAD)}


def load_self_consistency(arch, weights, level, download_missing=False):
    path = resolve_weights(weights, clip_published(arch), bool(download_missing))
    key, model, _ = clip_part(arch, path, bool(download_missing))

    def build():
        return HostVerifier(self_consistency.SelfConsistencyVerifier(model, level=float(level)),
                            f"self_consistency[{float(level):g}]({arch}, {weights})", [key])
    return cached(("self_consistency", float(level)) + key, build)


# --------------------------------------------------------------------------- LAION aesthetic
def aesthetic_inputs():
    archs = open_clip_archs()
    return {"required": {
        "clip_arch": (archs, {"default": "ViT-L-14" if "ViT-L-14" in archs else archs[0],
                              "tooltip": "The CLIP the predictor was trained on: ViT-L-14 (OpenAI weights)."}),
        "clip_weights": (file_choices(CLIP_DEFAULT), {
            "tooltip": f"CLIP ViT-L/14 OpenAI weights in models/verifiers (e.g. {CLIP_DEFAULT} = "
                       "open_clip_model.safetensors of timm/vit_large_patch14_clip_224.openai)."}),
        "aesthetic_weights": (file_choices(aesthetic.DEFAULT_FILE), {
            "tooltip": f"The predictor head, {aesthetic.DEFAULT_FILE} (a plain state dict, loaded with "
                       "weights_only=True)."}),
    }, "optional": dict(DOWNLOAD)}


def validate_aesthetic(clip_weights, aesthetic_weights, download_missing=False):
    for name, published in ((clip_weights, clip_score.PUBLISHED["ViT-L-14"]),
                            (aesthetic_weights, aesthetic.PUBLISHED)):
        ok = validate_file(name, published, bool(download_missing))
        if ok is not True:
            return ok
    return True


def load_aesthetic(clip_arch, clip_weights, aesthetic_weights, download_missing=False):
    dl = bool(download_missing)
    clip_path = resolve_weights(clip_weights, clip_published(clip_arch), dl)
    mlp_path = resolve_weights(aesthetic_weights, aesthetic.PUBLISHED, dl)
    ckey, model, tokenizer = clip_part(clip_arch, clip_path, dl)
    hkey = ("aesthetic_mlp",) + file_key(mlp_path)
    mlp = shared_part(hkey, lambda: aesthetic.load_aesthetic_mlp(mlp_path))

    def build():
        scorer = clip_score.CLIPScoreVerifier(model, tokenizer, mode="cosine")
        return HostVerifier(aesthetic.AestheticVerifier(scorer, mlp),
                            f"aesthetic({aesthetic_weights}; {clip_arch}, {clip_weights})", [ckey, hkey])
    return cached(("aesthetic",) + ckey + hkey, build)


# --------------------------------------------------------------------------- HPS v2
def hps_inputs():
    names = files.verifier_files()
    default = next((f for f in ("HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt") if f in names), None)
    return {"required": {
        "weights": (names, dict({"default": default} if default else {}, tooltip=(
            "HPS checkpoint in models/verifiers: HPS_v2.1_compressed.pt (v2.1) or HPS_v2_compressed.pt (v2.0) "
            "from huggingface.co/xswu/HPSv2. A JSON open_clip config next to it (same name) overrides the "
            "ViT-H-14 architecture."))),
    }}


def validate_hps(weights):
    if files.verifier_path(weights) is None:
        return str(missing_weights(weights, files.verifier_folders(), hps.PUBLISHED))
    return True


def load_hps(weights):
    path = resolve_weights(weights, hps.PUBLISHED)

    def build():
        model, tokenizer = hps.load_hps(path)
        version = "v2.1" if "2.1" in os.path.basename(path) else "v2"
        return HostVerifier(hps.HPSVerifier(model, tokenizer, version=version), f"hps[{version}]({weights})")
    return cached(("hps",) + file_key(path), build)


LOADERS = [
    Loader("clipscore", "CLIPScoreVerifierLoader", "Load CLIPScore Verifier",
           "CLIPScore verifier: cosine similarity of open_clip image and text embeddings, or CLIPScore "
           "(Hessel et al. 2021) = 2.5 * max(cos, 0). Weights come from models/verifiers.",
           clipscore_inputs, load_clipscore, validate_clip),
    Loader("aesthetic", "AestheticVerifierLoader", "Load LAION Aesthetic Verifier",
           "LAION improved aesthetic predictor: an MLP on the L2-normalised CLIP ViT-L/14 image embedding "
           "(sac+logos+ava1-l14-linearMSE.pth). Scores about 1..10; ignores the prompt. Shares its CLIP "
           "model with a CLIPScore verifier loading the same CLIP file.",
           aesthetic_inputs, load_aesthetic, validate_aesthetic),
    Loader("hps", "HPSVerifierLoader", "Load HPS v2 Verifier",
           "HPS v2 / v2.1 verifier (Human Preference Score, Wu et al. 2023): open_clip ViT-H-14 fine-tuned "
           "on human preferences. Score = cos(image, text) of the normalised embeddings, in [-1, 1], "
           "typically 0.2-0.35; higher is better. Weights: HPS_v2_compressed.pt or HPS_v2.1_compressed.pt "
           "from xswu/HPSv2 in models/verifiers.",
           hps_inputs, load_hps, validate_hps),
    Loader("self_consistency", "SelfConsistencyVerifierLoader", "Load Self-Consistency Verifier",
           "Self-consistency verifier (the self-supervised verifier of Ma et al. 2025): cosine similarity of "
           "the CLIP image embeddings of a candidate's final image and of its x0-prediction at a low noise "
           "level. No prompt, no reward model. Works in Search Loop with random search, zero-order or "
           "evolution and a single-step sampler, alone or in an ensemble; shares its CLIP model with the "
           "other loaders of the same file.",
           self_consistency_inputs, load_self_consistency, validate_clip),
]
