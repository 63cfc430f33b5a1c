"""Random-weight verifier files of the real architectures, built at test time."""
from __future__ import annotations

import json
import os

import torch

# open_clip's ViT-L-14 config with depth and width reduced (the real CLIP class,
# the real tokenizer); full-size shapes are checked separately on the meta device.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def build_tiny_clip(folder: str, name: str = "tiny-clip", seed: int = 0, poison_nan: bool = False) -> str:
    """Writes ``name.safetensors`` + ``name.json`` (the config the loader picks up)."""
    import open_clip
    import safetensors.torch
    from open_clip import factory

    os.makedirs(folder, exist_ok=True)
    cfg_name = f"its_test_{name}"
    factory._MODEL_CONFIGS[cfg_name] = TINY_CLIP_CONFIG
    torch.manual_seed(seed)
    model = open_clip.create_model(cfg_name, pretrained=None)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if poison_nan:
        sd["visual.proj"] = torch.full_like(sd["visual.proj"], float("nan"))
    path = os.path.join(folder, name + ".safetensors")
    safetensors.torch.save_file(sd, path)
    with open(os.path.join(folder, name + ".json"), "w") as f:
        json.dump(TINY_CLIP_CONFIG, f)
    return path
