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


HPSV3_FIXTURE = os.path.join(FIXTURES, "hpsv3")


def build_tiny_hpsv3(folder: str, name: str = "tiny-hpsv3") -> str:
    """The tiny random-weight HPSv3 of tests/fixtures/hpsv3 (scored there by tools/hpsv3_reference.py with the
    hpsv3 package) as a model folder in the published layout: its weights are drawn from the generator's seed,
    in the package's key layout (lm_head included)."""
    import shutil
    import sys
    import safetensors.torch
    tools = os.path.join(os.path.dirname(os.path.dirname(FIXTURES)), "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import hpsv3_reference
    from verifiers import hpsv3
    dst = os.path.join(folder, name)
    os.makedirs(dst, exist_ok=True)
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(HPSV3_FIXTURE, f), dst)
    text, vision = hpsv3.read_config(os.path.join(dst, "config.json"))
    vocab = hpsv3.load_tokenizer(dst).get_vocab_size(with_added_tokens=True)
    shapes = {k: list(v) for k, v in hpsv3.expected_keys(text, vision, vocab).items()}
    shapes["lm_head.weight"] = [vocab, text["hidden_size"]]
    safetensors.torch.save_file(hpsv3_reference.tiny_weights(shapes), os.path.join(dst, "HPSv3.safetensors"))
    return dst


def build_tiny_verifiers_ii(folder: str) -> None:
    """Everything the server tests of the ImageReward / PickScore / HPS / HPSv3 loaders need."""
    build_tiny_image_reward(folder)
    build_tiny_pickscore(folder)
    build_tiny_hps(folder)
    build_tiny_qwen_vl(folder)  # tiny-qwen2.5-vl/ (VQAScore, rubric)
    build_tiny_hpsv3(folder)


# --------------------------------------------------------------------------- Qwen-VL (VQAScore, rubric grader)
# Qwen2-VL's chat template (the one Qwen2.5-VL's chat_template.json ships).
QWEN_VL_CHAT_TEMPLATE = (
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
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def write_tiny_qwen_tokenizer(folder: str):
    """A Qwen2 byte-level BPE tokenizer (the real class and pre-tokenizer) with the byte alphabet, a few merges
    ("Yes", "No", "yes", "no" are single tokens, as in Qwen's vocabulary) and Qwen's special tokens."""
    from transformers import Qwen2Tokenizer
    chars = _bytes_to_unicode()
    merges = [("Y", "e"), ("Ye", "s"), ("N", "o"), ("y", "e"), ("ye", "s"), ("n", "o")]
    vocab = {t: i for i, t in enumerate(chars + [a + b for a, b in merges])}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = Qwen2Tokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                         unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": [t for t in QWEN_SPECIAL if t not in ("<|endoftext|>", "<|im_end|>")]})
    return tok


def tiny_qwen_vl_config(kind: str, tok, tied: bool = False) -> dict:
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                tie_word_embeddings=tied, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [2, 3, 3] if kind != "qwen3_vl" else [2, 3, 3],
                                 **({"mrope_interleaved": True} if kind == "qwen3_vl" else {})})
    if kind == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1])
    else:  # qwen3_vl: 16-px patches, learned position table, deepstack mergers
        text["head_dim"] = 16
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[0])
    return dict(model_type=kind, text_config=text, vision_config=vision, tie_word_embeddings=tied,
                image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def published_qwen_keys(sd: dict, kind: str) -> dict:
    """transformers' nested keys -> the layout the published Qwen2.5-VL files use (``visual.*``, ``model.*``);
    Qwen3-VL's published files already use the nested layout."""
    if kind == "qwen3_vl":
        return dict(sd)
    out = {}
    for k, v in sd.items():
        if k.startswith("model.visual."):
            k = k[len("model."):]
        elif k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]
        out[k] = v
    return out


def build_tiny_qwen_vl(folder: str, name: str = "tiny-qwen2.5-vl", seed: int = 0, kind: str = "qwen2_5_vl",
                       tied: bool = False, gain: float = 1.0, boost: float = 1.0) -> str:
    """A random Qwen2.5-VL (or Qwen3-VL) of reduced size, written as the published folder: config.json,
    model.safetensors in the published key layout (tied embeddings: no lm_head, as Qwen2.5-VL-3B),
    the processor's preprocessor_config.json, tokenizer files and chat template.  ``gain`` scales the
    weight matrices; ``boost`` scales the output rows of the answer tokens ("Yes", "No", the digits), so
    their probabilities are far from uniform and differ between images."""
    import safetensors.torch
    import transformers
    dst = os.path.join(folder, name)
    tok = write_tiny_qwen_tokenizer(dst)
    cfg_dict = tiny_qwen_vl_config(kind, tok, tied)
    cls_cfg = transformers.Qwen2_5_VLConfig if kind == "qwen2_5_vl" else transformers.Qwen3VLConfig
    cls = (transformers.Qwen2_5_VLForConditionalGeneration if kind == "qwen2_5_vl"
           else transformers.Qwen3VLForConditionalGeneration)
    config = cls_cfg(**{k: v for k, v in cfg_dict.items() if k != "model_type"})
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, gain / p[0].numel() ** 0.5)
            elif not n.endswith("norm.weight") and "norm" not in n.split(".")[-2]:
                p.normal_(0, 0.02)
        answers = [tok.convert_tokens_to_ids(t) for t in ("Yes", "No", *"0123456789")]
        model.lm_head.weight[answers] *= boost
    config.save_pretrained(dst)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if tied:
        sd.pop("lm_head.weight", None)
    safetensors.torch.save_file(published_qwen_keys(sd, kind), os.path.join(dst, "model.safetensors"),
                                metadata={"format": "pt"})
    patch = 14 if kind == "qwen2_5_vl" else 16
    image_processor = transformers.Qwen2VLImageProcessor(
        patch_size=patch, merge_size=2, temporal_patch_size=2, min_pixels=(2 * patch) ** 2,
        max_pixels=(2 * patch) ** 2 * 64,
        image_mean=[0.48145466, 0.4578275, 0.40821073] if kind == "qwen2_5_vl" else [0.5, 0.5, 0.5],
        image_std=[0.26862954, 0.26130258, 0.27577711] if kind == "qwen2_5_vl" else [0.5, 0.5, 0.5])
    proc_cls = transformers.Qwen2_5_VLProcessor if kind == "qwen2_5_vl" else transformers.Qwen3VLProcessor
    kw = {}
    if kind == "qwen3_vl":
        kw["video_processor"] = transformers.Qwen3VLVideoProcessor(patch_size=patch)
    else:
        kw["video_processor"] = transformers.Qwen2VLVideoProcessor(patch_size=patch)
    processor = proc_cls(image_processor=image_processor, tokenizer=tok, chat_template=QWEN_VL_CHAT_TEMPLATE, **kw)
    processor.save_pretrained(dst)
    # the published repositories' processor files: preprocessor_config.json and chat_template.json
    for f in ("processor_config.json", "chat_template.jinja"):
        if os.path.isfile(os.path.join(dst, f)):
            os.remove(os.path.join(dst, f))
    with open(os.path.join(dst, "preprocessor_config.json"), "w") as f:
        json.dump({"min_pixels": (2 * patch) ** 2, "max_pixels": (2 * patch) ** 2 * 64, "patch_size": patch,
                   "temporal_patch_size": 2, "merge_size": 2, "image_mean": list(image_processor.image_mean),
                   "image_std": list(image_processor.image_std), "image_processor_type": "Qwen2VLImageProcessor",
                   "processor_class": type(processor).__name__}, f, indent=2)
    with open(os.path.join(dst, "chat_template.json"), "w") as f:
        json.dump({"chat_template": QWEN_VL_CHAT_TEMPLATE}, f)
    return dst
