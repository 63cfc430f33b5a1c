"""Run in a subprocess by tests/test_verifier_cache.py: the pack's verifier tables with ComfyUI imported
(--cpu). Loads more verifiers than the pack keeps, drops every reference the way ComfyUI drops a node's
output, and reports what stays alive.

usage: python tests/verifier_cache_check.py COMFYUI_DIR WORKDIR  -> prints one JSON line."""
from __future__ import annotations

import gc
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tokenizers_alive(base: int = 0) -> int:
    """open_clip tokenizer objects alive in this process, after a full garbage collection, less ``base`` (those
    alive before any verifier was loaded: open_clip keeps a default one)."""
    from open_clip.tokenizer import SimpleTokenizer
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, SimpleTokenizer)) - base


def main(comfy_dir: str, work: str) -> dict:
    from pack_in_process import import_comfy_and_pack
    import_comfy_and_pack(comfy_dir)
    import torch
    import folder_paths
    sys.path.insert(1, os.path.join(REPO, "tests"))
    from tiny_verifiers import build_tiny_clip
    import open_clip
    from infscale_pack.engine import verifier_models as vm
    from infscale_pack.nodes.verifier_nodes import CLIPScoreVerifierLoader

    folder = os.path.join(work, "verifiers")
    # more CLIP files than the pack keeps parts of: each is a custom architecture (a JSON config beside it)
    names = [f"tiny-clip-{i}" for i in range(vm.KEEP_PARTS + 2)]
    for i, n in enumerate(names):
        build_tiny_clip(folder, n, seed=i)
    folder_paths.folder_names_and_paths["verifiers"] = ([folder], {".safetensors", ".json"})
    out = {"keep": vm.KEEP, "keep_parts": vm.KEEP_PARTS, "files": len(names)}
    archs_before = {"open_clip": open_clip.list_models(),
                    "node": CLIPScoreVerifierLoader.INPUT_TYPES()["required"]["arch"][0]}
    base = tokenizers_alive()
    loader = CLIPScoreVerifierLoader()
    a = loader.load("ViT-L-14", names[0] + ".safetensors", "cosine")[0]
    b = loader.load("ViT-L-14", names[0] + ".safetensors", "cosine")[0]
    c = loader.load("ViT-L-14", names[0] + ".safetensors", "clipscore")[0]
    out["same_object_for_same_inputs"] = a is b
    out["one_clip_part_for_two_modes"] = a.patchers[0] is c.patchers[0]
    img = torch.rand(1, 32, 32, 3)
    out["scores"] = [float(a.score(img, "x")[0]), float(c.score(img, "x")[0])]
    del a, b, c
    for n in names[1:]:  # more verifiers than the pack keeps, none held by anyone else
        loader.load("ViT-L-14", n + ".safetensors", "cosine")
    gc.collect()
    out["after_loading_more"] = dict(vm.live(), tokenizers=tokenizers_alive(base))
    archs_after = {"open_clip": open_clip.list_models(),
                   "node": CLIPScoreVerifierLoader.INPUT_TYPES()["required"]["arch"][0]}
    out["archs_added"] = {k: sorted(set(archs_after[k]) - set(archs_before[k])) for k in archs_after}
    held = loader.load("ViT-L-14", names[-1] + ".safetensors", "cosine")[0]  # as ComfyUI's output cache holds one
    with vm._lock:  # what ComfyUI's /free leaves: nothing of the pack's own short lists
        vm._recent.clear()
        vm._recent_parts.clear()
    gc.collect()
    out["only_the_held_one"] = dict(vm.live(), tokenizers=tokenizers_alive(base))
    out["held_still_scores"] = float(held.score(img, "x")[0]) == float(held.score(img, "x")[0])
    del held
    gc.collect()
    out["after_release"] = dict(vm.live(), tokenizers=tokenizers_alive(base))
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
