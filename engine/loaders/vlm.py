"""Loaders of the verifiers on a local vision-language model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): VQAScore and the
rubric grader.  Both read a model folder in models/verifiers; verifiers on one folder share one model (one
ModelPatcher: loaded, offloaded and cast to bf16/fp16 on the GPU by ComfyUI's model management)."""
from __future__ import annotations

from . import Loader
from .files import folder_input, resolve_folder, subfolder_path, vlm_part
from .. import files
from ..verifier_models import HostVerifier, cached
from ...verifiers import vlm, vlm_rubric, vqascore
from ...verifiers.ensemble import MODES
from ...verifiers.loading import missing_weights

MAX_PIXELS_TOOLTIP = (
    "Largest image size given to the model, in pixels: larger images are scaled down (aspect kept) to at most "
    "this many pixels, on the processor's grid (multiples of 28 px for Qwen2.5-VL, 32 px for Qwen3-VL); smaller "
    "ones keep their native resolution. Each 28x28 (32x32) block is one visual token, so time and memory grow "
    f"with it: the default {vlm.DEFAULT_MAX_PIXELS} (= 512 x 28 x 28, about 630x630) is at most 512 tokens per "
    "image; 1073296 (= 1036 x 1036) keeps a 1024x1024 image at native size (1369 tokens).")
BATCH_TOOLTIP = ("Images per forward pass (rows of one batch). Lower it if scoring runs out of memory; the scores "
                 "do not depend on it.")

COMBINE = list(MODES) + ["mean"]


def validate(folder, **kw):
    if subfolder_path(folder) is None:
        return str(missing_weights(f"{folder}/ (a folder)", files.verifier_folders(), vlm.PUBLISHED))
    return True


def vqascore_inputs():
    return {"required": {
        "folder": folder_input(),
        "question_template": ("STRING", {"default": vqascore.DEFAULT_TEMPLATE, "multiline": False,
                                         "tooltip": "The question asked about each image; {prompt} is replaced "
                                                    "by the prompt. The default is VQAScore's."}),
        "answer": ("STRING", {"default": vqascore.DEFAULT_ANSWER,
                              "tooltip": "The answer whose probability is the score (its first token), "
                                         "'Yes' for VQAScore."}),
        "max_pixels": ("INT", {"default": vlm.DEFAULT_MAX_PIXELS, "min": 3136, "max": 16777216, "step": 1,
                               "tooltip": MAX_PIXELS_TOOLTIP}),
        "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": BATCH_TOOLTIP}),
    }}


def load_vqascore(folder, question_template, answer, max_pixels, batch_size):
    path = resolve_folder(folder, vlm.PUBLISHED)
    try:
        vqascore.fill(question_template, "")
    except ValueError as e:
        raise ValueError(f"VQAScore: {e}") from e
    key, model = vlm_part(path)

    def build():
        v = vqascore.VQAScoreVerifier(model, question_template, answer, int(max_pixels), int(batch_size))
        return HostVerifier(v, f"vqascore({folder})", [key])
    return cached(("vqascore", question_template, answer, int(max_pixels), int(batch_size)) + key, build)


def rubric_inputs():
    req = {
        "folder": folder_input(),
        "combine": (COMBINE, {"default": "mean_rank", "tooltip": (
            "mean_rank: each aspect ranks the candidates, the score is the weighted mean rank (the paper's "
            "rule); zscore: weighted mean of the aspects' standardised scores; mean: weighted mean of the "
            "expected 1..10 scores (absolute, comparable across searches).")}),
    }
    for name, question in vlm_rubric.ASPECTS:
        req[f"weight_{name}"] = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05, "tooltip": (
            f"Weight of the aspect '{name.replace('_', ' ')}' (0: not asked). Its question: "
            + question.replace("{prompt}", "<prompt>"))})
    req["max_pixels"] = ("INT", {"default": vlm.DEFAULT_MAX_PIXELS, "min": 3136, "max": 16777216, "step": 1,
                                 "tooltip": MAX_PIXELS_TOOLTIP})
    req["batch_size"] = ("INT", {"default": 2, "min": 1, "max": 256, "tooltip": (
        "Images per forward pass; each image is one row per asked aspect (5 rows with every aspect). "
        "Lower it if scoring runs out of memory; the scores do not depend on it.")})
    return {"required": req}


def load_rubric(folder, combine, max_pixels, batch_size, **weights):
    if combine not in COMBINE:
        raise ValueError(f"VLM Rubric: combine must be one of {COMBINE}, got '{combine}'")
    path = resolve_folder(folder, vlm.PUBLISHED)
    w = [float(weights.get(f"weight_{name}", 1.0)) for name in vlm_rubric.ASPECT_NAMES]
    key, model = vlm_part(path)

    def build():
        try:
            rubric = vlm_rubric.VLMRubricVerifier(model, w, int(max_pixels), int(batch_size))
        except ValueError as e:
            raise ValueError(f"VLM Rubric: {e}") from e
        if combine == "mean":
            return HostVerifier(rubric, f"vlm_rubric[mean]({folder})", [key])
        members = [HostVerifier(a, f"vlm_rubric:{rubric.aspects[a.index]}({folder})", [key])
                   for a in rubric.members()]
        return rubric.ensemble(combine, members)
    return cached(("vlm_rubric", combine, tuple(w), int(max_pixels), int(batch_size)) + key, build)


LOADERS = [
    Loader("vqascore", "VQAScoreVerifierLoader", "Load VQAScore Verifier (local VLM)",
           ("VQAScore verifier (Lin et al. 2024, as t2v-metrics computes it) on a local Qwen2.5-VL or "
            "Qwen3-VL: score = P(\"Yes\" | image, 'Does this figure show \"{prompt}\"? Please answer yes "
            "or no.'), the softmax probability of the answer's first token at the model's first answer "
            "position, from one batched forward pass (no sampling, no parsing). Range [0, 1]; higher is "
            "better. Reads a model folder in models/verifiers."),
           vqascore_inputs, load_vqascore, validate),
    Loader("vlm_rubric", "VLMRubricVerifierLoader", "Load VLM Rubric Verifier (local VLM)",
           ("VLM rubric grader on a local Qwen2.5-VL or Qwen3-VL: the aspects of Ma et al. 2025 (accuracy "
            "to prompt, originality, visual quality, internal consistency, emotional resonance), each asked "
            "as a question and scored as the expected value of the answers 1..10 from their token "
            "probabilities (one batched forward pass for every aspect; no sampling, no parsing). combine: "
            "mean_rank (the paper's ensemble rule, each aspect a member; range [1, N]) or zscore, relative to "
            "the search's candidates, or mean: the weighted mean of the expected scores, in [1, 10]; higher is "
            "better for every combine. Feeds Verifier Ensemble like any verifier (its aspects become members)."),
           rubric_inputs, load_rubric, validate),
]
