"""API-format prompts for the server tests."""
from __future__ import annotations

PREFIX = "InfScale_"


def base_graph(text="a red apple on a table", size=64, ckpt="tiny-sd15.safetensors"):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
    }


def verifier_node(weights="tiny-clip.safetensors", mode="clipscore"):
    return {"class_type": PREFIX + "CLIPScoreVerifierLoader",
            "inputs": {"arch": "ViT-L-14", "weights": weights, "mode": mode}}


def search_graph(seed=42, candidates=4, top_k=2, sampler="euler", scheduler="normal", steps=4, cfg=7.0,
                 denoise=1.0, micro_batch=0, weights="tiny-clip.safetensors", prefix="search", latent=None,
                 text="a red apple on a table"):
    g = base_graph(text)
    g["5"] = verifier_node(weights)
    g["6"] = {"class_type": PREFIX + "SearchLoop", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": latent or ["4", 0],
        "vae": ["1", 2], "verifier": ["5", 0], "prompt": text, "seed": seed, "candidates": candidates,
        "top_k": top_k, "sampler_name": sampler, "scheduler": scheduler, "steps": steps, "cfg": cfg,
        "denoise": denoise, "micro_batch": micro_batch}}
    g["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}}
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["6", 3]}}
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 1], "filename_prefix": prefix + "_latent"}}
    g["10"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 2], "filename_prefix": prefix + "_topk"}}
    return g


def ksampler_graph(seed, sampler="euler", scheduler="normal", steps=4, cfg=7.0, denoise=1.0, prefix="stock",
                   text="a red apple on a table", latent=None):
    g = base_graph(text)
    g["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": latent or ["4", 0],
        "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
        "denoise": denoise}}
    g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    g["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}}
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix + "_latent"}}
    return g


def custom_sampling(g, noise_ref, latent_ref=("4", 0), cfg=7.0, steps=4, sampler="euler", ids=(40, 41, 42, 43)):
    gid, sid, sgid, scid = (str(i) for i in ids)
    g[gid] = {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                    "cfg": cfg}}
    g[sid] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    g[sgid] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": steps,
                                                          "denoise": 1.0}}
    g[scid] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": list(noise_ref), "guider": [gid, 0], "sampler": [sid, 0], "sigmas": [sgid, 0],
        "latent_image": list(latent_ref)}}
    return scid


def aesthetic_node(clip="tiny-clip-768.safetensors", mlp="tiny-aesthetic.pth"):
    return {"class_type": PREFIX + "AestheticVerifierLoader",
            "inputs": {"clip_arch": "ViT-L-14", "clip_weights": clip, "aesthetic_weights": mlp}}


def batch_score_graph(verifier_nodes: dict, verifier_ref, batch=3, seed=5):
    """A stock KSampler batch, decoded, scored by VerifierScore, reported as JSON (node 8)."""
    g = base_graph()
    g["4"]["inputs"]["batch_size"] = batch
    g["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
        "steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    g.update(verifier_nodes)
    g["20"] = {"class_type": PREFIX + "VerifierScore",
               "inputs": {"images": ["7", 0], "verifier": verifier_ref, "prompt": "a red apple"}}
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["20", 0]}}
    return g
