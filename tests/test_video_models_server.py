"""Video search on the real server with the other video models ComfyUI samples with its stock samplers: a tiny
HunyuanVideo and a tiny Wan 2.2 5B (tests/tiny_models.py; their VAEs are full size, their widths being fixed in
comfy.sd).  The pattern of test_video_server.py: a T2V search through Search Loop, the winner's best_seed
reproduced bit for bit by a stock KSampler, its score equal to its frames scored by hand.

Text encoders: the tiny CLIP-L stands in for each model's own (HunyuanVideo: a Llama-3-8B-class model plus
CLIP-L; Wan: UMT5-XXL; both fixed-size configs).  The tiny HunyuanVideo takes a 768-wide context, so CLIP-L is
loaded as a plain CLIP (type "stable_diffusion": 768-wide context and pooled output); Wan takes a 4096-wide one,
so it is loaded as SD3's (context padded to 4096)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from comfy_server import CACHE, HUNYUAN_VIDEO_FILES, WAN22_FILES, add_model_files
from graphs import PREFIX, verifier_node
from server_outputs import frames_of, latent_file, report_of

TEXT = "a paper boat drifting down a rainy street"
FRAMES = 5  # 1 + 4k frames; 5 frames = 2 latent frames for both models

# name -> what differs between the two models' graphs
MODELS = {
    "hunyuan_video": dict(
        node="EmptyHunyuanLatentVideo", files=HUNYUAN_VIDEO_FILES, unet="tiny-hunyuan-video.safetensors",
        vae="tiny-hunyuan-video-vae.safetensors", clip_type="stable_diffusion", size=16,
        latent_shape=(1, 16, 2, 2, 2),
        # ComfyUI's HunyuanVideo template: the guidance is embedded (Flux Guidance on the prompt), cfg 1
        guidance=6.0, cfg=1.0),
    "wan22_5b": dict(
        node="Wan22ImageToVideoLatent", files=WAN22_FILES, unet="tiny-wan22.safetensors",
        vae="tiny-wan22-vae.safetensors", clip_type="sd3", size=32,  # the node's smallest size; 16x compression
        latent_shape=(1, 48, 2, 2, 2), guidance=None, cfg=5.0),
}


@pytest.fixture(scope="module")
def server(comfy, comfy_path, models_dir):
    for m in MODELS.values():
        add_model_files(comfy_path, models_dir, m["files"])
    return comfy


def base(name):
    m = MODELS[name]
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": m["unet"], "weight_dtype": "default"}},
        "11": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-clip-l.safetensors", "type": m["clip_type"]}},
        "12": {"class_type": "VAELoader", "inputs": {"vae_name": m["vae"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT, "clip": ["11", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "static, blurry", "clip": ["11", 0]}},
    }
    if name == "wan22_5b":
        g["4"] = {"class_type": "Wan22ImageToVideoLatent", "inputs": {
            "vae": ["12", 0], "width": m["size"], "height": m["size"], "length": FRAMES, "batch_size": 1}}
    else:
        g["4"] = {"class_type": "EmptyHunyuanLatentVideo",
                  "inputs": {"width": m["size"], "height": m["size"], "length": FRAMES, "batch_size": 1}}
    positive = ["2", 0]
    if m["guidance"] is not None:
        g["30"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["2", 0], "guidance": m["guidance"]}}
        positive = ["30", 0]
    return g, positive


def search_graph(name, seed, candidates=3, steps=3, micro_batch=2):
    g, positive = base(name)
    g["5"] = verifier_node()
    g["6"] = {"class_type": PREFIX + "SearchLoop", "inputs": {
        "model": ["1", 0], "positive": positive, "negative": ["3", 0], "latent": ["4", 0], "vae": ["12", 0],
        "verifier": ["5", 0], "prompt": TEXT, "seed": seed, "candidates": candidates, "top_k": 2,
        "sampler_name": "euler", "scheduler": "simple", "steps": steps, "cfg": MODELS[name]["cfg"], "denoise": 1.0,
        "micro_batch": micro_batch}}
    g["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": name}}
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["6", 3]}}
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 1], "filename_prefix": name + "_latent"}}
    return g


def stock_graph(name, seed, steps=3):
    """The stock T2V graph: KSampler -> VAE Decode, the frames scored one by one by Verifier Score."""
    g, positive = base(name)
    g["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": positive, "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
        "steps": steps, "cfg": MODELS[name]["cfg"], "sampler_name": "euler", "scheduler": "simple",
        "denoise": 1.0}}
    g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["12", 0]}}
    g["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": name + "_stock"}}
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": name + "_stock_latent"}}
    g["5"] = verifier_node()
    g["14"] = {"class_type": PREFIX + "VerifierScore", "inputs": {"images": ["7", 0], "verifier": ["5", 0],
                                                                  "prompt": TEXT}}
    g["15"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["14", 0]}}
    return g


DETECT = r"""
import json, sys
comfy_dir, files = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, comfy_dir)
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.model_detection, comfy.utils
out = {}
for name, path in files.items():
    sd = comfy.utils.load_torch_file(path)
    cfg = comfy.model_detection.model_config_from_unet(sd, "")
    out[name] = [type(cfg).__name__, type(cfg.latent_format).__name__, cfg.unet_config.get("in_channels",
                 cfg.unet_config.get("in_dim"))]
print(json.dumps(out))
"""


def test_tiny_files_are_detected_as_their_models(server, comfy_path):
    """ComfyUI's own model detection (what UNETLoader runs) reads the tiny files as HunyuanVideo and Wan 2.2 5B."""
    from tiny_models import ensure_checkpoint
    files = {name: ensure_checkpoint(comfy_path, name, os.path.join(CACHE, "checkpoints"))
             for name in ("hunyuan_video", "wan22")}
    proc = subprocess.run([sys.executable, "-c", DETECT, comfy_path, json.dumps(files)], cwd=comfy_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"hunyuan_video": ["HunyuanVideo", "HunyuanVideo", 16], "wan22": ["WAN22_T2V", "Wan22", 48]}


@pytest.mark.parametrize("name", list(MODELS))
def test_t2v_search_reproduces_in_stock_ksampler_and_scores_the_frames(server, name):
    m = MODELS[name]
    entry = server.run_ok(search_graph(name, seed=17))
    rep = report_of(entry)
    assert [c["seed"] for c in sorted(rep["candidates"], key=lambda c: c["index"])] == [17, 18, 19]
    assert rep["settings"]["video"]["frames_per_video"] == FRAMES
    assert rep["settings"]["video"]["scored_frames"] == [0, 2, 4]
    lat = latent_file(server, entry)
    assert lat.shape == m["latent_shape"]
    frames = frames_of(server, entry, "7")
    assert frames.shape == (FRAMES, m["size"], m["size"], 3)
    assert frames.std() > 0, "the winner decodes to flat frames"

    stock = server.run_ok(stock_graph(name, rep["best"]["seed"]))
    assert torch.equal(latent_file(server, stock), lat), "best_seed in a stock KSampler must give the winner exactly"
    assert np.array_equal(frames_of(server, stock, "8"), frames)
    by_hand = sorted(report_of(stock, "15")["candidates"], key=lambda c: c["index"])
    assert len(by_hand) == FRAMES
    want = np.mean([by_hand[i]["score"] for i in (0, 2, 4)])
    assert rep["candidates"][0]["final_score"] == pytest.approx(want, abs=1e-5)
    # the candidates differ (a model that ignored its noise would make the search moot)
    scores = [c["score"] for c in rep["candidates"]]
    assert len(set(scores)) == len(scores)


def test_wan22_image_to_video_search_keeps_the_start_frame_and_reproduces(server):
    """Wan 2.2 5B image-to-video: Wan22 Image To Video Latent encodes the start image into the first latent
    frame and masks it from the noise (noise_mask); every candidate keeps it and best_seed in a stock
    KSampler replays the winner bit for bit."""
    from PIL import Image
    Image.new("RGB", (32, 32), (40, 160, 90)).save(os.path.join(server.input_dir, "wan22_start.png"))

    def with_start(g):
        g["31"] = {"class_type": "LoadImage", "inputs": {"image": "wan22_start.png"}}
        g["4"]["inputs"]["start_image"] = ["31", 0]
        g["32"] = {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "wan22_i2v_in"}}
        return g

    g = with_start(search_graph("wan22_5b", seed=23))
    g["7"]["inputs"]["filename_prefix"] = "wan22_i2v"
    g["9"]["inputs"]["filename_prefix"] = "wan22_i2v_latent"
    entry = server.run_ok(g)
    rep = report_of(entry)
    lat = latent_file(server, entry)
    start = latent_file(server, entry, "32")
    assert lat.shape == (1, 48, 2, 2, 2)
    assert torch.allclose(lat[:, :, :1], start[:, :, :1], atol=1e-4), "the start frame must be kept"
    assert not torch.allclose(lat[:, :, 1:], start[:, :, 1:], atol=1e-2), "the other frames are sampled"
    stock = with_start(stock_graph("wan22_5b", rep["best"]["seed"]))
    stock["9"]["inputs"]["filename_prefix"] = "wan22_i2v_stock_latent"
    stock["32"]["inputs"]["filename_prefix"] = "wan22_i2v_stock_in"
    out = server.run_ok(stock)
    assert torch.equal(latent_file(server, out), lat), "best_seed in a stock KSampler must give the winner exactly"
