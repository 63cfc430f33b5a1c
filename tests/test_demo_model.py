"""The demo model (tools/demo_model/) against ComfyUI's own code: what training computes is what ComfyUI computes
from the assembled files (each check in a ComfyUI process of its own, through tools/demo_model/build.py)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(REPO, "tools", "demo_model", "build.py")
sys.path.insert(0, os.path.join(REPO, "tools", "demo_model"))


def _build(comfy_path, *args):
    proc = subprocess.run([sys.executable, BUILD, *args, "--comfyui", comfy_path], cwd=comfy_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_trained_networks_compute_what_comfyuis_classes_compute(comfy_path):
    """nets.NarrowUNet / narrow_taesd on random weights against UNetModel(nets.UNET) / TAESD with the same weights
    unpacked into the full SD1.5 layout: the zero channels must stay out of every GroupNorm group, attention head
    and concatenation they could leak into."""
    r = _build(comfy_path, "check-nets")
    assert r["unet"] < 1e-5, r
    assert r["taesd_encoder"] < 1e-6 and r["taesd_decoder"] < 1e-6, r


def test_caption_tokens_are_comfyuis_tokenizer(comfy_path, tmp_path):
    out = tmp_path / "tokens.json"
    _build(comfy_path, "tokens", "--out", str(out))
    with open(os.path.join(REPO, "tools", "demo_model", "caption_tokens.json")) as f:
        assert json.load(f) == json.loads(out.read_text())


def test_text_contexts_are_comfyuis_clip_text_encode(comfy_path):
    """The contexts the UNet trained on = CheckpointLoaderSimple's CLIP + CLIPTextEncode on the assembled file (and
    another caption's context is far from them, so the comparison can fail)."""
    import build
    from comfy_server import CACHE
    files = build.ensure_files(comfy_path, os.path.join(CACHE, "demo-model"))
    r = _build(comfy_path, "check-text", "--out", files["checkpoint"])
    assert r["max_rel_diff"] < 1e-3, r
    assert r["other_caption_rel_diff"] > 0.1, r
    assert r["fingerprint"] == build.provenance()["clip_l_fingerprint"], r
