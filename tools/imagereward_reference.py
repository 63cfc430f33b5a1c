"""Regenerates tests/fixtures/imagereward/: reference ImageReward scores computed
by the image-reward 1.5 package itself on a reduced-size random-weight model.

The package is a reference only: it never enters this repository or CI.  It
runs in a throwaway virtual environment outside the repository:

    python3 tools/imagereward_reference.py --make-venv /tmp/ir-ref-venv
    /tmp/ir-ref-venv/bin/python tools/imagereward_reference.py --out tests/fixtures/imagereward

``--make-venv`` installs (from PyPI) torch 2.14.1, torchvision, transformers<4.56,
timm==0.6.13, fairscale==0.4.13 and image-reward==1.5 --no-deps.  The package's
``__init__`` also imports its CLIP/aesthetic/ReFL helpers (clip, diffusers,
datasets), which ``ImageReward.score`` never uses; the script imports the
modules ``ImageReward.score`` does use (ImageReward.ImageReward,
models.BLIP.{blip, blip_pretrain, med, vit}) straight from the installed
package, without those helpers.

What is reduced (the real classes, smaller): the ViT (create_vit is called with
width 64, depth 2, 4 heads instead of ViT-L's 1024/24/16), the med BERT
(med_config with hidden 64, 2 layers, 4 heads, an 87-word vocabulary + [DEC]/[ENC])
and the MLP's input (ImageReward hard-codes MLP(768); it is rebuilt with the
package's MLP class for width 64).  The tokenizer is the package's own BERT
tokenizer (BertTokenizer + [DEC]/[ENC]) on the small vocab.txt written here;
nothing touches the network.  The random weights are fp16 values (stored in
fp16, loaded as fp32 on both sides), drawn from a fixed seed: rerunning the
script reproduces ImageReward.pt byte for byte.

Outputs (all small): full_size_keys.json (key -> shape of the full-size
reference model: the published med_config.json and ViT-L, built on the meta
device), ImageReward.pt (the reduced reference model's state_dict, saved as the
published checkpoint is: a plain dict of tensors), med_config.json,
vision_config.json, vocab.txt, images/*.png and reference.json (scores from
``ImageReward.score(prompt, PIL image)`` and its list form).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SEED = 1234
VISION = {"width": 64, "depth": 2, "heads": 4, "patch_size": 16, "image_size": 224}
MED = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 4,
    "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": None,  # set below
    "encoder_width": 768, "add_cross_attention": True,
}
WORDS = ("a photo of cat dog red apple on the table blue car cars green tree sky house painting "
         "portrait woman man city night sunset beach mountain river flower").split()
PROMPTS = [
    "a photo of a cat",
    "A red apple on the table",
    "blue cars, green trees and a sunset",
    # longer than 35 tokens: truncated
    " ".join(["a painting of a house on a mountain by the river at night"] * 4),
    "Zebra über café",  # out-of-vocabulary words: WordPiece pieces and [UNK]
]
# (image file, prompt index) pairs scored by the reference
PAIRS = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 2), (2, 3), (3, 4), (3, 0), (4, 1)]
IMAGE_SIZES = [(224, 224), (224, 224), (224, 224), (224, 224), (256, 320)]  # (h, w)


def make_venv(path: str) -> None:
    subprocess.check_call([sys.executable, "-m", "venv", path])
    pip = [os.path.join(path, "bin", "python"), "-m", "pip", "install"]
    subprocess.check_call(pip + ["torch==2.14.1", "torchvision", "transformers<4.56", "timm==0.6.13",
                                 "fairscale==0.4.13", "pillow", "numpy"])
    subprocess.check_call(pip + ["--no-deps", "image-reward==1.5"])


def vocab_tokens():
    letters = "abcdefghijklmnopqrstuvwxyz"
    return (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "-"] + WORDS + ["##s"]
            + [c for c in letters if c not in WORDS] + ["##" + c for c in letters])


def images(seed: int):
    """Smooth, distinct test images (uint8 H x W x 3): gradients and a blob."""
    import numpy as np
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(IMAGE_SIZES):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.zeros((h, w, 3), np.float32)
        for c in range(3):
            fx, fy, ph = rng.uniform(0.5, 4, 3)
            img[..., c] = 0.5 + 0.35 * np.sin(2 * np.pi * (fx * x / w + fy * y / h) + ph * 3 + i)
        cy, cx, r = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.1, 0.3) * min(h, w)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - blob) + blob * rng.uniform(0, 1, 3)
        out.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return out


def randomise(model, seed: int) -> None:
    """Deterministic weights large enough that different images get clearly different scores,
    rounded to fp16 values so that the file can be stored in fp16 (half the size) exactly."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            _fill(name, p, g)
            p.copy_(p.half().float())


def _fill(name, p, g):
    import torch
    if p.ndim == 1 and ("norm" in name.lower()) and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    elif p.ndim == 1:
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
    elif name.endswith(("cls_token", "pos_embed")) or "embeddings" in name:
        p.copy_(0.5 * torch.randn(p.shape, generator=g))
    else:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def import_reference():
    """ImageReward.ImageReward and the BLIP modules, without the package __init__."""
    import importlib.util
    import types
    spec = importlib.util.find_spec("ImageReward")
    if spec is None:
        raise SystemExit("image-reward is not installed in this Python: run this script with the throwaway "
                         "venv's Python (see the module docstring)")
    root = spec.submodule_search_locations[0]
    for name, path in (("ImageReward", root), ("ImageReward.models", os.path.join(root, "models"))):
        mod = types.ModuleType(name)
        mod.__path__ = [path]
        sys.modules[name] = mod
    import ImageReward.models.BLIP.blip as blip
    import ImageReward.models.BLIP.blip_pretrain as blip_pretrain
    import ImageReward.ImageReward as ir
    return ir, blip, blip_pretrain


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-venv", metavar="PATH", help="create the throwaway reference venv and exit")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                                                  "imagereward"))
    args = ap.parse_args()
    if args.make_venv:
        make_venv(args.make_venv)
        return

    import torch
    from PIL import Image
    import transformers
    import importlib.metadata as md

    torch.manual_seed(SEED)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    tokens = vocab_tokens()
    with open(os.path.join(out, "vocab.txt"), "w") as f:
        f.write("\n".join(tokens) + "\n")
    med = dict(MED, vocab_size=len(tokens) + 2)  # + [DEC] and [ENC], as BLIP's init_tokenizer adds
    with open(os.path.join(out, "med_config.json"), "w") as f:
        json.dump(med, f, indent=2)
    with open(os.path.join(out, "vision_config.json"), "w") as f:
        json.dump(VISION, f, indent=2)

    ir, blip, blip_pretrain = import_reference()

    # the package's tokenizer code, on the local vocabulary instead of the hub's bert-base-uncased
    class LocalBertTokenizer(transformers.BertTokenizer):
        @classmethod
        def from_pretrained(cls, name, *a, **k):
            assert name == "bert-base-uncased", name
            return cls(vocab_file=os.path.join(out, "vocab.txt"), do_lower_case=True)
    blip.BertTokenizer = LocalBertTokenizer

    # the package's VisionTransformer, reduced
    def create_vit(vit, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
        assert vit == "large" and image_size == VISION["image_size"]
        return blip.VisionTransformer(img_size=image_size, patch_size=VISION["patch_size"], embed_dim=VISION["width"],
                                      depth=VISION["depth"], num_heads=VISION["heads"],
                                      drop_path_rate=0.1), VISION["width"]
    blip_pretrain.create_vit = create_vit

    # full size, on the meta device: the key -> shape table of the published checkpoint's model
    # (med_config.json of THUDM/ImageReward, ViT-L/16), for the loader's full-size check
    full_cfg = os.path.join(out, "full_med_config.json")
    with open(full_cfg, "w") as f:
        json.dump(dict(MED, hidden_size=768, intermediate_size=3072, max_position_embeddings=512,
                       num_attention_heads=12, num_hidden_layers=12, vocab_size=30524), f)
    blip_pretrain.create_vit = blip.create_vit
    linspace = torch.linspace
    torch.linspace = lambda *a, **k: linspace(*a, **dict(k, device="cpu"))  # the ViT reads drop-path rates
    try:
        with torch.device("meta"):
            full = ir.ImageReward(med_config=full_cfg, device="meta")
    finally:
        torch.linspace = linspace
    os.remove(full_cfg)
    with open(os.path.join(out, "full_size_keys.json"), "w") as f:
        f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {list(v.shape)}" for k, v in full.state_dict().items())
                + "\n}\n")
    del full

    blip_pretrain.create_vit = create_vit
    model = ir.ImageReward(med_config=os.path.join(out, "med_config.json"), device="cpu")
    model.mlp = ir.MLP(med["hidden_size"])
    randomise(model, SEED)
    model.eval()
    # fp16 on disk (exact: the weights are fp16 values), like the published "compressed" checkpoints
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save(sd, os.path.join(out, "ImageReward.pt"))

    pil = []
    for i, arr in enumerate(images(SEED)):
        p = os.path.join(out, "images", f"img{i}.png")
        Image.fromarray(arr).save(p)
        pil.append(Image.open(p).convert("RGB"))

    records = []
    with torch.no_grad():
        for img_i, prompt_i in PAIRS:
            s = model.score(PROMPTS[prompt_i], pil[img_i])
            ids = model.blip.tokenizer(PROMPTS[prompt_i], padding="max_length", truncation=True,
                                       max_length=35)["input_ids"]
            records.append({"image": f"img{img_i}.png", "prompt": PROMPTS[prompt_i], "score": s, "input_ids": ids})
        batch = model.score(PROMPTS[0], pil[:3])  # inference_rank: the list path of ImageReward.score
    meta = {
        "generator": "tools/imagereward_reference.py",
        "seed": SEED,
        "versions": {k: md.version(k) for k in ("image-reward", "torch", "torchvision", "transformers", "timm")},
        "mean": model.mean, "std": model.std,
        "records": records,
        "list_call": {"prompt": PROMPTS[0], "images": ["img0.png", "img1.png", "img2.png"], "scores": batch},
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps([r["score"] for r in records]))


if __name__ == "__main__":
    main()
