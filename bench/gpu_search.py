"""GPU benchmark of SearchLoop (issue #8): random-weight models of the real
architectures, built through ComfyUI's own classes, timed against the limit
(raw batched sampling + decode + score), serial batch 1, and the peer pack
(YRIKKA/ComfyUI-InferenceTimeScaling) in the same process on the same models.

    python bench/gpu_search.py --out $OUT/gpu_search.json            # an NVIDIA GPU (bench/README.md)
    python bench/gpu_search.py --smoke --out /tmp/smoke.json         # CPU, tiny configs, < 60 s

Cases (--cases, comma separated; a model name selects all its sub-cases):
    sd15.limit sd15.ours sd15.serial sd15.peer      SD1.5 UNet fp16, 512x512, 20 Euler steps, CFG 7
    sdxl.limit sdxl.ours sdxl.serial sdxl.peer      SDXL UNet fp16, 1024x1024, 20 Euler steps, CFG 7
    caps                                            SearchLoop under a 12 / 24 GB cap (subprocess each)
    n256                                            SearchLoop N=256 at SD1.5-512
    strategies                                      SD1.5-512, N=16 through SearchLoop's strategy input: zero-order,
                                                    paths, coarse-to-fine random (equal NFEs; equal candidates)
                                                    and plain random as the baseline
    sd15.devices                                    SD1.5-512, N=16: every strategy with SearchLoop's devices 'all'
                                                    against the model's one GPU (the same search, the speed-up of
                                                    every GPU of the machine; --smoke: 'cpu,cpu' against 'cpu');
                                                    not in the default set
    flux.limit flux.ours flux.peer                  FLUX-size DiT (11.9B) bf16, 512x512, 20 Euler steps, CFG 1
    wan21.limit wan21.ours                          Wan-2.1-1.3B-size DiT fp16 + the Wan 2.1 VAE, 832x480, 33 frames,
                                                    20 Euler steps, CFG 5; N = 4 and 8; first/middle/last frames scored
    wan22.limit wan22.ours                          Wan-2.2-5B-size DiT (48-channel latents) fp16 + the Wan 2.2 VAE, the
                                                    same video (--smoke: only its detection check; the 705 M-parameter
                                                    VAE is too heavy for a CPU smoke run)
    wan21.ours_preview wan22.ours_preview           the same search (exact_winner off) pruning on the latent preview:
                                                    Video Scoring's preview_keep 0.5, preview_warmup 1
    wan21.ours_first wan22.ours_first               the same search (exact_winner off) scoring the first frame alone
                                                    (the causal VAE decodes one latent frame per candidate)
                                                    (these four run only when named: 'wan22' alone selects the
                                                    cases above)
Every measurement is one timed run after a warm-up, with torch.cuda.synchronize
around each timed region; candidates/s counts every candidate's full
generation, its decode and its score (and, for SearchLoop, the re-render of the
top-k at batch 1).  SearchLoop is called as a node and never instrumented: its
split (denoise / decode / verify / rerender), NFEs and micro-batch are read off
the search report it returns (``phases``, ``nfe_total``, ``rerender_nfe``,
``settings``).  Only the peer pack's run wraps functions (``comfy.sample.sample``,
its VAE's ``decode`` and the peer's ``score_candidates``) to split its time."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import atexit
import shutil
import tempfile
import time
import traceback
import types
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_common as bc  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse"

# ---------------------------------------------------------------------------- model configs
# Full-size configs: exactly what comfy.model_detection derives from the real
# checkpoints' keys (checked on the meta device by detect_check below).
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "num_heads": -1, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
FLUX_DIT = {
    "image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 768,
    "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
    "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True, "guidance_embed": True,
}
# Wan: exactly the keys comfy.model_detection reads off wan2.1_t2v_1.3B / wan2.2_ti2v_5B (text_dim stays 4096)
WAN21_DIT = {
    "image_model": "wan2.1", "model_type": "t2v", "dim": 1536, "out_dim": 16, "num_heads": 12, "ffn_dim": 8960,
    "num_layers": 30, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
    "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16,
}
WAN22_DIT = dict(WAN21_DIT, dim=3072, out_dim=48, num_heads=24, ffn_dim=14336, in_dim=48)
# comfy.sd.VAE's configs for the Wan VAEs (fixed there), and their spatial compression
WAN_VAE = {"wan21": ({"dim": 96, "z_dim": 16}, 8), "wan22": ({"dim": 160, "z_dim": 48}, 16)}
VIDEO = {"width": 832, "height": 480, "frames": 33}  # 480p-class, 33 frames (9 latent frames)
VIDEO_SMOKE = {"width": 16, "height": 16, "frames": 5}
VIDEO_KINDS = ("wan21", "wan22")
# Tiny configs for --smoke (same classes, same supported-model configs).
TINY_SD15 = dict(SD15_UNET, model_channels=64, num_res_blocks=[1], channel_mult=[1], transformer_depth=[1],
                 transformer_depth_output=[1, 1])
TINY_SDXL = dict(SDXL_UNET, model_channels=64, num_res_blocks=[1], channel_mult=[1], transformer_depth=[1],
                 transformer_depth_middle=1, transformer_depth_output=[1, 1])
TINY_FLUX = dict(FLUX_DIT, hidden_size=128, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[16, 24, 24])
TINY_WAN21 = dict(WAN21_DIT, dim=128, num_heads=1, ffn_dim=256, num_layers=1)
TINY_WAN22 = dict(WAN22_DIT, dim=128, num_heads=1, ffn_dim=256, num_layers=1)

# name -> (supported_models class, unet config, tiny config, expected parameter count of the full model)
MODELS = {
    "sd15": ("SD15", SD15_UNET, TINY_SD15),
    "sdxl": ("SDXL", SDXL_UNET, TINY_SDXL),
    "flux": ("Flux", FLUX_DIT, TINY_FLUX),
    "wan21": ("WAN21_T2V", WAN21_DIT, TINY_WAN21),
    "wan22": ("WAN22_T2V", WAN22_DIT, TINY_WAN22),
}
# Output layers scaled down (real models zero-initialise them): keeps 20 CFG-7
# steps of a random network finite in fp16.
OUTPUT_GAINS = {"out.2": 0.1, "final_layer.linear": 0.1, "head.head": 0.1}

SD_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                   "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}

# transformers CLIP ViT-L/14 (openai/clip-vit-large-patch14), for the peer pack's verifier
HF_CLIP_L14 = dict(text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                    num_attention_heads=12, max_position_embeddings=77),
                   vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                      num_attention_heads=16, image_size=224, patch_size=14),
                   projection_dim=768)
HF_CLIP_TINY = dict(text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                     max_position_embeddings=77),
                    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=224, patch_size=14),
                    projection_dim=32)
OPEN_CLIP_TINY = {"embed_dim": 32,
                  "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 14},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}


class Plan:
    """Sizes and counts per mode (GPU full size, or CPU smoke)."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.steps = 2 if smoke else 20
        if smoke:
            self.res = {"sd15": 32, "sdxl": 32, "flux": 32}
            self.limit_batches = {"sd15": [1, 2], "sdxl": [1, 2], "flux": [1, 2]}
            self.ours_n = {"sd15": [2], "sdxl": [2], "flux": [2]}
            self.serial_n = {"sd15": 2, "sdxl": 2, "flux": 2}
            self.peer_n = {"sd15": [2], "sdxl": [2], "flux": [2]}
            self.n256 = 4
            self.caps_gb = [12]
            self.cap_n = 2
            self.video = VIDEO_SMOKE
            self.limit_batches.update(wan21=[2], wan22=[2])
            self.ours_n.update(wan21=[2], wan22=[2])
        else:
            self.res = {"sd15": 512, "sdxl": 1024, "flux": 512}
            self.limit_batches = {"sd15": [8, 16, 32, 64], "sdxl": [1, 2, 4, 8], "flux": [1, 4, 8]}
            self.ours_n = {"sd15": [4, 16, 64], "sdxl": [8], "flux": [4, 16]}
            self.serial_n = {"sd15": 16, "sdxl": 8, "flux": 4}
            self.peer_n = {"sd15": [16], "sdxl": [8], "flux": [4]}
            self.n256 = 256
            self.caps_gb = [12, 24]
            self.cap_n = 16
            self.video = VIDEO
            self.limit_batches.update(wan21=[1, 2, 4, 8], wan22=[1, 2, 4, 8])
            self.ours_n.update(wan21=[4, 8], wan22=[4, 8])
        # strategies case (SD1.5): N, coarse-to-fine's coarse steps (of self.steps) and finalists re-rendered
        # the micro-batch SearchLoop is asked for: its own sizing (0) on a GPU; in the CPU smoke run the whole N,
        # since on the CPU SearchLoop's own default is one candidate at a time
        self.ours_micro_batch = (lambda n: n) if smoke else (lambda n: 0)
        self.strat_n = 4 if smoke else 16
        # the halving case: N = strat_n; successive halving at N's budget and at half of it, against random
        # search at N and N/2 (the CPU quality benchmark's digits model matched random's N=32 with half the NFEs)
        self.coarse_steps = 1 if smoke else 8
        self.rerender = 2 if smoke else 4
        self.cfg = {"sd15": 7.0, "sdxl": 7.0, "flux": 1.0, "wan21": 5.0, "wan22": 5.0}
        self.scheduler = {"sd15": "normal", "sdxl": "normal", "flux": "simple", "wan21": "simple", "wan22": "simple"}
        # seconds per candidate before anything is measured (first guesses for an H100-class card), for the time budget
        self.guess_batched = {"sd15": 0.12, "sdxl": 1.2, "flux": 2.0, "wan21": 10.0, "wan22": 30.0}
        self.guess_serial = {"sd15": 1.0, "sdxl": 2.5, "flux": 2.5, "wan21": 12.0, "wan22": 35.0}


# ---------------------------------------------------------------------------- building
def model_class(comfy_name: str):
    import comfy.supported_models as sm
    return getattr(sm, comfy_name)


def diffusion_module_ctor(kind: str):
    if kind in VIDEO_KINDS:
        from comfy.ldm.wan.model import WanModel
        return WanModel
    if kind == "flux":
        from comfy.ldm.flux.model import Flux
        return Flux
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return UNetModel


def detect_check(kind: str, config: Dict[str, Any]) -> Dict[str, Any]:
    """Builds the diffusion model on the meta device and hands its state dict's
    shapes to comfy.model_detection, as loading a real checkpoint would: the
    detected supported-model class must be the expected one and the detected
    config must agree with ours."""
    import torch
    import comfy.model_detection as md
    import comfy.ops
    name = MODELS[kind][0]
    cfg = {k: v for k, v in config.items() if k != "image_model"}
    t0 = time.perf_counter()
    with torch.device("meta"):
        m = diffusion_module_ctor(kind)(**cfg, dtype=torch.float16, device="meta",
                                       operations=comfy.ops.disable_weight_init)
    prefix = "model.diffusion_model."
    sd = {prefix + k: v for k, v in m.state_dict().items()}
    params = sum(v.numel() for v in m.state_dict().values())
    mc = md.model_config_from_unet(sd, prefix)
    got = type(mc).__name__ if mc is not None else None
    diffs = {}
    if mc is not None:
        for k, v in config.items():
            dv = mc.unet_config.get(k, "<absent>")
            if k in ("num_heads", "num_head_channels") or dv == v:
                continue
            diffs[k] = {"ours": v, "detected": dv}
    ok = got == name and not diffs
    return {"detected_as": got, "expected": name, "ok": ok, "config_differences": diffs, "params": params,
            "seconds": round(time.perf_counter() - t0, 2)}


def build_diffusion(kind: str, config: Dict[str, Any], device, dtype, seed: int = 0, build_device=None):
    """The diffusion model as comfy.sd.load_checkpoint_guess_config builds it
    (supported-model config -> model_base on the initial load device -> ModelPatcher),
    with random weights instead of a state dict."""
    import comfy.model_management as mm
    import comfy.model_patcher
    cls = model_class(MODELS[kind][0])
    mc = cls(dict(config))
    manual_cast = mm.unet_manual_cast(dtype, device, mc.supported_inference_dtypes)
    mc.set_inference_dtype(dtype, manual_cast)
    t0 = time.perf_counter()
    model = mc.get_model({}, "", device=build_device or device)
    n = bc.fill_random_(model.diffusion_model, seed, OUTPUT_GAINS)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())
    if device.type != "cpu" and build_device is None:
        try:
            mm.load_models_gpu([patcher], force_full_load=True)
        except TypeError:  # 2024 host: no force_full_load
            mm.load_models_gpu([patcher])
    info = {"class": type(mc).__name__, "model_base": type(model).__name__, "params": n,
            "dtype": str(dtype), "manual_cast": str(manual_cast), "build_s": round(time.perf_counter() - t0, 2)}
    return patcher, info


def build_tiny_vae(latent_channels: int, scale_shift, seed: int = 0):
    """--smoke only: a random TAESD, which comfy.sd.VAE recognises by its keys
    (the full-size VAE is still built, to check that path, but decoding with it
    on a shared CPU takes seconds per call)."""
    import torch
    import comfy.sd
    import comfy.taesd.taesd as taesd
    try:
        m = taesd.TAESD(latent_channels=latent_channels)
    except TypeError:  # 2024 host: 4 channels only
        m = taesd.TAESD()
    bc.fill_random_(m, seed)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    for k, v in (("vae_scale", scale_shift[0]), ("vae_shift", scale_shift[1])):
        if k in sd:
            sd[k] = torch.tensor(v)
    with torch.inference_mode():
        return comfy.sd.VAE(sd=sd)


def build_vae(latent_channels: int, seed: int = 0):
    """comfy.sd.VAE from a random state dict with the real key layout: SD/SDXL
    checkpoints' AutoencoderKL (with quant convs) for 4 channels, FLUX's
    ae.safetensors layout (no quant convs) for 16."""
    import torch
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL, AutoencodingEngine
    t0 = time.perf_counter()
    dd = dict(SD_VAE_DDCONFIG, z_channels=latent_channels)
    if latent_channels == 4:
        m = AutoencoderKL(ddconfig=dd, embed_dim=4)
    else:
        m = AutoencodingEngine(regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                               encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": dd},
                               decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": dd})
    n = bc.fill_random_(m, seed)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    del m
    with torch.inference_mode():
        vae = comfy.sd.VAE(sd=sd)
    return vae, {"latent_channels": latent_channels, "params": n, "dtype": str(getattr(vae, "vae_dtype", "?")),
                 "build_s": round(time.perf_counter() - t0, 2)}


def build_wan_vae(kind: str, seed: int = 0):
    """comfy.sd.VAE from a random state dict of the Wan 2.1 or 2.2 VAE (the classes and sizes comfy.sd.VAE
    builds for their keys)."""
    import torch
    import comfy.sd
    t0 = time.perf_counter()
    cfg = dict(WAN_VAE[kind][0], dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0)
    if kind == "wan22":
        import comfy.ldm.wan.vae2_2 as wv
    else:
        import comfy.ldm.wan.vae as wv
    m = wv.WanVAE(**cfg)
    n = bc.fill_random_(m, seed)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    for k in sd:
        if k.endswith(".gamma"):  # RMS_norm scales: 1, as a Norm layer's weight
            sd[k] = torch.ones_like(sd[k])
    del m
    with torch.inference_mode():
        vae = comfy.sd.VAE(sd=sd)
    return vae, {"class": f"{wv.__name__}.WanVAE", "latent_channels": cfg["z_dim"], "params": n,
                 "dtype": str(getattr(vae, "vae_dtype", "?")), "build_s": round(time.perf_counter() - t0, 2)}


def build_our_verifier(pack, device, smoke: bool, seed: int = 0):
    """The pack's CLIPScoreVerifier (open_clip ViT-L-14, random weights) behind
    the pack's HostVerifier, exactly what the loader node returns."""
    import torch
    t0 = time.perf_counter()
    clip_mod = __import__(pack.__name__ + ".verifiers.clip_score", fromlist=["x"])
    host_mod = __import__(pack.__name__ + ".engine.verifier_models", fromlist=["x"])
    if smoke:
        import open_clip
        from open_clip import factory
        factory._MODEL_CONFIGS["bench_tiny_clip"] = OPEN_CLIP_TINY
        model = open_clip.create_model("bench_tiny_clip", pretrained=None)
        tok = open_clip.get_tokenizer("bench_tiny_clip")
        arch = "tiny open_clip (ViT-L-14 classes)"
    else:
        model, tok = clip_mod.build_open_clip("ViT-L-14")
        arch = "ViT-L-14"
    model = model.to(device)
    n = bc.fill_random_(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)
    v = clip_mod.CLIPScoreVerifier(model.eval(), tok, mode="clipscore")
    hv = host_mod.HostVerifier(v, f"clipscore {arch} (random weights)")
    return hv, {"arch": arch, "params": n, "dtype": str(v.param_dtype()), "build_s": round(time.perf_counter() - t0, 2)}


def conditioning(kind: str, res: int, seed: int = 0):
    import torch
    g = torch.Generator().manual_seed(seed + 7)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    if kind in VIDEO_KINDS:  # UMT5-XXL's 512 tokens x 4096
        return [[r(1, 512, 4096), {}]], [[r(1, 512, 4096), {}]]
    if kind == "sd15":
        return [[r(1, 77, 768), {}]], [[r(1, 77, 768), {}]]
    if kind == "sdxl":
        extra = {"width": res, "height": res, "crop_w": 0, "crop_h": 0, "target_width": res, "target_height": res}
        return ([[r(1, 77, 2048), dict(extra, pooled_output=r(1, 1280))]],
                [[r(1, 77, 2048), dict(extra, pooled_output=r(1, 1280))]])
    return ([[r(1, 256, 4096), {"pooled_output": r(1, 768), "guidance": 3.5}]],
            [[r(1, 256, 4096), {"pooled_output": r(1, 768), "guidance": 3.5}]])


class Bundle:
    """Everything one model's cases share."""

    def __init__(self, kind, patcher, vae, verifier, positive, negative, latent_shape, info):
        self.kind, self.patcher, self.vae, self.verifier = kind, patcher, vae, verifier
        self.positive, self.negative, self.latent_shape, self.info = positive, negative, latent_shape, info

    def latent(self, batch: int = 1):
        import torch
        return torch.zeros([batch] + list(self.latent_shape[1:]))


def build_bundle(kind: str, plan: Plan, device, verifier, seed: int = 0, offload: bool = False) -> Bundle:
    """``offload``: build the weights on the CPU and let ComfyUI's model management
    load what fits (a model larger than the card, --lowvram)."""
    import torch
    _, full, tiny = MODELS[kind]
    cfg = tiny if plan.smoke else full
    if device.type == "cpu":
        dtype = torch.float32
    else:
        dtype = torch.bfloat16 if kind == "flux" else torch.float16
    import torch as _t
    patcher, minfo = build_diffusion(kind, cfg, device, dtype, seed, build_device=_t.device("cpu") if offload else None)
    if kind in VIDEO_KINDS:
        vae, vinfo = build_wan_vae(kind, seed + 1)
        v, comp = plan.video, WAN_VAE[kind][1]
        pos, neg = conditioning(kind, 0, seed)
        shape = [1, WAN_VAE[kind][0]["z_dim"], (v["frames"] - 1) // 4 + 1, v["height"] // comp, v["width"] // comp]
        info = {"diffusion": minfo, "vae": vinfo, "resolution": f"{v['width']}x{v['height']}", "frames": v["frames"],
                "latent_shape": shape, "tiny": plan.smoke}
        return Bundle(kind, patcher, vae, verifier, pos, neg, shape, info)
    ch = 16 if kind == "flux" else 4
    if plan.smoke and kind == "sdxl":  # same AutoencoderKL path as sd15: not built again on a slow CPU
        vae, vinfo = None, {"latent_channels": ch, "full_size": "not built in --smoke (same path as sd15)"}
    else:
        vae, vinfo = build_vae(ch, seed + 1)
    if plan.smoke:
        vae = build_tiny_vae(ch, (1.5305, 0.0609) if kind == "flux" else (0.18215, 0.0), seed + 1)
        vinfo["smoke_decoder"] = "TAESD (full-size VAE built but not used for decoding)"
    res = plan.res[kind]
    pos, neg = conditioning(kind, res, seed)
    info = {"diffusion": minfo, "vae": vinfo, "resolution": res, "tiny": plan.smoke}
    return Bundle(kind, patcher, vae, verifier, pos, neg, [1, ch, res // 8, res // 8], info)


def free_bundle(b: Optional[Bundle]) -> None:
    import gc
    import torch
    import comfy.model_management as mm
    if b is None:
        return
    mm.unload_all_models()
    b.patcher = b.vae = None
    gc.collect()
    mm.soft_empty_cache(True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- reading SearchLoop's report
# SearchLoop is never instrumented: everything below is read off the search
# report it returns (its 4th output, search/report.py): ``phases`` (wall time
# and calls per phase, from the pack's PhaseClock), ``nfe_total``,
# ``rerender_nfe``, ``nfe_per_generation``, ``settings`` and the candidates.
SPLIT = ("denoise", "decode", "verify", "rerender")


def phase_split(report, total: float) -> Dict[str, float]:
    """denoise / decode / verify / rerender seconds from ``report.phases``; ``other_s`` is the rest of the
    benchmark's synchronised wall time around ``SearchLoop().search`` (the report's own "other" plus the node's
    set-up before the pipeline starts its clock)."""
    ph = report.phases or {}
    split = {f"{p}_s": float((ph.get(p) or {}).get("seconds", 0.0)) for p in SPLIT}
    split["other_s"] = max(0.0, total - sum(split.values()))
    return {k: round(v, 4) for k, v in split.items()}


def phase_calls(report) -> Dict[str, int]:
    return {p: int(v.get("calls", 0)) for p, v in (report.phases or {}).items()}


def exact_rerender_nfe(report) -> Optional[int]:
    """NFEs of the finalist step's batch-1 re-renders: one full generation per "rerender" phase (the report's
    ``rerender_nfe``; coarse-to-fine's full-step stage is in ``nfe_total`` and ``settings["full_steps_nfe"]``)."""
    gen = report.nfe_per_generation
    if gen is None:
        return None
    return phase_calls(report).get("rerender", 0) * int(gen)


def images_scored(rep: Dict[str, Any]) -> int:
    """Images the verifier scored during the search, read off a report's dict (``SearchReport.to_dict``):
    one per candidate; for paths every re-noised row of every round (x0-predictions included) plus the
    survivors finished without search; for coarse-to-fine the coarse search's images too.  The finalist
    step's re-render scores are counted by the caller (one per "rerender" phase)."""
    st = rep.get("settings") or {}
    n = 0
    inner = st.get("coarse_report")
    if isinstance(inner, dict):
        n += images_scored(inner)
    rounds = st.get("rounds")
    if rep.get("algorithm") == "paths" and isinstance(rounds, list):
        n += sum(len(r.get("scores") or []) for r in rounds)
        if "finished_without_search_from_index" in st:
            n += len(rep.get("candidates") or [])
    else:
        n += len(rep.get("candidates") or [])
    return n


def oom_backoffs(n: int, requested: int, used: Optional[int]) -> Optional[int]:
    """OOM back-offs inferred from the micro-batch the report says was used (``settings["micro_batch"]``: the
    size after any back-off, each of which halves it).  Known when the planned size is: ``min(requested, N)``
    for an explicit micro-batch; for the pack's own sizing only when it used N (then nothing was halved)."""
    if used is None:
        return None
    if requested > 0:
        size, k = max(1, min(int(requested), int(n))), 0
        while size > used:
            size, k = max(1, size // 2), k + 1
        return k
    return 0 if used == n else None


def make_strategies(pack, plan: "Plan") -> Dict[str, Any]:
    """The strategies, made by the pack's strategy nodes exactly as a graph would (the nodes are generated
    from the algorithm registry: node ID ``InfScale_`` + ``Algorithm.node``; widget defaults read from
    INPUT_TYPES), each checked against the search.strategies.Strategy built directly."""
    m = pack.NODE_CLASS_MAPPINGS
    St = sys.modules[pack.__name__ + ".search.strategies"].Strategy
    algs = sys.modules[pack.__name__ + ".search.registry"].algorithms()

    def node(name):
        return m["InfScale_" + algs[name].node]

    def defaults(name):
        inputs = node(name).INPUT_TYPES()
        widgets = dict(inputs.get("required", {}), **inputs.get("optional", {}))
        return {k: v[1]["default"] for k, v in widgets.items()
                if k != "budget_nfe" and len(v) > 1 and "default" in v[1]}

    n, full = plan.strat_n, plan.steps
    zo_params = dict(defaults("zero_order"), neighbours=2, cosine=0.95)
    paths_params = dict(defaults("paths"), paths=2, noises_per_path=2)
    zo = node("zero_order")().make(budget_nfe=0, **zo_params)[0]
    paths = node("paths")().make(budget_nfe=0, **paths_params)[0]
    C2F = m["InfScale_CoarseToFine"]
    c2f = C2F().make(coarse_steps=plan.coarse_steps, finalists=plan.rerender)[0]
    # equal candidate count: a budget of N coarse generations + the finalists' full ones (Euler: 1 NFE a step)
    eq_budget = n * plan.coarse_steps + plan.rerender * full
    inner = node("random")().make(budget_nfe=eq_budget)[0]
    c2f_eq = C2F().make(coarse_steps=plan.coarse_steps, finalists=plan.rerender, strategy=inner)[0]
    direct = {
        "zero_order": St("zero_order", algs["zero_order"].resolve(zo_params)),
        "paths": St("paths", algs["paths"].resolve(paths_params)),
        "c2f_random": St("random", {}, coarse_steps=plan.coarse_steps, rerender=plan.rerender),
        "c2f_random_eqcand": St("random", {}, budget_nfe=eq_budget, coarse_steps=plan.coarse_steps,
                                rerender=plan.rerender),
    }
    made = {"zero_order": zo, "paths": paths, "c2f_random": c2f, "c2f_random_eqcand": c2f_eq}
    for k, v in made.items():
        if v != direct[k]:
            raise RuntimeError(f"strategy node output {v!r} differs from {direct[k]!r}")
    return made


def strategy_dict(strategy) -> Dict[str, Any]:
    return {"name": strategy.name, "params": dict(strategy.params), "budget_nfe": int(strategy.budget_nfe),
            "coarse_steps": int(strategy.coarse_steps), "rerender": int(getattr(strategy, "rerender", 0))}


# ---------------------------------------------------------------------------- timing the peer pack
class Phases:
    """Synchronised wall time per phase, for the peer pack only (its functions and ComfyUI's are wrapped
    for the duration of its run; the pack is never wrapped)."""

    def __init__(self, clock: bc.Clock):
        self.clock = clock
        self.t: Dict[str, float] = {}
        self.calls: Dict[str, int] = {}

    def add(self, name: str, dt: float) -> None:
        self.t[name] = self.t.get(name, 0.0) + dt
        self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, fn, name):
        def wrapped(*a, **k):
            t0 = self.clock.now()
            try:
                return fn(*a, **k)
            finally:
                self.add(name, self.clock.now() - t0)
        return wrapped


def is_oom(e: BaseException) -> bool:
    import torch
    types_ = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if t)
    return isinstance(e, types_) or "out of memory" in str(e).lower()


# ---------------------------------------------------------------------------- cases
class Runner:
    def __init__(self, args, plan: Plan, device, results: bc.Results, deadline: bc.Deadline, pack):
        self.args, self.plan, self.device, self.results, self.deadline, self.pack = args, plan, device, results, deadline, pack
        self.clock = bc.Clock(device)
        self.mem = bc.Memory(device)
        self.per_cand_batched = dict(plan.guess_batched)
        self.per_cand_serial = dict(plan.guess_serial)
        self.peer = None
        self.peer_clip_dir = None

    # -------------------------------------------------------------- budget
    def fits(self, case: Dict[str, Any], seconds: float) -> bool:
        if self.plan.smoke or self.args.no_budget:
            return True
        left = self.deadline.left()
        if seconds > left:
            case.update(status="skipped", reason=f"time budget: needs ~{seconds:.0f} s, {left:.0f} s left")
            self.results.add(case)
            bc.log(f"skip {case['case']}: {case['reason']}")
            return False
        return True

    def run_case(self, case: Dict[str, Any], fn, *a) -> Dict[str, Any]:
        bc.log(f"case {case['case']} ...")
        t0 = time.perf_counter()
        try:
            import torch
            with torch.inference_mode():
                case.update(fn(*a))
            case.setdefault("status", "ok")
        except Exception as e:  # noqa: BLE001 - recorded, the next case still runs
            case.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            bc.log(f"  error: {type(e).__name__}: {e}")
            self._recover()
        case["case_wall_s"] = round(time.perf_counter() - t0, 2)
        self.results.add(case)
        bc.log(f"  -> {case.get('status')} {case.get('candidates_per_s', '')} cand/s, {case['case_wall_s']} s")
        return case

    def _recover(self):
        import comfy.model_management as mm
        try:
            mm.soft_empty_cache(True)
        except Exception:
            pass

    # -------------------------------------------------------------- limit
    def limit(self, b: Bundle) -> Dict[str, Any]:
        kind = b.kind
        steps, cfg, sched = self.plan.steps, self.plan.cfg[kind], self.plan.scheduler[kind]
        rows = []
        # warm-up at the smallest batch, few steps
        self._limit_once(b, self.plan.limit_batches[kind][0], 2 if not self.plan.smoke else 1, cfg, sched, 1)
        for bs in self.plan.limit_batches[kind]:
            est = bs * self.per_cand_batched[kind] * 1.3 + 2
            if not self.plan.smoke and not self.args.no_budget and est > self.deadline.left():
                rows.append({"batch": bs, "status": "skipped", "reason": "time budget"})
                continue
            try:
                self._limit_once(b, bs, 1, cfg, sched, 2)  # warm-up at this shape (1 step)
                mem0 = self.mem.reset()
                r = self._limit_once(b, bs, steps, cfg, sched, 3)
                r.update(mem0, **self.mem.peak())
                r["status"] = "ok"
            except Exception as e:  # noqa: BLE001
                r = {"batch": bs, "status": "oom" if is_oom(e) else "error", "error": f"{type(e).__name__}: {e}"}
                self._recover()
            rows.append(r)
            bc.log(f"  limit batch {bs}: {r.get('candidates_per_s', r.get('status'))}")
        ok = [r for r in rows if r.get("status") == "ok"]
        best = max(ok, key=lambda r: r["candidates_per_s"]) if ok else None
        if best:
            self.per_cand_batched[kind] = 1.0 / best["candidates_per_s"]
        return {"batches": rows, "best_batch": best and best["batch"],
                "candidates_per_s": best and best["candidates_per_s"]}

    def _limit_once(self, b: Bundle, bs: int, steps: int, cfg: float, sched: str, seed: int) -> Dict[str, Any]:
        import comfy.sample
        latent = b.latent(bs)
        noise = comfy.sample.prepare_noise(latent, seed, None)
        t0 = self.clock.now()
        samples = comfy.sample.sample(b.patcher, noise, steps, cfg, "euler", sched, b.positive, b.negative, latent,
                                      denoise=1.0, disable_pbar=True, seed=seed)
        t1 = self.clock.now()
        images = b.vae.decode(samples)
        if samples.ndim == 5:  # video: the frames a search scores by default (first, middle, last)
            t = images.shape[1]
            images = images[:, sorted({0, (t - 1) // 2, t - 1})]
        if images.ndim == 5:
            images = images.reshape(-1, *images.shape[-3:])
        t2 = self.clock.now()
        scores = b.verifier.score(images, PROMPT)
        t3 = self.clock.now()
        total = t3 - t0
        return {"batch": bs, "steps": steps, "sample_s": round(t1 - t0, 4), "decode_s": round(t2 - t1, 4),
                "verify_s": round(t3 - t2, 4), "total_s": round(total, 4),
                "candidates_per_s": round(bs / total, 4), "finite_scores": bool(scores.isfinite().all()),
                "image_shape": list(images.shape)}

    # -------------------------------------------------------------- ours
    def searchloop(self, b: Bundle, n: int, micro_batch: int = 0, top_k: int = 1, seed: int = 1000,
                   exact_winner: bool = True, strategy=None, video_scoring=None,
                   devices: Optional[str] = None, sampler: str = "euler") -> Dict[str, Any]:
        """``SearchLoop().search(...)`` in-process (the node's own call, nothing of the pack wrapped), timed
        with torch.cuda.synchronize around it; the split, NFEs and micro-batch come from its report."""
        SearchLoop = self.pack.NODE_CLASS_MAPPINGS["InfScale_SearchLoop"]
        kind = b.kind
        mem0 = self.mem.reset()
        ooms0 = self.mem.num_ooms()
        extra = {"strategy": strategy} if strategy is not None else {}
        if video_scoring is not None:
            extra["video_scoring"] = video_scoring
        if devices is not None:
            extra["devices"] = devices
        t0 = self.clock.now()
        out = SearchLoop().search(b.patcher, b.positive, b.negative, {"samples": b.latent(1)}, b.vae, b.verifier,
                                  PROMPT, seed, n, top_k, sampler, self.plan.scheduler[kind], self.plan.steps,
                                  self.plan.cfg[kind], 1.0, micro_batch=micro_batch, exact_winner=exact_winner,
                                  **extra)
        t1 = self.clock.now()
        total = t1 - t0
        report = out[3]
        st = report.settings
        split = phase_split(report, total)
        calls = phase_calls(report)
        rr_nfe = exact_rerender_nfe(report)
        used = st.get("micro_batch")
        scored = images_scored(report.to_dict()) + calls.get("rerender", 0)
        scores = [c.score for c in report.candidates]
        ooms = self.mem.num_ooms()
        res = {"n": n, "top_k": top_k, "exact_winner": bool(exact_winner), "micro_batch_requested": micro_batch,
               "micro_batch_used": used, "oom_backoffs": oom_backoffs(n, micro_batch, used),
               "allocator_ooms": None if ooms is None or ooms0 is None else ooms - ooms0,
               "total_s": round(total, 4), "candidates_per_s": round(n / total, 4),
               # everything but the finalist step's batch-1 re-render
               "search_phase_candidates_per_s": round(n / max(1e-9, total - split["rerender_s"]), 4),
               "split": split, "report_phases": report.phases, "calls": calls,
               "nfe_total": report.nfe_total, "rerender_nfe": rr_nfe, "report_rerender_nfe": report.rerender_nfe,
               "nfe_per_s": round((report.nfe_total + (rr_nfe or 0)) / total, 2),
               "verifier_images": scored, "best_seed": int(out[5]),
               "best_score": max(scores) if scores else None,
               "final_score": report.ranked()[0].final_score if scores else None,
               "replay": report.ranked()[0].replay if scores else None,
               "all_scores_finite": bool(scores) and all(math.isfinite(s) for s in scores),
               "devices": st.get("devices"), "ranking": [c.index for c in report.ranked()],
               "scores": {c.index: c.score for c in report.candidates}}
        if video_scoring is not None:
            res["video"] = st.get("video")
        if strategy is not None:
            gen_nfe = report.nfe_per_generation or self.plan.steps
            keep = {k: st[k] for k in ("budget_nfe", "coarse_steps", "micro_batch", "pivot_moves", "start_index",
                                       "finished_without_search_from_index", "coarse_nfe", "rerender", "started",
                                       "finished", "prune_indices", "rank_correlation") if k in st}
            if isinstance(st.get("rounds"), (int, list)):
                keep["rounds"] = st["rounds"] if isinstance(st["rounds"], int) else len(st["rounds"])
            if isinstance(st.get("coarse_report"), dict):
                keep["coarse_candidates"] = (st["coarse_report"].get("settings") or {}).get("candidates")
            res.update({
                "strategy": strategy_dict(strategy), "algorithm": report.algorithm,
                "generation_equivalents": round(report.nfe_total / gen_nfe, 2),
                "extra_costs": {"images_scored": scored,
                                "images_scored_per_generation_equivalent": round(
                                    scored / max(1e-9, (report.nfe_total + (rr_nfe or 0)) / gen_nfe), 3),
                                "decode_calls": calls.get("decode", 0) + calls.get("rerender", 0),
                                "verifier_calls": calls.get("verify", 0) + calls.get("rerender", 0),
                                "sampler_calls": calls.get("denoise", 0) + calls.get("rerender", 0)},
                "settings": keep, "notes": list(report.notes)})
        res.update(mem0)
        res.update(self.mem.peak())
        if micro_batch == 1 and strategy is None:
            self.per_cand_serial[kind] = total / n
        if not res["all_scores_finite"]:
            res.update(status="error", error="non-finite or no scores")
        return res

    def ours(self, b: Bundle, n: int, micro_batch: int = 0, top_k: int = 1, seed: int = 1000,
             exact_winner: bool = True) -> Dict[str, Any]:
        return self.searchloop(b, n, micro_batch, top_k, seed, exact_winner)

    def video_scoring(self, pick: str, preview_keep: float = 1.0, preview_warmup: int = 2):
        """A Video Scoring node's output (frames 3, mean)."""
        node = self.pack.NODE_CLASS_MAPPINGS["InfScale_VideoScoring"]()
        return node.make(pick, 3, "mean", preview_keep, preview_warmup)[0]

    def ours_video(self, b: Bundle, n: int, micro_batch: int, scoring) -> Dict[str, Any]:
        return self.searchloop(b, n, micro_batch, 1, 1000, False, None, scoring)

    def strategy_run(self, b: Bundle, strategy, n: int, top_k: int = 1, seed: int = 1000,
                     micro_batch: int = 0) -> Dict[str, Any]:
        """SearchLoop.search with strategy=... (the strategy nodes' output)."""
        return self.searchloop(b, n, micro_batch, top_k, seed, True, strategy)

    # -------------------------------------------------------------- peer
    def load_peer(self):
        if self.peer is None:
            self.peer = import_peer(self.args.peer)
        return self.peer

    def peer_clip(self):
        """A random-weight transformers CLIPModel + CLIPProcessor folder
        (save_pretrained), handed to the peer's own loader node by path."""
        if self.peer_clip_dir is None:
            self.peer_clip_dir = make_hf_clip_folder(os.path.join(self.args.workdir, "peer_clip"), self.plan.smoke,
                                                     self.args.comfyui, self.device)
        return self.peer_clip_dir

    def peer_run(self, b: Bundle, n: int, seed: int = 1000) -> Dict[str, Any]:
        import torch
        import comfy.sample
        nodes = self.load_peer()
        folder = self.peer_clip()
        t_load = time.perf_counter()
        pv = None
        phases = Phases(self.clock)
        raw = {}
        orig_score = nodes.score_candidates

        def score_candidates(*a, **k):
            out = orig_score(*a, **k)
            raw["scores"] = out
            return out

        kind = b.kind
        try:
            (pv,) = nodes.LoadCLIPScoreVerifier().execute(folder, str(self.device))
            shim = shim_transformers5(pv)
            load_s = time.perf_counter() - t_load
            mem0 = self.mem.reset()
            with contextlib.ExitStack() as st:
                st.enter_context(bc.patched(comfy.sample, "sample", phases.wrap(comfy.sample.sample, "denoise")))
                st.enter_context(bc.patched(nodes, "score_candidates", phases.wrap(score_candidates, "verify")))
                b.vae.decode = phases.wrap(type(b.vae).decode.__get__(b.vae), "decode")
                st.callback(lambda: b.vae.__dict__.pop("decode", None))
                t0 = self.clock.now()
                out = nodes.InferenceTimeScaler().execute(
                    b.patcher, b.vae, seed, self.plan.steps, self.plan.cfg[kind], "euler", self.plan.scheduler[kind],
                    b.positive, b.negative, {"samples": b.latent(1)}, 1.0, PROMPT, n, 1,
                    loaded_clip_score_verifier=pv, search_algorithm="random")
                t1 = self.clock.now()
            peak = self.mem.peak()
        finally:
            if pv is not None:
                pv.model.to("cpu")
            pv = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        total = t1 - t0
        info = json.loads(out[2])
        scores = [s.get("clip") for s in raw.get("scores", [])]
        finite = bool(scores) and all(isinstance(s, float) and math.isfinite(s) for s in scores)
        p = phases.t
        split = {"denoise_s": p.get("denoise", 0.0), "decode_s": p.get("decode", 0.0), "verify_s": p.get("verify", 0.0)}
        split["other_s"] = total - sum(split.values())
        res = {"n": n, "total_s": round(total, 4), "candidates_per_s": round(n / total, 4),
               "split": {k: round(v, 4) for k, v in split.items()}, "verifier_load_s": round(load_s, 2),
               "transformers5_shim": shim, "all_scores_finite": finite, "n_scores": len(scores)}
        res.update(mem0)
        res.update(peak)
        if "error" in info:
            res.update(status="error", error="peer node returned an error: " + info["error"])
        elif not finite:
            res.update(status="error", error=f"peer scores not all finite: {scores[:4]}")
        return res


# ---------------------------------------------------------------------------- peer pack
def import_peer(path: str):
    """Imports the peer pack as ComfyUI would (a package by path).  Its Qwen and
    ImageReward verifiers are not benchmarked: their modules (which need
    outlines / pydantic / image-reward, absent on the device) are stubbed, and
    nothing else of the pack changes."""
    if not os.path.isfile(os.path.join(path, "__init__.py")):
        raise FileNotFoundError(f"peer pack not found at {path} (see bench/README.md: .peer/)")
    name = "peer_inference_time_scaling"
    if name + ".src.inferencescale.nodes" in sys.modules:
        return sys.modules[name + ".src.inferencescale.nodes"]
    try:
        import ImageReward  # noqa: F401
    except Exception:
        ir = types.ModuleType("ImageReward")
        ir.load = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("ImageReward stubbed by the benchmark"))
        sys.modules["ImageReward"] = ir
    q = types.ModuleType(name + ".src.inferencescale.qwen_verifier")
    q.QwenVLMVerifier = None
    sys.modules[q.__name__] = q
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return sys.modules[name + ".src.inferencescale.nodes"]


def make_hf_clip_folder(folder: str, smoke: bool, comfyui_dir: str, device) -> str:
    """openai/clip-vit-large-patch14's architecture with random weights (fp32,
    as published), plus a CLIPProcessor whose tokenizer files are ComfyUI's own
    copy of the CLIP BPE vocabulary (comfy/sd1_tokenizer)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    cfg = CLIPConfig(**(HF_CLIP_TINY if smoke else HF_CLIP_L14))
    init_dev = device if device.type == "cuda" else torch.device("cpu")
    with torch.device(init_dev):
        model = CLIPModel(cfg)
    model.to("cpu").save_pretrained(folder)
    tok = CLIPTokenizer.from_pretrained(os.path.join(comfyui_dir, "comfy", "sd1_tokenizer"))
    ip = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    del model
    return folder


def shim_transformers5(peer_verifier) -> bool:
    """The peer pins transformers==4.49, where CLIPModel.get_text_features /
    get_image_features return the projected embeddings as a tensor; from
    transformers 5 they return a ModelOutput whose pooler_output is that tensor.
    Unwrap it (same computation) so the peer's scoring runs as on its pinned
    version.  Returns whether the shim was needed."""
    import torch
    m = peer_verifier.model
    needed = False
    for fn_name in ("get_text_features", "get_image_features"):
        orig = getattr(m, fn_name)

        def unwrapped(*a, _orig=orig, **k):
            out = _orig(*a, **k)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        setattr(m, fn_name, unwrapped)
    import transformers
    needed = int(transformers.__version__.split(".")[0]) >= 5
    return needed


# ---------------------------------------------------------------------------- caps (child process)
def emulate_card(cap_gb: float) -> Dict[str, Any]:
    """A card of cap_gb: a hard cap on PyTorch's allocations
    (set_per_process_memory_fraction) and the same size reported by
    torch.cuda.mem_get_info, which ComfyUI and the pack read to size batches."""
    import torch
    dev = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(dev).total_memory
    cap = int(cap_gb * 2 ** 30)
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), dev)
    real = torch.cuda.mem_get_info

    def mem_get_info(device=None):
        reserved = torch.cuda.memory_reserved(device)
        return max(0, cap - reserved), cap

    torch.cuda.mem_get_info = mem_get_info
    return {"cap_gib": cap_gb, "fraction": round(cap / total, 4), "real_mem_get_info": [int(x) for x in real(dev)]}


def caps_child(args) -> None:
    import torch
    out: Dict[str, Any] = {"cap_gb": args.cap_child}
    cpu = args.smoke or not torch.cuda.is_available()
    if not cpu:
        out["emulation"] = emulate_card(args.cap_child)
    else:
        out["emulation"] = "not applicable on CPU (plumbing test only)"
    flux = args.cap_model == "flux"
    bc.setup_comfyui(args.comfyui, cpu, args.workdir, extra_args=["--lowvram"] if flux and not cpu else ())
    import comfy.model_management as mm
    pack = bc.import_pack()
    device = mm.get_torch_device()
    plan = Plan(args.smoke)
    out["comfy_vram_state"] = str(getattr(mm, "vram_state", "?"))
    out["comfy_total_vram_mb"] = getattr(mm, "total_vram", None)
    hv, _ = build_our_verifier(pack, device, args.smoke)
    if flux:  # a FLUX-size DiT larger than the capped card, partly loaded beside the verifier (--lowvram)
        t0 = time.perf_counter()
        b = build_bundle("flux", plan, device, hv, offload=not cpu)
        out["build_s"] = round(time.perf_counter() - t0, 1)
        out["model"] = b.info
        runner = runner_for(args, plan, device, pack)
        with torch.inference_mode():
            out["runs"] = [_cap_run(runner, b, n, 0) for n in ((2,) if args.smoke else (4,))]
    else:
        b = build_bundle("sd15", plan, device, hv)
        runner = runner_for(args, plan, device, pack)
        with torch.inference_mode():
            runner.ours(b, 2, micro_batch=1 if args.smoke else 2)  # warm-up
            out["runs"] = [_cap_run(runner, b, plan.cap_n, mb) for mb in (0, 64)]
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=bc._json_default)


def _cap_run(runner, b, n: int, micro_batch: int) -> Dict[str, Any]:
    """One SearchLoop run under the cap; an error is recorded, not raised."""
    try:
        r = runner.ours(b, n, micro_batch=micro_batch)
        r["status"] = "ok"
    except Exception as e:  # noqa: BLE001
        r = {"n": n, "micro_batch_requested": micro_batch, "status": "error", "error": f"{type(e).__name__}: {e}",
             "traceback": traceback.format_exc()[-2000:]}
    return r


def runner_for(args, plan, device, pack):
    return Runner(args, plan, device, bc.Results(os.path.join(args.workdir, "cap_scratch.json"), {}),
                  bc.Deadline(1e9), pack)


def run_caps(args, plan: Plan, results: bc.Results, deadline: bc.Deadline) -> None:
    # the FLUX-size --lowvram run needs a GPU to mean anything (its CPU plumbing: --cap-child 24 --cap-model flux --smoke)
    variants = [(gb, "sd15") for gb in plan.caps_gb] + ([] if plan.smoke else [(24, "flux")])
    for gb, model in variants:
        case = {"case": f"caps.{gb}gb" + (".lowvram_flux" if model == "flux" else ""), "model": model,
                "n": 4 if model == "flux" else plan.cap_n}
        need = 240 if model == "flux" else 60
        if not plan.smoke and not args.no_budget and deadline.left() < need:
            case.update(status="skipped", reason=f"time budget: needs ~{need} s, {deadline.left():.0f} s left")
            results.add(case)
            continue
        bc.log(f"case {case['case']} (subprocess) ...")
        child_out = os.path.join(args.workdir, f"cap_{gb}.json")
        child_out = os.path.join(args.workdir, f"cap_{gb}_{model}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--cap-child", str(gb), "--out", child_out,
               "--comfyui", args.comfyui, "--workdir", os.path.join(args.workdir, f"cap{gb}{model}"),
               "--cap-model", model]
        if args.smoke:
            cmd.append("--smoke")
        t0 = time.perf_counter()
        timeout = 600 if (plan.smoke or args.no_budget) else max(30, min(400 if model == "flux" else 240,
                                                                          deadline.left() - 10))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            case["returncode"] = proc.returncode
            if os.path.isfile(child_out):
                with open(child_out) as f:
                    case.update(json.load(f))
            ok = proc.returncode == 0 and all(r.get("status") == "ok" for r in case.get("runs", [])) and case.get("runs")
            case["status"] = "ok" if ok else "error"
            if not ok:
                case["stderr_tail"] = proc.stderr[-3000:]
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else str(e.stderr or "")
            case.update(status="error", error=f"timeout after {timeout:.0f} s", stderr_tail=err[-2000:])
        case["case_wall_s"] = round(time.perf_counter() - t0, 2)
        results.add(case)
        bc.log(f"  -> {case['status']} ({case['case_wall_s']} s)")


# ---------------------------------------------------------------------------- main
def parse_cases(spec: str) -> List[str]:
    allc = ["sd15.limit", "sd15.ours", "sd15.serial", "sd15.peer", "sdxl.limit", "sdxl.ours", "sdxl.serial",
            "sdxl.peer", "caps", "n256", "strategies", "flux.limit", "flux.ours", "flux.peer", "sd15.halving",
            "flux.halving", "sd15.devices", "wan21.limit", "wan21.ours", "wan22.limit", "wan22.ours"]
    named = [f"{k}.{c}" for k in VIDEO_KINDS for c in ("ours_preview", "ours_first")]  # selected by name only
    out = []
    for tok in [t.strip() for t in spec.split(",") if t.strip()]:
        if tok == "all":
            out += allc
        elif tok in ("sd15", "sdxl", "flux") + VIDEO_KINDS:
            out += [c for c in allc if c.startswith(tok + ".")]
        elif tok in allc or tok in named:
            out.append(tok)
        else:
            raise SystemExit(f"unknown case '{tok}'; known: {', '.join(allc + named)}, sd15, sdxl, flux, wan21, "
                             "wan22, all")
    return list(dict.fromkeys(out))


def summarize(results: bc.Results) -> None:
    cases = {c["case"]: c for c in results.doc["cases"]}
    s: Dict[str, Any] = {}

    def cps(name):
        c = cases.get(name)
        return c.get("candidates_per_s") if c and c.get("status") == "ok" else None

    for kind, n in (("sd15", 16), ("sdxl", 8), ("flux", 4)):
        ours, peer = cps(f"{kind}.ours.n{n}"), cps(f"{kind}.peer.n{n}")
        lim, ser = cps(f"{kind}.limit"), cps(f"{kind}.serial.n{n}")
        if ours and peer:
            s[f"{kind}_n{n}_ours_over_peer"] = round(ours / peer, 3)
        if ours and lim:
            s[f"{kind}_n{n}_ours_over_limit"] = round(ours / lim, 3)
        if ours and ser:
            s[f"{kind}_n{n}_ours_over_serial"] = round(ours / ser, 3)
        noex = cps(f"{kind}.ours_noexact.n{n}")
        if noex and peer:
            s[f"{kind}_n{n}_ours_noexact_over_peer"] = round(noex / peer, 3)
        if noex and lim:
            s[f"{kind}_n{n}_ours_noexact_over_limit"] = round(noex / lim, 3)
        lc = cases.get(f"{kind}.limit") or {}
        at_n = [r for r in (lc.get("batches") or []) if r.get("batch") == n and r.get("candidates_per_s")]
        if at_n and peer:
            # the ceiling: raw batched sampling + decode + verify at batch n, over the peer
            s[f"{kind}_n{n}_limit_at_batch_n_over_peer"] = round(at_n[0]["candidates_per_s"] / peer, 3)
    # SearchLoop over the limit (best raw batched sampling + decode + verify), exact_winner on and off, every N run
    lim_ratio: Dict[str, Any] = {}
    for name, c in cases.items():
        kind, _, rest = name.partition(".")
        if rest.split(".")[0] not in ("ours", "ours_noexact") or c.get("status") != "ok":
            continue
        lim = cps(f"{kind}.limit")
        if lim and c.get("candidates_per_s"):
            row = lim_ratio.setdefault(f"{kind}.n{c['n']}", {})
            row["exact_winner_on" if c.get("exact_winner", True) else "exact_winner_off"] = round(
                c["candidates_per_s"] / lim, 3)
    if lim_ratio:
        s["ours_over_limit"] = lim_ratio
    # video: the share of decode + verify in SearchLoop's time (target <= 15 %), and its peak memory
    video: Dict[str, Any] = {}
    for name, c in cases.items():
        kind = name.partition(".")[0]
        if kind in VIDEO_KINDS and c.get("status") == "ok" and c.get("split") and c.get("total_s"):
            sp = c["split"]
            video[name] = {"decode_share": round(sp["decode_s"] / c["total_s"], 3),
                           "verify_share": round(sp["verify_s"] / c["total_s"], 3),
                           "decode_verify_share": round((sp["decode_s"] + sp["verify_s"]) / c["total_s"], 3),
                           "peak_allocated_gib": c.get("peak_allocated_gib")}
    if video:
        s["video"] = video
    strat = {k[len("sd15.strat."):]: c for k, c in cases.items()
             if k.startswith("sd15.strat.") and c.get("status") == "ok"}
    if strat:
        st: Dict[str, Any] = {}
        for k, c in strat.items():
            calls = c.get("calls") or {}
            st[k] = {"total_s": c.get("total_s"), "candidates_per_s": c.get("candidates_per_s"),
                     # every NFE spent: the search's and the finalist step's batch-1 re-render
                     "nfe_total": c.get("nfe_total", 0) + (c.get("rerender_nfe") or 0), "nfe_per_s": c.get("nfe_per_s"),
                     "images_scored": c.get("verifier_images"),
                     "decode_calls": calls.get("decode", 0) + calls.get("rerender", 0)}
        rnd = next((c for k, c in strat.items() if k.startswith("random.")), None)
        eq = next((c for k, c in strat.items() if k.startswith("c2f_random_eqcand.")), None)
        if rnd and eq:
            st["c2f_vs_random_equal_candidates"] = {
                "random_s": rnd["total_s"], "c2f_s": eq["total_s"],
                "saved_s": round(rnd["total_s"] - eq["total_s"], 4),
                "c2f_over_random_time": round(eq["total_s"] / rnd["total_s"], 3),
                "coarse_candidates": (eq.get("settings") or {}).get("coarse_candidates")}
        s["sd15_strategies"] = st
    s["targets"] = {"sd15_n16_ours_over_peer": ">= 5", "sdxl_n8_ours_over_peer": ">= 1.4",
                    "video_ours_noexact_over_limit": ">= 0.9", "video_decode_verify_share": "<= 0.15"}
    results.doc["summary"] = s
    results.write()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny configs, 2 steps (a test of every code path)")
    ap.add_argument("--cases", default=None,
                    help="default: sd15,sdxl,caps,n256,strategies,flux (GPU); sd15,sdxl,n256,strategies,flux (--smoke: the caps "
                         "subprocess re-imports ComfyUI, so it is its own smoke run: --smoke --cases caps)")
    ap.add_argument("--out", default=os.path.join(bc.REPO, "bench", "out", "gpu_search.json"))
    ap.add_argument("--comfyui", default=None, help="ComfyUI source folder (default: $COMFYUI_PATH, then ./comfyui)")
    ap.add_argument("--peer", default=os.path.join(bc.REPO, ".peer", "ComfyUI-InferenceTimeScaling"))
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new cases after this many seconds")
    ap.add_argument("--no-budget", action="store_true")
    ap.add_argument("--devices", default=None,
                    help="sd15.devices: the devices text of the many-device side (default 'all'). 'same-gpu-twice' "
                         "runs two lanes on the model's one GPU (two model copies, two threads): a check of the "
                         "multi-device code path on a one-GPU machine, not a speed-up")
    ap.add_argument("--cap-child", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cap-model", default="sd15", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.comfyui = bc.find_comfyui(args.comfyui)
    if args.workdir is None:   # a scratch folder of our own: removed when the run ends
        args.workdir = tempfile.mkdtemp(prefix="infscale_bench_")
        atexit.register(shutil.rmtree, args.workdir, True)
    if args.cap_child is not None:
        caps_child(args)
        return 0

    deadline = bc.Deadline(args.budget_s)
    import torch
    cpu = args.smoke or not torch.cuda.is_available()
    if not args.smoke and cpu:
        raise SystemExit("no CUDA device: use --smoke for the CPU test")
    cases = parse_cases(args.cases or ("sd15,sdxl,n256,strategies,flux" if args.smoke
                                       else "sd15,sdxl,caps,n256,strategies,flux"))
    bc.setup_comfyui(args.comfyui, cpu, args.workdir)
    import comfy.model_management as mm
    pack = bc.import_pack()
    device = mm.get_torch_device()
    plan = Plan(args.smoke)
    meta = bc.environment(device)
    meta.update(comfyui=bc.comfyui_version(args.comfyui), comfyui_path=args.comfyui, smoke=args.smoke,
                steps=plan.steps, sampler="euler", cases=cases, argv=sys.argv[1:],
                allocator="native caching allocator (main.py's cudaMallocAsync not applied)")
    results = bc.Results(args.out, meta)
    have_flux = os.path.isdir(os.path.join(args.comfyui, "comfy", "ldm", "flux"))
    have_fix = "fix_empty_latent_channels" in open(os.path.join(args.comfyui, "comfy", "sample.py")).read()

    have_wan = os.path.isdir(os.path.join(args.comfyui, "comfy", "ldm", "wan"))
    # configs of the full-size models as ComfyUI's model detection sees them (meta device, no memory)
    for kind in ("sd15", "sdxl", "flux") + VIDEO_KINDS:
        if kind == "flux" and not have_flux:
            results.doc["models"]["detect_" + kind] = {"ok": None, "reason": "this ComfyUI has no FLUX"}
            continue
        if kind in VIDEO_KINDS and not have_wan:
            results.doc["models"]["detect_" + kind] = {"ok": None, "reason": "this ComfyUI has no Wan"}
            continue
        if any(c.startswith(kind) for c in cases) or args.smoke:
            try:
                results.doc["models"]["detect_" + kind] = detect_check(kind, MODELS[kind][1])
            except Exception as e:  # noqa: BLE001
                results.doc["models"]["detect_" + kind] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    results.write()

    runner = Runner(args, plan, device, results, deadline, pack)
    hv, vinfo = build_our_verifier(pack, device, args.smoke)
    results.doc["models"]["verifier"] = vinfo
    bc.log(f"verifier built: {vinfo}")

    for kind in ("sd15", "sdxl"):
        sub = [c for c in cases if c.startswith(kind + ".")]
        sub = [c for c in sub if c != "sd15.devices"]  # run below, after the model's own cases
        if not sub and not (kind == "sd15" and ("n256" in cases or "strategies" in cases
                                                 or "sd15.devices" in cases)):
            continue
        b = None
        try:
            b = build_bundle(kind, plan, device, hv)
            results.doc["models"][kind] = b.info
            results.write()
            bc.log(f"{kind} built: {b.info}")
            run_model_cases(runner, b, kind, sub, have_fix)
            if kind == "sd15" and "n256" in cases:
                case = {"case": "sd15.ours.n%d" % plan.n256, "model": "sd15", "mode": "ours", "group": "n256"}
                if runner.fits(case, plan.n256 * runner.per_cand_batched["sd15"] * 1.3 + 10):
                    runner.run_case(case, runner.ours, b, plan.n256)
            if kind == "sd15" and "strategies" in cases:
                run_strategy_cases(runner, b)
            if kind == "sd15" and "sd15.devices" in cases:
                run_device_cases(runner, b)
        except Exception as e:  # noqa: BLE001
            results.add({"case": kind + ".build", "status": "error", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-3000:]})
        finally:
            free_bundle(b)

    if "caps" in cases:
        if not cpu:
            # the child builds its own models: give the GPU back first
            mm.unload_all_models()
            mm.soft_empty_cache(True)
        run_caps(args, plan, results, deadline)

    sub = [c for c in cases if c.startswith("flux.")]
    if sub:
        if not have_flux:
            results.add({"case": "flux", "status": "skipped", "reason": "this ComfyUI has no FLUX (comfy/ldm/flux)"})
        else:
            case = {"case": "flux.build"}
            if runner.fits(case, 90):
                b = None
                try:
                    b = build_bundle("flux", plan, device, hv)
                    results.doc["models"]["flux"] = b.info
                    results.write()
                    bc.log(f"flux built: {b.info}")
                    run_model_cases(runner, b, "flux", sub, have_fix)
                except Exception as e:  # noqa: BLE001
                    results.add({"case": "flux.build", "status": "error", "error": f"{type(e).__name__}: {e}",
                                 "traceback": traceback.format_exc()[-3000:]})
                finally:
                    free_bundle(b)

    for kind in VIDEO_KINDS:
        sub = [c for c in cases if c.startswith(kind + ".")]
        if not sub:
            continue
        if not have_wan:
            results.add({"case": kind, "status": "skipped", "reason": "this ComfyUI has no Wan (comfy/ldm/wan)"})
            continue
        if args.smoke and kind == "wan22":
            results.add({"case": kind, "status": "skipped",
                         "reason": "--smoke: the Wan 2.2 VAE (705 M parameters) is too heavy for the CPU smoke run; "
                                   "its diffusion model's detection is checked above"})
            continue
        case = {"case": f"{kind}.build"}
        if runner.fits(case, 120):
            b = None
            try:
                b = build_bundle(kind, plan, device, hv)
                results.doc["models"][kind] = b.info
                results.write()
                bc.log(f"{kind} built: {b.info}")
                run_model_cases(runner, b, kind, sub, have_fix)
            except Exception as e:  # noqa: BLE001
                results.add({"case": f"{kind}.build", "status": "error", "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()[-3000:]})
            finally:
                free_bundle(b)

    summarize(results)
    results.doc["meta"]["wall_s"] = round(deadline.elapsed(), 1)
    results.write()
    print_table(results)
    return 0


def run_model_cases(runner: Runner, b: Bundle, kind: str, sub: List[str], have_fix: bool) -> None:
    plan = runner.plan
    # warm-up of the whole SearchLoop path (first model call, VAE, verifier): untimed
    with __import__("torch").inference_mode():
        runner.ours(b, 2, micro_batch=2)
    if kind + ".limit" in sub:
        case = {"case": f"{kind}.limit", "model": kind, "mode": "limit"}
        if runner.fits(case, 20 if kind == "sd15" else 45):
            runner.run_case(case, runner.limit, b)
    if kind + ".ours" in sub:
        for n in plan.ours_n[kind]:
            case = {"case": f"{kind}.ours.n{n}", "model": kind, "mode": "ours"}
            mb = plan.ours_micro_batch(n)
            if runner.fits(case, n * runner.per_cand_batched[kind] * 1.5 + runner.per_cand_serial[kind] + 3):
                runner.run_case(case, runner.ours, b, n, mb)
            # the same search without the batch-1 re-render of the winner (exact_winner off)
            case = {"case": f"{kind}.ours_noexact.n{n}", "model": kind, "mode": "ours, exact_winner off"}
            if runner.fits(case, n * runner.per_cand_batched[kind] * 1.5 + 3):
                runner.run_case(case, runner.ours, b, n, mb, 1, 1000, False)
    cheap = {"ours_preview": ("ours, exact_winner off, preview_keep 0.5 (warm-up 1)",
                              lambda: runner.video_scoring("first/middle/last", 0.5, 1)),
             "ours_first": ("ours, exact_winner off, the first frame scored alone",
                            lambda: runner.video_scoring("first"))}
    for name, (mode, scoring) in cheap.items():
        if f"{kind}.{name}" not in sub:
            continue
        for n in plan.ours_n[kind]:
            case = {"case": f"{kind}.{name}.n{n}", "model": kind, "mode": mode}
            if runner.fits(case, n * runner.per_cand_batched[kind] * 1.5 + 3):
                runner.run_case(case, runner.ours_video, b, n, plan.ours_micro_batch(n), scoring())
    if kind + ".halving" in sub:
        run_halving_cases(runner, b, kind)
    if kind + ".serial" in sub:
        n = plan.serial_n[kind]
        case = {"case": f"{kind}.serial.n{n}", "model": kind, "mode": "serial (micro_batch=1)"}
        if runner.fits(case, n * runner.per_cand_serial[kind] * 1.3 + 3):
            runner.run_case(case, runner.ours, b, n, 1)
    if kind + ".peer" in sub:
        for n in plan.peer_n[kind]:
            case = {"case": f"{kind}.peer.n{n}", "model": kind, "mode": "peer"}
            if not have_fix:
                case.update(status="skipped", reason="the peer pack needs comfy.sample.fix_empty_latent_channels "
                                                     "(current ComfyUI); this host lacks it")
                runner.results.add(case)
                continue
            if runner.fits(case, n * runner.per_cand_serial[kind] * 1.3 + 15):
                runner.run_case(case, runner.peer_run, b, n)


def default_strategies(pack, name: str, budgets: Sequence[int]) -> Dict[int, Any]:
    """Strategy ``name`` at its registry defaults, made by its strategy node (as a graph would), per budget."""
    m = pack.NODE_CLASS_MAPPINGS
    algs = sys.modules[pack.__name__ + ".search.registry"].algorithms()
    node = m["InfScale_" + algs[name].node]
    inputs = node.INPUT_TYPES()
    widgets = dict(inputs.get("required", {}), **inputs.get("optional", {}))
    defaults = {k: v[1]["default"] for k, v in widgets.items() if k != "budget_nfe" and len(v) > 1}
    return {int(bud): node().make(budget_nfe=int(bud), **defaults)[0] for bud in budgets}


def run_halving_cases(runner: Runner, b: Bundle, kind: str) -> None:
    """Wall time of successive halving against random search: halving at N's budget and at half of it,
    random search at N and N/2 (SearchLoop's own random search, batch-1 re-render of the winner included)."""
    plan = runner.plan
    n, steps = plan.strat_n, plan.steps
    full, half = n * steps, max(steps, n * steps // 2)
    try:
        strategies = default_strategies(runner.pack, "halving", [full, half])
    except Exception as e:  # noqa: BLE001
        runner.results.add({"case": f"{kind}.halving", "status": "error", "error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc()[-3000:]})
        return
    batched, serial = runner.per_cand_batched[kind], runner.per_cand_serial[kind]
    todo = [(f"{kind}.halving.random.n{n}", None, n, n * batched * 1.5 + serial + 3),
            (f"{kind}.halving.random.n{max(1, n // 2)}", None, max(1, n // 2), n / 2 * batched * 1.5 + serial + 3),
            (f"{kind}.halving.b{full}", strategies[full], n, n * batched * 1.5 + serial + 3),
            (f"{kind}.halving.b{half}", strategies[half], n, n / 2 * batched * 1.5 + serial + 3)]
    for name, strat, cand, est in todo:
        case = {"case": name, "model": kind, "mode": "strategy", "group": "halving"}
        if not runner.fits(case, est):
            continue
        if strat is None:
            case["strategy"] = "none (SearchLoop's own random search, batch-1 re-render of the winner)"
            runner.run_case(case, runner.ours, b, cand, plan.ours_micro_batch(cand))
        else:
            runner.run_case(case, runner.strategy_run, b, strat, cand, 1, 1000, plan.ours_micro_batch(cand))


def run_strategy_cases(runner: Runner, b: Bundle) -> None:
    """SD1.5, N = plan.strat_n: plain random (no strategy input: the baseline), then
    zero-order, paths and coarse-to-fine random through SearchLoop's strategy input."""
    import torch
    plan = runner.plan
    n = plan.strat_n
    try:
        strategies = make_strategies(runner.pack, plan)
    except Exception as e:  # noqa: BLE001
        runner.results.add({"case": "sd15.strat", "status": "error", "error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc()[-3000:]})
        return
    batched, serial = runner.per_cand_batched["sd15"], runner.per_cand_serial["sd15"]
    frac = plan.coarse_steps / plan.steps
    # (case suffix, strategy or None, seconds guessed for the time budget)
    # every strategy but paths ends with the finalist step's batch-1 re-render of the winner (one serial generation)
    todo = [("random", None, n * batched * 1.5 + serial + 3),
            ("zero_order", strategies["zero_order"], n / 2 * serial * 1.3 + serial + 5),
            ("paths", strategies["paths"], n / 4 * serial * 1.5 + 5),
            ("c2f_random", strategies["c2f_random"],
             2 * n * frac * batched * 1.5 + plan.rerender * serial + serial + 5),
            ("c2f_random_eqcand", strategies["c2f_random_eqcand"],
             n * frac * batched * 1.5 + plan.rerender * serial + serial + 5)]
    # untimed warm-up of the strategy path (host, partial schedules, x0 capture): the smallest zero-order search
    if runner.fits({"case": "sd15.strat.warmup"}, 2 * serial + 3):
        try:
            with torch.inference_mode():
                runner.strategy_run(b, strategies["zero_order"], 2)
        except Exception as e:  # noqa: BLE001 - the cases below record their own errors
            bc.log(f"  strategy warm-up failed: {type(e).__name__}: {e}")
            runner._recover()
    for suffix, strat, est in todo:
        case = {"case": f"sd15.strat.{suffix}.n{n}", "model": "sd15", "mode": "strategy", "group": "strategies"}
        if not runner.fits(case, est):
            continue
        if strat is None:
            case["strategy"] = "none (SearchLoop's own random search, batch-1 re-render of the winner)"
            runner.run_case(case, runner.ours, b, n)
        else:
            runner.run_case(case, runner.strategy_run, b, strat, n)


def max_score_diff(a: Optional[Dict[int, float]], b: Optional[Dict[int, float]]) -> Optional[float]:
    """The largest |difference| of two runs' scores of the same candidates (None: not the same candidates)."""
    if not a or not b or set(a) != set(b):
        return None
    return max(abs(a[k] - b[k]) for k in a)


def run_device_cases(runner: Runner, b: Bundle) -> None:
    """SD1.5, N = plan.strat_n: every strategy with SearchLoop's ``devices`` = 'all' (every GPU; --smoke:
    'cpu,cpu', two model copies on the CPU) against the model's own device alone: random search, zero-order
    (neighbours 2, the strategies case's), and successive halving, evolution, paths, particles (FK; Euler
    ancestral) and the tree search at their node defaults with a budget of N generations.  Each pair is the same
    search: the ranking must be equal, and the speed-up is the one-device time over the all-devices time."""
    import torch
    plan = runner.plan
    n = plan.strat_n
    one = str(b.patcher.load_device)
    every = "cpu,cpu" if one == "cpu" else (runner.args.devices or "all")
    if every == "same-gpu-twice":  # the pack refuses a GPU named twice; this probe names it twice on purpose
        devices_mod = sys.modules[runner.pack.__name__ + ".engine.devices"]
        parse = devices_mod.parse_devices
        devices_mod.parse_devices = lambda text, avail, main: ([main, main] if text == "same-gpu-twice"
                                                               else parse(text, avail, main))
    try:
        budget = n * plan.steps  # Euler and Euler ancestral: one NFE a step
        todo = [("random", None, "euler"), ("zero_order", make_strategies(runner.pack, plan)["zero_order"], "euler")]
        for name in ("halving", "evolution", "paths", "particles", "tree"):
            todo.append((name, default_strategies(runner.pack, name, [budget])[budget],
                         "euler_ancestral" if name == "particles" else "euler"))
    except Exception as e:  # noqa: BLE001
        runner.results.add({"case": "sd15.devices", "status": "error", "error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc()[-3000:]})
        return
    batched, serial = runner.per_cand_batched.get("sd15"), runner.per_cand_serial.get("sd15")
    est = (n * (serial or batched or 1.0) * 2.0 + 10)
    # untimed: the path warmed up once (the device clones are made in every search and released when it ends, so
    # the timed all-devices searches include making and loading them)
    if runner.fits({"case": "sd15.devices.warmup"}, est / 4):
        try:
            with torch.inference_mode():
                runner.searchloop(b, 2, devices=every)
        except Exception as e:  # noqa: BLE001 - the cases below record their own errors
            bc.log(f"  devices warm-up failed: {type(e).__name__}: {e}")
            runner._recover()
    for name, strat, sampler in todo:
        timed = {}
        for label, devices in (("one", one), ("all", every)):
            case = {"case": f"sd15.devices.{name}.{label}.n{n}", "model": "sd15", "mode": "devices",
                    "group": "devices", "devices_requested": devices, "sampler": sampler}
            if not runner.fits(case, est):
                continue
            res = runner.run_case(case, lambda s=strat, d=devices, sa=sampler: runner.searchloop(
                b, n, strategy=s, devices=d, sampler=sa))
            timed[label] = res
        if "one" in timed and "all" in timed and timed["one"].get("total_s") and timed["all"].get("total_s"):
            runner.results.add({
                "case": f"sd15.devices.{name}.speedup", "status": "ok", "mode": "devices", "group": "devices",
                "speedup": round(timed["one"]["total_s"] / timed["all"]["total_s"], 3),
                "same_ranking": timed["one"].get("ranking") == timed["all"].get("ranking"),
                "max_score_diff": max_score_diff(timed["one"].get("scores"), timed["all"].get("scores")),
                "devices": (timed["all"].get("devices") or {}).get("rows")})


def print_table(results: bc.Results) -> None:
    print("\n%-34s %-8s %10s %8s %8s %9s  %s" % ("case", "status", "cand/s", "total_s", "mb", "peak_GiB", "split / note"))
    for c in results.doc["cases"]:
        note = c.get("split") or c.get("reason") or c.get("error") or ""
        if c.get("mode") == "limit" and c.get("batches"):
            note = "batches: " + ", ".join(f"{r['batch']}:{r.get('candidates_per_s', r.get('status'))}" for r in c["batches"])
        if c.get("mode") == "strategy" and c.get("extra_costs"):
            ex = c["extra_costs"]
            note = (f"nfe {c.get('nfe_total')}+{c.get('rerender_nfe')} @ {c.get('nfe_per_s')}/s; scored "
                    f"{ex.get('images_scored')} decodes {ex.get('decode_calls')}; {c.get('split')}")
        if c["case"].startswith("caps") and c.get("runs"):
            note = "; ".join(f"mb{r.get('micro_batch_requested')}->{r.get('micro_batch_used')} "
                             f"{r.get('candidates_per_s')}/s backoffs {r.get('oom_backoffs')} "
                             f"ooms {r.get('allocator_ooms')} peak {r.get('peak_allocated_gib')}"
                             for r in c["runs"])
        print("%-34s %-8s %10s %8s %8s %9s  %s" % (c["case"], c.get("status"), c.get("candidates_per_s", ""),
                                                 c.get("total_s", ""), c.get("micro_batch_used", ""),
                                                 c.get("peak_allocated_gib", ""), str(note)[:160]))
    print("summary:", json.dumps(results.doc.get("summary", {})))


if __name__ == "__main__":
    sys.exit(main())
