"""Several devices of one machine: the devices ComfyUI can use, per-device copies of a model, its guider and
VAE, loading them, and releasing them after a search (``engine/devices.py`` plans the lanes over them).
Where ComfyUI has its own multi-GPU helper (newer releases) it is used, behind a feature check."""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, List, Optional

import torch

import comfy.model_management as mm


def torch_devices() -> List[torch.device]:
    """The devices ComfyUI can run a model on: its own list where it has one (newer ComfyUI), else every visible
    GPU of the type ComfyUI uses (0.3.64), else its one device."""
    every = getattr(mm, "get_all_torch_devices", None)
    if every is not None:
        try:
            return list(every(exclude_current=False))
        except TypeError:
            return list(every())
    main = mm.get_torch_device()
    if main.type == "cuda" and torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    xpu = getattr(torch, "xpu", None)
    if main.type == "xpu" and xpu is not None and xpu.is_available():
        return [torch.device("xpu", i) for i in range(xpu.device_count())]
    return [main]


def unload_model(model) -> None:
    """Takes ``model``'s weights out of ComfyUI's loaded models (their patches undone), so that a deep copy of them
    is the unpatched checkpoint the patcher's own patches apply to."""
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if getattr(loaded.model, "model", None) is model.model:
            mm.current_loaded_models.pop(i).model_unload()


def device_clone(model, device: torch.device):
    """A ModelPatcher with its own copy of ``model``'s weights, loaded on ``device``: ComfyUI's multi-GPU deep clone
    where it has one (``ModelPatcher.deepclone_multigpu``), else a clone with a deep-copied BaseModel (0.3.64, whose
    ``clone`` shares the weights and the patch backup)."""
    device = torch.device(device)
    if hasattr(model, "deepclone_multigpu"):
        return model.deepclone_multigpu(new_load_device=device)
    import copy
    unload_model(model)  # the copy must hold unpatched weights: the clone applies the same patches itself
    n = model.clone()
    n.model = copy.deepcopy(model.model)
    n.backup = {}
    n.object_patches_backup = {}
    if hasattr(n, "hook_backup"):
        n.hook_backup = {}
    if hasattr(n, "parent"):
        n.parent = None
    n.load_device = device
    return n


def forget_models(objects) -> None:
    """Takes ModelPatchers (or VAEs: their patchers) out of ComfyUI's loaded models without moving their weights
    anywhere: copies a search made for its devices and is done with, whose memory goes with their last
    reference."""
    ids = set()
    for o in objects:
        ids.add(id(o))
        if getattr(o, "patcher", None) is not None:  # a VAE
            ids.add(id(o.patcher))
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        if id(mm.current_loaded_models[i].model) in ids:
            loaded = mm.current_loaded_models.pop(i)
            finalizer = getattr(loaded, "model_finalizer", None)  # current ComfyUI: a callback for when it dies
            if finalizer is not None:
                finalizer.detach()


def empty_cache() -> None:
    """Hands the device memory freed back (ComfyUI's ``soft_empty_cache``)."""
    mm.soft_empty_cache()


def device_guider(guider, model):
    """A copy of a GUIDER that samples with ``model`` (a device clone of its own): a guider keeps per-run state
    (``inner_model``, ``conds``) on itself, so each device needs its own."""
    import copy
    g = copy.copy(guider)
    g.model_patcher = model
    if hasattr(g, "model_options"):
        g.model_options = model.model_options
    if isinstance(getattr(g, "original_conds", None), dict):
        g.original_conds = dict(g.original_conds)
    return g


_LOAD_LOCK = threading.RLock()
_LOAD_DEPTH = [0]
_LOAD_ORIGINAL = [None]


@contextlib.contextmanager
def serialized_model_loading() -> Iterator[None]:
    """While active, ComfyUI's ``load_models_gpu`` (called by every sampling run, from any thread) holds one lock:
    its list of loaded models is global state, not thread-safe."""
    with _LOAD_LOCK:
        if _LOAD_DEPTH[0] == 0:
            original = mm.load_models_gpu
            _LOAD_ORIGINAL[0] = original

            def load_models_gpu(*args, **kwargs):
                with _LOAD_LOCK:
                    return original(*args, **kwargs)
            mm.load_models_gpu = load_models_gpu
        _LOAD_DEPTH[0] += 1
    try:
        yield
    finally:
        with _LOAD_LOCK:
            _LOAD_DEPTH[0] -= 1
            if _LOAD_DEPTH[0] == 0:
                mm.load_models_gpu = _LOAD_ORIGINAL[0]
                _LOAD_ORIGINAL[0] = None


def load_on_device(model, memory_required: int = 0) -> None:
    """Loads a model clone on its device now (before the sampling threads start)."""
    mm.load_models_gpu([model], memory_required=int(memory_required))


def total_memory(device: torch.device) -> Optional[int]:
    device = torch.device(device)
    if device.type == "cpu":
        return None
    try:
        return int(mm.get_total_memory(device))
    except Exception:
        return None


def model_size(model) -> int:
    """The bytes of a ModelPatcher's weights."""
    return int(model.model_size())


def device_vae(vae, device: torch.device):
    """A copy of a VAE with its own weights, decoding on ``device`` (its own ModelPatcher there), or None for a
    VAE object without the usual ``first_stage_model`` / ``patcher`` (then it decodes where it is)."""
    import copy
    model, patcher = getattr(vae, "first_stage_model", None), getattr(vae, "patcher", None)
    if model is None or patcher is None or getattr(patcher, "model", None) is not model:
        return None
    offload = patcher.offload_device
    v = copy.copy(vae)
    v.first_stage_model = copy.deepcopy(model).to(offload)
    v.device = torch.device(device)
    v.patcher = patcher.__class__(v.first_stage_model, load_device=v.device, offload_device=offload)
    return v
