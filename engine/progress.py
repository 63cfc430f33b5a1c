"""What the user sees while a search runs: one progress bar in NFEs, a preview
grid of the current micro-batch's x0-predictions, and Cancel."""
from __future__ import annotations

import threading
from typing import Optional

import torch

import comfy.model_management as mm
import comfy.utils
import latent_preview

from . import compat


class Stopped(Exception):
    """A device's sampling thread stops because another device's failed or saw Cancel (engine/devices.py)."""


def throw_if_interrupted(stop: Optional[threading.Event] = None) -> None:
    """ComfyUI's Cancel: raises its InterruptProcessingException (never caught by the pack).  ``stop``: set when
    another device's thread failed or took the Cancel (ComfyUI clears its flag when it raises), so every device
    stops within one model call."""
    mm.throw_exception_if_processing_interrupted()
    if stop is not None and stop.is_set():
        raise Stopped("stopped: another device's sampling failed or was cancelled")


class Progress:
    """One ComfyUI progress bar for the whole search, in NFE units, with a
    grid preview of the current micro-batch's x0-predictions."""

    def __init__(self, total: int, model):
        self.bar = comfy.utils.ProgressBar(max(1, int(total)))
        self.value = 0
        self.total = max(1, int(total))
        self._lock = threading.RLock()  # devices sampling in parallel threads advance one bar
        try:
            self.previewer = latent_preview.get_previewer(model.load_device, compat.model_object(model, "latent_format"))
        except Exception:
            self.previewer = None

    def grow_total(self, total: int) -> None:
        self.total = max(self.total, int(total))

    def advance(self, nfe: int) -> None:
        with self._lock:
            self.set(self.value + int(nfe))

    def preview(self, x0: torch.Tensor) -> None:
        self.set(self.value, x0)

    def set(self, value: int, x0: Optional[torch.Tensor] = None) -> None:
        with self._lock:
            self._set(value, x0)

    def _set(self, value: int, x0: Optional[torch.Tensor]) -> None:
        self.value = max(0, min(self.total, int(value)))
        preview = None
        if x0 is not None and self.previewer is not None:
            try:
                preview = self.previewer.decode_latent_to_preview_image("JPEG", latent_grid(x0))
            except Exception:  # a preview must never break a search
                preview = None
        self.bar.update_absolute(self.value, self.total, preview)


def latent_grid(x: torch.Tensor, max_items: int = 16) -> torch.Tensor:
    """B x C x H x W (or B x C x T x H x W) -> 1 x C x (rows*H) x (cols*W): the stock previewer shows
    only item 0, so the micro-batch is tiled into one latent."""
    if x.ndim == 5:  # video: B x C x T x H x W -> its middle frame
        x = x[:, :, x.shape[2] // 2]
    x = x[:max_items]
    b = x.shape[0]
    cols = int(b ** 0.5 + 0.999)
    rows = (b + cols - 1) // cols
    if rows * cols > b:
        x = torch.cat([x, torch.zeros_like(x[:1]).expand(rows * cols - b, *x.shape[1:])])
    c, h, w = x.shape[1:]
    x = x.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(1, c, rows * h, cols * w)
    return x


def byte_progress():
    """A ComfyUI progress bar for a download: ``update(done, total)``."""
    state = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = comfy.utils.ProgressBar(max(1, int(total)))
        state["bar"].update_absolute(int(done), max(1, int(total)))
    return update
