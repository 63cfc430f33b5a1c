"""Verifier loader nodes."""
from __future__ import annotations

import os

from . import compat
from .types import CATEGORY, VERIFIER
from .verifier_host import HostVerifier, cached
from ..verifiers import clip_score
from ..verifiers.loading import missing_weights


def _open_clip_archs():
    try:
        import open_clip
        archs = open_clip.list_models()
    except Exception:
        archs = []
    return archs or ["ViT-L-14"]


def resolve_weights(name: str, published: str) -> str:
    path = compat.verifier_path(name) if name else None
    if not path or not os.path.isfile(path):
        raise missing_weights(name or "(none selected)", compat.verifier_folders(), published)
    return path


def file_key(path: str):
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


class CLIPScoreVerifierLoader:
    DESCRIPTION = ("CLIPScore verifier: cosine similarity of open_clip image and text embeddings, or CLIPScore "
                   "(Hessel et al. 2021) = 2.5 * max(cos, 0). Weights come from models/verifiers.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VERIFIER,)
    RETURN_NAMES = ("verifier",)
    OUTPUT_TOOLTIPS = ("A verifier for SearchLoop / VerifierScore.",)

    @classmethod
    def INPUT_TYPES(cls):
        archs = _open_clip_archs()
        return {"required": {
            "arch": (archs, {"default": "ViT-L-14" if "ViT-L-14" in archs else archs[0],
                             "tooltip": "open_clip architecture of the weights file. A JSON model config next to "
                                        "the weights (same name, .json) overrides it for custom architectures."}),
            "weights": (compat.verifier_files(), {
                "tooltip": "Weights in models/verifiers (safetensors, or a plain state dict): e.g. "
                           "open_clip_model.safetensors from timm/vit_large_patch14_clip_224.openai."}),
            "mode": (["clipscore", "cosine"], {"default": "clipscore",
                                               "tooltip": "clipscore: 2.5 * max(cos, 0), range [0, 2.5]; "
                                                          "cosine: raw cosine similarity, range [-1, 1]."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, weights):
        if compat.verifier_path(weights) is None:
            return str(missing_weights(weights, compat.verifier_folders(),
                                       clip_score.PUBLISHED.get("ViT-L-14", clip_score.GENERIC_SOURCE)))
        return True

    def load(self, arch, weights, mode):
        path = resolve_weights(weights, clip_score.PUBLISHED.get(arch, clip_score.GENERIC_SOURCE))

        def build():
            model, tokenizer = clip_score.load_open_clip(arch, path)
            return HostVerifier(clip_score.CLIPScoreVerifier(model, tokenizer, mode=mode),
                                f"clipscore[{mode}]({arch}, {weights})")
        return (cached(("clip", arch, mode) + file_key(path), build),)
