"""Composable search and ComfyUI's custom-sampling features (GUIDER, NOISE,
SamplerCustomAdvanced, flow models)."""
import os

import pytest
import safetensors.torch
import torch

from comfy_server import execution_error, need
from graphs import PREFIX, base_graph, custom_sampling, search_graph, verifier_node
from server_outputs import latent_file, report_of
from strategy_graphs import with_strategy


def test_composable_matches_searchloop(comfy):
    need(comfy, "SamplerCustomAdvanced", "CFGGuider", "RandomNoise")
    seed, n = 500, 4
    g = base_graph()
    g["5"] = verifier_node()
    g["10"] = {"class_type": PREFIX + "NoiseCandidateGenerator", "inputs": {"seed": seed, "count": n, "offset": 0}}
    sc = custom_sampling(g, ("10", 0))
    g["11"] = {"class_type": "VAEDecode", "inputs": {"samples": [sc, 0], "vae": ["1", 2]}}
    g["12"] = {"class_type": PREFIX + "VerifierScore", "inputs": {"images": ["11", 0], "verifier": ["5", 0],
                                                                 "prompt": "a red apple on a table", "noise": ["10", 0]}}
    g["13"] = {"class_type": PREFIX + "BestPick", "inputs": {"images": ["11", 0], "scores": ["12", 0], "top_k": 2,
                                                            "latent": [sc, 0], "noise": ["10", 0]}}
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["12", 0]}}
    g["14"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 2], "filename_prefix": "comp"}}
    comp = report_of(comfy.run_ok(g))
    ref = report_of(comfy.run_ok(search_graph(seed=seed, candidates=n, top_k=1, micro_batch=n, prefix="compref")))
    assert comp["best"]["seed"] == ref["best"]["seed"]
    a = {c["seed"]: c["score"] for c in comp["candidates"]}
    b = {c["seed"]: c["score"] for c in ref["candidates"]}
    assert a.keys() == b.keys() and all(a[s] == pytest.approx(b[s], abs=1e-3) for s in a)

    # the winner re-rendered at batch 1 through the stock sampler = SearchLoop's output, exactly
    g2 = base_graph()
    g2["10"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": comp["best"]["seed"]}}
    sc2 = custom_sampling(g2, ("10", 0))
    g2["9"] = {"class_type": "SaveLatent", "inputs": {"samples": [sc2, 0], "filename_prefix": "comp_winner"}}
    stock = comfy.run_ok(g2)
    ref_entry = comfy.run_ok(search_graph(seed=seed, candidates=n, top_k=1, micro_batch=2, prefix="compref2"))
    # SearchLoop (KSampler widgets euler/normal/4/cfg 7) re-renders exactly what SamplerCustomAdvanced computes
    assert torch.equal(latent_file(comfy, stock), latent_file(comfy, ref_entry))


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde"])
def test_composable_with_candidate_sampler_equals_searchloop(comfy, sampler):
    """Noise Candidate Generator + Candidate Sampler -> SamplerCustomAdvanced: each candidate gets its own
    in-sampler noise stream, so the composable search scores and picks what SearchLoop does for stochastic
    samplers too, and best_seed replays at batch 1 exactly as SearchLoop's exact output."""
    need(comfy, "SamplerCustomAdvanced", "CFGGuider", "RandomNoise", "KSamplerSelect")
    seed, n = 100, 4
    g = base_graph()
    g["5"] = verifier_node()
    g["10"] = {"class_type": PREFIX + "NoiseCandidateGenerator", "inputs": {"seed": seed, "count": n, "offset": 0}}
    sc = custom_sampling(g, ("10", 0), steps=3, sampler=sampler)
    g["45"] = {"class_type": PREFIX + "CandidateSampler", "inputs": {"sampler": ["41", 0], "noise": ["10", 0]}}
    g[sc]["inputs"]["sampler"] = ["45", 0]
    g["11"] = {"class_type": "VAEDecode", "inputs": {"samples": [sc, 0], "vae": ["1", 2]}}
    g["12"] = {"class_type": PREFIX + "VerifierScore", "inputs": {"images": ["11", 0], "verifier": ["5", 0],
                                                                 "prompt": "a red apple on a table", "noise": ["10", 0]}}
    g["13"] = {"class_type": PREFIX + "BestPick", "inputs": {"images": ["11", 0], "scores": ["12", 0], "top_k": 1,
                                                            "latent": [sc, 0], "noise": ["10", 0]}}
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["12", 0]}}
    g["14"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": f"cs_{sampler}"}}
    comp = report_of(comfy.run_ok(g))
    ref_entry = comfy.run_ok(search_graph(seed=seed, candidates=n, top_k=1, steps=3, sampler=sampler, micro_batch=n,
                                          prefix=f"csref_{sampler}"))
    ref = report_of(ref_entry)
    a = {c["seed"]: c["score"] for c in comp["candidates"]}
    b = {c["seed"]: c["score"] for c in ref["candidates"]}
    assert a.keys() == b.keys() and all(a[s] == pytest.approx(b[s], abs=1e-3) for s in a), (a, b)
    assert comp["best"]["seed"] == ref["best"]["seed"]
    g2 = base_graph()
    g2["10"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": comp["best"]["seed"]}}
    sc2 = custom_sampling(g2, ("10", 0), steps=3, sampler=sampler)
    g2["9"] = {"class_type": "SaveLatent", "inputs": {"samples": [sc2, 0], "filename_prefix": f"cs_win_{sampler}"}}
    assert torch.equal(latent_file(comfy, comfy.run_ok(g2)), latent_file(comfy, ref_entry))


def test_noise_generator_rejects_wrong_batch(comfy):
    need(comfy, "SamplerCustomAdvanced")
    g = base_graph()
    g["4"]["inputs"]["batch_size"] = 2
    g["10"] = {"class_type": PREFIX + "NoiseCandidateGenerator", "inputs": {"seed": 1, "count": 4, "offset": 0}}
    sc = custom_sampling(g, ("10", 0))
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": [sc, 0], "filename_prefix": "bad"}}
    err = execution_error(comfy.run(g))
    assert err and "holds 4 candidates but the latent has batch size 2" in err["exception_message"]


def test_searchloop_with_guider_and_with_sampler_sigmas_replays_as_noise(comfy):
    need(comfy, "SamplerCustomAdvanced", "CFGGuider", "KSamplerSelect", "BasicScheduler")
    for mode in ("guider", "sampler_sigmas"):
        g = search_graph(seed=77, candidates=3, top_k=1, micro_batch=3, prefix=f"g{mode}")
        custom_sampling(g, ("6", 6))  # nodes 40..43; SamplerCustomAdvanced replays SearchLoop's NOISE output
        g["6"]["inputs"]["sampler"] = ["41", 0]
        g["6"]["inputs"]["sigmas"] = ["42", 0]
        if mode == "guider":
            g["6"]["inputs"]["guider"] = ["40", 0]
        g["44"] = {"class_type": "SaveLatent", "inputs": {"samples": ["43", 0], "filename_prefix": f"replay{mode}"}}
        entry = comfy.run_ok(g)
        rep = report_of(entry)
        assert rep["settings"]["mode"] == ("guider" if mode == "guider" else "custom")
        assert all(c["nfe"] == 4 for c in rep["candidates"])
        assert torch.equal(latent_file(comfy, entry, "44"), latent_file(comfy, entry, "9")), \
            "SearchLoop's NOISE output must replay the winner exactly in SamplerCustomAdvanced"


def test_noise_winners_replay_exactly_in_sampler_custom_advanced(comfy):
    """exact_winner means the same for every strategy: a zero-order or evolved winner (a starting noise, not a
    seed) is re-rendered through SamplerCustomAdvanced's call, so SearchLoop's NOISE output replays it bit for bit."""
    need(comfy, "SamplerCustomAdvanced", "CFGGuider", "KSamplerSelect", "BasicScheduler")
    kinds = []
    for name in ("zero_order", "evolution"):
        for sampler in ("euler", "euler_ancestral"):
            for seed in (13, 14):
                g = with_strategy(search_graph(seed=seed, candidates=6, top_k=1, steps=4, sampler=sampler,
                                               micro_batch=3, prefix=f"nz_{name}_{sampler}"), name)
                # the strategy node is "40": SamplerCustomAdvanced's nodes take 50..53
                sc = custom_sampling(g, ("6", 6), sampler=sampler, ids=(50, 51, 52, 53))
                g["54"] = {"class_type": "SaveLatent", "inputs": {"samples": [sc, 0],
                                                                  "filename_prefix": f"nzr_{name}_{sampler}"}}
                entry = comfy.run_ok(g)
                best = report_of(entry)["best"]
                kinds.append(best["replay"])
                assert best["replay"] in ("noise", "ksampler"), best
                assert torch.equal(latent_file(comfy, entry, "54"), latent_file(comfy, entry, "9")), \
                    f"{name}/{sampler}: the NOISE output must replay the winner exactly"
    assert "noise" in kinds  # at least one winner was a derived noise (neighbour / child), not a seed


def test_flow_model_sd3_runs_through_searchloop(comfy, sd3):
    g = search_graph(seed=3, candidates=3, top_k=1, cfg=4.0, prefix="sd3")
    g["1"]["inputs"]["ckpt_name"] = sd3
    g["4"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    entry = comfy.run_ok(g)
    rep = report_of(entry)
    assert len(rep["candidates"]) == 3 and latent_file(comfy, entry).shape[1] == 16
    # a 4-channel empty latent is fixed to 16 channels by ComfyUI first, as for its own samplers
    g["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    g["7"]["inputs"]["filename_prefix"] = "sd3b"
    assert latent_file(comfy, comfy.run_ok(g)).shape[1] == 16


def test_lora_changes_searchloop_exactly_as_stock(comfy, models_dir):
    need(comfy, "LoraLoaderModelOnly")
    lora_dir = os.path.join(models_dir["root"], "loras")
    os.makedirs(lora_dir, exist_ok=True)
    torch.manual_seed(0)
    # kohya-format LoRA keys on the UNet's time embedding (Linear 320 -> 1280), rank 4
    safetensors.torch.save_file({
        "lora_unet_time_embed_0.lora_down.weight": torch.randn(4, 320) * 0.5,
        "lora_unet_time_embed_0.lora_up.weight": torch.randn(1280, 4) * 0.5,
    }, os.path.join(lora_dir, "tiny-lora.safetensors"))
    info = comfy.get("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]
    if "tiny-lora.safetensors" not in info:
        pytest.skip("this server does not list the test's loras folder")

    def with_lora(g, target):
        g["50"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name":
                                                                   "tiny-lora.safetensors", "strength_model": 1.0}}
        g[target]["inputs"]["model"] = ["50", 0]
        return g

    from graphs import ksampler_graph
    plain = comfy.run_ok(search_graph(seed=10, candidates=2, top_k=1, prefix="nolora"))
    lora = comfy.run_ok(with_lora(search_graph(seed=10, candidates=2, top_k=1, prefix="lora"), "6"))
    best = report_of(lora)["best"]["seed"]
    stock = comfy.run_ok(with_lora(ksampler_graph(seed=best, prefix="stocklora"), "6"))
    assert torch.equal(latent_file(comfy, stock), latent_file(comfy, lora))
    assert report_of(plain)["candidates"] != report_of(lora)["candidates"]
