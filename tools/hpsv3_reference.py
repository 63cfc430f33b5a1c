"""Regenerates tests/fixtures/hpsv3/: reference HPSv3 scores computed by the
hpsv3 1.0.0 package itself (``HPSv3RewardInferencer.reward``) on a tiny
random-weight model of the real architecture (Qwen2-VL + the ranknet reward head).

The package is a reference only: it never enters this repository or CI.  It
pins transformers==4.45.2 and imports its training stack (trl, peft, ...) from
its inference module, so it runs in a throwaway virtual environment outside the
repository:

    python3 tools/hpsv3_reference.py --make-venv ../hpsv3-ref-venv
    ../hpsv3-ref-venv/bin/python tools/hpsv3_reference.py --out tests/fixtures/hpsv3

``--make-venv`` installs (from PyPI) torch 2.14.1, torchvision 0.29.1,
transformers==4.45.2 (the package's pin) and what its inference imports
(omegaconf, fire, accelerate<1.3, peft==0.13.2, trl==0.11.4, rich, matplotlib,
tensorboard, pandas, datasets), then hpsv3==1.0.0 with --no-deps (its
deepspeed, diffusers, opencv, timm, qwen-vl-utils pins are not used by
inference).

What is reduced (the real classes, smaller): Qwen2-VL's language model (hidden
64, 2 layers, 4 heads, 2 KV heads) and vision tower (embed 32, 2 blocks, 2
heads; patch 14, merge 2, temporal patch 2 as published), and the tokenizer: a
byte-level BPE with Qwen2's pre-tokenizer and special tokens, trained here on
the HPSv3 instruction (about 600 tokens instead of 151643).  The reward head is
the package's own "ranknet" head (hidden -> 1024 -> 16 -> 2) at its real
widths.  The prompt, the chat template, the image preprocessing and the
reading of the score are the package's own.

Nothing big is committed: the weights are drawn at test time from SEED by
``tiny_weights`` (this module's only dependency is torch), so the fixtures are
the tokenizer and config files, the expected scores (reference.json), and the
full-size key layout (full_size_keys.json: the package's Qwen2VLRewardModelBT
for the published Qwen2-VL-7B-Instruct config with the vocabulary resized to
151658 tokens, as ``create_model_and_processor`` resizes it, built on the meta
device).  The test images are drawn from integer arithmetic and torch's
integer generator, also at test time (their digest is recorded).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

SEED = 2025
REWARD_TOKEN = "<|Reward|>"
# Qwen2-VL's special tokens, in the order of the published tokenizer (ids 151643..151656 there)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL-7B-Instruct's config.json as published (huggingface.co/Qwen/Qwen2-VL-7B-Instruct)
QWEN2_VL_7B_CONFIG = {
    "architectures": ["Qwen2VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
    "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 32768,
    "max_window_layers": 28, "model_type": "qwen2_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                      "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 152064,
}
FULL_SIZE_VOCAB = 151658  # 151657 tokens of the published tokenizer + <|Reward|>
# Qwen2-VL-7B-Instruct's chat template (tokenizer_config.json / chat_template.json there)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")
PREPROCESSOR_CONFIG = {  # Qwen2-VL-7B-Instruct's preprocessor_config.json
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}
# Qwen2's pre-tokenizer split (tokenizer.json of the Qwen2 family)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
TINY_BPE_VOCAB = 600
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "rope_scaling": {"type": "mrope", "mrope_section": [4, 2, 2]},
             "max_position_embeddings": 4096, "sliding_window": 4096, "max_window_layers": 2}
TINY_VISION = {"depth": 2, "embed_dim": 32, "mlp_ratio": 4, "num_heads": 2, "in_chans": 3, "hidden_size": 64,
               "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2}
PROMPTS = [
    "cute chibi anime cartoon fox, smiling wagging tail with a small cartoon heart above sticker",
    "a photo of a cat",
    "A red apple on the table, photorealistic, 8k",
    "Zebra \u00fcber caf\u00e9 \u2014 \u732b",  # outside the tiny BPE's merges: byte-level pieces
]
# (h, w) of the test images: 448 x 448 and 224 x 896 reach the model unresized (the package's min = max =
# 256 * 28 * 28 pixels); the others are resized, by PIL on uint8 there and by torch on floats in the pack
IMAGE_SIZES = [(448, 448), (448, 448), (448, 448), (224, 896), (512, 512), (300, 200)]
PAIRS = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 2), (2, 3), (3, 1), (4, 0), (5, 2)]  # (image, prompt)
BATCH = [(0, 0), (1, 1), (3, 2), (2, 3)]  # one reward() call: different prompts, so padded token rows
# (h, w) given to the package's smart_resize with the inferencer's min = max pixels (recorded: the sizes the
# model sees for typical generations)
RESIZE_CASES = [(1024, 1024), (512, 512), (64, 64), (1024, 768), (768, 1024), (1216, 832), (832, 1216),
                (1344, 768), (1536, 640), (300, 200), (448, 448), (224, 896), (100, 3000)]


def make_venv(path: str) -> None:
    subprocess.check_call([sys.executable, "-m", "venv", path])
    pip = [os.path.join(path, "bin", "python"), "-m", "pip", "install"]
    subprocess.check_call(pip + ["torch==2.14.1", "torchvision==0.29.1"])
    subprocess.check_call(pip + ["transformers==4.45.2", "omegaconf", "fire", "pillow", "numpy", "safetensors",
                                 "accelerate<1.3", "peft==0.13.2", "trl==0.11.4", "rich", "matplotlib",
                                 "tensorboard", "pandas", "datasets", "tqdm"])
    subprocess.check_call(pip + ["--no-deps", "hpsv3==1.0.0"])


# --------------------------------------------------------------------------- shared with the tests (torch only)
def tiny_config(vocab_size: int, token_ids: dict) -> dict:
    """config.json of the tiny Qwen2-VL: the published 7B config with the reduced widths."""
    cfg = json.loads(json.dumps(QWEN2_VL_7B_CONFIG))
    cfg.update(TINY_TEXT)
    cfg["vision_config"] = dict(TINY_VISION)
    cfg["vocab_size"] = vocab_size
    cfg["torch_dtype"] = "float32"
    cfg.update(token_ids)
    return cfg


def tiny_weights(shapes: dict, seed: int = SEED) -> dict:
    """Deterministic float32 weights for a key -> shape table (sorted keys, one generator): large enough that
    different images and prompts get clearly different scores.  Norm weights near 1, biases small."""
    import torch
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if len(shape) == 1 and ("norm" in name or "ln_q" in name) and name.endswith("weight"):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            t = 0.1 * torch.randn(shape, generator=g)
        elif "embed_tokens" in name:
            t = torch.randn(shape, generator=g)
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = torch.randn(shape, generator=g) / fan_in ** 0.5
        out[name] = t
    return out


def image_arrays():
    """The test images as uint8 tensors H x W x 3: integer gradients, a disc and generator noise (exact on every
    platform: no floating point)."""
    import torch
    g = torch.Generator().manual_seed(SEED)
    out = []
    for i, (h, w) in enumerate(IMAGE_SIZES):
        y = torch.arange(h, dtype=torch.int64)[:, None].expand(h, w)
        x = torch.arange(w, dtype=torch.int64)[None, :].expand(h, w)
        chans = []
        for c in range(3):
            a, b, o = 3 + 2 * i + c, 5 + 3 * c - i, 37 * i + 91 * c
            v = (a * x * 256 // w + b * y * 256 // h + o) % 512
            chans.append(torch.where(v < 256, v, 511 - v))  # triangle wave: smooth, no wrap edges
        img = torch.stack(chans, -1)
        cy, cx, r = h * (2 + i % 3) // 6, w * (3 + i % 2) // 6, min(h, w) // (3 + i % 3)
        disc = ((y - cy) ** 2 + (x - cx) ** 2) < r * r
        img = torch.where(disc[..., None], torch.tensor([200 - 30 * i, 40 + 25 * i, 120], dtype=torch.int64), img)
        img = (img + torch.randint(-12, 13, (h, w, 3), generator=g)).clamp(0, 255)
        out.append(img.to(torch.uint8))
    return out


def image_digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(tuple(a.shape)).encode())
        h.update(a.contiguous().numpy().tobytes())
    return h.hexdigest()


def ids_digest(ids) -> str:
    return hashlib.sha256(",".join(str(int(i)) for i in ids).encode()).hexdigest()


# --------------------------------------------------------------------------- the reference (hpsv3 venv only)
def write_tokenizer(folder: str) -> dict:
    """A byte-level BPE with Qwen2's normaliser, pre-tokenizer and special tokens, trained on the HPSv3
    instruction; returns the special tokens' ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from hpsv3.dataset.data_collator_qwen import INSTRUCTION, prompt_with_special_token
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = [INSTRUCTION, prompt_with_special_token, "You are a helpful assistant.", "system user assistant"]
    trainer = trainers.BpeTrainer(vocab_size=TINY_BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.save(os.path.join(folder, "tokenizer.json"))
    added = {}
    for i, t in enumerate(SPECIAL_TOKENS):
        added[str(tok.token_to_id(t))] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"add_prefix_space": False, "added_tokens_decoder": added, "bos_token": None,
                   "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
                   "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>",
                   "padding_side": "left", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
                   "unk_token": None}, f, indent=1)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(PREPROCESSOR_CONFIG, f, indent=1)
    with open(os.path.join(folder, "chat_template.json"), "w") as f:  # the processor's template, as published
        json.dump({"chat_template": CHAT_TEMPLATE}, f, indent=1)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    return {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
            "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
            "video_token_id": ids["<|video_pad|>"]}, tok.get_vocab_size(with_added_tokens=True)


def reference(out: str) -> None:
    import atexit
    import shutil
    import tempfile

    import numpy as np
    import safetensors.torch
    import torch
    import transformers
    import yaml
    from PIL import Image
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    import hpsv3
    from hpsv3 import HPSv3RewardInferencer
    from hpsv3.dataset.utils import smart_resize
    from hpsv3.model.qwen2vl_trainer import Qwen2VLRewardModelBT

    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="hpsv3_ref_")
    atexit.register(shutil.rmtree, work, True)     # the scratch folder goes when the script ends
    base = os.path.join(work, "Qwen2-VL-tiny")
    os.makedirs(base)
    token_ids, n_tokens = write_tokenizer(base)
    # the published base vocabulary is larger than its tokenizer (152064 > 151657); likewise here, and the
    # package resizes it to the tokenizer + <|Reward|>
    cfg = tiny_config(n_tokens + 7, token_ids)
    with open(os.path.join(base, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    # from_pretrained needs base weights in the folder; the HPSv3 checkpoint (strict) replaces all of them
    Qwen2VLForConditionalGeneration(Qwen2VLConfig(**cfg)).save_pretrained(base)

    yaml_path = os.path.join(os.path.dirname(hpsv3.__file__), "config", "HPSv3_7B.yaml")
    with open(yaml_path) as f:
        conf = yaml.safe_load(f)
    conf.update(model_name_or_path=base, bf16=False, torch_dtype="float32", report_to="none",
                output_dir=os.path.join(work, "out"), dataloader_num_workers=0)
    conf_path = os.path.join(work, "HPSv3_tiny.yaml")
    with open(conf_path, "w") as f:
        yaml.safe_dump(conf, f)

    # the checkpoint: the package's model class for that config, its state dict's layout, weights from SEED
    from hpsv3.train import create_model_and_processor
    from hpsv3.utils.parser import DataConfig, ModelConfig, PEFTLoraConfig, TrainingConfig, parse_args_with_yaml
    (_, targs, mcfg, pcfg), _ = parse_args_with_yaml((DataConfig, TrainingConfig, ModelConfig, PEFTLoraConfig),
                                                     conf_path, is_train=False)
    model, processor, _ = create_model_and_processor(model_config=mcfg, peft_lora_config=pcfg, training_args=targs)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    ckpt = os.path.join(work, "HPSv3.safetensors")
    safetensors.torch.save_file(tiny_weights(shapes), ckpt)
    del model

    inf = HPSv3RewardInferencer(config_path=conf_path, checkpoint_path=ckpt, device="cpu")
    reward_id = inf.processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    arrays = image_arrays()
    pils = [Image.fromarray(a.numpy()) for a in arrays]

    def run(pairs):
        with torch.no_grad():
            batch = inf.prepare_batch([pils[i] for i, _ in pairs], [PROMPTS[p] for _, p in pairs])
            r = inf.reward([pils[i] for i, _ in pairs], [PROMPTS[p] for _, p in pairs])
        return batch, r

    records = []
    for i, p in PAIRS:
        batch, r = run([(i, p)])
        ids = batch["input_ids"][0].tolist()
        records.append({"image": i, "prompt": p, "size": list(IMAGE_SIZES[i]),
                        "unresized": bool(tuple(batch["image_grid_thw"][0].tolist()[1:]) ==
                                          (IMAGE_SIZES[i][0] // 14, IMAGE_SIZES[i][1] // 14)),
                        "mu": float(r[0, 0]), "sigma": float(r[0, 1]), "n_tokens": len(ids),
                        "input_ids_sha256": ids_digest(ids), "image_grid_thw": batch["image_grid_thw"][0].tolist()})
        print(records[-1])
    batch, r = run(BATCH)
    full_ids = batch["input_ids"][0].tolist()
    batch_rec = {"pairs": BATCH, "mu": [float(v) for v in r[:, 0]], "sigma": [float(v) for v in r[:, 1]],
                 "padded_length": int(batch["input_ids"].shape[1]),
                 "lengths": [int(v) for v in batch["attention_mask"].sum(1)]}

    # the full-size layout: the package's class for the published config, vocabulary as resized, on meta
    big = dict(QWEN2_VL_7B_CONFIG, vocab_size=FULL_SIZE_VOCAB)
    with torch.device("meta"):
        m = Qwen2VLRewardModelBT(Qwen2VLConfig(**big), output_dim=2, reward_token="special",
                                 special_token_ids=[FULL_SIZE_VOCAB - 1], rm_head_type="ranknet")
    full_keys = {k: list(v.shape) for k, v in m.state_dict().items()}
    with open(os.path.join(out, "full_size_keys.json"), "w") as f:
        json.dump(full_keys, f, indent=0, sort_keys=True)
    with open(os.path.join(out, "qwen2_vl_7b_config.json"), "w") as f:
        json.dump(QWEN2_VL_7B_CONFIG, f, indent=1)

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                 "chat_template.json"):
        with open(os.path.join(base, name), "rb") as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
    import importlib.metadata as md
    doc = {
        "generator": "tools/hpsv3_reference.py", "seed": SEED,
        "versions": {n: md.version(n) for n in ("hpsv3", "torch", "torchvision", "transformers", "tokenizers",
                                                "pillow", "numpy")},
        "call": "HPSv3RewardInferencer(config_path, checkpoint_path, device='cpu').reward(PIL images, prompts)"
                "[:, 0] (mu of (mu, sigma)); the package's HPSv3_7B.yaml with bf16 off (fp32)",
        "reward_token_id": reward_id, "vocab_size_after_resize": n_tokens + 1,
        "image_sizes": IMAGE_SIZES, "image_sha256": image_digest(arrays), "prompts": PROMPTS,
        "first_input_ids": full_ids, "records": records, "batch": batch_rec,
        "smart_resize": [[h, w, *smart_resize(h, w, factor=28, min_pixels=256 * 28 * 28,
                                               max_pixels=256 * 28 * 28)] for h, w in RESIZE_CASES],
        "full_size_params": int(sum(int(np.prod(s)) for s in full_keys.values())),
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(doc, f, indent=1)
    print("transformers", transformers.__version__, "->", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-venv", metavar="PATH")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                  "tests", "fixtures", "hpsv3"))
    a = ap.parse_args()
    if a.make_venv:
        make_venv(a.make_venv)
        return
    reference(a.out)


if __name__ == "__main__":
    main()
