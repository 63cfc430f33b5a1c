"""What a finished prompt left on the test server: its report (a ScoresToJSON node's text), and the images,
latents and video frames it saved."""
from __future__ import annotations

import json

import numpy as np
import safetensors.torch
import torch
from PIL import Image


def report_of(entry, node="8") -> dict:
    return json.loads(entry["outputs"][node]["text"][0])


def image_of(comfy, entry, node="7", i=0) -> np.ndarray:
    return np.asarray(Image.open(comfy.output_file(entry["outputs"][node]["images"][i])))


def latent_file(comfy, entry, node="9") -> torch.Tensor:
    item = entry["outputs"][node]["latents"][0]
    return safetensors.torch.load_file(comfy.output_file(item))["latent_tensor"]


def frames_of(comfy, entry, node) -> np.ndarray:
    return np.stack([np.asarray(Image.open(comfy.output_file(it))) for it in entry["outputs"][node]["images"]])
