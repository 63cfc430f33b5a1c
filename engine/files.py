"""Files: the verifiers model folder and where outputs are saved."""
from __future__ import annotations

import os
from typing import List, Optional

import folder_paths

VERIFIER_FOLDER = "verifiers"
VERIFIER_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".ckpt"}


def register_verifier_folder() -> None:
    """models/verifiers (created when missing), merged with whatever extra_model_paths.yaml already mapped."""
    default = os.path.join(folder_paths.models_dir, VERIFIER_FOLDER)
    try:
        os.makedirs(default, exist_ok=True)
    except OSError:  # a read-only install: the folder list still names it
        pass
    entry = folder_paths.folder_names_and_paths.get(VERIFIER_FOLDER)
    paths = list(entry[0]) if entry else []
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[VERIFIER_FOLDER] = (paths, set(VERIFIER_EXTENSIONS))


def verifier_files() -> List[str]:
    return sorted(folder_paths.get_filename_list(VERIFIER_FOLDER))


def verifier_folders() -> List[str]:
    return list(folder_paths.get_folder_paths(VERIFIER_FOLDER))


def verifier_path(name: str) -> Optional[str]:
    return folder_paths.get_full_path(VERIFIER_FOLDER, name)


def output_directory() -> str:
    return folder_paths.get_output_directory()


def save_image_path(prefix: str, out_dir: str, width: int, height: int):
    return folder_paths.get_save_image_path(prefix, out_dir, width, height)


def metadata_disabled() -> bool:
    try:
        from comfy.cli_args import args
        return bool(getattr(args, "disable_metadata", False))
    except Exception:
        return False
