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


# ViT-L-14's output width (768) with tiny towers: the full-size aesthetic MLP
# (768 -> 1024 -> 128 -> 64 -> 16 -> 1) fits on it.
TINY_CLIP_768_CONFIG = dict(TINY_CLIP_CONFIG, embed_dim=768)


def build_tiny_clip_768(folder: str, name: str = "tiny-clip-768", seed: int = 0) -> str:
    import open_clip
    import safetensors.torch
    from open_clip import factory

    os.makedirs(folder, exist_ok=True)
    factory._MODEL_CONFIGS[f"its_test_{name}"] = TINY_CLIP_768_CONFIG
    torch.manual_seed(seed)
    model = open_clip.create_model(f"its_test_{name}", pretrained=None)
    path = os.path.join(folder, name + ".safetensors")
    safetensors.torch.save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, path)
    with open(os.path.join(folder, name + ".json"), "w") as f:
        json.dump(TINY_CLIP_768_CONFIG, f)
    return path


def build_aesthetic_mlp(folder: str, name: str = "tiny-aesthetic.pth", seed: int = 0, input_size: int = 768) -> str:
    """The real (full-size) predictor head with random weights, saved like the
    published file: torch.save of the state dict."""
    from verifiers.aesthetic import AestheticMLP
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    mlp = AestheticMLP(input_size)
    path = os.path.join(folder, name)
    torch.save(mlp.state_dict(), path)
    return path
