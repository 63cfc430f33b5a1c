"""The fingerprint of a search's inputs: what must be equal on a worker machine for its scores to be this
machine's (the model's weights and patches, the conditioning, the latent, the VAE, the verifier, the sampler
settings, the pack version), one digest per component, and the digest a master sends instead of it."""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Dict, List

import torch

from . import compat
from .sampling import SamplingPlan
from ..search.sharded import PROTOCOL
from ..verifiers.protocol import inner_verifiers, name_of

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pack_version() -> str:
    try:
        text = open(os.path.join(PACK_DIR, "pyproject.toml"), encoding="utf-8").read()
        m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
        return m.group(1) if m else "unknown"
    except OSError:
        return "unknown"


SAMPLE = 256          # values hashed per large weight tensor (evenly spaced), besides its shape and dtype
FULL = 1 << 20        # tensors up to this many values (conditioning, latents) are hashed whole


def _tensor(h, t: torch.Tensor, sample: bool) -> None:
    h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
    try:
        flat = t.detach().reshape(-1)
        if sample and flat.numel() > SAMPLE:
            idx = torch.linspace(0, flat.numel() - 1, SAMPLE).long().to(flat.device)
            flat = flat.index_select(0, idx)
        elif flat.numel() > FULL:
            idx = torch.linspace(0, flat.numel() - 1, FULL).long().to(flat.device)
            flat = flat.index_select(0, idx)
        h.update(flat.float().cpu().contiguous().numpy().tobytes())
    except Exception:  # a quantized or custom tensor type: its shape and dtype only
        h.update(b"?")


def _feed(h, obj: Any, depth: int = 0, sample: bool = False) -> None:
    if depth > 8:
        h.update(b"...")
    elif isinstance(obj, torch.Tensor):
        _tensor(h, obj, sample)
    elif isinstance(obj, torch.nn.Module):
        for name, p in sorted(list(obj.named_parameters()) + list(obj.named_buffers()), key=lambda kv: kv[0]):
            h.update(name.encode())
            _tensor(h, p, True)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(f"K{k}".encode())
            _feed(h, obj[k], depth + 1, sample)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v, depth + 1, sample)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(repr(obj).encode())
    else:  # functions, hooks, control objects: their kind only
        h.update(f"O{type(obj).__module__}.{type(obj).__qualname__}".encode())


def _digest(feed) -> str:
    h = hashlib.blake2b(digest_size=12)
    feed(h)
    return h.hexdigest()


def model_digest(model) -> str:
    """The diffusion model: a sample of every weight (the original weight where a patch was applied in
    place), and the patches (LoRAs) themselves."""
    def feed(h):
        inner = getattr(model, "model", model)
        backup = getattr(model, "backup", {}) or {}
        h.update(type(inner).__name__.encode())
        for name, p in sorted(inner.state_dict(keep_vars=True).items(), key=lambda kv: kv[0]):
            b = backup.get(name)
            if b is not None:
                p = b[0] if isinstance(b, tuple) else b
            h.update(name.encode())
            _tensor(h, p, True)
        _feed(h, getattr(model, "patches", {}), sample=True)
    return _digest(feed)


def _verifier_modules(v, depth: int = 0):
    if depth > 4 or v is None:
        return
    if isinstance(v, torch.nn.Module):
        yield v
        return
    for inner in inner_verifiers(v):
        yield from _verifier_modules(inner, depth + 1)


def fingerprint(plan: SamplingPlan, vae, verifier, prompt: str) -> Dict[str, str]:
    """What must be equal on a worker for its scores to be this machine's: one digest per component."""
    guider = plan.guider
    conds = getattr(guider, "original_conds", None) if guider is not None else [plan.positive, plan.negative]
    sampler = {"mode": plan.mode, "sampler": plan.sampler_label, "function": plan.sampler_function(),
               "sigmas": [float(s) for s in plan.sigmas.tolist()], "cfg": float(plan.cfg),
               "guider": type(guider).__name__ if guider is not None else None,
               "guider_cfg": getattr(guider, "cfg", None), "separable": bool(plan.separable),
               "seeded_noise": bool(compat.SEEDED_DEFAULT_NOISE), "calls": plan.cfg_multiplier()}
    return {
        "pack": f"{pack_version()} (shard protocol {PROTOCOL})",
        "model": model_digest(plan.model),
        "conditioning": _digest(lambda h: _feed(h, conds)),
        "latent": _digest(lambda h: _feed(h, {"template": plan.template, "mask": plan.noise_mask})),
        "vae": _digest(lambda h: _feed(h, getattr(vae, "first_stage_model", None), sample=True)),
        "verifier": _digest(lambda h: (_feed(h, [name_of(verifier), prompt]),
                                       [_feed(h, m) for m in _verifier_modules(verifier)])),
        "sampler": _digest(lambda h: _feed(h, sampler)),
    }


WHAT = {
    "pack": "pack version: install the same version of this pack on both machines",
    "model": "diffusion model (its weights or LoRAs differ: put the same checkpoint files under the same names)",
    "conditioning": "conditioning (the text encoder or the prompts give different tensors)",
    "latent": "latent or mask (for image-to-image, the same input image must be on the worker)",
    "vae": "VAE (put the same VAE file under the same name)",
    "verifier": "verifier (put the same verifier files under the same names)",
    "sampler": "sampler settings (sigmas or sampler behave differently there: use the same ComfyUI version)",
}


def fingerprint_digest(fp: Dict[str, str], token: str) -> str:
    """What the master sends a worker instead of its fingerprint: a digest the worker can check its own
    fingerprint against (to refuse before sampling), but cannot turn back into a fingerprint to echo."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(fp, sort_keys=True).encode())
    h.update(str(token).encode())
    return h.hexdigest()


def differences(mine: Dict[str, str], theirs: Any) -> List[str]:
    if not isinstance(theirs, dict):
        return ["fingerprint (missing)"]
    return [k for k in mine if theirs.get(k) != mine[k]]
