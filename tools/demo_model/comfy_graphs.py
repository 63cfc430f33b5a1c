"""The demo model in a ComfyUI server: its model folders and the API graphs that tools/demo.py and
bench/demo_quality.py queue (stock loaders, CLIPTextEncode, KSampler, VAEDecode; the pack's nodes)."""
from __future__ import annotations

import os
from typing import Dict, Optional

import build

CHECKPOINT = build.CHECKPOINT_NAME
VERIFIER = build.VERIFIER_NAME + ".safetensors"
# what the model was made for: 64 x 64, euler / normal, 4 steps, no CFG (cfg 1 skips the unconditional pass); its
# training-time check at these settings: one sample right 86 %, the verifier's best of 8 92 %
WIDTH = HEIGHT = 64
SAMPLER, SCHEDULER, STEPS, CFG = "euler", "normal", 4, 1.0


def model_folders(root: str, files: Dict[str, str]) -> Dict[str, str]:
    """``root``/checkpoints and ``root``/verifiers holding links to ``files`` (build.ensure_files); the mapping
    tests/comfy_server.launch writes into extra_model_paths.yaml."""
    links = {os.path.join("checkpoints", CHECKPOINT): files["checkpoint"],
             os.path.join("verifiers", VERIFIER): files["verifier"],
             os.path.join("verifiers", build.VERIFIER_NAME + ".json"): files["verifier_config"]}
    for rel, target in links.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.lexists(path):
            os.symlink(os.path.abspath(target), path)
    return {"base_path": root, "checkpoints": "checkpoints", "verifiers": "verifiers"}


def base_nodes(prompt: str, mode: str = "cosine") -> dict:
    """Nodes "1".."5": the checkpoint, the prompt and an empty negative, a 64 x 64 latent, the verifier."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}},
        "5": {"class_type": "InfScale_CLIPScoreVerifierLoader",
              "inputs": {"arch": "ViT-L-14", "weights": VERIFIER, "mode": mode, "download_missing": False}},
    }


def search_node(prompt: str, seed: int, candidates: int, top_k: int, *, steps: int = STEPS, cfg: float = CFG,
                strategy: Optional[list] = None, exact_winner: bool = False) -> dict:
    """A Search Loop on nodes 1-5, every candidate sampled in one batch."""
    inputs = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0], "vae": ["1", 2],
              "verifier": ["5", 0], "prompt": prompt, "seed": seed, "candidates": candidates, "top_k": top_k,
              "sampler_name": SAMPLER, "scheduler": SCHEDULER, "steps": steps, "cfg": cfg, "denoise": 1.0,
              "micro_batch": candidates, "exact_winner": exact_winner}
    if strategy is not None:
        inputs["strategy"] = strategy
    return {"class_type": "InfScale_SearchLoop", "inputs": inputs}


def ksampler_node(seed: int, *, steps: int = STEPS, cfg: float = CFG) -> dict:
    """The stock KSampler with the same settings: one sample, the baseline (= Search Loop's candidate at ``seed``)."""
    return {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": SAMPLER, "scheduler": SCHEDULER,
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
