"""ImageReward, PickScore and HPS v2: core tier (no ComfyUI) and real-server tier.

ImageReward is checked against scores of the image-reward 1.5 package itself
(tests/fixtures/imagereward, made by tools/imagereward_reference.py; the package
is not installed here).  PickScore is checked against transformers' own
CLIPProcessor + CLIPModel pipeline of the PickScore README, HPS against
open_clip's forward and torchvision's resize/pad (what hpsv2 calls)."""
from __future__ import annotations

import json
import os
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_verifiers import (IMAGE_REWARD_FIXTURE, build_tiny_hps, build_tiny_image_reward,
                            build_tiny_pickscore)
from verifiers import CorruptWeightsError, MismatchedWeightsError, MissingWeightsError, UnsafeCheckpointError
from verifiers import hps, image_reward, pick_score

# Parity with the image-reward package (fp32, CPU).  224 x 224 images reach the model unresized
# on both sides, so only float round-off differs (measured max 9e-7); the 256 x 320 image is resized
# by PIL on uint8 there and by torch on floats here (measured 4.4e-4).
IR_TOL_EXACT = 1e-5
IR_TOL_RESIZED = 2e-3


def load_png(name: str) -> torch.Tensor:
    arr = np.asarray(Image.open(os.path.join(IMAGE_REWARD_FIXTURE, "images", name)).convert("RGB"))
    return torch.from_numpy(arr.copy()).float().div(255)[None]


def rand_images(n, seed=0, h=64, w=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g)


@pytest.fixture(scope="module")
def reference():
    with open(os.path.join(IMAGE_REWARD_FIXTURE, "reference.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def ir_verifier():
    model, tok = image_reward.load_image_reward(IMAGE_REWARD_FIXTURE)
    return image_reward.ImageRewardVerifier(model, tok, batch_size=4)


# --------------------------------------------------------------------------- ImageReward
def test_image_reward_constants_match_reference(reference):
    assert reference["mean"] == image_reward.MEAN == 0.16717362830052426
    assert reference["std"] == image_reward.STD == 1.0333394966054072


def test_image_reward_matches_reference_package(ir_verifier, reference):
    worst = {True: 0.0, False: 0.0}
    for rec in reference["records"]:
        img = load_png(rec["image"])
        ids, _ = ir_verifier.tokens([rec["prompt"]], "cpu")
        assert ids[0].tolist() == rec["input_ids"], f"tokens differ for {rec['prompt']!r}"
        got = ir_verifier.score(img, rec["prompt"]).item()
        exact = tuple(img.shape[1:3]) == (224, 224)
        assert got == pytest.approx(rec["score"], abs=IR_TOL_EXACT if exact else IR_TOL_RESIZED), rec
        worst[exact] = max(worst[exact], abs(got - rec["score"]))
    print(f"ImageReward parity: max |diff| {worst[True]:.2e} (224 px), {worst[False]:.2e} (resized)")
    scores = [r["score"] for r in reference["records"]]
    assert max(scores) - min(scores) > 0.5  # the random model separates images and prompts clearly
    # the list path of ImageReward.score (inference_rank), three images one prompt, in one batch here
    lc = reference["list_call"]
    batch = torch.cat([load_png(n) for n in lc["images"]])
    assert torch.allclose(ir_verifier.score(batch, lc["prompt"]), torch.tensor(lc["scores"]), atol=IR_TOL_EXACT)


def test_image_reward_batched_equals_one_at_a_time(ir_verifier):
    imgs = torch.cat([load_png(f"img{i}.png") for i in range(4)] + [rand_images(2, seed=1, h=224, w=224)])
    prompts = ["a photo of a cat", "a red apple", "blue cars", "a photo of a cat", "sky", "a dog"]
    batched = ir_verifier.score(imgs, prompts)  # batch_size 4: chunks of 4 and 2
    single = torch.cat([ir_verifier.score(imgs[i:i + 1], prompts[i]) for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert len(set(round(s, 4) for s in batched.tolist())) == 6


def test_image_reward_full_size_keys_and_shapes_on_meta():
    """Our model for the published med_config.json + ViT-L/16, built on the meta device, has exactly
    the keys and shapes of image-reward's ImageReward (recorded from the package, full size, on meta),
    less the projections scoring never uses."""
    with open(os.path.join(IMAGE_REWARD_FIXTURE, "full_size_keys.json")) as f:
        ref = {k: tuple(v) for k, v in json.load(f).items()}
    med = {"hidden_size": 768, "intermediate_size": 3072, "max_position_embeddings": 512, "num_attention_heads": 12,
           "num_hidden_layers": 12, "vocab_size": 30524, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
           "pad_token_id": 0}
    ours = {k: tuple(v) for k, v in image_reward.expected_keys(med).items()}
    assert set(image_reward.UNUSED_KEYS) <= set(ref)
    assert {k: v for k, v in ref.items() if k not in image_reward.UNUSED_KEYS} == ours
    assert ours["blip.visual_encoder.pos_embed"] == (1, 197, 1024)
    assert ours["blip.text_encoder.encoder.layer.11.crossattention.self.key.weight"] == (768, 1024)
    assert ours["mlp.layers.0.weight"] == (1024, 768)
    n = sum(int(np.prod(s)) for s in ours.values())
    assert 440e6 < n < 460e6, n  # ViT-L (303M) + med BERT with cross-attention (~144M) + MLP


def test_image_reward_missing_truncated_unsafe_and_mismatched_files(tmp_path):
    base = build_tiny_image_reward(str(tmp_path), "ok")
    image_reward.load_image_reward(base)
    cases = {}
    for what in ("no_weights", "no_med", "no_vocab", "truncated", "unsafe", "mismatched", "bad_json"):
        d = tmp_path / what
        shutil.copytree(base, d)
        cases[what] = d
    os.remove(cases["no_weights"] / "ImageReward.pt")
    os.remove(cases["no_med"] / "med_config.json")
    os.remove(cases["no_vocab"] / "vocab.txt")
    data = (cases["truncated"] / "ImageReward.pt").read_bytes()
    (cases["truncated"] / "ImageReward.pt").write_bytes(data[: len(data) // 2])
    os.remove(cases["mismatched"] / "vision_config.json")  # tiny weights against the full ViT-L

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"x": Evil()}, cases["unsafe"] / "ImageReward.pt")
    (cases["bad_json"] / "med_config.json").write_text("{not json")

    with pytest.raises(MissingWeightsError, match="ImageReward.pt' not found.*THUDM/ImageReward"):
        image_reward.load_image_reward(str(cases["no_weights"]))
    with pytest.raises(MissingWeightsError, match="med_config.json' not found"):
        image_reward.load_image_reward(str(cases["no_med"]))
    with pytest.raises(MissingWeightsError, match="vocab.txt' not found.*bert-base-uncased"):
        image_reward.load_image_reward(str(cases["no_vocab"]))
    with pytest.raises(CorruptWeightsError, match="truncated or corrupt"):
        image_reward.load_image_reward(str(cases["truncated"]))
    with pytest.raises(UnsafeCheckpointError, match="arbitrary code"):
        image_reward.load_image_reward(str(cases["unsafe"]))
    with pytest.raises(MismatchedWeightsError, match="shape mismatches"):
        image_reward.load_image_reward(str(cases["mismatched"]))
    with pytest.raises(image_reward.VerifierFileError, match="not valid JSON"):
        image_reward.load_image_reward(str(cases["bad_json"]))
    with pytest.raises(MissingWeightsError, match="not found"):
        image_reward.load_image_reward(str(tmp_path / "nowhere"))


def test_image_reward_accepts_module_prefix_and_safetensors(tmp_path, ir_verifier):
    import safetensors.torch
    d = tmp_path / "ir"
    shutil.copytree(IMAGE_REWARD_FIXTURE, d, ignore=shutil.ignore_patterns("images", "*.json"))
    shutil.copy(os.path.join(IMAGE_REWARD_FIXTURE, "med_config.json"), d)
    shutil.copy(os.path.join(IMAGE_REWARD_FIXTURE, "vision_config.json"), d)
    sd = torch.load(d / "ImageReward.pt", weights_only=True)
    os.remove(d / "ImageReward.pt")
    safetensors.torch.save_file({"module." + k: v.contiguous() for k, v in sd.items()}, d / "ImageReward.safetensors")
    model, tok = image_reward.load_image_reward(str(d))
    imgs = torch.cat([load_png("img0.png"), load_png("img1.png")])
    assert torch.equal(image_reward.ImageRewardVerifier(model, tok).score(imgs, "a cat"),
                       ir_verifier.score(imgs, "a cat"))


# --------------------------------------------------------------------------- PickScore
@pytest.fixture(scope="module")
def tiny_pick(tmp_path_factory):
    return build_tiny_pickscore(str(tmp_path_factory.mktemp("pick")))


def test_pickscore_equals_readme_pipeline(tiny_pick):
    """The PickScore README's computation with transformers' own processor and model."""
    from transformers import CLIPModel, CLIPProcessor
    model, tok, settings = pick_score.load_pick_score(tiny_pick)
    v = pick_score.PickScoreVerifier(model, tok, settings)
    imgs = rand_images(3, seed=2, h=224, w=224)
    arr = (imgs * 255).round().to(torch.uint8)
    imgs = arr.float() / 255  # uint8-exact, as PIL images are
    prompt = "a photo of a cat on a table"
    processor = CLIPProcessor.from_pretrained(tiny_pick, local_files_only=True)
    ref_model = CLIPModel.from_pretrained(tiny_pick, local_files_only=True).eval()
    image_inputs = processor(images=[Image.fromarray(a.numpy()) for a in arr], padding=True, truncation=True,
                             max_length=77, return_tensors="pt")
    text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        ie = ref_model.get_image_features(**image_inputs)
        te = ref_model.get_text_features(**text_inputs)
        ie = ie if isinstance(ie, torch.Tensor) else ie.pooler_output  # transformers 5 returns an output object
        te = te if isinstance(te, torch.Tensor) else te.pooler_output
        ie = ie / ie.norm(dim=-1, keepdim=True)
        te = te / te.norm(dim=-1, keepdim=True)
        expected = ref_model.logit_scale.exp() * (te @ ie.T)[0]
    got = v.score(imgs, prompt)
    assert torch.allclose(got, expected, atol=1e-4), (got, expected)
    assert v.scale() == pytest.approx(100.0, rel=1e-5)
    assert len(set(round(s, 3) for s in got.tolist())) == 3


def test_pickscore_batched_equals_one_at_a_time(tiny_pick):
    model, tok, settings = pick_score.load_pick_score(tiny_pick)
    v = pick_score.PickScoreVerifier(model, tok, settings, batch_size=4)
    imgs = rand_images(6, seed=4, h=96, w=128)
    prompts = ["a red apple", "a blue car at night", "x", "a red apple", "sunset", "a long prompt " * 30]
    batched = v.score(imgs, prompts)
    single = torch.cat([v.score(imgs[i:i + 1], prompts[i]) for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-4)
    assert len(set(round(s, 3) for s in batched.tolist())) == 6


def test_pickscore_file_errors(tiny_pick, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_pick, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeightsError, match="truncated"):
        pick_score.load_pick_score(str(bad))
    os.remove(bad / "model.safetensors")
    with pytest.raises(MissingWeightsError, match="PickScore_v1"):
        pick_score.load_pick_score(str(bad))
    noproc = tmp_path / "noproc"
    shutil.copytree(tiny_pick, noproc)
    os.remove(noproc / "preprocessor_config.json")
    with pytest.raises(MissingWeightsError, match="preprocessor_config.json' not found"):
        pick_score.load_pick_score(str(noproc))
    other = tmp_path / "other"
    shutil.copytree(tiny_pick, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["projection_dim"] = 24
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MismatchedWeightsError, match="shape mismatches"):
        pick_score.load_pick_score(str(other))


# --------------------------------------------------------------------------- HPS
@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    return build_tiny_hps(str(tmp_path_factory.mktemp("hps")))


def test_hps_equals_open_clip_forward_and_hpsv2_preprocessing(tiny_hps):
    import torchvision.transforms.functional as TF
    model, tok = hps.load_hps(tiny_hps)
    v = hps.HPSVerifier(model, tok)
    prompt = "a photo of a cat"
    imgs = rand_images(2, seed=5, h=160, w=300)
    # hpsv2's ResizeMaxSize(224, fill=0) on the ToTensor image, then Normalize
    ref = []
    for im in imgs.permute(0, 3, 1, 2):
        r = TF.resize(im, [round(160 * 224 / 300), 224], TF.InterpolationMode.BICUBIC, antialias=True)
        ph, pw = 224 - r.shape[1], 224 - r.shape[2]
        ref.append(TF.pad(r, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0))
    ref = torch.stack(ref)
    assert torch.allclose(hps.resize_longest_and_pad(imgs, 224), ref, atol=1e-5)
    x = TF.normalize(ref, list(hps.OPENAI_MEAN), list(hps.OPENAI_STD))
    with torch.no_grad():
        out = model(x, tok([prompt]))  # open_clip's forward: normalised features, as hpsv2.score uses
        ie, te = (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
        expected = torch.diagonal(ie @ te.expand(len(ie), -1).T)
    got = v.score(imgs, prompt)
    assert torch.allclose(got, expected, atol=1e-5)
    assert got[0] != got[1]


def test_hps_batched_equals_one_at_a_time(tiny_hps):
    model, tok = hps.load_hps(tiny_hps)
    v = hps.HPSVerifier(model, tok, batch_size=4)
    imgs = rand_images(5, seed=6, h=224, w=224)
    batched = v.score(imgs, ["a", "b c", "a", "d", "e"])
    single = torch.cat([v.score(imgs[i:i + 1], p) for i, p in enumerate(["a", "b c", "a", "d", "e"])])
    assert torch.allclose(batched, single, atol=1e-5)
    assert len(set(round(s, 5) for s in batched.tolist())) == 5


def test_hps_full_size_vit_h14_keys_on_meta():
    """open_clip's ViT-H-14 (what the HPS checkpoint's state_dict is loaded into; hpsv2's own open_clip
    fork builds the same 686 keys), on the meta device."""
    import open_clip
    from verifiers.loading import check_keys
    with torch.device("meta"):
        model = open_clip.create_model("ViT-H-14", pretrained=None, device="meta")
    sd = model.state_dict()
    assert len(sd) == 686
    assert sd["visual.conv1.weight"].shape == (1280, 3, 14, 14)
    assert sd["visual.proj"].shape == (1280, 1024) and sd["text_projection"].shape == (1024, 1024)
    assert sum(1 for k in sd if k.startswith("visual.transformer.resblocks.")) == 32 * 12
    bad = dict(sd)
    bad["text_projection"] = torch.empty(1024, 768, device="meta")
    with pytest.raises(MismatchedWeightsError, match="shape mismatches"):
        check_keys(sd, bad, "HPS_v2.1_compressed.pt", "open_clip 'ViT-H-14' (HPS)")


def test_hps_file_errors(tiny_hps, tmp_path):
    lonely = tmp_path / "HPS_v2.1_compressed.pt"
    shutil.copy(tiny_hps, lonely)  # tiny weights without their JSON: loaded as the full ViT-H-14
    with pytest.raises(MismatchedWeightsError, match="does not match open_clip 'ViT-H-14'"):
        hps.load_hps(str(lonely))
    with pytest.raises(MissingWeightsError, match="xswu/HPSv2"):
        hps.load_hps(str(tmp_path / "HPS_v2_compressed.pt"))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(open(tiny_hps, "rb").read()[:5000])
    shutil.copy(tiny_hps[:-3] + ".json", tmp_path / "cut.json")
    with pytest.raises(CorruptWeightsError):
        hps.load_hps(str(cut))


def test_loading_and_scoring_make_no_network_call(tiny_pick, tiny_hps, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    imgs = rand_images(2, seed=7)
    m, t = image_reward.load_image_reward(IMAGE_REWARD_FIXTURE)
    image_reward.ImageRewardVerifier(m, t).score(imgs, "x")
    m, t, s = pick_score.load_pick_score(tiny_pick)
    pick_score.PickScoreVerifier(m, t, s).score(imgs, "x")
    m, t = hps.load_hps(tiny_hps)
    hps.HPSVerifier(m, t).score(imgs, "x")


# --------------------------------------------------------------------------- real server
PREFIX = "InfScale_"
LOADERS = {
    "ImageRewardVerifierLoader": {"folder": "tiny-imagereward"},
    "PickScoreVerifierLoader": {"folder": "tiny-pickscore"},
    "HPSVerifierLoader": {"weights": "tiny-hps.pt"},
}


def scoring_graph(loader: str, inputs: dict, batch: int = 3, seed: int = 5) -> dict:
    """A stock KSampler batch of `batch` images, decoded, scored by VerifierScore."""
    from graphs import base_graph
    g = base_graph("a red apple on a table")
    g["4"]["inputs"]["batch_size"] = batch
    g["5"] = {"class_type": PREFIX + loader, "inputs": dict(inputs)}
    g["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
        "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    g["12"] = {"class_type": PREFIX + "VerifierScore", "inputs": {"images": ["7", 0], "verifier": ["5", 0],
                                                                 "prompt": "a red apple on a table"}}
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["12", 0]}}
    return g


def test_server_lists_the_loaders_with_tooltips(comfy):
    info = comfy.object_info()
    for loader, inputs in LOADERS.items():
        node = info[PREFIX + loader]
        assert node["category"] == "inference scaling"
        assert "higher is better" in node["description"]
        (name, value), = inputs.items()
        spec = node["input"]["required"][name]
        assert value in spec[0], f"{value} not offered by {loader}: {spec[0]}"
        assert spec[1].get("tooltip")


@pytest.mark.parametrize("loader", list(LOADERS))
def test_server_loader_scores_a_batch(comfy, loader):
    entry = comfy.run_ok(scoring_graph(loader, LOADERS[loader]))
    rep = json.loads(entry["outputs"]["8"]["text"][0])
    scores = [c["score"] for c in rep["candidates"]]
    assert len(scores) == 3 and all(np.isfinite(scores))
    assert len(set(round(s, 6) for s in scores)) == 3, f"{loader}: different images must get different scores"


@pytest.mark.parametrize("loader", list(LOADERS))
def test_server_missing_model_is_a_validation_error(comfy, loader):
    (name, _), = LOADERS[loader].items()
    code, body = comfy.queue(scoring_graph(loader, {name: "missing-model"}))
    assert code == 400
    text = json.dumps(body)
    assert "missing-model" in text and "Searched" in text and "huggingface.co" in text


def test_server_search_loop_with_image_reward(comfy):
    from graphs import search_graph
    g = search_graph(seed=300, candidates=3, top_k=1, micro_batch=3, prefix="irsearch")
    g["5"] = {"class_type": PREFIX + "ImageRewardVerifierLoader", "inputs": {"folder": "tiny-imagereward"}}
    rep = json.loads(comfy.run_ok(g)["outputs"]["8"]["text"][0])
    scores = [c["score"] for c in rep["candidates"]]
    assert scores == sorted(scores, reverse=True) and len(set(round(s, 6) for s in scores)) == 3
