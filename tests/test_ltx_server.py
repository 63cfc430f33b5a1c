"""LTX-Video search on the real server with a tiny LTX-Video checkpoint (tests/tiny_models.py: the diffusion
model and the causal video VAE in one file, as the published ltx-video-2b files) and the tiny CLIP-L loaded as
SD3's text encoder in place of T5-XXL (its context is 4096 wide, what LTX's caption projection takes; the
test-only Text Attention Mask node adds the all-ones attention mask T5 would give, which LTX's model needs).

Image-to-video: LTX Image To Video encodes the start image into the first latent frame and marks it with a
per-frame noise mask (B x 1 x T x 1 x 1, 0 on the keyframe); Search Loop passes the mask to ComfyUI's sampling
as a stock KSampler does."""
from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from comfy_server import add_ltxv
from graphs import PREFIX, verifier_node

TEXT = "a sailing boat on a calm lake at sunset"
SIZE = 64    # LTX's latent is 1/32 of the frame: 2 x 2
FRAMES = 9   # LTX: 1 + 8k frames; 9 frames = 2 latent frames
STEPS = 3


@pytest.fixture(scope="module")
def ltx(comfy, comfy_path, models_dir):
    add_ltxv(comfy_path, models_dir)
    Image.new("RGB", (SIZE, SIZE), (220, 120, 30)).save(comfy.input_dir + "/ltx_start.png")
    return comfy


def base(i2v: bool):
    """LTX-Video as in ComfyUI's templates: the checkpoint's MODEL and VAE, ModelSamplingLTXV, the text through
    LTXV Conditioning (frame rate); the latent from Empty LTXV Latent Video, or from LTX Image To Video."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-ltxv.safetensors"}},
        "11": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-clip-l.safetensors", "type": "sd3"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT, "clip": ["11", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, static", "clip": ["11", 0]}},
        "12": {"class_type": "InfScaleTest_TextAttentionMask", "inputs": {"conditioning": ["2", 0]}},
        "13": {"class_type": "InfScaleTest_TextAttentionMask", "inputs": {"conditioning": ["3", 0]}},
        "14": {"class_type": "ModelSamplingLTXV", "inputs": {"model": ["1", 0], "max_shift": 2.05,
                                                             "base_shift": 0.95}},
    }
    if i2v:
        g["30"] = {"class_type": "LoadImage", "inputs": {"image": "ltx_start.png"}}
        g["4"] = {"class_type": "LTXVImgToVideo", "inputs": {
            "positive": ["12", 0], "negative": ["13", 0], "vae": ["1", 2], "image": ["30", 0], "width": SIZE,
            "height": SIZE, "length": FRAMES, "batch_size": 1, "strength": 1.0}}
        g["5"] = {"class_type": "LTXVConditioning", "inputs": {"positive": ["4", 0], "negative": ["4", 1],
                                                               "frame_rate": 24.0}}
        g["33"] = {"class_type": "SaveLatent", "inputs": {"samples": ["4", 2], "filename_prefix": "ltx_keyframe"}}
        latent = ["4", 2]
    else:
        g["4"] = {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": SIZE, "height": SIZE,
                                                                   "length": FRAMES, "batch_size": 1}}
        g["5"] = {"class_type": "LTXVConditioning", "inputs": {"positive": ["12", 0], "negative": ["13", 0],
                                                               "frame_rate": 24.0}}
        latent = ["4", 0]
    g["14"]["inputs"]["latent"] = latent
    return g, latent


def search_graph(i2v: bool, seed: int, prefix: str, candidates=3, micro_batch=2, strategy=None):
    g, latent = base(i2v)
    g["6"] = verifier_node()
    g["7"] = {"class_type": PREFIX + "SearchLoop", "inputs": {
        "model": ["14", 0], "positive": ["5", 0], "negative": ["5", 1], "latent": latent, "vae": ["1", 2],
        "verifier": ["6", 0], "prompt": TEXT, "seed": seed, "candidates": candidates, "top_k": 1,
        "sampler_name": "euler", "scheduler": "simple", "steps": STEPS, "cfg": 3.0, "denoise": 1.0,
        "micro_batch": micro_batch}}
    if strategy is not None:
        g["40"] = {"class_type": PREFIX + strategy[0], "inputs": dict(strategy[1])}
        g["7"]["inputs"]["strategy"] = ["40", 0]
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["7", 3]}}
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 1], "filename_prefix": prefix + "_latent"}}
    g["10"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}}
    return g


def stock_graph(i2v: bool, seed: int, prefix: str):
    g, latent = base(i2v)
    g["7"] = {"class_type": "KSampler", "inputs": {
        "model": ["14", 0], "positive": ["5", 0], "negative": ["5", 1], "latent_image": latent, "seed": seed,
        "steps": STEPS, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": prefix + "_latent"}}
    g["15"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}}
    g["10"] = {"class_type": "SaveImage", "inputs": {"images": ["15", 0], "filename_prefix": prefix}}
    return g


def report_of(entry, node="8") -> dict:
    return json.loads(entry["outputs"][node]["text"][0])


def latent_file(comfy, entry, node="9") -> torch.Tensor:
    return safetensors.torch.load_file(comfy.output_file(entry["outputs"][node]["latents"][0]))["latent_tensor"]


def frames_of(comfy, entry, node="10") -> np.ndarray:
    return np.stack([np.asarray(Image.open(comfy.output_file(it))) for it in entry["outputs"][node]["images"]])


def test_ltx_text_to_video_search_reproduces_in_stock_ksampler(ltx):
    entry = ltx.run_ok(search_graph(False, seed=7, prefix="ltx_t2v"))
    rep = report_of(entry)
    assert [c["seed"] for c in sorted(rep["candidates"], key=lambda c: c["index"])] == [7, 8, 9]
    assert rep["settings"]["video"]["frames_per_video"] == FRAMES
    lat = latent_file(ltx, entry)
    assert lat.shape == (1, 128, 2, SIZE // 32, SIZE // 32)
    assert len(entry["outputs"]["10"]["images"]) == FRAMES
    stock = ltx.run_ok(stock_graph(False, rep["best"]["seed"], prefix="ltx_t2v_stock"))
    assert torch.equal(latent_file(ltx, stock), lat), "best_seed in a stock KSampler must give the winner exactly"
    assert np.array_equal(frames_of(ltx, stock), frames_of(ltx, entry))


def test_ltx_image_to_video_search_keeps_the_keyframe_and_reproduces_in_stock_ksampler(ltx):
    entry = ltx.run_ok(search_graph(True, seed=20, prefix="ltx_i2v"))
    rep = report_of(entry)
    assert len(rep["candidates"]) == 3 and rep["settings"]["micro_batch"] == 2
    lat = latent_file(ltx, entry)
    keyframe = latent_file(ltx, entry, "33")
    assert keyframe[:, :, 1:].abs().max() == 0 and keyframe[:, :, :1].abs().max() > 0
    # the masked first latent frame stays the start image's (up to the sampler's round-off: without the mask
    # it would be sampled from noise like the rest)
    assert torch.allclose(lat[:, :, :1], keyframe[:, :, :1], atol=1e-4)
    assert (lat[:, :, 1:] - keyframe[:, :, 1:]).abs().max() > 0.1
    stock = ltx.run_ok(stock_graph(True, rep["best"]["seed"], prefix="ltx_i2v_stock"))
    assert torch.equal(latent_file(ltx, stock), lat), "best_seed in a stock KSampler must give the winner exactly"


def test_ltx_image_to_video_with_ltxv_scheduler_reproduces_in_sampler_custom(ltx):
    """As the workflow (and ComfyUI's LTX template): LTXV Scheduler's sigmas (shifted for the latent's size)
    and KSampler Select's SAMPLER into Search Loop; best_seed as SamplerCustom's noise_seed gives the winner."""
    def custom(g):
        g["17"] = {"class_type": "LTXVScheduler", "inputs": {"steps": STEPS, "max_shift": 2.05, "base_shift": 0.95,
                                                             "stretch": True, "terminal": 0.1, "latent": ["4", 2]}}
        g["18"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        return g
    g = custom(search_graph(True, seed=60, prefix="ltx_sched", candidates=2, micro_batch=2))
    g["7"]["inputs"].update(model=["1", 0], sampler=["18", 0], sigmas=["17", 0])
    entry = ltx.run_ok(g)
    rep = report_of(entry)
    stock = custom(stock_graph(True, rep["best"]["seed"], prefix="ltx_sched_stock"))
    stock["7"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["1", 0], "add_noise": True, "noise_seed": rep["best"]["seed"], "cfg": 3.0, "positive": ["5", 0],
        "negative": ["5", 1], "sampler": ["18", 0], "sigmas": ["17", 0], "latent_image": ["4", 2]}}
    assert torch.equal(latent_file(ltx, ltx.run_ok(stock)), latent_file(ltx, entry))


def test_ltx_keyframe_survives_strategies_that_renoise(ltx):
    """Paths stops candidates mid-schedule, re-noises and resumes (the host re-composes the masked frames each
    segment, engine/host.py): the keyframe still ends as the start image's latent."""
    entry = ltx.run_ok(search_graph(True, seed=30, prefix="ltx_paths", candidates=2, micro_batch=0, strategy=(
        "PathsStrategy", {"paths": 2, "noises_per_path": 2, "start_level": 0.3, "forward": 0.5, "backward": 0.7,
                          "budget_nfe": 0})))
    rep = report_of(entry)
    assert rep["algorithm"] == "paths" and rep["nfe_total"] > 0
    lat, keyframe = latent_file(ltx, entry), latent_file(ltx, entry, "33")
    assert torch.allclose(lat[:, :, :1], keyframe[:, :, :1], atol=1e-4)
    assert (lat[:, :, 1:] - keyframe[:, :, 1:]).abs().max() > 0.1


def guide_graph(search: bool, seed: int, prefix: str):
    """A keyframe as the last frame with LTXV Add Guide: it appends the start image's latent after the video
    (one more latent frame, noise mask 0) and its position to the conditioning (keyframe_idxs).  The stock
    template samples, then LTXV Crop Guides drops the appended frame before VAE Decode."""
    g = search_graph(False, seed, prefix) if search else stock_graph(False, seed, prefix)
    g["30"] = {"class_type": "LoadImage", "inputs": {"image": "ltx_start.png"}}
    g["31"] = {"class_type": "LTXVAddGuide", "inputs": {
        "positive": ["12", 0], "negative": ["13", 0], "vae": ["1", 2], "latent": ["4", 0], "image": ["30", 0],
        "frame_idx": -1, "strength": 1.0}}
    g["5"]["inputs"].update(positive=["31", 0], negative=["31", 1])
    g["14"]["inputs"]["latent"] = ["31", 2]
    g["33"] = {"class_type": "SaveLatent", "inputs": {"samples": ["31", 2], "filename_prefix": prefix + "_guided"}}
    if search:
        g["7"]["inputs"]["latent"] = ["31", 2]
    else:
        g["7"]["inputs"]["latent_image"] = ["31", 2]
        g["16"] = {"class_type": "LTXVCropGuides", "inputs": {"positive": ["5", 0], "negative": ["5", 1],
                                                              "latent": ["7", 0]}}
        g["15"]["inputs"]["samples"] = ["16", 2]
    return g


def test_ltx_add_guide_keyframe_search_scores_the_video_without_the_guide_frames(ltx):
    entry = ltx.run_ok(guide_graph(True, seed=50, prefix="ltx_guide"))
    rep = report_of(entry)
    guided = latent_file(ltx, entry, "33")
    assert guided.shape[2] == 3  # two video frames + the appended guide
    lat = latent_file(ltx, entry)
    assert lat.shape == guided.shape  # the latent output keeps the guide, for LTXV Crop Guides after it
    assert torch.allclose(lat[:, :, 2:], guided[:, :, 2:], atol=1e-4)
    # image (and what the verifier scored): the video alone, as LTXV Crop Guides + VAE Decode give it
    assert len(entry["outputs"]["10"]["images"]) == FRAMES
    assert rep["settings"]["video"]["frames_per_video"] == FRAMES
    assert rep["settings"]["video"]["scored_frames"] == [0, FRAMES // 2, FRAMES - 1]
    # pruning on the latent preview (LTX has preview factors) previews the video's frames, not the guide's
    g = guide_graph(True, seed=50, prefix="ltx_guide_pruned")
    g["20"] = {"class_type": PREFIX + "VideoScoring", "inputs": {"pick": "first/middle/last", "frames": 3,
                                                                 "aggregate": "mean", "preview_keep": 0.5,
                                                                 "preview_warmup": 1}}
    g["7"]["inputs"]["video_scoring"] = ["20", 0]
    pruned = report_of(ltx.run_ok(g))["settings"]["video"]
    assert pruned["frames_per_video"] == FRAMES and pruned["preview_decoded"] + pruned["preview_pruned"] == 3
    stock = ltx.run_ok(guide_graph(False, rep["best"]["seed"], prefix="ltx_guide_stock"))
    assert torch.equal(latent_file(ltx, stock), lat), "best_seed in a stock KSampler must give the winner exactly"
    assert np.array_equal(frames_of(ltx, stock), frames_of(ltx, entry))
