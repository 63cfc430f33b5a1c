"""GPU timing of the verifiers (issue #5): full-size architectures with random
weights, fp16 on CUDA; time to score 64 images at 512x512 and 1024x1024
(images B x H x W x 3 in [0, 1], preprocessing included, as SearchLoop hands
them over: from the CPU, where ComfyUI's VAE leaves them; also from the GPU),
and peak VRAM.  No ComfyUI needed.

    python bench/gpu_verifiers.py --out $OUT/gpu_verifiers.json
    python bench/gpu_verifiers.py --smoke --out /tmp/v.json       # CPU, tiny configs
    python bench/gpu_verifiers.py --only hpsv3_qwen2vl_7b --budget-s 600 --out $OUT/hpsv3.json   # HPSv3 alone

Verifiers (all the pack's own classes, random weights):
    clipscore_vit_l14   CLIPScoreVerifier, open_clip ViT-L-14
    aesthetic_laion_v2  AestheticVerifier: a CLIPScoreVerifier (open_clip ViT-L-14) + AestheticMLP (768-1024-128-64-16-1)
    pickscore_vit_h14   PickScoreVerifier: transformers CLIPModel with PickScore's ViT-H-14 shapes
    hpsv2_vit_h14       HPSVerifier: open_clip ViT-H-14 (HPSv2's architecture, preprocessing and formula)
    image_reward        ImageRewardVerifier: BLIP ViT-L/16 + BERT-base "med" config with cross-attention + MLP
    vqascore_qwen25vl_3b / _7b   VQAScoreVerifier on Qwen2.5-VL-3B / -7B shapes (bf16), 1024x1024 images at
                        native resolution (max_pixels 1036*1036: 1369 visual tokens each), batch 8
    vlm_rubric_qwen25vl_3b      VLMRubricVerifier (5 aspects, mean_rank members) on Qwen2.5-VL-3B shapes,
                        images capped at the loader's default max_pixels (512 tokens), batch 2 (10 rows)
    (the VLM cases score 64 images at 1024x1024 only; --smoke: tiny configs at 64/128 px)
    hpsv3_qwen2vl_7b    HPSv3Verifier: Qwen2-VL-7B-Instruct (config as published) + HPSv3's reward head (bf16,
                        fp32 head), 64 images at 1024x1024 only, as the VLM cases (resized to 448x448: 256 image
                        tokens); the tests' tiny Qwen2 tokenizer (see make_hpsv3)
plus peer_style_pil_preprocess: CPU time of the PIL + CLIPImageProcessor path the peer pack uses per image."""
from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_common as bc  # noqa: E402

if bc.REPO not in sys.path:
    sys.path.insert(0, bc.REPO)  # the pack's verifiers/ as a top-level package, as the tests import it

PROMPT = "a photograph of an astronaut riding a horse"

OPEN_CLIP_TINY = {"embed_dim": 32,
                  "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 14},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
# PickScore (yuvalkirstain/PickScore_v1) = CLIP ViT-H-14 (laion2B) in transformers' layout
HF_CLIP_H14 = dict(text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu"),
                   vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                      num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu"),
                   projection_dim=1024)
HF_CLIP_TINY = dict(text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                     max_position_embeddings=77),
                    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=224, patch_size=14),
                    projection_dim=32)


def open_clip_model(arch: str, smoke: bool, device, dtype):
    import torch
    from verifiers.clip_score import build_open_clip
    if smoke:
        from open_clip import factory
        factory._MODEL_CONFIGS["bench_tiny_clip"] = OPEN_CLIP_TINY
        model, tok = build_open_clip("bench_tiny_clip")
    else:
        model, tok = build_open_clip(arch)
    model = model.to(device)
    bc.fill_random_(model)
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)
    return model.to(dtype).eval().requires_grad_(False), tok


def make_clipscore(arch, smoke, device, dtype, mode="clipscore"):
    from verifiers import CLIPScoreVerifier
    model, tok = open_clip_model(arch, smoke, device, dtype)
    return CLIPScoreVerifier(model, tok, mode=mode)


# ViT-L-14's output width (768) with tiny towers: --smoke runs the full-size aesthetic MLP on it
OPEN_CLIP_TINY_768 = dict(OPEN_CLIP_TINY, embed_dim=768)
# ImageReward's med_config.json (huggingface.co/THUDM/ImageReward): BERT-base with cross-attention
IR_MED_FULL = {"hidden_size": 768, "intermediate_size": 3072, "max_position_embeddings": 512, "num_attention_heads": 12,
               "num_hidden_layers": 12, "vocab_size": 30524, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
               "pad_token_id": 0}
IR_MED_TINY = dict(IR_MED_FULL, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)
IR_VISION_TINY = {"width": 64, "depth": 2, "heads": 4, "patch_size": 16, "image_size": 224}
# the WordPiece vocabulary of the tests' reduced ImageReward (tracked, travels to the device): tokenisation runs
# the real BertTokenizer code on it; a 90-token vocabulary does not change the model's cost
IR_VOCAB_DIR = os.path.join(bc.REPO, "tests", "fixtures", "imagereward")


def make_aesthetic(smoke, device, dtype):
    """The pack's AestheticVerifier over a CLIPScoreVerifier on open_clip ViT-L-14, with the full-size MLP."""
    from verifiers import CLIPScoreVerifier
    from verifiers.aesthetic import AestheticMLP, AestheticVerifier
    if smoke:
        model, tok = _tiny_open_clip("bench_tiny_clip_768", OPEN_CLIP_TINY_768)
        model = model.to(device)
        bc.fill_random_(model)
        model = model.to(dtype).eval().requires_grad_(False)
    else:
        model, tok = open_clip_model("ViT-L-14", smoke, device, dtype)
    clip = CLIPScoreVerifier(model, tok, mode="cosine")
    mlp = AestheticMLP(int(model.visual.output_dim)).to(device)
    bc.fill_random_(mlp, seed=1)
    v = AestheticVerifier(clip, mlp.to(dtype).eval().requires_grad_(False))
    return v.eval().requires_grad_(False)


def _tiny_open_clip(name, cfg):
    from open_clip import factory
    from verifiers.clip_score import build_open_clip
    factory._MODEL_CONFIGS[name] = cfg
    return build_open_clip(name)


def clip_bpe_tokenizer(folder):
    """transformers' CLIPTokenizer with the real CLIP BPE (49408 tokens), written from open_clip's
    bundled vocabulary (no download): what PickScore's processor folder holds."""
    import json
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer
    os.makedirs(folder, exist_ok=True)
    t = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # open_clip's names -> HF's
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({rename.get(k, k): v for k, v in t.encoder.items()}, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for (a, b), _ in sorted(t.bpe_ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{a} {b}\n")
    tok = CLIPTokenizer.from_pretrained(folder)
    ids = tok([PROMPT])["input_ids"][0]
    if ids[0] != 49406 or ids[-1] != 49407 or max(ids) >= 49408:
        raise RuntimeError(f"the CLIP BPE tokenizer written from open_clip gives unexpected ids {ids}")
    return tok


def make_pickscore(smoke, device, dtype, workdir):
    """The pack's PickScoreVerifier on a transformers CLIPModel of PickScore's ViT-H-14 shapes."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    from verifiers.pick_score import PickScoreVerifier
    from verifiers.preprocess import OPENAI_MEAN, OPENAI_STD
    cfg = CLIPConfig(**(HF_CLIP_TINY if smoke else HF_CLIP_H14))
    with torch.device(device):
        model = CLIPModel(cfg)
    bc.fill_random_(model)
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)  # exp = 100, as published
    model = model.to(dtype).eval().requires_grad_(False)
    tok = clip_bpe_tokenizer(os.path.join(workdir, "clip_bpe_tokenizer"))
    return PickScoreVerifier(model, tok, (224, OPENAI_MEAN, OPENAI_STD))


def make_hps(smoke, device, dtype):
    """The pack's HPSVerifier on open_clip ViT-H-14."""
    from verifiers.hps import HPSVerifier
    model, tok = open_clip_model("ViT-H-14", smoke, device, dtype)
    return HPSVerifier(model, tok, version="v2.1")


def make_image_reward(smoke, device, dtype):
    """The pack's ImageRewardVerifier: ImageRewardModel for the published med_config.json and BLIP ViT-L/16
    (image_reward.VIT_L), random weights; tokenizer through image_reward.load_tokenizer."""
    import torch
    from verifiers import image_reward as ir
    med = dict(IR_MED_TINY if smoke else IR_MED_FULL)
    with torch.device(device):
        model = ir.ImageRewardModel(med, IR_VISION_TINY if smoke else None)
    bc.fill_random_(model)
    model = model.to(dtype).eval().requires_grad_(False)
    tok = ir.load_tokenizer(IR_VOCAB_DIR)
    return ir.ImageRewardVerifier(model, tok)


# Qwen2.5-VL-3B/7B-Instruct's config.json (huggingface.co/Qwen), the fields that set shapes; the tests check
# them against the published parameter counts on the meta device (tests/test_vlm_verifiers.py)
QWEN25_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                        spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                        fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
QWEN25_VL = {
    "3b": dict(text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2), out=2048, tied=True),
    "7b": dict(text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4), out=3584, tied=False),
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2), out=64, tied=False,
                 vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56,
                             fullatt_block_indexes=[1])),
}
VLM_MAX_PIXELS = {"native": 1036 * 1036}  # 1024 px rounds to 1036 = 37 x 28: native size, 1369 tokens


def make_qwen_vl(size, device, dtype, workdir):
    """The pack's QwenVL (verifiers/vlm.py) on a Qwen2.5-VL of the given shapes, random weights, with the
    tests' Qwen2 tokenizer class and chat template (a small vocabulary for tokenising; the embedding and
    output layers keep the published vocabulary size, so the cost is the real one)."""
    import torch
    import transformers
    sys.path.insert(0, os.path.join(bc.REPO, "tests"))
    from tiny_verifiers import QWEN_VL_CHAT_TEMPLATE, write_tiny_qwen_tokenizer, tiny_qwen_vl_config
    from verifiers.vlm import QwenVL
    folder = os.path.join(workdir, f"qwen_tok_{size}")
    tok = write_tiny_qwen_tokenizer(folder)
    spec = QWEN25_VL[size]
    ids = tiny_qwen_vl_config("qwen2_5_vl", tok)
    text = dict(ids["text_config"], **spec["text"], tie_word_embeddings=spec["tied"])
    text["rope_parameters"] = dict(text["rope_parameters"], mrope_section=[2, 3, 3] if size == "tiny" else [16, 24, 24],
                                   rope_theta=1000000.0)
    text.setdefault("vocab_size", len(tok))
    vision = dict(QWEN25_VL_VISION, out_hidden_size=spec["out"], **spec.get("vision", {}))
    cfg = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=spec["tied"],
                                        **{k: v for k, v in ids.items() if k.endswith("token_id")})
    with torch.device(device):
        model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
    bc.fill_random_(model)
    for p in model.parameters():  # fill_random_ re-creates nothing: keep the module's own buffers (rotary)
        p.data = p.data.to(dtype)
    model = model.eval().requires_grad_(False)
    ip = transformers.Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = transformers.Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok,
                                                 video_processor=transformers.Qwen2VLVideoProcessor(),
                                                 chat_template=QWEN_VL_CHAT_TEMPLATE)
    settings = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
                "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711),
                "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}
    return QwenVL(model, processor, settings, description=f"qwen2_5_vl({size}, random)")


def make_vqascore(size, smoke, device, dtype, workdir, pixels="native"):
    """``pixels``: "native" (1036², a 1024² image unresized) or "default" (the loader's default, 512 tokens)."""
    from verifiers.vlm import DEFAULT_MAX_PIXELS
    from verifiers.vqascore import VQAScoreVerifier
    vlm = make_qwen_vl("tiny" if smoke else size, device, dtype, workdir)
    cap = VLM_MAX_PIXELS["native"] if pixels == "native" else DEFAULT_MAX_PIXELS
    return VQAScoreVerifier(vlm, max_pixels=cap, batch_size=8)


class RubricMeanRank:
    """The rubric's aspects as mean-rank ensemble members (verifiers/vlm_rubric.py), timed as Search Loop scores
    them: every member over the batch (one shared forward pass), then the ensemble's combination."""

    def __init__(self, rubric):
        self.rubric = rubric
        self.ensemble = rubric.ensemble("mean_rank")
        self.batch_size = rubric.batch_size

    def score(self, images, prompt):
        return self.ensemble.score(images, prompt)

    def memory_bytes(self):
        return self.rubric.memory_bytes()

    def param_dtype(self):
        return self.rubric.param_dtype()

    def parameters(self):
        return self.rubric.parameters()


def make_rubric(size, smoke, device, dtype, workdir):
    from verifiers.vlm import DEFAULT_MAX_PIXELS
    from verifiers.vlm_rubric import VLMRubricVerifier
    vlm = make_qwen_vl("tiny" if smoke else size, device, dtype, workdir)
    return RubricMeanRank(VLMRubricVerifier(vlm, max_pixels=DEFAULT_MAX_PIXELS, batch_size=2))


# HPSv3: the published Qwen2-VL-7B-Instruct config.json and the tests' tiny tokenizer (tracked, travels to the
# device); the vocabulary is the published one resized as the package resizes it (151657 tokens + <|Reward|>)
HPSV3_DIR = os.path.join(bc.REPO, "tests", "fixtures", "hpsv3")
HPSV3_VOCAB = 151658


def make_hpsv3(smoke, device, dtype):
    """The pack's HPSv3Verifier on HPSv3Model for the published Qwen2-VL-7B-Instruct config (--smoke: the tests'
    tiny config), random weights, in ``dtype`` (bf16 on a GPU that has it, as the loader node casts it) with the
    fp32 reward head the package keeps.  The tokenizer is the tests' 615-token byte-level BPE with Qwen2's special tokens: it
    cuts the package's instruction into more tokens than Qwen2's 151k-token vocabulary would (the row length is
    recorded as seq_tokens), so the language-model part is an upper bound."""
    import torch
    from verifiers import hpsv3
    cfg = "config.json" if smoke else "qwen2_vl_7b_config.json"
    text, vision = hpsv3.read_config(os.path.join(HPSV3_DIR, cfg))
    tok = hpsv3.load_tokenizer(HPSV3_DIR)
    vocab = tok.get_vocab_size(with_added_tokens=True) if smoke else HPSV3_VOCAB
    with torch.device("meta"):
        model = hpsv3.HPSv3Model(text, vision, vocab)
    model = model.to(dtype).to_empty(device=device)
    bc.fill_random_(model)
    model.rm_head.float()
    # the tokenizer's own <|image_pad|> id: the tests' small tokenizer numbers it differently from the 7B config
    image_id = tok.token_to_id("<|image_pad|>")
    v = hpsv3.HPSv3Verifier(model.eval().requires_grad_(False), tok,
                            text["image_token_id"] if image_id is None else int(image_id))
    v.seq_tokens = len(v.token_ids(PROMPT, 256))
    return v


def peer_style_preprocess(images, smoke):
    """What the peer pack does per candidate before CLIP: tensor -> PIL ->
    CLIPImageProcessor (resize 224 bicubic, crop, normalise) on the CPU."""
    from torchvision.transforms import ToPILImage
    from transformers import CLIPImageProcessor
    ip = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    t0 = time.perf_counter()
    for i in range(images.shape[0]):
        pil = ToPILImage()(images[i].permute(2, 0, 1))
        ip(images=pil, return_tensors="pt")
    return time.perf_counter() - t0


def full_size_check():
    """Parameter counts of the full-size architectures, built on the meta
    device (no memory): checks the configs used on the GPU, also in --smoke."""
    import torch
    import open_clip
    from transformers import CLIPConfig, CLIPModel
    out = {}
    for arch in ("ViT-L-14", "ViT-H-14"):
        try:
            with torch.device("meta"):
                m = open_clip.create_model(arch, pretrained=None, device="meta")
            out["open_clip " + arch] = bc.param_count(m)
        except Exception as e:  # noqa: BLE001
            out["open_clip " + arch] = f"error: {type(e).__name__}: {e}"
    try:
        with torch.device("meta"):
            m = CLIPModel(CLIPConfig(**HF_CLIP_H14))
        out["transformers CLIP ViT-H-14 (PickScore)"] = bc.param_count(m)
    except Exception as e:  # noqa: BLE001
        out["transformers CLIP ViT-H-14 (PickScore)"] = f"error: {type(e).__name__}: {e}"
    try:
        from verifiers import image_reward as ir
        out["ImageReward (BLIP ViT-L/16 + med BERT + MLP)"] = sum(
            int(torch.Size(s).numel()) for s in ir.expected_keys(dict(IR_MED_FULL)).values())
    except Exception as e:  # noqa: BLE001
        out["ImageReward (BLIP ViT-L/16 + med BERT + MLP)"] = f"error: {type(e).__name__}: {e}"
    for size in ("3b", "7b"):
        try:
            import transformers
            spec = QWEN25_VL[size]
            text = dict(spec["text"], tie_word_embeddings=spec["tied"],
                        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
            with torch.device("meta"):
                m = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(
                    text_config=text, vision_config=dict(QWEN25_VL_VISION, out_hidden_size=spec["out"]),
                    tie_word_embeddings=spec["tied"]))
            out[f"Qwen2.5-VL-{size.upper()}"] = bc.param_count(m)
        except Exception as e:  # noqa: BLE001
            out[f"Qwen2.5-VL-{size.upper()}"] = f"error: {type(e).__name__}: {e}"
    try:
        from verifiers import hpsv3
        text, vision = hpsv3.read_config(os.path.join(HPSV3_DIR, "qwen2_vl_7b_config.json"))
        out["HPSv3 (Qwen2-VL-7B + reward head, no lm_head)"] = sum(
            int(torch.Size(s).numel()) for s in hpsv3.expected_keys(text, vision, HPSV3_VOCAB).values())
    except Exception as e:  # noqa: BLE001
        out["HPSv3 (Qwen2-VL-7B + reward head, no lm_head)"] = f"error: {type(e).__name__}: {e}"
    try:
        from verifiers.aesthetic import AestheticMLP
        with torch.device("meta"):
            out["LAION aesthetic MLP"] = bc.param_count(AestheticMLP(768))
    except Exception as e:  # noqa: BLE001
        out["LAION aesthetic MLP"] = f"error: {type(e).__name__}: {e}"
    return out


def time_verifier(v, name, sizes, n_images, device, clock, mem, reps):
    import torch
    rows = []
    resident = mem.reset().get("resident_gib")
    g = torch.Generator().manual_seed(0)
    for res in sizes:
        imgs_cpu = torch.rand(n_images, res, res, 3, generator=g)
        places = [("cpu", imgs_cpu)]
        if device.type == "cuda":
            places.append(("cuda", imgs_cpu.to(device)))
        for where, imgs in places:
            with torch.inference_mode():
                s = v.score(imgs, PROMPT)  # warm-up (also fills the text cache, as the first micro-batch of a search does)
                mem.reset()
                ts = []
                for _ in range(reps):
                    t0 = clock.now()
                    s = v.score(imgs, PROMPT)
                    ts.append(clock.now() - t0)
            med = statistics.median(ts)
            row = {"resolution": res, "input_on": where, "n_images": n_images, "median_s": round(med, 4),
                   "all_s": [round(t, 4) for t in ts], "images_per_s": round(n_images / med, 2),
                   "ms_per_image": round(1000 * med / n_images, 3), "finite": bool(torch.isfinite(s).all()),
                   "score_example": float(s[0])}
            row.update(mem.peak())
            rows.append(row)
            bc.log(f"  {name} {res}px from {where}: {row['median_s']} s / {n_images}")
        del imgs_cpu, places
    return {"resident_gib": resident, "batch_size": getattr(v, "batch_size", None), "timings": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=os.path.join(bc.REPO, "bench", "out", "gpu_verifiers.json"))
    ap.add_argument("--only", default=None, help="comma-separated verifier names")
    ap.add_argument("--budget-s", type=float, default=150.0)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    import torch
    deadline = bc.Deadline(args.budget_s)
    cpu = args.smoke or not torch.cuda.is_available()
    if not args.smoke and cpu:
        raise SystemExit("no CUDA device: use --smoke for the CPU test")
    device = torch.device("cpu" if cpu else "cuda")
    dtype = torch.float32 if cpu else torch.float16
    # the VLMs run in bf16 on the GPU, as the pack casts them (verifiers/vlm.py QwenVL.cast_for_gpu)
    vlm_dtype = torch.float32 if cpu else (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    sizes = [64, 128] if args.smoke else [512, 1024]
    n_images = 4 if args.smoke else 64
    reps = args.reps or (1 if args.smoke else 3)
    clock, mem = bc.Clock(device), bc.Memory(device)
    meta = bc.environment(device)
    meta.update(smoke=args.smoke, dtype=str(dtype), sizes=sizes, n_images=n_images, reps=reps,
                timing="median of reps after one warm-up; torch.cuda.synchronize around each call")
    results = bc.Results(args.out, meta)
    workdir = tempfile.mkdtemp(prefix="infscale_vbench_")
    atexit.register(shutil.rmtree, workdir, True)     # the scratch folder goes when the run ends
    results.doc["models"]["full_size_on_meta"] = full_size_check()
    results.write()

    builders = {
        "clipscore_vit_l14": lambda: make_clipscore("ViT-L-14", args.smoke, device, dtype),
        "aesthetic_laion_v2": lambda: make_aesthetic(args.smoke, device, dtype),
        "pickscore_vit_h14": lambda: make_pickscore(args.smoke, device, dtype, workdir),
        "hpsv2_vit_h14": lambda: make_hps(args.smoke, device, dtype),
        "image_reward": lambda: make_image_reward(args.smoke, device, dtype),
        "vqascore_qwen25vl_3b": lambda: make_vqascore("3b", args.smoke, device, vlm_dtype, workdir),
        "vqascore_qwen25vl_7b": lambda: make_vqascore("7b", args.smoke, device, vlm_dtype, workdir),
        "vqascore_qwen25vl_3b_512tok": lambda: make_vqascore("3b", args.smoke, device, vlm_dtype, workdir,
                                                             pixels="default"),
        "vlm_rubric_qwen25vl_3b": lambda: make_rubric("3b", args.smoke, device, vlm_dtype, workdir),
        "hpsv3_qwen2vl_7b": lambda: make_hpsv3(args.smoke, device, vlm_dtype),
    }
    classes = {"clipscore_vit_l14": "CLIPScoreVerifier", "aesthetic_laion_v2": "AestheticVerifier",
               "pickscore_vit_h14": "PickScoreVerifier", "hpsv2_vit_h14": "HPSVerifier",
               "image_reward": "ImageRewardVerifier", "vqascore_qwen25vl_3b": "VQAScoreVerifier",
               "vqascore_qwen25vl_7b": "VQAScoreVerifier", "vqascore_qwen25vl_3b_512tok": "VQAScoreVerifier", "vlm_rubric_qwen25vl_3b": "RubricMeanRank",
               "hpsv3_qwen2vl_7b": "HPSv3Verifier"}
    names = args.only.split(",") if args.only else list(builders) + ["peer_style_pil_preprocess"]
    for name in names:
        case = {"case": name}
        if name == "peer_style_pil_preprocess":
            rows = []
            g = torch.Generator().manual_seed(0)
            for res in sizes:
                imgs = torch.rand(n_images, res, res, 3, generator=g)
                t = peer_style_preprocess(imgs, args.smoke)
                rows.append({"resolution": res, "n_images": n_images, "cpu_s": round(t, 4),
                             "ms_per_image": round(1000 * t / n_images, 3)})
            case.update(status="ok", timings=rows, note="CPU only, one thread of work per image, no model")
            results.add(case)
            continue
        if name not in builders:
            case.update(status="error", error=f"unknown verifier {name}")
            results.add(case)
            continue
        if not args.smoke and deadline.left() < 25:
            case.update(status="skipped", reason=f"time budget ({deadline.left():.0f} s left)")
            results.add(case)
            continue
        bc.log(f"verifier {name} ...")
        v = None
        try:
            t0 = time.perf_counter()
            v = builders[name]()
            build_s = time.perf_counter() - t0
            params = bc.param_count(v)
            case.update(verifier_class=type(v).__name__, params=params,
                        weights_gib=round(v.memory_bytes() / 2 ** 30, 3), dtype=str(v.param_dtype()),
                        build_s=round(build_s, 2))
            if hasattr(v, "seq_tokens"):
                case["seq_tokens"] = v.seq_tokens
            if type(v).__name__ != classes[name]:
                raise RuntimeError(f"{name}: built {type(v).__name__}, expected the pack's {classes[name]}")
            vlm_case = name.startswith(("vqascore_", "vlm_rubric_", "hpsv3_"))
            case.update(time_verifier(v, name, sizes[-1:] if vlm_case else sizes, n_images, device, clock, mem,
                                      min(reps, 2) if vlm_case else reps))
            case["status"] = "ok" if all(r["finite"] for r in case["timings"]) else "error"
            if case["status"] == "error":
                case["error"] = "non-finite scores"
        except Exception as e:  # noqa: BLE001
            case.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            bc.log(f"  error: {e}")
        finally:
            del v
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results.add(case)
    results.doc["meta"]["wall_s"] = round(deadline.elapsed(), 1)
    results.write()
    print("\n%-26s %-8s %8s  %s" % ("verifier", "status", "params", "ms/image at (res, input): peak GiB"))
    for c in results.doc["cases"]:
        t = "; ".join(f"{r['resolution']}/{r.get('input_on', 'cpu')}: {r['ms_per_image']} ms"
                      + (f" {r['peak_allocated_gib']}G" if "peak_allocated_gib" in r else "")
                      for r in c.get("timings", []))
        print("%-26s %-8s %8s  %s" % (c["case"], c.get("status"), c.get("params", ""), t or c.get("reason") or c.get("error")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
