"""Assembles the demo model's files from the committed trained parts (tools/demo_model/weights/).

    python tools/demo_model/build.py checkpoint --comfyui /path/to/ComfyUI --out demo-shapes.safetensors
    python tools/demo_model/build.py verifier --out DIR        # DIR/demo-shapes-clip.safetensors + .json
    python tools/demo_model/build.py tokens --comfyui /path/to/ComfyUI   # rewrites caption_tokens.json
    python tools/demo_model/build.py ensure [--comfyui PATH] [--out CACHE]  # both, cached (what .ci/setup runs)
    python tools/demo_model/build.py check-text --comfyui PATH --out CHECKPOINT  # ComfyUI's text contexts = training's
    python tools/demo_model/build.py check-nets --comfyui PATH   # the trained networks = ComfyUI's classes on them

``checkpoint`` writes an SD1.5 single-file checkpoint (fp16, ~262 MB, most of
it the frozen CLIP-L) in the key layout of that ComfyUI's own classes: the
trained UNet and TAESD parts put back into their full shapes (nets.unpack),
the CLIP-L text encoder regenerated from its seed (tests/tiny_models.py's
fill), which is checked against the fingerprint recorded at training time.
It then runs ComfyUI's own detection on the file's keys: it must read SD15
with the layout of nets.UNET.  A few seconds on a CPU.  It imports ComfyUI,
so it runs in its own process (``ensure_files`` starts one).

``verifier`` writes the open_clip weights and their config JSON, the pair the
pack's CLIPScore loader reads (the unused rows of the token table as zeros).

From Python (no ComfyUI import in the calling process)::

    from build import ensure_files
    files = ensure_files(comfyui_dir, cache_dir)   # {"checkpoint": ..., "verifier": ..., "verifier_config": ...}
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WEIGHTS = os.path.join(HERE, "weights")
TOKENS = os.path.join(HERE, "caption_tokens.json")
CHECKPOINT_NAME = "demo-shapes.safetensors"
VERIFIER_NAME = "demo-shapes-clip"
PARTS = ("unet.safetensors", "taesd.safetensors", "verifier.safetensors")


def parts_digest() -> str:
    """sha256 (first 12 hex digits) of the trained parts and of the code that lays them out."""
    missing = [p for p in PARTS + ("judge.safetensors", "provenance.json") if not os.path.isfile(os.path.join(WEIGHTS, p))]
    if missing:
        raise FileNotFoundError(
            f"the demo model's trained parts are not in {WEIGHTS} (missing {', '.join(missing)}): train them with "
            "tools/demo_model/train.py (a GPU run takes minutes) and copy its weights/ folder there")
    h = hashlib.sha256()
    for f in [os.path.join(WEIGHTS, p) for p in PARTS] + [os.path.join(HERE, "nets.py"), os.path.abspath(__file__)]:
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:12]


def provenance() -> dict:
    with open(os.path.join(WEIGHTS, "provenance.json")) as f:
        return json.load(f)


def clip_state(clip_module, seed):
    """The frozen CLIP-L (keys as SDClipModel.state_dict(), fp16), as the SD1.5 checkpoint stores it: no
    logit_scale, no text_projection (tests/tiny_models.py's sd15 rule), and every layer's output projections
    (attention out_proj, MLP fc2: nets.CLIP_ZERO) zero, so that each layer passes its input through."""
    import torch
    import nets
    import tiny_models
    out = {}
    for key, shape, dtype, owner in tiny_models._tensor_specs(clip_module):
        if key in ("logit_scale", "transformer.text_projection.weight"):
            continue
        t = tiny_models._fill("cond_stage_model." + key, shape, dtype, owner, seed, "sd15")
        if any(z in key for z in nets.CLIP_ZERO):
            t = torch.zeros(shape, dtype=dtype)
        out[key] = t.to(torch.float16) if t.dtype.is_floating_point else t
    return out


# --- the checkpoint (inside a process that imports ComfyUI) -----------------------------------------------------------
def build_checkpoint(out: str) -> dict:
    import torch
    from safetensors.torch import load_file, save_file
    import comfy.model_detection
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import nets

    prov = provenance()
    with torch.device("meta"), torch.no_grad():
        unet = UNetModel(dtype=torch.float32, operations=comfy.ops.disable_weight_init, **nets.UNET)
        taesd = comfy.taesd.taesd.TAESD()
        clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float32)
    state = {}
    unet_parts = load_file(os.path.join(WEIGHTS, "unet.safetensors"))
    shapes = {k: v.shape for k, v in unet.state_dict().items()}
    for k, v in nets.unpack(unet_parts, shapes, nets.unet_index, torch.float16).items():
        state["model.diffusion_model." + k] = v
    cs = clip_state(clip, nets.CLIP_SEED)
    want = prov.get("clip_l_fingerprint")
    got = nets.clip_fingerprint({name: cs[key] for name, (key, _shape, _owner) in nets.CLIP_KEYS.items()})
    if got != nets.clip_fingerprint(nets.clip_embeddings()):
        raise SystemExit("this ComfyUI's CLIP-L keys are laid out otherwise than nets.CLIP_KEYS expects")
    if want and got != want:
        raise SystemExit(f"the seeded CLIP-L text encoder differs from the one the UNet was trained with "
                         f"(fingerprint {got}, trained with {want}): tests/tiny_models.py's fill must have changed; "
                         f"retrain (tools/demo_model/train.py) or restore it")
    for k, v in cs.items():
        state["cond_stage_model." + k] = v
    vae_parts = load_file(os.path.join(WEIGHTS, "taesd.safetensors"))
    tshapes = {k: v.shape for k, v in taesd.state_dict().items() if k.startswith(("taesd_encoder.", "taesd_decoder."))}
    for k, v in nets.unpack(vae_parts, tshapes, nets.taesd_index, torch.float16).items():
        state["first_stage_model." + k] = v
    for k in taesd.state_dict():   # vae_scale and vae_shift: SD1.5's latent scale, no shift
        if not k.startswith(("taesd_encoder.", "taesd_decoder.")):
            state["first_stage_model." + k] = torch.tensor(nets.SD15_SCALE if k == "vae_scale" else 0.0)
    unet_config = comfy.model_detection.detect_unet_config(
        {k: v for k, v in state.items()}, "model.diffusion_model.")
    cfg = comfy.model_detection.model_config_from_unet_config(unet_config, state)
    if cfg is None or type(cfg).__name__ != "SD15":
        raise SystemExit(f"ComfyUI does not detect the assembled UNet as SD1.5: {type(cfg).__name__} {unet_config}")
    for k in ("num_res_blocks", "channel_mult", "transformer_depth", "transformer_depth_output",
              "transformer_depth_middle", "model_channels", "context_dim"):
        if unet_config.get(k) != nets.UNET[k]:
            raise SystemExit(f"ComfyUI reads {k}={unet_config.get(k)} from the file, the model was trained with "
                             f"{nets.UNET[k]}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    meta = {"demo_model": json.dumps({"parts": parts_digest(), "commit": prov.get("commit"),
                                      "trained_by": prov.get("script")}, sort_keys=True)}
    save_file({k: v.contiguous() for k, v in state.items()}, out, metadata=meta)
    return {"path": os.path.abspath(out), "bytes": os.path.getsize(out), "detected": type(cfg).__name__}


def check_text(checkpoint: str, captions=("a small red circle at the top left", "a large blue triangle on the right",
                                         "")) -> dict:
    """The contexts ComfyUI's loader + CLIPTextEncode give for ``captions`` from the assembled checkpoint, against
    the ones the UNet was trained on (train.text_contexts): the largest difference relative to their scale."""
    import torch
    import comfy.sd
    import shapes_data as S
    import train
    model, clip = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=False, output_clip=True)[:2]
    ctx, fingerprint = train.text_contexts(TOKENS, torch.device("cpu"))
    worst, control = 0.0, float("inf")
    rows = [len(S.CAPTIONS) if c == "" else S.INDEX[c] for c in captions]
    for i, c in enumerate(captions):
        got = clip.encode_from_tokens(clip.tokenize(c))
        got = (got[0] if isinstance(got, (tuple, list)) else got).float()
        want = ctx[rows[i]][None]
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
        other = ctx[rows[i - 1]][None]    # another caption's context: must differ (the check can fail)
        control = min(control, float((got - other).abs().max() / other.abs().max()))
    return {"max_rel_diff": worst, "other_caption_rel_diff": control, "fingerprint": fingerprint,
            "model": type(model.model).__name__}


def check_nets(seed: int = 0) -> dict:
    """nets.NarrowUNet and nets.narrow_taesd (what training computes) against ComfyUI's UNetModel and TAESD with the
    same weights put into the full layout (nets.unpack), on random weights and inputs: the largest difference
    relative to the output's scale."""
    import torch
    import comfy.ops
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import nets
    g = torch.Generator().manual_seed(seed)
    out = {}
    narrow = nets.NarrowUNet()
    with torch.no_grad():
        for p in narrow.parameters():   # every entry random (norm scales and biases too), so nothing hides
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5 if p.ndim > 1 else 0.3))
    full = UNetModel(dtype=torch.float32, operations=comfy.ops.disable_weight_init, **nets.UNET)
    shapes = {k: v.shape for k, v in full.state_dict().items()}
    full.load_state_dict(nets.unpack(narrow.state_dict(), shapes, nets.unet_index))
    x = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([3.0, 400.0, 999.0])
    ctx = torch.randn(3, 77, 768, generator=g)
    a, b = narrow(x, t, ctx), full(x, t, context=ctx)
    out["unet"] = float((a - b).abs().max() / b.abs().max())
    ta = comfy.taesd.taesd.TAESD()
    for prefix, half in (("taesd_encoder.", ta.taesd_encoder), ("taesd_decoder.", ta.taesd_decoder)):
        n = nets.narrow_taesd(prefix)
        with torch.no_grad():
            for p in n.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p[0].numel()) ** 0.5 if p.ndim > 1 else 0.1))
        fshapes = {prefix + k: v.shape for k, v in half.state_dict().items()}
        parts = {prefix + k: v for k, v in n.state_dict().items()}
        half.load_state_dict({k[len(prefix):]: v for k, v in nets.unpack(parts, fshapes, nets.taesd_index).items()})
        inp = torch.rand(2, 3, 64, 64, generator=g) if prefix == "taesd_encoder." else torch.randn(2, 4, 8, 8, generator=g)
        a, b = n(inp), half(inp)
        out[prefix.rstrip(".")] = float((a - b).abs().max() / b.abs().max())
    return out


def write_tokens(path: str = TOKENS) -> dict:
    """caption_tokens.json: ComfyUI's SD1 tokenizer on every caption and on the empty prompt."""
    import comfy.sd1_clip
    import shapes_data as S
    tok = comfy.sd1_clip.SD1Tokenizer()
    captions = list(S.CAPTIONS) + [""]
    rows = []
    for c in captions:
        ids = [t for t, _w in tok.tokenize_with_weights(c)["l"][0]]
        end = ids.index(49407)
        if any(t != 49407 for t in ids[end:]) or len(ids) != 77:
            raise SystemExit(f"unexpected SD1 tokens for {c!r}: {ids}")
        rows.append(ids[:end + 1])
    data = {"tokenizer": "ComfyUI SD1Tokenizer (CLIP-L BPE), padded with the end token to 77", "pad": 49407,
            "captions": captions, "tokens": rows}
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    return {"path": path, "captions": len(captions)}


# --- the verifier (no ComfyUI) -----------------------------------------------------------------------------------------
def build_verifier(folder: str) -> dict:
    import torch
    from safetensors.torch import load_file, save_file
    import nets
    parts = load_file(os.path.join(WEIGHTS, "verifier.safetensors"))
    ids, values = parts.pop("token_rows.ids"), parts.pop("token_rows.values")
    cfg = nets.VERIFIER_CONFIG
    table = torch.zeros(cfg["text_cfg"]["vocab_size"], cfg["text_cfg"]["width"], dtype=torch.float16)
    table[ids] = values
    parts[nets.TOKEN_TABLE] = table
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, VERIFIER_NAME + ".safetensors")
    save_file({k: v.contiguous() for k, v in parts.items()}, path, metadata={"demo_model": parts_digest()})
    cfg_path = os.path.join(folder, VERIFIER_NAME + ".json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=1)
    return {"verifier": path, "verifier_config": cfg_path}


# --- the cached files (no ComfyUI import in the caller) -------------------------------------------------------------------
def _cache_paths(comfyui_dir: str, cache_dir: str) -> dict:
    cache_dir = os.path.abspath(cache_dir)
    tag = "{}_{:08x}".format(parts_digest(), zlib.crc32(os.path.realpath(comfyui_dir).encode()))
    vdir = os.path.join(cache_dir, f"demo_shapes_verifier_{parts_digest()}")
    return {"checkpoint": os.path.join(cache_dir, f"demo_shapes_{tag}.safetensors"),
            "verifier": os.path.join(vdir, VERIFIER_NAME + ".safetensors"),
            "verifier_config": os.path.join(vdir, VERIFIER_NAME + ".json")}


def cached_files(comfyui_dir: str, cache_dir: str):
    """ensure_files' answer if everything is already in ``cache_dir``, else None."""
    paths = _cache_paths(comfyui_dir, cache_dir)
    return paths if all(os.path.isfile(p) for p in paths.values()) else None


def ensure_files(comfyui_dir: str, cache_dir: str, python: str = sys.executable, timeout: int = 600) -> dict:
    """The checkpoint and verifier files in ``cache_dir`` (built once per trained parts and ComfyUI checkout):
    {"checkpoint", "verifier", "verifier_config"}.  Written under temporary names and renamed into place."""
    paths = _cache_paths(comfyui_dir, cache_dir)
    ckpt, vdir = paths["checkpoint"], os.path.dirname(paths["verifier"])
    os.makedirs(os.path.dirname(ckpt), exist_ok=True)
    if not os.path.isfile(ckpt):
        tmp = f"{ckpt}.tmp{os.getpid()}"
        try:
            env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
            proc = subprocess.run([python, os.path.abspath(__file__), "checkpoint", "--comfyui",
                                   os.path.abspath(comfyui_dir), "--out", tmp], cwd=os.path.abspath(comfyui_dir),
                                  capture_output=True, text=True, timeout=timeout, env=env)
            if proc.returncode != 0 or not os.path.isfile(tmp):
                raise RuntimeError(f"assembling the demo checkpoint failed (rc={proc.returncode}):\n"
                                   f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            os.replace(tmp, ckpt)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    if not os.path.isfile(paths["verifier_config"]):
        tmpdir = f"{vdir}.tmp{os.getpid()}"
        build_verifier(tmpdir)
        try:
            os.rename(tmpdir, vdir)
        except OSError:  # another process got there first
            import shutil
            shutil.rmtree(tmpdir, ignore_errors=True)
    return paths


def _import_comfy(comfyui_dir: str):
    sys.path[:0] = [HERE, os.path.join(REPO, "tests")]
    import tiny_models
    tiny_models._import_comfy(comfyui_dir)  # ComfyUI first on sys.path, --cpu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("checkpoint", "verifier", "tokens", "ensure", "check-text", "check-nets"))
    p.add_argument("--comfyui", help="the ComfyUI checkout whose classes lay the checkpoint out")
    p.add_argument("--out", help="checkpoint file / verifier folder / (ensure) cache folder")
    a = p.parse_args(argv)
    t0 = time.time()
    if a.what == "verifier":
        sys.path.insert(0, HERE)
        r = build_verifier(a.out or ".")
    elif a.what == "ensure":  # the set-up's step: both files into the cache, for $COMFYUI_PATH or .test-cache/ComfyUI-0.3.64
        sys.path[:0] = [HERE, os.path.join(REPO, "tests")]
        import comfy_server
        comfyui = a.comfyui or comfy_server.comfyui_dir()
        r = ensure_files(comfyui, a.out or os.path.join(comfy_server.CACHE, "demo-model"))
    else:
        if not a.comfyui:
            p.error(f"{a.what} needs --comfyui")
        _import_comfy(a.comfyui)
        import torch
        with torch.inference_mode():
            if a.what == "checkpoint":
                r = build_checkpoint(a.out or CHECKPOINT_NAME)
            elif a.what == "tokens":
                r = write_tokens(a.out or TOKENS)
            elif a.what == "check-nets":
                r = check_nets()
            else:  # check-text: --out names the assembled checkpoint
                r = check_text(a.out)
    r["seconds"] = round(time.time() - t0, 2)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
