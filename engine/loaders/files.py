"""The files and folders of models/verifiers as loader widgets see them: the choices, the paths, the download
and the keys a loaded verifier is cached under."""
from __future__ import annotations

import os
from typing import Iterable, List, Optional

from .. import files
from ..progress import byte_progress
from ..verifier_models import shared_part, shared_part_with
from ...verifiers import clip_score, download, vlm
from ...verifiers.loading import missing_weights

DOWNLOAD_TOOLTIP = ("Off (default): never touches the network; a missing file is an error naming where to get it. "
                    "On: a missing file with a known published source is downloaded from the Hugging Face Hub into "
                    "the first verifiers folder (progress on this node), then loaded.")


def open_clip_archs():
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


def folder_choices(markers, default):
    names = model_subfolders(markers)
    return names, ({"default": default} if default in names else {})


def vlm_folders() -> List[str]:
    """Subfolders of the verifier folders that hold a Qwen-VL model (config.json model_type + weights)."""
    names = set()
    for base in files.verifier_folders():
        if not os.path.isdir(base):
            continue
        for entry in os.listdir(base):
            if vlm.is_vlm_folder(os.path.join(base, entry)):
                names.add(entry)
    return sorted(names)


def folder_input(tooltip_extra: str = ""):
    names = vlm_folders()
    default = next((n for n in names if "Qwen2.5-VL-7B" in n), names[0] if names else None)
    return (names, dict({"default": default} if default else {}, tooltip=(
        "Folder in models/verifiers with every file of a Qwen vision-language model repository: "
        "Qwen/Qwen2.5-VL-7B-Instruct or -3B-Instruct, or Qwen/Qwen3-VL-8B/4B/2B-Instruct (config.json, "
        "the model*.safetensors weights and index, preprocessor_config.json, tokenizer and chat-template "
        "files)." + tooltip_extra)))


def vlm_part(path: str):
    """The Qwen-VL model of a folder, shared by every verifier on it."""
    key = ("qwen_vl",) + folder_key(path)
    return key, shared_part(key, lambda: vlm.load_qwen_vl(path))
