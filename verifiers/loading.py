"""Safe, offline loading of verifier weights.

Only safetensors, or ``torch.load(weights_only=True)`` for .pt/.pth/.bin files:
a file that would need full unpickling (arbitrary code) is refused.  Every
failure names the file, what is wrong and what to do."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
from typing import Dict, Iterable, List, Mapping, Sequence

import torch


class VerifierFileError(RuntimeError):
    pass


class MissingWeightsError(VerifierFileError):
    pass


class UnsafeCheckpointError(VerifierFileError):
    pass


class CorruptWeightsError(VerifierFileError):
    pass


class MismatchedWeightsError(VerifierFileError):
    pass


def missing_weights(filename: str, searched: Iterable[str], published: str) -> MissingWeightsError:
    folders = ", ".join(searched) or "(no folder registered)"
    return MissingWeightsError(
        f"verifier weights '{filename}' not found. Searched: {folders}. "
        f"Download it from {published} and put it in one of those folders "
        "(or map the 'verifiers' folder in extra_model_paths.yaml), then press Refresh.")


def read_json(path: str, what: str, published: str) -> dict:
    """A JSON file of a published model folder: a missing one names the folder and the source."""
    if not os.path.isfile(path):
        raise missing_weights(os.path.basename(path), [os.path.dirname(path)], published)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise VerifierFileError(f"'{path}' is not valid JSON ({e}); download {what} again from {published}") from e


def folder_weight_files(folder: str, published: str, singles: Sequence[str] = ("model.safetensors",),
                        indexes: Sequence[str] = ("model.safetensors.index.json",)) -> List[str]:
    """The weight files of a Hugging Face model folder: the first single file there, else the shards a
    ``*.index.json`` names (each must be present)."""
    for name in singles:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return [p]
    for name in indexes:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            shards = sorted(set(read_json(p, name, published).get("weight_map", {}).values()))
            if not shards:
                raise VerifierFileError(f"'{p}' names no weight files; download it again from {published}")
            missing = [sh for sh in shards if not os.path.isfile(os.path.join(folder, sh))]
            if missing:
                raise missing_weights(missing[0], [folder], published)
            return [os.path.join(folder, sh) for sh in shards]
    raise missing_weights(f"{singles[0]} (or {indexes[0]} with its shards)", [folder], published)


def load_state_dict(path: str, published: str = "") -> Dict[str, torch.Tensor]:
    if not path or not os.path.isfile(path):
        raise missing_weights(os.path.basename(path or "?"), [os.path.dirname(path or "")], published or "its publisher")
    where = f"'{path}'"
    if path.endswith(".safetensors"):
        import safetensors.torch
        try:
            sd = safetensors.torch.load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own error type
            raise CorruptWeightsError(
                f"cannot read {where}: {e}. The file is truncated or not a safetensors file; "
                "download it again.") from e
    else:
        with open(path, "rb") as f:
            head = f.read(16)
        # a PyTorch checkpoint is a zip archive (PK..) or, in the legacy format, a pickle (protocol >= 2: 0x80)
        if not head.startswith(b"PK\x03\x04") and not head.startswith(b"\x80"):
            kind = ("a JSON or text file" if head.lstrip()[:1] in (b"{", b"[") or head.isascii()
                    else "not a PyTorch checkpoint")
            raise CorruptWeightsError(
                f"{where} is {kind} (it starts with {head[:8]!r}), not model weights: pick the weights file "
                "(.safetensors, or a .pt/.pth/.bin state dict); a model-config JSON goes next to its weights "
                "with the same name")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"refusing to load {where}: it contains pickled Python objects that only a full "
                "(unsafe) unpickling could load, which can run arbitrary code. Use the .safetensors "
                "version of these weights, or convert the file yourself in a trusted environment "
                f"(load it, save model.state_dict() with safetensors). Detail: {str(e).splitlines()[0]}") from e
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise CorruptWeightsError(
                f"cannot read {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}. "
                "The file is truncated or corrupt; download it again.") from e
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CorruptWeightsError(f"{where} does not hold a state dict of tensors")
    return dict(sd)


def check_keys(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], path: str,
               what: str, ignore: Iterable[str] = ()) -> None:
    """Same keys and shapes, or a MismatchedWeightsError saying which differ."""
    ignore = tuple(ignore)
    exp = {k: tuple(v.shape) for k, v in expected.items() if not k.startswith(ignore)}
    have = {k: tuple(v.shape) for k, v in got.items() if not k.startswith(ignore)}
    missing = sorted(set(exp) - set(have))
    unexpected = sorted(set(have) - set(exp))
    shapes = sorted(k for k in set(exp) & set(have) if exp[k] != have[k])
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: file {have[k]} vs model {exp[k]})")
        raise MismatchedWeightsError(
            f"'{path}' does not match {what}: " + "; ".join(parts) +
            ". Pick the architecture these weights were trained with, or the right file.")


@contextlib.contextmanager
def no_init():
    """Skip torch's random initialisation while building a model whose weights
    are loaded right after (saves seconds on large models)."""
    names = ["normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
             "xavier_normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "orthogonal_"]
    saved = {n: getattr(torch.nn.init, n) for n in names if hasattr(torch.nn.init, n)}
    try:
        for n in saved:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)
