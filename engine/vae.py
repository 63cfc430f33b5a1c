"""The VAE side of a search: decoding candidates (images, or a video's frames), the LTX-Video view that leaves
the guide frames out of what is scored, and the LATENT outputs."""
from __future__ import annotations

from typing import Any, Dict

import torch


class GuideCroppedVAE:
    """The VAE, decoding a video latent without the guide frames at its end: what LTXV Crop Guides before VAE
    Decode gives in ComfyUI's LTX-Video templates, so the verifier scores (and ``image`` shows) the video
    alone.  Everything else is the VAE's own."""

    def __init__(self, vae, frames: int):
        self._vae, self._frames = vae, int(frames)

    def _crop(self, samples: torch.Tensor) -> torch.Tensor:
        return samples[:, :, :samples.shape[2] - self._frames] if samples.ndim == 5 else samples

    def decode(self, samples, *args, **kwargs):
        return self._vae.decode(self._crop(samples), *args, **kwargs)

    def decode_tiled(self, samples, *args, **kwargs):
        return self._vae.decode_tiled(self._crop(samples), *args, **kwargs)

    @property
    def upscale_ratio(self):
        """The VAE's, its temporal part (latent frames -> frames) counting the video's latent frames only."""
        ratio = self._vae.upscale_ratio
        if isinstance(ratio, (tuple, list)) and callable(ratio[0]):
            frames_of, n = ratio[0], self._frames
            return (lambda t: frames_of(t - n),) + tuple(ratio[1:])
        return ratio

    def __getattr__(self, name):
        return getattr(self._vae, name)


def scoring_vae(plan, vae):
    """The VAE the search decodes candidates with: the guide-cropping view when LTXV Add Guide appended
    frames (the ``latent`` output keeps them, for LTXV Crop Guides after it, as after a KSampler)."""
    return GuideCroppedVAE(vae, plan.guide_frames) if plan.video and plan.guide_frames else vae


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """B x H x W x 3 images of image latents; B x T x H x W x 3 frames of video latents (5-D)."""
    images = vae.decode(latents)
    if latents.ndim == 5:  # a video VAE: B x T x H x W x 3 (a 4-D answer is one video's frames)
        return images.reshape(latents.shape[0], -1, *images.shape[-3:])
    if images.ndim == 5:  # some hosts return B x T x H x W x C for image VAEs too
        images = images.reshape(-1, *images.shape[-3:])
    return images


def output_latent(template_latent: Dict[str, Any], samples: torch.Tensor) -> Dict[str, Any]:
    out = {k: v for k, v in template_latent.items() if k not in ("samples", "batch_index")}
    out["samples"] = samples
    return out
