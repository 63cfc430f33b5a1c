"""Opt-in download of published verifier weights from the Hugging Face Hub.

Off unless the user switches it on (the loader nodes' ``download_missing``);
with it off nothing in the pack imports huggingface_hub or opens a socket.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Dict, Optional, Sequence, Tuple

from .loading import VerifierFileError, missing_weights

# local file name -> (repository, file in the repository)
KNOWN: Dict[str, Tuple[str, str]] = {
    "ViT-L-14-openai.safetensors": ("timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors"),
    "sac+logos+ava1-l14-linearMSE.pth": ("camenduru/improved-aesthetic-predictor",
                                         "sac+logos+ava1-l14-linearMSE.pth"),
}


class DownloadError(VerifierFileError):
    pass


def source_of(name: str) -> Optional[str]:
    if name in KNOWN:
        repo, fname = KNOWN[name]
        return f"https://huggingface.co/{repo} ({fname})"
    return None


def download(name: str, folder: str, progress: Optional[Callable[[int, int], None]] = None) -> str:
    """Fetches the published file saved locally as ``name`` into ``folder``;
    ``progress(bytes_done, bytes_total)`` is called as it arrives."""
    if name not in KNOWN:
        raise DownloadError(f"no published source is known for '{name}': download it by hand into {folder}")
    repo, fname = KNOWN[name]
    try:
        from huggingface_hub import hf_hub_download
        from tqdm.auto import tqdm as _tqdm
    except ImportError as e:
        raise DownloadError(f"automatic download needs huggingface_hub ({e}); download "
                            f"https://huggingface.co/{repo} ({fname}) by hand into {folder}") from e

    class ReportingTqdm(_tqdm):
        # counts itself: a disabled tqdm (no console) does not track ``n``
        def update(self, n=1):
            self._infscale_done = getattr(self, "_infscale_done", 0) + (n or 0)
            if progress is not None and self.total:
                progress(int(self._infscale_done), int(self.total))
            return super().update(n)

    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, name)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        try:
            got = hf_hub_download(repo_id=repo, filename=fname, local_dir=tmp, tqdm_class=ReportingTqdm)
        except Exception as e:  # network, auth, missing file: all end the same way for the user
            raise DownloadError(f"downloading {fname} from https://huggingface.co/{repo} failed: {e}. "
                                f"Download it by hand into {folder} as '{name}'") from e
        os.replace(got, target)
    return target


def missing_error(name: str, folders: Sequence[str], published: str) -> Exception:
    """The error for a missing file: the file, the folders searched, where it is published."""
    source = source_of(name) if name else None
    err = missing_weights(name or "(none selected)", folders, source or published)
    if source is not None:
        err = type(err)(str(err) + " Or switch download_missing on to fetch it automatically.")
    return err


def resolve(name: str, find: Callable[[str], Optional[str]], folders: Sequence[str], published: str,
            allow_download: bool = False, progress: Optional[Callable[[int, int], None]] = None) -> str:
    """The local path of ``name`` (``find`` searches the model folders).  A
    missing file is downloaded only when ``allow_download`` is on and its
    source is known; otherwise, a clear error and no network access at all."""
    path = find(name) if name else None
    if path and os.path.isfile(path):
        return path
    if allow_download and name and source_of(name) is not None:
        if not folders:
            raise DownloadError("no verifiers folder is registered to download into")
        return download(name, folders[0], progress=progress)
    raise missing_error(name, folders, published)
