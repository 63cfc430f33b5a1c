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


def build_aesthetic_mlp(folder: str, name: str = "tiny-aesthetic.pth", seed: int = 0, input_size: int = 768,
                        gain: float = 1.0) -> str:
    """The real (full-size) predictor head with random weights, saved like the
    published file: torch.save of the state dict.  The head is linear end to
    end, so ``gain`` (on its last layer) scales its scores exactly: -1 gives a
    verifier anti-correlated with the same seed's, 2 a correlated one."""
    from verifiers.aesthetic import AestheticMLP
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    mlp = AestheticMLP(input_size)
    with torch.no_grad():
        mlp.layers[-1].weight.mul_(gain)
        mlp.layers[-1].bias.mul_(gain)
    path = os.path.join(folder, name)
    torch.save(mlp.state_dict(), path)
    return path

# --------------------------------------------------------------------------- ImageReward, PickScore, HPS
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
IMAGE_REWARD_FIXTURE = os.path.join(FIXTURES, "imagereward")


def build_tiny_image_reward(folder: str, name: str = "tiny-imagereward") -> str:
    """The reduced random-weight ImageReward of tests/fixtures/imagereward (made and scored by
    tools/imagereward_reference.py with the image-reward package) as a model folder."""
    import shutil
    dst = os.path.join(folder, name)
    os.makedirs(dst, exist_ok=True)
    for f in ("ImageReward.pt", "med_config.json", "vision_config.json", "vocab.txt"):
        shutil.copy(os.path.join(IMAGE_REWARD_FIXTURE, f), dst)
    return dst


def _bytes_to_unicode():
    """GPT-2 / CLIP byte-level alphabet."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_clip_tokenizer(folder: str) -> int:
    """A CLIP BPE tokenizer with the byte alphabet and no merges (every word is spelled out):
    same code path as the real one, a 514-token vocabulary. Returns the vocabulary size."""
    from transformers import CLIPTokenizer
    chars = _bytes_to_unicode()
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(folder)
    tok.save_pretrained(folder)
    return len(vocab)


def build_tiny_pickscore(folder: str, name: str = "tiny-pickscore", seed: int = 0) -> str:
    """A random transformers CLIPModel (reduced size) saved with save_pretrained, with a tiny CLIP
    tokenizer and a CLIP image processor config, laid out as the PickScore folder."""
    import math
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    dst = os.path.join(folder, name)
    n_vocab = write_tiny_clip_tokenizer(dst)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=n_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=n_vocab - 2,
                         eos_token_id=n_vocab - 1, pad_token_id=n_vocab - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=16, logit_scale_init_value=math.log(100.0))
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    with torch.no_grad():  # larger than the default init, so images give clearly different embeddings
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 1 / p[0].numel() ** 0.5)
    model.save_pretrained(dst)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(dst)
    return dst


def build_tiny_hps(folder: str, name: str = "tiny-hps", seed: int = 0) -> str:
    """An HPS-layout checkpoint ({'state_dict': open_clip state dict}, .pt) of a reduced open_clip
    model, with its open_clip config JSON beside it."""
    import open_clip
    from open_clip import factory
    os.makedirs(folder, exist_ok=True)
    cfg_name = f"its_test_{name}"
    factory._MODEL_CONFIGS[cfg_name] = TINY_CLIP_CONFIG
    torch.manual_seed(seed)
    model = open_clip.create_model(cfg_name, pretrained=None)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path = os.path.join(folder, name + ".pt")
    torch.save({"state_dict": sd}, path)
    with open(os.path.join(folder, name + ".json"), "w") as f:
        json.dump(TINY_CLIP_CONFIG, f)
    return path


def build_tiny_verifiers_ii(folder: str) -> None:
    """Everything the server tests of the ImageReward / PickScore / HPS loaders need."""
    build_tiny_image_reward(folder)
    build_tiny_pickscore(folder)
    build_tiny_hps(folder)
