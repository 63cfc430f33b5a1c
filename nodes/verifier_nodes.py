"""Verifier nodes: the loaders (CLIPScore, LAION aesthetic, ImageReward,
PickScore, HPS v2, HPSv3) and the ensemble."""
from __future__ import annotations

import os
from typing import Iterable, List, Optional

from ..engine import files
from ..engine.progress import byte_progress
from ..engine.types import CATEGORY, VERIFIER
from ..engine.verifier_models import HostVerifier, cached, shared_part, shared_part_with
from ..verifiers import aesthetic, clip_score, download, hps, hpsv3, image_reward, pick_score, self_consistency
from ..verifiers.ensemble import MODES, EnsembleVerifier
from ..verifiers.loading import missing_weights
from ..verifiers.prefilter import PrefilterVerifier

DOWNLOAD_TOOLTIP = ("Off (default): never touches the network; a missing file is an error naming where to get it. "
                    "On: a missing file with a known published source is downloaded from the Hugging Face Hub into "
                    "the first verifiers folder (progress on this node), then loaded.")


def _open_clip_archs():
    try:
        import open_clip
        # a config beside a weights file is registered only while that file is built (verifiers/clip_score.py)
        archs = [a for a in open_clip.list_models() if not a.startswith("its_custom__")]
    except Exception:
        archs = []
    return archs or ["ViT-L-14"]


def file_choices(*suggested: str) -> List[str]:
    """Files in the verifiers folders, plus the published names a download can fetch."""
    have = files.verifier_files()
    return have + [s for s in suggested if s not in have]


def resolve_weights(name: str, published: str, allow_download: bool = False) -> str:
    """The local path of ``name``; downloads it first only when allowed (verifiers/download.py)."""
    return download.resolve(name, files.verifier_path, files.verifier_folders(), published,
                            allow_download=allow_download,
                            progress=byte_progress() if allow_download else None)


def validate_file(name: str, published: str, allow_download: bool):
    if files.verifier_path(name) is None and not (allow_download and download.source_of(name)):
        return str(download.missing_error(name, files.verifier_folders(), published))
    return True


def file_key(path: str):
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def clip_part(arch: str, path: str, allow_download: bool = False):
    """The open_clip model + tokenizer for (arch, file), shared by every verifier using it; the tokenizer lives
    on the model's part (bounded and released with it)."""
    key = ("open_clip", arch) + file_key(path)
    model, tokenizer = shared_part_with(key, lambda: clip_score.load_open_clip(arch, path, allow_download))
    return key, model, tokenizer


CLIP_DEFAULT = "ViT-L-14-openai.safetensors"


class VerifierLoader:
    """What every verifier loader node shares: one VERIFIER output, ``load``."""
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VERIFIER,)
    RETURN_NAMES = ("verifier",)
    OUTPUT_TOOLTIPS = ("A verifier for SearchLoop / VerifierScore / Verifier Ensemble.",)


class CLIPScoreVerifierLoader(VerifierLoader):
    DESCRIPTION = ("CLIPScore verifier: cosine similarity of open_clip image and text embeddings, or CLIPScore "
                   "(Hessel et al. 2021) = 2.5 * max(cos, 0). Weights come from models/verifiers.")

    @staticmethod
    def clip_inputs():
        """The arch and weights widgets of every loader built on an open_clip file."""
        archs = _open_clip_archs()
        return {
            "arch": (archs, {"default": "ViT-L-14" if "ViT-L-14" in archs else archs[0],
                             "tooltip": "open_clip architecture of the weights file. A JSON model config next to "
                                        "the weights (same name, .json) overrides it for custom architectures."}),
            "weights": (file_choices(CLIP_DEFAULT), {
                "tooltip": "Weights in models/verifiers (safetensors, or a plain state dict): e.g. "
                           "open_clip_model.safetensors from timm/vit_large_patch14_clip_224.openai, saved as "
                           f"{CLIP_DEFAULT}."}),
        }

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **cls.clip_inputs(),
            "mode": (["clipscore", "cosine"], {"default": "clipscore",
                                               "tooltip": "clipscore: 2.5 * max(cos, 0), range [0, 2.5]; "
                                                          "cosine: raw cosine similarity, range [-1, 1]."}),
        }, "optional": {
            "download_missing": ("BOOLEAN", {"default": False, "tooltip": DOWNLOAD_TOOLTIP}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, weights, download_missing=False):
        return validate_file(weights, clip_score.PUBLISHED.get("ViT-L-14", clip_score.GENERIC_SOURCE),
                             bool(download_missing))

    def load(self, arch, weights, mode, download_missing=False):
        path = resolve_weights(weights, clip_score.PUBLISHED.get(arch, clip_score.GENERIC_SOURCE),
                               bool(download_missing))
        key, model, tokenizer = clip_part(arch, path, bool(download_missing))

        def build():
            return HostVerifier(clip_score.CLIPScoreVerifier(model, tokenizer, mode=mode),
                                f"clipscore[{mode}]({arch}, {weights})", [key])
        return (cached(("clip", mode) + key, build),)


class SelfConsistencyVerifierLoader(CLIPScoreVerifierLoader):
    DESCRIPTION = ("Self-consistency verifier (the self-supervised verifier of Ma et al. 2025): cosine similarity of "
                   "the CLIP image embeddings of a candidate's final image and of its x0-prediction at a low noise "
                   "level. No prompt, no reward model. Works in Search Loop with random search, zero-order or "
                   "evolution and a single-step sampler, alone or in an ensemble; shares its CLIP model with the "
                   "other loaders of the same file.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **cls.clip_inputs(),
            "level": ("FLOAT", {"default": 0.4, "min": 0.05, "max": 0.95, "step": 0.05,
                                "tooltip": "Noise level of the preview, on the model's own timeline (1 = pure "
                                           "noise, 0 = clean): the x0-prediction made there is compared with "
                                           "the final image. The paper uses 0.4."}),
        }, "optional": {
            "download_missing": ("BOOLEAN", {"default": False, "tooltip": DOWNLOAD_TOOLTIP}),
        }}

    def load(self, arch, weights, level, download_missing=False):
        path = resolve_weights(weights, clip_score.PUBLISHED.get(arch, clip_score.GENERIC_SOURCE),
                               bool(download_missing))
        key, model, _ = clip_part(arch, path, bool(download_missing))

        def build():
            return HostVerifier(self_consistency.SelfConsistencyVerifier(model, level=float(level)),
                                f"self_consistency[{float(level):g}]({arch}, {weights})", [key])
        return (cached(("self_consistency", float(level)) + key, build),)


class AestheticVerifierLoader(VerifierLoader):
    DESCRIPTION = ("LAION improved aesthetic predictor: an MLP on the L2-normalised CLIP ViT-L/14 image embedding "
                   "(sac+logos+ava1-l14-linearMSE.pth). Scores about 1..10; ignores the prompt. Shares its CLIP "
                   "model with a CLIPScore verifier loading the same CLIP file.")

    @classmethod
    def INPUT_TYPES(cls):
        archs = _open_clip_archs()
        return {"required": {
            "clip_arch": (archs, {"default": "ViT-L-14" if "ViT-L-14" in archs else archs[0],
                                  "tooltip": "The CLIP the predictor was trained on: ViT-L-14 (OpenAI weights)."}),
            "clip_weights": (file_choices(CLIP_DEFAULT), {
                "tooltip": f"CLIP ViT-L/14 OpenAI weights in models/verifiers (e.g. {CLIP_DEFAULT} = "
                           "open_clip_model.safetensors of timm/vit_large_patch14_clip_224.openai)."}),
            "aesthetic_weights": (file_choices(aesthetic.DEFAULT_FILE), {
                "tooltip": f"The predictor head, {aesthetic.DEFAULT_FILE} (a plain state dict, loaded with "
                           "weights_only=True)."}),
        }, "optional": {
            "download_missing": ("BOOLEAN", {"default": False, "tooltip": DOWNLOAD_TOOLTIP}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, clip_weights, aesthetic_weights, download_missing=False):
        for name, published in ((clip_weights, clip_score.PUBLISHED["ViT-L-14"]),
                                (aesthetic_weights, aesthetic.PUBLISHED)):
            ok = validate_file(name, published, bool(download_missing))
            if ok is not True:
                return ok
        return True

    def load(self, clip_arch, clip_weights, aesthetic_weights, download_missing=False):
        dl = bool(download_missing)
        clip_path = resolve_weights(clip_weights, clip_score.PUBLISHED.get(clip_arch, clip_score.GENERIC_SOURCE), dl)
        mlp_path = resolve_weights(aesthetic_weights, aesthetic.PUBLISHED, dl)
        ckey, model, tokenizer = clip_part(clip_arch, clip_path, dl)
        hkey = ("aesthetic_mlp",) + file_key(mlp_path)
        mlp = shared_part(hkey, lambda: aesthetic.load_aesthetic_mlp(mlp_path))

        def build():
            scorer = clip_score.CLIPScoreVerifier(model, tokenizer, mode="cosine")
            return HostVerifier(aesthetic.AestheticVerifier(scorer, mlp),
                                f"aesthetic({aesthetic_weights}; {clip_arch}, {clip_weights})", [ckey, hkey])
        return (cached(("aesthetic",) + ckey + hkey, build),)


# --------------------------------------------------------------------------- ImageReward, PickScore, HPS v2
IMAGE_REWARD_MARKERS = image_reward.WEIGHT_NAMES
PICK_SCORE_MARKERS = pick_score.SINGLE_FILES + pick_score.INDEX_FILES


# --------------------------------------------------------------------------- model folders in models/verifiers
def model_subfolders(markers: Iterable[str]) -> List[str]:
    """Subfolders of the verifier folders that hold one of the marker files."""
    names = set()
    for base in files.verifier_folders():
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
    for base in files.verifier_folders():
        p = os.path.join(base, name)
        if os.path.isdir(p):
            return p
    return None


def resolve_folder(name: str, published: str) -> str:
    path = subfolder_path(name)
    if path is None:
        raise missing_weights(f"{name or '(none selected)'}/ (a folder)", files.verifier_folders(), published)
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
            return str(missing_weights(f"{folder}/ (a folder)", files.verifier_folders(), cls.PUBLISHED))
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
        names = files.verifier_files()
        default = next((f for f in ("HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt") if f in names), None)
        return {"required": {
            "weights": (names, dict({"default": default} if default else {}, tooltip=(
                "HPS checkpoint in models/verifiers: HPS_v2.1_compressed.pt (v2.1) or HPS_v2_compressed.pt (v2.0) "
                "from huggingface.co/xswu/HPSv2. A JSON open_clip config next to it (same name) overrides the "
                "ViT-H-14 architecture."))),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, weights):
        if files.verifier_path(weights) is None:
            return str(missing_weights(weights, files.verifier_folders(), hps.PUBLISHED))
        return True

    def load(self, weights):
        path = resolve_weights(weights, hps.PUBLISHED)

        def build():
            model, tokenizer = hps.load_hps(path)
            version = "v2.1" if "2.1" in os.path.basename(path) else "v2"
            return HostVerifier(hps.HPSVerifier(model, tokenizer, version=version), f"hps[{version}]({weights})")
        return (cached(("hps",) + file_key(path), build),)


class HPSv3VerifierLoader(FolderVerifierLoader):
    DESCRIPTION = ("HPSv3 verifier (Human Preference Score v3, Ma et al. 2025): Qwen2-VL-7B with a reward head, "
                   "trained on human preferences over a wide range of generators. It reads the image and the "
                   "prompt in the package's rating instruction; score = mu of its (mu, sigma) at the <|Reward|> "
                   "token: unbounded, higher is better. Runs in bf16 (about 16 GB of weights). Reads a folder in "
                   "models/verifiers with HPSv3.safetensors (MizzenAI/HPSv3) and config.json + tokenizer.json "
                   "(Qwen/Qwen2-VL-7B-Instruct, not its weights).")

    @classmethod
    def INPUT_TYPES(cls):
        names, extra = _folder_choices(hpsv3.WEIGHT_NAMES, "HPSv3")
        return {"required": {
            "folder": (names, dict(extra, tooltip=(
                "Folder in models/verifiers holding HPSv3.safetensors (from huggingface.co/MizzenAI/HPSv3) and "
                "config.json + tokenizer.json (from huggingface.co/Qwen/Qwen2-VL-7B-Instruct; its weights are "
                "not needed: the HPSv3 file holds the whole model)."))),
        }}

    KIND, PUBLISHED = "hpsv3", hpsv3.PUBLISHED

    def build(self, path, folder):
        model, tokenizer, image_token_id = hpsv3.load_hpsv3(path)
        return HostVerifier(hpsv3.HPSv3Verifier(model, tokenizer, image_token_id), f"hpsv3({folder})")


# --------------------------------------------------------------------------- ensemble
MAX_MEMBERS = 6


class VerifierEnsemble:
    DESCRIPTION = ("Combines verifiers. mean_rank (the paper's ensemble): each verifier ranks the candidates, "
                   "ties share the average rank, and the (weighted) mean rank is the score, range [1, N]. "
                   "zscore: weighted mean of each verifier's standardised scores. Both are relative to the "
                   "candidates of one search (SearchLoop recombines over all of them, whatever the micro-batch). "
                   f"For more than {MAX_MEMBERS} verifiers, feed an ensemble into another of the same mode: it is "
                   "flattened, so the result equals one big ensemble.")
    CATEGORY = CATEGORY
    FUNCTION = "combine"
    RETURN_TYPES = (VERIFIER,)
    RETURN_NAMES = ("verifier",)
    OUTPUT_TOOLTIPS = ("An ensemble verifier for SearchLoop / VerifierScore.",)

    @classmethod
    def INPUT_TYPES(cls):
        opt = {}
        for i in range(2, MAX_MEMBERS + 1):
            opt[f"verifier_{i}"] = (VERIFIER, {"tooltip": f"Verifier {i} (optional)."})
            opt[f"weight_{i}"] = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                                            "tooltip": f"Weight of verifier {i}."})
        return {"required": {
            "mode": (list(MODES), {"default": "mean_rank",
                                   "tooltip": "mean_rank: the paper's rule (Ma et al. 2025); zscore: standardised "
                                              "scores, keeps how much better a candidate is, not just its order."}),
            "verifier_1": (VERIFIER, {"tooltip": "Verifier 1."}),
            "weight_1": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                                   "tooltip": "Weight of verifier 1 (weights are normalised to sum to 1)."}),
        }, "optional": opt}

    def combine(self, mode, verifier_1, weight_1, **kw):
        members, weights = [verifier_1], [weight_1]
        for i in range(2, MAX_MEMBERS + 1):
            v: Optional[object] = kw.get(f"verifier_{i}")
            if v is not None:
                members.append(v)
                weights.append(float(kw.get(f"weight_{i}", 1.0)))
        try:
            return (EnsembleVerifier(members, weights, mode),)
        except ValueError as e:
            raise ValueError(f"Verifier Ensemble: {e}") from e


class VerifierPrefilter:
    DESCRIPTION = ("A pre-filter: a cheap screen (the self-consistency verifier, which needs no reward model, or "
                   "any single verifier) scores every candidate, and the main verifier (ImageReward, a VLM grader, "
                   "an ensemble) scores only those whose screen score is among the best 'keep' fraction of the "
                   "candidates screened so far. Candidates the main verifier skips rank below every scored one. "
                   "Saves main-verifier time, never sampling NFEs; the report's settings.prefilter says how many "
                   "were skipped. Decided one candidate at a time in the search's order, so the micro-batch never "
                   "changes the result.")
    CATEGORY = CATEGORY
    FUNCTION = "combine"
    RETURN_TYPES = (VERIFIER,)
    RETURN_NAMES = ("verifier",)
    OUTPUT_TOOLTIPS = ("A verifier for SearchLoop / VerifierScore (relative: recombined over the whole search).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "screen": (VERIFIER, {"tooltip": "The cheap verifier that sees every candidate (a single verifier, "
                                             "not an ensemble): e.g. Load Self-Consistency Verifier."}),
            "verifier": (VERIFIER, {"tooltip": "The main (expensive) verifier: it scores only the candidates the "
                                               "screen lets through, and its scores rank them."}),
            "keep": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 1.0, "step": 0.05,
                               "tooltip": "A candidate goes to the main verifier when its screen score is among "
                                          "the best 'keep' fraction of all candidates screened so far (itself "
                                          "included). 1.0 = the main verifier scores everything."}),
            "warmup": ("INT", {"default": 8, "min": 0, "max": 4096,
                               "tooltip": "The first this many candidates always go to the main verifier, so the "
                                          "fraction has a population to stand on."}),
        }}

    def combine(self, screen, verifier, keep, warmup):
        try:
            return (PrefilterVerifier(screen, verifier, keep, warmup),)
        except ValueError as e:
            raise ValueError(f"Verifier Pre-filter: {e}") from e


NODES = [
    (CLIPScoreVerifierLoader, "CLIPScoreVerifierLoader", "Load CLIPScore Verifier"),
    (AestheticVerifierLoader, "AestheticVerifierLoader", "Load LAION Aesthetic Verifier"),
    (VerifierEnsemble, "VerifierEnsemble", "Verifier Ensemble"),
    (ImageRewardVerifierLoader, "ImageRewardVerifierLoader", "Load ImageReward Verifier"),
    (PickScoreVerifierLoader, "PickScoreVerifierLoader", "Load PickScore Verifier"),
    (HPSVerifierLoader, "HPSVerifierLoader", "Load HPS v2 Verifier"),
    (SelfConsistencyVerifierLoader, "SelfConsistencyVerifierLoader", "Load Self-Consistency Verifier"),
    (VerifierPrefilter, "VerifierPrefilter", "Verifier Pre-filter"),
    (HPSv3VerifierLoader, "HPSv3VerifierLoader", "Load HPSv3 Verifier"),
]
