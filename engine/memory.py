"""Memory: out-of-memory recognition and recovery, and how many candidates fit."""
from __future__ import annotations

from typing import Optional, Sequence

import comfy.model_management as mm

from . import compat


def is_oom(e: BaseException) -> bool:
    if isinstance(e, compat.InterruptProcessingException):
        return False
    return isinstance(e, compat.oom_exception_types())


def free_memory_after_oom() -> None:
    mm.soft_empty_cache(True)


def memory_per_candidate(model, latent_shape: Sequence[int], cfg_passes: int = 2) -> Optional[int]:
    try:
        return int(model.model.memory_required([cfg_passes] + list(latent_shape[1:])))
    except Exception:
        return None


def free_memory(model) -> Optional[int]:
    dev = model.load_device
    if dev.type == "cpu":
        return None
    return int(mm.get_free_memory(dev))
