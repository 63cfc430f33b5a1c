"""The example workflows (workflows/) on the test server: the published file names they use mapped to tiny
files of the same architecture, the server fixture that puts those files (and an input image) in place, and
the small sizes a converted workflow runs at on CPU."""
from __future__ import annotations

import os

import pytest

# published file names used in the workflows -> tiny test files of the same architecture
TINY = {
    "v1-5-pruned-emaonly.safetensors": "tiny-sd15.safetensors",
    "sd_xl_base_1.0.safetensors": "tiny-sdxl.safetensors",
    "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors": "tiny-sd3.safetensors",
    "ViT-L-14-openai.safetensors": "tiny-clip-768.safetensors",  # + tiny-clip-768.json, its config
    "sac+logos+ava1-l14-linearMSE.pth": "tiny-aesthetic.pth",
    "ImageReward": "tiny-imagereward",
    "wan2.1_t2v_1.3B_fp16.safetensors": "tiny-wan21.safetensors",
    "wan_2.1_vae.safetensors": "tiny-wan21-vae.safetensors",
    "wan2.2_ti2v_5B_fp16.safetensors": "tiny-wan22.safetensors",
    "wan2.2_vae.safetensors": "tiny-wan22-vae.safetensors",  # full size (its widths are fixed in comfy.sd)
    # Wan 2.2 14B's two experts have the Wan 2.1 architecture (16 channels, the Wan 2.1 VAE): two tiny Wan 2.1
    # files with different weights
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": "tiny-wan21.safetensors",
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": "tiny-wan21-low.safetensors",
    # UMT5-XXL has a fixed 5.7 G-parameter config: a tiny CLIP-L loaded as SD3's text encoder (its context
    # padded to 4096 wide, what Wan takes) stands in; "wan" is only ever the CLIPLoader's type widget
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": "tiny-clip-l.safetensors",
    "wan": "sd3",
    # LTX-Video: the checkpoint (model + VAE) and, for T5-XXL (fixed 4096 wide, 24 layers), the same CLIP-L
    # stand-in; T5's attention mask, which LTX's model needs, comes from a test node (with_text_attention_mask)
    "ltx-video-2b-v0.9.5.safetensors": "tiny-ltxv.safetensors",
    "t5xxl_fp16.safetensors": "tiny-clip-l.safetensors",
    "ltxv": "sd3",
}
INPUT_IMAGE = "example.png"


@pytest.fixture(scope="module")
def server(comfy, comfy_path, models_dir):
    """The server with the tiny checkpoints the workflows need and an input image;
    /object_info fetched afresh (file lists change)."""
    from comfy_server import CACHE, WAN22_FILES, add_ltxv, add_model_files, add_wan21
    from tiny_models import ensure_checkpoint
    from PIL import Image
    cache = os.path.join(CACHE, "checkpoints")
    kinds = [] if os.environ.get("INFSCALE_SKIP_SDXL") else ["sdxl"]
    if comfy.has_node("EmptySD3LatentImage"):
        kinds.append("sd3")
    for kind in kinds:
        link = os.path.join(models_dir["checkpoints"], f"tiny-{kind}.safetensors")
        if not os.path.exists(link):
            os.symlink(ensure_checkpoint(comfy_path, kind, cache), link)
    if comfy.has_node("EmptyHunyuanLatentVideo"):  # current ComfyUI: the tiny Wan 2.1 and LTX-Video files
        add_wan21(comfy_path, models_dir)
        add_ltxv(comfy_path, models_dir)
    if comfy.has_node("Wan22ImageToVideoLatent"):  # the tiny Wan 2.2 5B files
        add_model_files(comfy_path, models_dir, WAN22_FILES)
    Image.new("RGB", (64, 64), (200, 120, 40)).save(os.path.join(comfy.input_dir, INPUT_IMAGE))
    comfy._object_info = comfy.get("/object_info")
    return comfy


def shrink(api):
    """Small sizes, few steps and candidates, budgets still valid."""
    for node in api.values():
        t, inp = node["class_type"], node["inputs"]
        if t in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inp.update(width=64, height=64, batch_size=1 if inp.get("batch_size", 1) == 1 else 3)
        elif t == "EmptyHunyuanLatentVideo":
            inp.update(width=16, height=16, length=5)
        elif t == "LTXVImgToVideo":
            inp.update(width=64, height=64, length=9)
        elif t == "LTXVScheduler":
            inp.update(steps=3)
        elif t == "Wan22ImageToVideoLatent":
            inp.update(width=32, height=32, length=5)  # the node's smallest size (16x spatial compression)
        elif t == "InfScale_NoiseCandidateGenerator":
            inp.update(count=3)
        elif t == "InfScale_SearchLoop":
            inp.update(candidates=3, top_k=1, steps=3)
            if inp.get("switch_step"):  # two experts: switch inside the 3 steps
                inp.update(switch_step=2)
        elif t == "BasicScheduler":
            inp.update(steps=3)
        elif t == "InfScale_CoarseToFine":
            inp.update(coarse_steps=2, finalists=1)  # 3 x 3 = 9 NFEs: 3 re-rendered + a coarse round
        elif t == "InfScale_ParticleStrategy":
            inp.update(particles=3, interval=min(inp["interval"], 2))
        elif t == "InfScale_BestPick":
            inp.update(top_k=min(inp["top_k"], 3))
        elif t == "InfScale_ScorePlot":
            inp.update(width=200, height=150)
    return api


def with_text_attention_mask(api):
    """LTX-Video's model needs the text attention mask T5-XXL puts in the conditioning; the tiny CLIP-L standing
    in for T5 gives none, so the test node Text Attention Mask (tests/fixtures/test_nodes) adds T5's all-ones
    mask after every text encoder of an LTX graph."""
    if not any(n["class_type"].startswith("LTXV") for n in api.values()):
        return api
    for nid in [k for k, n in api.items() if n["class_type"] == "CLIPTextEncode"]:
        masked = f"{nid}_mask"
        for node in api.values():
            for name, v in node["inputs"].items():
                if v == [nid, 0]:
                    node["inputs"][name] = [masked, 0]
        api[masked] = {"class_type": "InfScaleTest_TextAttentionMask", "inputs": {"conditioning": [nid, 0]}}
    return api
