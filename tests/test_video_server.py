"""Video search on the real server with a tiny Wan 2.1 (tests/tiny_models.py: the diffusion model, the Wan 2.1
VAE and a CLIP-L text encoder loaded as SD3's, which gives the 4096-wide context Wan takes)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_server import CACHE, REPO, add_wan21, execution_error
from graphs import PREFIX, verifier_node
from server_outputs import frames_of, latent_file, report_of

TEXT = "a cat walking on a beach"
FRAMES = 5  # Wan: 1 + 4k frames; 5 frames = 2 latent frames
SIZE = 16


@pytest.fixture(scope="module")
def wan(comfy, comfy_path, models_dir):
    add_wan21(comfy_path, models_dir)
    return comfy


def wan_base(frames=FRAMES, batch=1):
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-wan21.safetensors", "weight_dtype": "default"}},
        "11": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-clip-l.safetensors", "type": "sd3"}},
        "12": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-wan21-vae.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT, "clip": ["11", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "static, blurry", "clip": ["11", 0]}},
        "4": {"class_type": "EmptyHunyuanLatentVideo",
              "inputs": {"width": SIZE, "height": SIZE, "length": frames, "batch_size": batch}},
    }


def wan_search(seed=3, candidates=3, top_k=2, steps=3, cfg=5.0, sampler="euler", micro_batch=2, scoring=None,
               prefix="wan", strategy=None, frames=FRAMES):
    g = wan_base(frames)
    g["5"] = verifier_node()
    g["6"] = {"class_type": PREFIX + "SearchLoop", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0], "vae": ["12", 0],
        "verifier": ["5", 0], "prompt": TEXT, "seed": seed, "candidates": candidates, "top_k": top_k,
        "sampler_name": sampler, "scheduler": "simple", "steps": steps, "cfg": cfg, "denoise": 1.0,
        "micro_batch": micro_batch}}
    if scoring is not None:
        g["20"] = {"class_type": PREFIX + "VideoScoring", "inputs": dict(scoring)}
        g["6"]["inputs"]["video_scoring"] = ["20", 0]
    if strategy is not None:
        g["40"] = {"class_type": PREFIX + strategy[0], "inputs": dict(strategy[1])}
        g["6"]["inputs"]["strategy"] = ["40", 0]
    g["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}}
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["6", 3]}}
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 1], "filename_prefix": prefix + "_latent"}}
    g["10"] = {"class_type": PREFIX + "VideoContactSheet", "inputs": {"images": ["6", 2], "scores": ["6", 3]}}
    g["13"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": prefix + "_sheet"}}
    return g


def stock_graph(seed, steps=3, cfg=5.0, sampler="euler", prefix="wanstock", frames=FRAMES):
    """A stock Wan T2V graph: KSampler -> VAE Decode, the frames scored one by one by Verifier Score."""
    g = wan_base(frames)
    g["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
        "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": "simple", "denoise": 1.0}}
    g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["12", 0]}}
    g["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}}
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix + "_latent"}}
    g["5"] = verifier_node()
    g["14"] = {"class_type": PREFIX + "VerifierScore", "inputs": {"images": ["7", 0], "verifier": ["5", 0],
                                                                  "prompt": TEXT}}
    g["15"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["14", 0]}}
    return g


def test_wan_search_reproduces_in_stock_ksampler_and_scores_the_frames(wan):
    entry = wan.run_ok(wan_search(seed=11, candidates=3, top_k=2, micro_batch=2, prefix="wan_t2v"))
    rep = report_of(entry)
    assert [c["seed"] for c in sorted(rep["candidates"], key=lambda c: c["index"])] == [11, 12, 13]
    video = rep["settings"]["video"]
    assert video == {"pick": "first/middle/last", "frames": 3, "aggregate": "mean", "frames_per_video": FRAMES,
                     "scored_frames": [0, 2, 4]}
    assert rep["settings"]["micro_batch"] == 2
    lat = latent_file(wan, entry)
    assert lat.shape == (1, 16, 2, SIZE // 8, SIZE // 8)
    # the winner as frames (5 x 32 x 32), and a contact sheet of the top 2 (one row each)
    assert len(entry["outputs"]["7"]["images"]) == FRAMES
    sheet = frames_of(wan, entry, "13")
    assert sheet.shape[0] == 1 and sheet.shape[2] > 3 * SIZE and sheet.shape[1] > 2 * SIZE

    best = rep["best"]
    stock = wan.run_ok(stock_graph(best["seed"], prefix="wan_stock"))
    assert torch.equal(latent_file(wan, stock), lat), "best_seed in a stock KSampler must give the winner exactly"
    assert np.array_equal(frames_of(wan, stock, "8"), frames_of(wan, entry, "7"))
    # the winner's score is the mean of its first, middle and last frames scored by hand (Verifier Score)
    by_hand = sorted(report_of(stock, "15")["candidates"], key=lambda c: c["index"])
    assert len(by_hand) == FRAMES
    want = np.mean([by_hand[i]["score"] for i in (0, 2, 4)])
    winner = rep["candidates"][0]
    assert winner["final_score"] == pytest.approx(want, abs=1e-5)
    assert winner["score"] == pytest.approx(want, abs=1e-3)  # the batched search sample, up to round-off


def test_min_of_evenly_spaced_frames(wan):
    entry = wan.run_ok(wan_search(seed=21, candidates=2, top_k=1, micro_batch=1, prefix="wan_min",
                                  scoring={"pick": "evenly spaced", "frames": 2, "aggregate": "min"}))
    rep = report_of(entry)
    assert rep["settings"]["video"]["scored_frames"] == [0, FRAMES - 1]
    stock = wan.run_ok(stock_graph(rep["best"]["seed"], prefix="wan_min_stock"))
    by_hand = sorted(report_of(stock, "15")["candidates"], key=lambda c: c["index"])
    assert rep["candidates"][0]["score"] == pytest.approx(min(by_hand[0]["score"], by_hand[-1]["score"]), abs=1e-5)


def test_a_video_native_verifier_scores_each_candidate_as_one_clip(wan):
    """The video-native protocol: a verifier with ``video_native`` gets each candidate's picked frames as one
    B x k x H x W x 3 clip (the test verifier's score is 1000 k + the clip's mean), in Search Loop and in
    Verifier Score."""
    g = wan_search(seed=31, candidates=3, top_k=1, micro_batch=2, prefix="wan_native",
                   scoring={"pick": "evenly spaced", "frames": 4, "aggregate": "min"})
    g["5"] = {"class_type": "InfScaleTest_ClipVerifier", "inputs": {}}
    rep = report_of(wan.run_ok(g))
    assert rep["settings"]["video"]["aggregate"] == "the verifier's own (video-native)"
    k = len(rep["settings"]["video"]["scored_frames"])
    assert k == 4 and all(1000 * k <= c["score"] < 1000 * k + 1 for c in rep["candidates"])
    assert rep["best"]["score"] == max(c["score"] for c in rep["candidates"])
    g = composable_graph(FRAMES, batch=2)
    g["5"] = {"class_type": "InfScaleTest_ClipVerifier", "inputs": {}}
    rep = report_of(wan.run_ok(g), "15")
    assert len(rep["candidates"]) == 2 and all(3000 <= c["score"] < 3001 for c in rep["candidates"])


def i2v_graph(search: bool, seed=0, prefix="wan_i2v"):
    """Wan 2.1 image-to-video: Wan Image To Video encodes the start image into the conditioning (concat latent
    + mask) and makes the empty video latent; Search Loop, or a stock KSampler, samples from it."""
    g = wan_base()
    g["1"]["inputs"]["unet_name"] = "tiny-wan21-i2v.safetensors"
    g["30"] = {"class_type": "LoadImage", "inputs": {"image": "wan_start.png"}}
    g["31"] = {"class_type": "WanImageToVideo", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "vae": ["12", 0], "width": SIZE, "height": SIZE,
        "length": FRAMES, "batch_size": 1, "start_image": ["30", 0]}}
    if search:
        g["5"] = verifier_node()
        g["6"] = {"class_type": PREFIX + "SearchLoop", "inputs": {
            "model": ["1", 0], "positive": ["31", 0], "negative": ["31", 1], "latent": ["31", 2], "vae": ["12", 0],
            "verifier": ["5", 0], "prompt": TEXT, "seed": seed, "candidates": 3, "top_k": 1,
            "sampler_name": "euler", "scheduler": "simple", "steps": 3, "cfg": 5.0, "denoise": 1.0,
            "micro_batch": 3}}
        g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["6", 3]}}
        g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 1], "filename_prefix": prefix + "_latent"}}
    else:
        g["6"] = {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["31", 0], "negative": ["31", 1], "latent_image": ["31", 2], "seed": seed,
            "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
        g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix + "_latent"}}
    return g


def test_wan_image_to_video_search_reproduces_in_stock_ksampler(wan):
    Image.new("RGB", (SIZE, SIZE), (30, 140, 220)).save(wan.input_dir + "/wan_start.png")
    entry = wan.run_ok(i2v_graph(True, seed=40))
    rep = report_of(entry)
    assert len(rep["candidates"]) == 3 and rep["settings"]["micro_batch"] == 3
    stock = wan.run_ok(i2v_graph(False, seed=rep["best"]["seed"], prefix="wan_i2v_stock"))
    assert torch.equal(latent_file(wan, stock), latent_file(wan, entry))


def two_expert_search(switch=2, steps=4, strategy=None, seed=60):
    g = wan_search(seed=seed, candidates=3, top_k=1, steps=steps, micro_batch=3, prefix="wan_2x", strategy=strategy)
    g["24"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-wan21-low.safetensors",
                                                      "weight_dtype": "default"}}
    g["6"]["inputs"].update(model_2=["24", 0], switch_step=switch)
    return g


def two_expert_stock(seed, switch=2, steps=4):
    """ComfyUI's Wan 2.2 14B template: a high-noise KSamplerAdvanced returning with leftover noise, then a
    low-noise one adding none."""
    g = wan_base()
    g["24"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-wan21-low.safetensors",
                                                      "weight_dtype": "default"}}
    common = {"positive": ["2", 0], "negative": ["3", 0], "steps": steps, "cfg": 5.0, "sampler_name": "euler",
              "scheduler": "simple"}
    g["6"] = {"class_type": "KSamplerAdvanced", "inputs": dict(
        common, model=["1", 0], add_noise="enable", noise_seed=seed, latent_image=["4", 0], start_at_step=0,
        end_at_step=switch, return_with_leftover_noise="enable")}
    g["7"] = {"class_type": "KSamplerAdvanced", "inputs": dict(
        common, model=["24", 0], add_noise="disable", noise_seed=0, latent_image=["6", 0], start_at_step=switch,
        end_at_step=10000, return_with_leftover_noise="disable")}
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "wan_2x_stock"}}
    return g


def test_two_experts_reproduce_in_the_stock_two_sampler_chain(wan):
    entry = wan.run_ok(two_expert_search())
    rep = report_of(entry)
    assert rep["settings"]["switch_step"] == 2 and rep["nfe_total"] == 3 * 4
    stock = wan.run_ok(two_expert_stock(rep["best"]["seed"]))
    assert torch.equal(latent_file(wan, stock), latent_file(wan, entry)), \
        "best_seed in the stock two-KSamplerAdvanced chain must give the winner exactly"
    # the second expert matters: without it (model alone over all steps) the winner differs
    one = wan.run_ok(stock_graph(rep["best"]["seed"], steps=4, prefix="wan_2x_one"))
    assert not torch.equal(latent_file(wan, one), latent_file(wan, entry))
    # a strategy that stops and re-noises runs across the switch too
    paths = wan.run_ok(two_expert_search(strategy=("PathsStrategy", {
        "paths": 2, "noises_per_path": 2, "start_level": 0.3, "forward": 0.5, "backward": 0.7, "budget_nfe": 0})))
    assert report_of(paths)["algorithm"] == "paths"


def test_two_experts_bad_switch_is_a_clear_error(wan):
    err = execution_error(wan.run(two_expert_search(switch=4, steps=4)))
    assert err is not None and "switch_step must be between 1 and steps - 1" in err["exception_message"], err


VIDEO_STRATEGIES = {
    "zero_order": ("ZeroOrderStrategy", {"neighbours": 2, "cosine": 0.9, "budget_nfe": 0}),
    "paths": ("PathsStrategy", {"paths": 2, "noises_per_path": 2, "start_level": 0.3, "forward": 0.5,
                                "backward": 0.7, "budget_nfe": 0}),
    "particles": ("ParticleStrategy", {"particles": 2, "potential": "max", "lam": 10.0, "interval": 2,
                                       "ess_threshold": 0.0, "budget_nfe": 0}),
    "halving": ("SuccessiveHalvingStrategy", {"starts": 0, "keep": 0.5, "rounds": 2, "first_level": 0.7,
                                              "last_level": 0.4, "budget_nfe": 0}),
}


@pytest.mark.parametrize("name", list(VIDEO_STRATEGIES))
def test_strategies_search_wan_videos(wan, name):
    sampler = "euler_ancestral" if name == "particles" else "euler"
    entry = wan.run_ok(wan_search(seed=5, candidates=3, top_k=1, steps=4, sampler=sampler, micro_batch=0,
                                  prefix=f"wan_{name}", strategy=VIDEO_STRATEGIES[name]))
    rep = report_of(entry)
    assert rep["algorithm"] == name and 0 < rep["nfe_total"] <= 3 * 4
    assert rep["settings"]["video"]["frames_per_video"] == FRAMES
    assert len(entry["outputs"]["7"]["images"]) == FRAMES
    assert latent_file(wan, entry).shape == (1, 16, 2, SIZE // 8, SIZE // 8)


def composable_graph(frames_per_video, batch=2):
    g = wan_base(batch=batch)
    g["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 9,
        "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["12", 0]}}
    g["5"] = verifier_node()
    g["14"] = {"class_type": PREFIX + "VerifierScore", "inputs": {
        "images": ["7", 0], "verifier": ["5", 0], "prompt": TEXT, "frames_per_video": frames_per_video}}
    g["15"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["14", 0]}}
    g["16"] = {"class_type": PREFIX + "BestPick", "inputs": {"images": ["7", 0], "scores": ["14", 0], "top_k": 2}}
    g["17"] = {"class_type": "SaveImage", "inputs": {"images": ["16", 0], "filename_prefix": "wan_pick"}}
    g["18"] = {"class_type": PREFIX + "VideoContactSheet", "inputs": {"images": ["7", 0], "scores": ["14", 0]}}
    g["19"] = {"class_type": "SaveImage", "inputs": {"images": ["18", 0], "filename_prefix": "wan_comp_sheet"}}
    g["21"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "wan_comp_all"}}
    return g


def test_more_frames_asked_than_the_videos_have_is_said_and_reported(wan):
    """Video Scoring with k = 50 evenly spaced frames on 5-frame videos: every frame is scored once, the node and
    the report's notes say so, and the report records the 5 frames scored (and the 50 asked for)."""
    entry = wan.run_ok(wan_search(seed=23, candidates=2, top_k=1, micro_batch=2, prefix="wan_k50",
                                  scoring={"pick": "evenly spaced", "frames": 50, "aggregate": "mean"}))
    rep = report_of(entry)
    video = rep["settings"]["video"]
    assert video["frames"] == FRAMES and video["frames_requested"] == 50
    assert video["scored_frames"] == list(range(FRAMES)) and video["frames_per_video"] == FRAMES
    note = ("Video Scoring asks for 50 frames per video (evenly spaced), but each video has only 5 frames: 5 were "
            "scored; set frames to 5 or fewer in Video Scoring, or make longer videos")
    assert video["note"] == note and note in rep["notes"]
    assert note in entry["outputs"]["6"]["text"][0]  # shown on Search Loop
    # Verifier Score on the same kind of videos says the same
    g = composable_graph(FRAMES)
    g["20"] = {"class_type": PREFIX + "VideoScoring", "inputs": {"pick": "evenly spaced", "frames": 50,
                                                                "aggregate": "mean"}}
    g["14"]["inputs"]["video_scoring"] = ["20", 0]
    entry = wan.run_ok(g)
    rep = report_of(entry, "15")
    assert rep["settings"]["video"]["frames"] == FRAMES and note in rep["notes"]
    assert note in entry["outputs"]["14"]["text"][0]
    # as many frames as the videos have: no note
    rep = report_of(wan.run_ok(wan_search(seed=23, candidates=2, top_k=1, micro_batch=2, prefix="wan_k5",
                                          scoring={"pick": "evenly spaced", "frames": FRAMES, "aggregate": "mean"})))
    assert rep["settings"]["video"]["frames"] == FRAMES and "frames_requested" not in rep["settings"]["video"]
    assert not any("Video Scoring asks for" in n for n in rep["notes"])


def test_composable_verifier_score_takes_video_frames(wan):
    entry = wan.run_ok(composable_graph(FRAMES))
    rep = report_of(entry, "15")
    assert len(rep["candidates"]) == 2 and rep["settings"]["video"]["frames_per_video"] == FRAMES
    assert len(entry["outputs"]["21"]["images"]) == 2 * FRAMES
    allf = frames_of(wan, entry, "21")
    best = rep["best"]["index"]
    # Best Pick returns the winning video's frames
    assert np.array_equal(frames_of(wan, entry, "17"), allf[best * FRAMES:(best + 1) * FRAMES])
    assert frames_of(wan, entry, "19").shape[0] == 1


def ranked_grid_of_videos():
    g = composable_graph(FRAMES)
    g["22"] = {"class_type": PREFIX + "RankedGrid", "inputs": {"images": ["7", 0], "scores": ["14", 0], "columns": 2}}
    g["23"] = {"class_type": "SaveImage", "inputs": {"images": ["22", 0], "filename_prefix": "wan_grid"}}
    return g


def prefilter_search():
    g = wan_search(prefix="bad_pre")
    g["25"] = verifier_node(mode="cosine")
    g["26"] = {"class_type": PREFIX + "VerifierPrefilter", "inputs": {"screen": ["25", 0], "verifier": ["5", 0],
                                                                      "keep": 0.5, "warmup": 1}}
    g["6"]["inputs"]["verifier"] = ["26", 0]
    return g


def test_the_prefilter_screens_video_candidates(wan):
    g = prefilter_search()
    g["6"]["inputs"].update(candidates=4, top_k=1)
    rep = report_of(wan.run_ok(g))
    pre = rep["settings"]["prefilter"]
    assert pre["screened"] == 4 and 1 <= pre["main_scored"] <= 4
    assert any("of the 4 videos" in n for n in rep["notes"])
    main = [k for k in rep["candidates"][0]["verifier_scores"] if not k.startswith("screen:")]
    assert main, "the winner was scored by the main verifier"


def preview_on_prefilter():
    g = prefilter_search()
    g["20"] = {"class_type": PREFIX + "VideoScoring", "inputs": {"pick": "first", "frames": 1, "aggregate": "mean",
                                                                "preview_keep": 0.5, "preview_warmup": 1}}
    g["6"]["inputs"]["video_scoring"] = ["20", 0]
    return g


def zero_frame_latent():
    """Trim Video Latent cutting every frame: a 0-frame video latent, refused before any sampling."""
    g = wan_search(prefix="bad_zero")
    g["21"] = {"class_type": "TrimVideoLatent", "inputs": {"samples": ["4", 0], "trim_amount": 99}}
    g["6"]["inputs"]["latent"] = ["21", 0]
    return g


BAD = {
    "zero_frame_latent": (zero_frame_latent, "the video latent has 0 frames"),
    "preview_with_a_relative_verifier": (preview_on_prefilter, "pruning by latent preview ranks each candidate"),
    "frames_not_matching": (lambda: composable_graph(3), "not a whole number of 3-frame videos"),
    "ranked_grid_of_videos": (ranked_grid_of_videos, "use Video Contact Sheet"),
    "image_latent_with_video_model": (None, "this is a video model but the latent is a 4-D image latent"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_video_inputs_are_clear_errors(wan, case):
    make, needle = BAD[case]
    if make is None:
        g = wan_search(prefix="bad")
        g["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}}
    else:
        g = make()
    err = execution_error(wan.run(g))
    assert err is not None and needle in err["exception_message"], err


# ---------------------------------------------------------------------------------------- cheaper scoring

PREFIX_SCRIPT = textwrap.dedent("""
    import importlib.util, os, sys
    sys.path.insert(0, os.getcwd())
    from comfy.cli_args import args
    args.cpu = True
    import torch, comfy.sd, comfy.utils
    path, repo = sys.argv[1], sys.argv[2]
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(path))
    spec = importlib.util.spec_from_file_location("infscale_pack", os.path.join(repo, "__init__.py"),
                                                  submodule_search_locations=[repo])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["infscale_pack"] = pack
    spec.loader.exec_module(pack)
    video = sys.modules["infscale_pack.engine.video"]
    count = video.causal_frame_count(vae)
    assert count is not None, "the Wan 2.1 VAE is on the causal whitelist"
    z = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    full = vae.decode(z)
    assert full.shape[1] == count(3) == 9, full.shape
    for n in (1, 2):
        part = vae.decode(z[:, :, :n])
        assert part.shape[1] == count(n), (n, part.shape)
        # equal up to float rounding: the convolution kernels a CPU picks for a shorter input may round
        # differently (bit-identical on some CPUs, within 2e-6 on others)
        assert (part - full[:, :count(n)]).abs().max().item() <= 1e-5, (n, (part - full[:, :count(n)]).abs().max())
    # the Wan 2.2 VAE class (48 channels), small and random, decodes a prefix exactly too
    import comfy.ldm.wan.vae2_2 as wan22
    assert (wan22.WanVAE.__module__, wan22.WanVAE.__name__) in video.CAUSAL_VAES
    torch.manual_seed(0)
    small = wan22.WanVAE(dim=16, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
                         temperal_downsample=[False, True, True]).eval()
    for p in small.parameters():
        torch.nn.init.normal_(p, std=0.05)
    z = torch.randn(1, 48, 3, 2, 2)
    with torch.no_grad():
        full = small.decode(z)
        assert full.shape[2] == 9 and (small.decode(z[:, :, :2]) - full[:, :, :5]).abs().max().item() <= 1e-5
    print("ok")
""")


def test_the_wan_vae_decodes_a_latent_prefix_exactly(comfy_path):
    """The Wan 2.1 VAE decodes latent frame by latent frame: the first n latent frames decode to the first
    4n - 3 frames of the whole decode (equal up to float rounding, on CPU), which the prefix decode relies on;
    the same for the Wan 2.2 VAE's class (built small)."""
    from tiny_models import ensure_checkpoint
    vae = ensure_checkpoint(comfy_path, "wan21_vae", os.path.join(CACHE, "checkpoints"), seed=0)
    proc = subprocess.run([sys.executable, "-c", PREFIX_SCRIPT, vae, REPO], cwd=comfy_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


LONG = 9  # 3 latent frames


@pytest.mark.parametrize("pick,frame,decoded", [("first", 0, 1), ("middle", 4, 2)])
def test_a_prefix_decode_scores_what_the_full_decode_scores(wan, pick, frame, decoded):
    """Scoring one early frame decodes only the latent frames it needs; the candidate's score is its frame's
    score in a stock KSampler -> VAE Decode of the whole video (micro_batch 1: the candidate is the stock
    sample)."""
    scoring = ({"pick": "first", "frames": 1, "aggregate": "mean"} if pick == "first" else
               {"pick": "evenly spaced", "frames": 1, "aggregate": "mean"})
    rep = report_of(wan.run_ok(wan_search(seed=70, candidates=1, top_k=1, micro_batch=1, scoring=scoring,
                                          frames=LONG, prefix=f"wan_prefix_{pick}")))
    assert rep["settings"]["video"]["scored_frames"] == [frame]
    assert rep["settings"]["video"]["decoded_latent_frames"] == [decoded, 3]
    for c in rep["candidates"]:
        stock = wan.run_ok(stock_graph(c["seed"], frames=LONG, prefix=f"wan_prefix_stock_{pick}_{c['seed']}"))
        by_hand = sorted(report_of(stock, "15")["candidates"], key=lambda x: x["index"])
        assert len(by_hand) == LONG
        assert c["score"] == pytest.approx(by_hand[frame]["score"], abs=1e-5)


def test_preview_pruning_decodes_about_the_kept_fraction_and_the_winner_reproduces(wan):
    scoring = {"pick": "first/middle/last", "frames": 3, "aggregate": "mean", "preview_keep": 0.5,
               "preview_warmup": 1}
    entry = wan.run_ok(wan_search(seed=80, candidates=6, top_k=1, micro_batch=2, scoring=scoring,
                                  prefix="wan_preview"))
    rep = report_of(entry)
    video = rep["settings"]["video"]
    assert video["preview_keep"] == 0.5 and video["preview_decoded"] + video["preview_pruned"] == 6
    assert 2 <= video["preview_decoded"] <= 5 and video["preview_pruned"] >= 1
    ranked = sorted(rep["candidates"], key=lambda c: -c["score"])
    decoded = [len(c["verifier_scores"]) > 1 for c in ranked]  # the verifier's score besides the preview's
    assert sum(decoded) == video["preview_decoded"]
    assert decoded == sorted(decoded, reverse=True), "pruned candidates rank below every decoded one"
    # the winner (decoded, scored for real) reproduces exactly in a stock KSampler, and comes back whole
    assert len(entry["outputs"]["7"]["images"]) == FRAMES
    stock = wan.run_ok(stock_graph(rep["best"]["seed"], prefix="wan_preview_stock"))
    assert torch.equal(latent_file(wan, stock), latent_file(wan, entry))
    assert np.array_equal(frames_of(wan, stock, "8"), frames_of(wan, entry, "7"))


def self_consistency(level=0.4):
    return {"class_type": PREFIX + "SelfConsistencyVerifierLoader",
            "inputs": {"arch": "ViT-L-14", "weights": "tiny-clip.safetensors", "level": level}}


def test_the_self_consistency_verifier_scores_video_candidates(wan):
    """The self-supervised verifier on videos: each scored frame against the same frame of the candidate's own
    x0-prediction at the level; the winner still replays in a stock KSampler; as a pre-filter's screen it
    screens videos; pruning by latent preview refuses it (a preview alone has nothing to compare with)."""
    g = wan_search(seed=71, candidates=3, top_k=1, steps=4, micro_batch=2, prefix="wan_selfc")
    g["5"] = self_consistency()
    entry = wan.run_ok(g)
    rep = report_of(entry)
    assert rep["verifier"].startswith("self_consistency[0.4](")
    scores = {c["seed"]: c["score"] for c in rep["candidates"]}
    assert len(scores) == 3 and all(-1.0 <= s <= 1.0 for s in scores.values())
    assert rep["settings"]["video"]["scored_frames"] == [0, 2, 4]
    stock = wan.run_ok(stock_graph(rep["best"]["seed"], steps=4, prefix="wan_selfc_stock"))
    assert torch.equal(latent_file(wan, stock), latent_file(wan, entry)), \
        "splitting each run at the preview step must not change the video"
    # an earlier, noisier preview scores differently (deterministic runs)
    g["5"] = self_consistency(level=0.9)
    g["7"]["inputs"]["filename_prefix"] = "wan_selfc09"
    early = {c["seed"]: c["score"] for c in report_of(wan.run_ok(g))["candidates"]}
    assert early.keys() == scores.keys() and any(early[s] != scores[s] for s in scores)
    # the free pre-filter on video: the self-consistency screen sees every video, CLIPScore only the kept ones
    g = wan_search(seed=72, candidates=4, top_k=1, steps=4, micro_batch=3, prefix="wan_selfc_pre")
    g["25"] = self_consistency()
    g["26"] = {"class_type": PREFIX + "VerifierPrefilter", "inputs": {"screen": ["25", 0], "verifier": ["5", 0],
                                                                      "keep": 0.3, "warmup": 1}}
    g["6"]["inputs"]["verifier"] = ["26", 0]
    rep = report_of(wan.run_ok(g))
    pre = rep["settings"]["prefilter"]
    assert pre["screened"] == 4 and 1 <= pre["main_scored"] < 4
    scored = [c for c in rep["candidates"] if any(not k.startswith("screen:") for k in c["verifier_scores"])]
    assert len(scored) == pre["main_scored"] and rep["best"]["seed"] in {c["seed"] for c in scored}
    # pruning by latent preview cannot use it
    g = wan_search(seed=73, candidates=2, top_k=1, steps=4, prefix="wan_selfc_prune",
                   scoring={"pick": "first", "frames": 1, "aggregate": "mean", "preview_keep": 0.5,
                            "preview_warmup": 1})
    g["5"] = self_consistency()
    err = execution_error(wan.run(g))
    assert err is not None and "self-consistency verifier cannot score" in err["exception_message"]
