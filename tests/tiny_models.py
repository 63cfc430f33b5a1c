"""Tiny, randomly initialised single-file checkpoints of real architectures.

The checkpoints are built from ComfyUI's *own* model classes (imported at run
time from a ComfyUI checkout; no ComfyUI code lives in this file), so that
ComfyUI's real loader, ``comfy.sd.load_checkpoint_guess_config`` (used by the
stock ``CheckpointLoaderSimple`` node), detects and loads them like a real
checkpoint.  They produce garbage images, but every code path (model
detection, CLIP tokenize/encode, sampling, VAE encode/decode) is the real one.

Kinds
-----
``sd15`` (works with old 2024-03 and current ComfyUI), ~303 MB fp16:
    * ``model.diffusion_model.*``: openaimodel.UNetModel with model_channels
      320 / context_dim 768 / no linear proj / no adm, which is what
      model_detection classifies as ``SD15``; shrunk to one level
      (channel_mult [1]), one res block, transformer depth 1 (25.8 M params).
    * ``cond_stage_model.transformer.text_model.*``: the full-size CLIP-L text
      encoder that ComfyUI builds for SD1 (comfy.sd1_clip.SDClipModel,
      123.7 M params, i.e. most of the file).
    * ``first_stage_model.taesd_{encoder,decoder}.*`` + ``vae_scale`` /
      ``vae_shift``: a TAESD, which comfy.sd.VAE recognises by the key
      ``taesd_decoder.1.weight``.

``sd3`` (current ComfyUI only; the 2024-03 one has no SD3), ~265 MB fp16:
    * ``model.diffusion_model.*``: mmdit.MMDiT, 16 latent channels, depth 2
      (hidden size = 64 * depth, one head per depth unit), with ``pos_embed``
      (max size 192 as SD3-medium), ``context_embedder`` 4096 -> hidden,
      ``y_embedder`` 2048 -> hidden, no qk-norm: detected as ``SD3``.
    * ``text_encoders.clip_l.transformer.text_model.*``: only CLIP-L.  The SD3
      loader picks its text encoders from the keys present; CLIP-L alone is
      the cheapest subset that yields a working CLIP object (pooled output is
      zero-padded to 2048, context zero-padded to 4096).  No separate text
      encoder file is needed.
    * ``first_stage_model.taesd_{encoder,decoder}.*``: a 16-channel TAESD
      (TAESD3 layout); current comfy.sd.VAE reads the latent channel count
      from ``taesd_decoder.1.weight``.  (The regular AutoencoderKL path always
      uses the full SD VAE width, so it is not an option for a tiny file.)

``sdxl`` (works with old 2024-03 and current ComfyUI), ~1.96 GB fp16:
    * ``model.diffusion_model.*``: openaimodel.UNetModel with what
      supported_models.SDXL pins (model_channels 320, linear proj,
      context_dim 2048, adm_in_channels 2816) and the full per-block
      transformer depth [0, 0, 2, 2, 10, 10], which detection also requires;
      shrunk elsewhere: channel_mult [1, 1, 1] (real: [1, 2, 4]), middle
      depth 1, output depths [0, 0, 0, 1, 1, 1, 1, 1, 1] (~160 M params).
    * ``conditioner.embedders.0.transformer.text_model.*`` (CLIP-L) and
      ``conditioner.embedders.1.model.*`` (CLIP-G in open_clip layout, via
      ComfyUI's own process_clip_state_dict_for_saving): both full size, as
      ComfyUI builds CLIP-G from its fixed clip_config_bigg.json (~694 M
      params, 1.39 GB of the file).  Leaving it out would leave the text
      encoder uninitialised, not smaller.
    * ``first_stage_model.taesd_*``: a 4-channel TAESD with SDXL's scale.
    Measured on 2 shared CPU cores: build 45 s / 3.6 GB peak RSS (2024 host),
    31 s / 3.3 GB (ComfyUI 0.3.64); load + encode + one 3-step 64 px sample +
    decode in a fresh process: 20.5 s / 5.4 GB peak RSS (2024 host; the
    3-step sample itself 1.6 s), 52 s / 5.0 GB (0.3.64).

Usage (run in a subprocess: ComfyUI's top-level modules ``nodes``/``utils``
clash with the pack's own, so ComfyUI must be sys.path[0])::

    python tests/tiny_models.py --comfyui <COMFYUI_DIR> --kind sd15 --out x.safetensors [--seed 0]

prints one JSON line ``{"path": ..., "bytes": ..., "seconds": ...}`` on
stdout (ComfyUI's own log lines go to stderr).  Same seed => same tensors.

Loading them (as the stock nodes do) needs what ComfyUI's main.py sets up:
``comfy.options.enable_args_parsing()`` before importing comfy with
``sys.argv = [prog, "--cpu"]`` (cli_args ignores argv otherwise), and
``torch.inference_mode()`` around loading/sampling as execution.py does (the
2024-03 CLIP constructor copy_()s into a Parameter and fails with grad on).

From tests::

    from tests.tiny_models import ensure_checkpoint
    path = ensure_checkpoint(comfyui_dir, "sd15", cache_dir)
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import zlib

# Bump whenever the architecture / init / key layout changes: it is part of the
# cache file name used by ensure_checkpoint.
VERSION = 1

KINDS = ("sd15", "sd3", "sdxl", "wan21", "wan21_vae", "clip_l", "wan21_i2v", "ltxv", "wan22", "wan22_vae", "hunyuan_video",
         "hunyuan_video_vae")

# Wan 2.1 (current ComfyUI only), three files as the published ones are split:
#   ``wan21``: the diffusion model alone (keys as wan2.1_t2v_1.3B_fp16.safetensors, no prefix):
#     comfy.ldm.wan.model.WanModel t2v; model_detection reads dim from head.modulation (heads = dim // 128),
#     ffn_dim, layers and in_dim from the keys; text_dim stays 4096.  Tiny: dim 128 (one head), ffn 256,
#     one block (0.9 M params).
#   ``wan21_i2v``: the same as image-to-video (model_type i2v: img_emb, the CLIP-vision projection, which
#     model_detection reads as WAN21_I2V; in_dim 36 = 16 noise + 4 mask + 16 start-image latent channels).
#   ``wan21_vae``: comfy.ldm.wan.vae.WanVAE at the size comfy.sd.VAE builds it for the key
#     decoder.middle.0.residual.0.gamma (dim 96 is fixed there): 127 M params, 254 MB fp16.
#   ``clip_l``: a CLIP-L text encoder file (keys text_model.*, 123.7 M params).  Wan's own text encoder,
#     UMT5-XXL, has a fixed 4096-wide 24-layer config (umt5_config_xxl.json, 5.7 G params), so the tests
#     load this CLIP-L with CLIPLoader type "sd3" instead: SD3's CLIP-L-only text encoder pads its context
#     to 4096 wide, which is what Wan's text_embedding takes.
WAN21 = dict(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=128, ffn_dim=256, freq_dim=256,
             text_dim=4096, out_dim=16, num_heads=1, num_layers=1, window_size=(-1, -1), qk_norm=True,
             cross_attn_norm=True, eps=1e-6)
WAN21_I2V = dict(WAN21, model_type="i2v", in_dim=36)
WAN21_VAE = dict(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)

# LTX-Video (current ComfyUI only), ``ltxv``: one checkpoint for CheckpointLoaderSimple, as the published
# ltx-video-2b-v0.9*.safetensors (diffusion model + VAE, no text encoder):
#   ``model.diffusion_model.*``: comfy.ldm.lightricks.model.LTXVModel; model_detection reads it as LTXV from
#     adaln_single.emb.timestep_embedder.linear_1.bias, with 32 heads of attn2.to_k.weight rows // 32 wide and
#     cross_attention_dim its columns (= the inner width).  Tiny: head dim 4 (inner width 128), one block; the
#     caption projection still takes 4096-wide text (0.9 M params).
#   ``vae.*``: comfy.ldm.lightricks.vae.causal_video_autoencoder.VideoVAE (the causal video VAE, 128 latent
#     channels, 8x temporal and 32x spatial compression, which comfy.sd.VAE fixes).  Its width is fixed (128
#     base channels) but its blocks come from the file's "config" metadata ({"vae": ...}, as the published
#     0.9.1+ files carry it): patch size 4 and three compress_all blocks give the 8 x 32 x 32 compression, one
#     res_x block is what detection keys on (decoder.up_blocks.0.res_blocks.0.conv1), 11.5 M params.
#   The text encoder: LTX's T5-XXL has a fixed 4096-wide 24-layer config (t5_config_xxl.json), so the tests
#   load the tiny CLIP-L (``clip_l``) with CLIPLoader type "sd3", whose context is padded to 4096 wide, as for
#   Wan.
LTXV = dict(in_channels=128, num_attention_heads=32, attention_head_dim=4, cross_attention_dim=128,
            caption_channels=4096, num_layers=1)
LTXV_VAE = {"_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3,
            "latent_channels": 128, "blocks": [["compress_all", 1], ["compress_all", 1], ["compress_all", 1],
                                               ["res_x", 1]],
            "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4, "latent_log_var": "uniform",
            "use_quant_conv": False, "causal_decoder": False}
# Wan 2.2 5B (current ComfyUI only):
#   ``wan22``: the diffusion model (keys as wan2.2_ti2v_5B_fp16.safetensors): WanModel t2v with in_dim = out_dim
#     = 48, which model_detection + supported_models read as WAN22_T2V (out_dim 48, Wan22 latent format); tiny
#     as the Wan 2.1 one (dim 128, one head, one block).
#   ``wan22_vae``: comfy.ldm.wan.vae2_2.WanVAE as comfy.sd.VAE builds it for the key
#     decoder.upsamples.0.upsamples.0.residual.2.weight: dim 160, 48 latent channels, 16x spatial compression;
#     its widths are fixed there, so this file is full size (705 M params, 1.41 GB fp16).
WAN22 = dict(WAN21, in_dim=48, out_dim=48)
WAN22_VAE = dict(dim=160, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)

# HunyuanVideo (current ComfyUI only):
#   ``hunyuan_video``: comfy.ldm.hunyuan_video.model.HunyuanVideo (keys as hunyuan_video_t2v_720p_bf16.safetensors,
#     no prefix).  model_detection reads the hidden size from img_in.proj.weight (heads = hidden // 128, rope axes
#     [16, 56, 56]), the text width from txt_in.input_embedder.weight, vec_in_dim 768 when vector_in.* exists,
#     guidance_embed when guidance_in.* exists, and counts the double/single blocks.  Tiny: hidden 128 (one
#     head), one double and one single block, and a 768-wide text input, so that a plain CLIP-L (CLIPLoader type
#     "stable_diffusion": 768-wide context, 768-wide pooled output for vector_in) drives it.  HunyuanVideo's own
#     text encoder is a Llama-3-8B-class model with a fixed config (plus CLIP-L), not something to build tiny.
#   ``hunyuan_video_vae``: the causal 3-D AutoencoderKL comfy.sd.VAE builds for the key
#     decoder.conv_in.conv.weight (ch 128, ch_mult [1, 2, 4, 4], conv3d, 4x temporal compression: fixed there,
#     only the latent channel count, 16, is read from the file): full size.
HUNYUAN_VIDEO = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2],
                     vec_in_dim=768, axes_dim=[16, 56, 56], meanflow=False, context_in_dim=768, hidden_size=128,
                     mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1, theta=256, qkv_bias=True,
                     byt5=False, guidance_embed=True)
HUNYUAN_VIDEO_VAE = dict(double_z=True, z_channels=16, resolution=256, in_channels=3, out_ch=3, ch=128,
                         ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0, conv3d=True,
                         time_compress=4)

# Hyper-parameters of the tiny models (kept here so they are easy to find).
SD15_UNET = dict(
    image_size=32,                     # unused by the model; the value real SD1.x configs use
    in_channels=4,
    out_channels=4,
    model_channels=320,                # SD15 detection: model_channels 320 ...
    context_dim=768,                   # ... context_dim 768 ...
    use_linear_in_transformer=False,   # ... conv proj_in/proj_out ...
    adm_in_channels=None,              # ... and no class/adm embedding
    num_res_blocks=[1],                # tiny: one level, one res block
    channel_mult=[1],
    transformer_depth=[1],             # attention at that level
    transformer_depth_output=[1, 1],   # num_res_blocks + 1 output blocks
    transformer_depth_middle=1,
    num_heads=8,                       # what supported_models.SD15 passes at load time
    num_head_channels=-1,
    use_spatial_transformer=True,
    legacy=False,
    use_checkpoint=False,
    use_temporal_resblock=False,
    use_temporal_attention=False,
)

# SDXL: detection (supported_models.SDXL.unet_config) pins model_channels 320,
# linear proj, context_dim 2048, adm_in_channels 2816 and the full per-block
# transformer depth [0, 0, 2, 2, 10, 10] (three levels, two res blocks each);
# channel_mult, the middle/output depths and head width are free.
SDXL_UNET = dict(
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=320,
    context_dim=2048,
    use_linear_in_transformer=True,
    adm_in_channels=2816,
    num_classes="sequential",
    num_res_blocks=[2, 2, 2],
    channel_mult=[1, 1, 1],            # real SDXL: [1, 2, 4]
    transformer_depth=[0, 0, 2, 2, 10, 10],
    transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1],  # real: [0,0,0,2,2,2,10,10,10]
    transformer_depth_middle=1,        # real: 10
    num_heads=-1,
    num_head_channels=64,
    use_spatial_transformer=True,
    legacy=False,
    use_checkpoint=False,
    use_temporal_resblock=False,
    use_temporal_attention=False,
)

SD3_DEPTH = 2          # MMDiT hidden size is 64 * depth; 2 keeps one full joint block
SD3_POS_EMBED_MAX = 192  # same as SD3-medium, so large latents still fit
SD3_CONTEXT_DIM = 4096   # SD3 text-encoder output width (CLIP-L/G padded to T5 width)
SD3_POOLED_DIM = 768 + 1280

# Real diffusion models zero-initialise their output projection; a fully random
# one makes the 4-step/cfg-7 sampler blow latents up to |x|~100 and decoded
# images saturate.  A small (non-zero, so the prompt still matters) gain keeps
# sampled latents in a sane range.
OUTPUT_GAIN = {
    "model.diffusion_model.out.2": 0.1,                # UNet final conv
    "model.diffusion_model.final_layer.linear": 0.1,   # MMDiT final linear
    "head.head": 0.1,                                  # Wan final linear (diffusion-model-only file)
    "model.diffusion_model.proj_out": 0.1,             # LTX-Video final linear
    "final_layer.linear": 0.1,                         # HunyuanVideo final linear (diffusion-model-only file)
}

# comfy.latent_formats scale/shift of each family: a TAESD expects latents in
# the diffusion model's (scaled) space, ComfyUI hands the VAE unscaled ones,
# so ComfyUI's own TAESD loader stores these as vae_scale / vae_shift.
TAESD_SCALE_SHIFT = {"sd15": (0.18215, 0.0), "sd3": (1.5305, 0.0609), "sdxl": (0.13025, 0.0)}


# --------------------------------------------------------------------------
# Cache helper (no ComfyUI import; safe to use from the pack's test process)
# --------------------------------------------------------------------------

def checkpoint_filename(kind, seed=0, comfyui_dir=None):
    """Cache file name: kind, VERSION, seed and (optionally) which ComfyUI built it.

    The key set follows the ComfyUI classes used to build the file (e.g. the
    2024-03 TAESD has no ``vae_shift``), so files built from different ComfyUI
    checkouts are cached separately.
    """
    tag = ""
    if comfyui_dir is not None:
        tag = "_{:08x}".format(zlib.crc32(os.path.realpath(comfyui_dir).encode()))
    return "tiny_{}_v{}_seed{}{}.safetensors".format(kind, VERSION, seed, tag)


def ensure_checkpoint(comfyui_dir, kind, cache_dir, python=sys.executable, seed=0, timeout=900):
    """Return the path of a cached tiny checkpoint, building it if missing.

    The build runs ``python tests/tiny_models.py`` in a subprocess with
    cwd=comfyui_dir, writing to a temporary name that is renamed into place
    only once complete (atomic for concurrent test workers on one filesystem).
    """
    if kind not in KINDS:
        raise ValueError("unknown kind {!r}, expected one of {}".format(kind, KINDS))
    cache_dir = os.path.abspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, checkpoint_filename(kind, seed, comfyui_dir))
    if os.path.isfile(path):
        return path
    tmp = "{}.tmp{}".format(path, os.getpid())
    cmd = [python, os.path.abspath(__file__), "--comfyui", os.path.abspath(comfyui_dir),
           "--kind", kind, "--out", tmp, "--seed", str(seed)]
    try:
        proc = subprocess.run(cmd, cwd=os.path.abspath(comfyui_dir), capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.isfile(tmp):
            raise RuntimeError("building tiny {} checkpoint failed (rc={}):\n{}\n{}".format(
                kind, proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# --------------------------------------------------------------------------
# Builder (runs inside the subprocess, with ComfyUI importable)
# --------------------------------------------------------------------------

def _import_comfy(comfyui_dir):
    """Make ComfyUI importable and force CPU before comfy.model_management loads."""
    comfyui_dir = os.path.abspath(comfyui_dir)
    # Drop this script's own directory (sys.path[0]) so nothing of the pack can
    # shadow ComfyUI's top-level modules, then put ComfyUI first.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, comfyui_dir)
    # comfy.cli_args only parses sys.argv when comfy.options.args_parsing is
    # enabled (otherwise it parses []), so enable it and pass --cpu.
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.ops  # noqa: F401  (imports comfy.model_management with --cpu)


def _build_modules(kind):
    """Return {key_prefix: torch module} for the checkpoint of ``kind``.

    Modules are instantiated on the meta device: only names/shapes are needed,
    every tensor is then generated explicitly by _fill().
    """
    import torch
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    try:
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    except ImportError:
        MMDiT = None  # 2024-03 ComfyUI: no SD3
    ops = comfy.ops.disable_weight_init
    if kind in ("wan22", "wan22_vae", "hunyuan_video", "hunyuan_video_vae"):  # current ComfyUI only
        import comfy.ldm.hunyuan_video.model  # noqa: F401
        import comfy.ldm.models.autoencoder  # noqa: F401
        import comfy.ldm.wan.model  # noqa: F401
        import comfy.ldm.wan.vae2_2  # noqa: F401

    # (All imports happen above, outside the meta-device context, so no
    # import-time tensor of ComfyUI ends up on the meta device.)
    # no_grad: some constructors copy_() into parameters (e.g. old CLIP's
    # identity text_projection), which autograd refuses on leaf tensors.
    with torch.device("meta"), torch.no_grad():
        if kind == "sd15":
            unet = UNetModel(dtype=torch.float32, operations=ops, **SD15_UNET)
            # The CLIP-L text encoder ComfyUI builds for SD1 (comfy.clip_model
            # CLIPTextModel inside SDClipModel): keys transformer.text_model.*
            clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float32)
            taesd = comfy.taesd.taesd.TAESD()
            return {
                "model.diffusion_model.": unet,
                "cond_stage_model.": clip,
                "first_stage_model.": taesd,
            }
        if kind == "sd3":
            if MMDiT is None:
                raise SystemExit("this ComfyUI has no comfy.ldm.modules.diffusionmodules.mmdit (SD3 needs ComfyUI >= 2024-06)")
            hidden = 64 * SD3_DEPTH
            # Exactly the kwargs current model_detection derives from the keys.
            mmdit = MMDiT(
                input_size=None, patch_size=2, in_channels=16, out_channels=16,
                depth=SD3_DEPTH, adm_in_channels=SD3_POOLED_DIM,
                context_embedder_config={"target": "torch.nn.Linear",
                                         "params": {"in_features": SD3_CONTEXT_DIM, "out_features": hidden}},
                num_patches=SD3_POS_EMBED_MAX ** 2, pos_embed_max_size=SD3_POS_EMBED_MAX,
                pos_embed_scaling_factor=None, qk_norm=None, x_block_self_attn_layers=[],
                dtype=torch.float32, operations=ops,
            )
            clip_l = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float32)
            try:
                taesd = comfy.taesd.taesd.TAESD(latent_channels=16)
            except TypeError as e:
                raise SystemExit("this ComfyUI's TAESD has no latent_channels (needed for SD3): {}".format(e))
            return {
                "model.diffusion_model.": mmdit,
                "text_encoders.clip_l.": clip_l,
                "first_stage_model.": taesd,
            }
        if kind == "sdxl":
            import comfy.sdxl_clip
            unet = UNetModel(dtype=torch.float32, operations=ops, **SDXL_UNET)
            # CLIP-L + CLIP-G (bigG, full size: ComfyUI reads its shape from
            # clip_config_bigg.json, so it cannot be shrunk); keys clip_l.* /
            # clip_g.*, converted to the checkpoint layout in build_checkpoint.
            clip = comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float32)
            taesd = comfy.taesd.taesd.TAESD()
            return {
                "model.diffusion_model.": unet,
                "": clip,
                "first_stage_model.": taesd,
            }
        if kind == "wan21":
            from comfy.ldm.wan.model import WanModel
            return {"": WanModel(operations=ops, dtype=torch.float32, **WAN21)}
        if kind == "wan21_i2v":
            from comfy.ldm.wan.model import WanModel
            return {"": WanModel(operations=ops, dtype=torch.float32, **WAN21_I2V)}
        if kind == "wan21_vae":
            import comfy.ldm.wan.vae
            return {"": comfy.ldm.wan.vae.WanVAE(**WAN21_VAE)}
        if kind == "clip_l":
            clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float32)
            return {"": clip}
        if kind == "ltxv":
            from comfy.ldm.lightricks.model import LTXVModel
            from comfy.ldm.lightricks.vae.causal_video_autoencoder import VideoVAE
            return {"model.diffusion_model.": LTXVModel(operations=ops, dtype=torch.float32, **LTXV),
                    "vae.": VideoVAE(config=LTXV_VAE)}
        if kind == "wan22":
            from comfy.ldm.wan.model import WanModel
            return {"": WanModel(operations=ops, dtype=torch.float32, **WAN22)}
        if kind == "wan22_vae":
            import comfy.ldm.wan.vae2_2
            return {"": comfy.ldm.wan.vae2_2.WanVAE(**WAN22_VAE)}
        if kind == "hunyuan_video":
            from comfy.ldm.hunyuan_video.model import HunyuanVideo
            return {"": HunyuanVideo(operations=ops, dtype=torch.float32, **HUNYUAN_VIDEO)}
        if kind == "hunyuan_video_vae":
            from comfy.ldm.models.autoencoder import AutoencoderKL
            return {"": AutoencoderKL(ddconfig=HUNYUAN_VIDEO_VAE, embed_dim=16)}
    raise ValueError("unknown kind {!r}".format(kind))


def _sdxl_clip_for_saving(state):
    """clip_l.* / clip_g.* (ComfyUI's in-memory keys) -> the keys of a real SDXL
    checkpoint (conditioner.embedders.{0,1}.*), with ComfyUI's own converter."""
    import comfy.supported_models
    clip = {k: v for k, v in state.items() if k.startswith(("clip_l.", "clip_g."))}
    rest = {k: v for k, v in state.items() if k not in clip}
    cfg = comfy.supported_models.SDXL(dict(SDXL_UNET))
    rest.update(cfg.process_clip_state_dict_for_saving(clip))
    return rest


def _tensor_specs(module):
    """Yield (key, shape, dtype, owner_class_name) for every state_dict entry."""
    owners = dict(module.named_modules())
    for key, t in module.state_dict().items():
        owner_name = key.rsplit(".", 1)[0] if "." in key else ""
        owner = owners.get(owner_name, module)
        yield key, tuple(t.shape), t.dtype, type(owner).__name__


def _fill(key, shape, dtype, owner, seed, kind):
    """Seeded random value for one tensor.

    * norms (LayerNorm / GroupNorm / RMSNorm): weight 1, bias 0 (plus 1% noise)
    * embeddings / positional tables: N(0, 0.02)
    * other weights: N(0, 1/fan_in) (~0.02-0.04 for these widths) so that the
      activations neither vanish nor explode through the deep VAE / CLIP
    * other biases: N(0, 0.01)
    * a few named special cases (identity text projection, TAESD scale/shift,
      down-scaled diffusion output layer, see OUTPUT_GAIN)

    ``key`` is the full checkpoint key; it also seeds the tensor's generator,
    so values do not depend on iteration order.
    """
    import torch
    leaf = key.rsplit(".", 1)[-1]
    if not dtype.is_floating_point:
        if leaf == "position_ids":
            return torch.arange(shape[-1], dtype=dtype).reshape(shape)
        return torch.zeros(shape, dtype=dtype)
    if key.endswith("text_projection.weight"):
        # CLIP's projection of the pooled output (only stored for sd3, see
        # build_checkpoint); identity like an untrained projection.
        return torch.eye(shape[0], dtype=torch.float32)
    if leaf == "logit_scale":
        return torch.full(shape, 4.6055)
    if leaf == "vae_scale":
        return torch.full(shape, TAESD_SCALE_SHIFT[kind][0])
    if leaf == "vae_shift":
        return torch.full(shape, TAESD_SCALE_SHIFT[kind][1])
    if ".per_channel_statistics." in key:  # the LTX VAE's latent statistics: identity (mean 0, std 1)
        return torch.full(shape, 1.0 if leaf in ("std-of-means", "mean-of-stds") else 0.0)

    g = torch.Generator().manual_seed((seed * 1000003 + zlib.crc32(key.encode())) % (2 ** 63))
    noise = torch.randn(shape, generator=g, dtype=torch.float32)
    gain = OUTPUT_GAIN.get(key.rsplit(".", 1)[0], 1.0)
    if leaf == "gamma":  # the Wan VAE's RMS_norm scale
        return 1.0 + 0.01 * noise
    if "Norm" in owner:  # LayerNorm, GroupNorm, RMSNorm and their comfy.ops variants
        return (1.0 if leaf in ("weight", "scale") else 0.0) + 0.01 * noise
    if "Embedding" in owner or leaf in ("pos_embed", "positional_embedding"):
        return 0.02 * noise
    if len(shape) >= 2:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        return gain * noise / (fan_in ** 0.5)
    return gain * 0.01 * noise


def build_checkpoint(kind, out, seed=0):
    """Build ``kind`` and save it as fp16 safetensors at ``out``; return bytes."""
    import torch
    from safetensors.torch import save_file

    state = {}
    for prefix, module in _build_modules(kind).items():
        for key, shape, dtype, owner in _tensor_specs(module):
            if key == "logit_scale":
                continue  # not stored in real checkpoints (ComfyUI drops it on save)
            if kind == "sdxl" and key in ("clip_l.transformer.text_projection.weight", "clip_l.logit_scale",
                                          "clip_g.logit_scale"):
                continue  # not in real SDXL files (CLIP-L's pooled output is unused)
            if kind == "sd15" and key == "transformer.text_projection.weight":
                # SD1 checkpoints cannot carry it: supported_models.SD15 renames
                # every cond_stage_model.transformer.* key that is not under
                # text_model. to ...transformer.text_model.*, so it would only
                # come back as an unexpected key.  (SD1.5 never uses it; note
                # that current ComfyUI then leaves that layer uninitialised, so
                # the SD1.5 *pooled* output is meaningless, as with real files.)
                continue
            if kind == "clip_l":  # a text-encoder file: text_model.* (+ text_projection), as clip_l.safetensors
                if not key.startswith("transformer."):
                    continue
                key = key[len("transformer."):]
            t = _fill(prefix + key, shape, dtype, owner, seed, kind)
            if t.dtype.is_floating_point:
                t = t.to(torch.float16)
            state[prefix + key] = t.contiguous()

    if kind == "sdxl":
        state = _sdxl_clip_for_saving(state)

    # TAESD decodes straight to [0, 1] pixels; with a ~zero output bias half
    # the random image clamps to black.  Centre it on mid-grey instead: the
    # decoder's last layer is its highest-numbered direct child conv.
    taesd = [k for k in state if re.fullmatch(r"first_stage_model\.taesd_decoder\.\d+\.bias", k)]
    if taesd:
        last = max(taesd, key=lambda k: int(k.split(".")[2]))
        state[last] = (state[last].float() + 0.5).to(torch.float16)

    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    # One metadata entry only: safetensors writes the metadata map in hash
    # order, so several entries would make same-seed builds differ byte-wise.
    info = {"kind": kind, "version": VERSION, "seed": seed}
    if kind == "ltxv":  # ComfyUI reads the VAE's blocks from "config" (see LTXV_VAE); the tag rides inside it
        metadata = {"config": json.dumps({"vae": LTXV_VAE, "tiny_model": info}, sort_keys=True)}
    else:
        metadata = {"tiny_model": json.dumps(info, sort_keys=True)}
    save_file(state, out, metadata=metadata)
    return os.path.getsize(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", required=True, help="ComfyUI checkout whose classes are used")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    t0 = time.time()
    _import_comfy(args.comfyui)
    size = build_checkpoint(args.kind, args.out, args.seed)
    print(json.dumps({"path": os.path.abspath(args.out), "bytes": size,
                      "seconds": round(time.time() - t0, 2)}))


if __name__ == "__main__":
    main()
