"""HPSv3: the pack's own code against the hpsv3 1.0.0 package (verifiers tier), and its loader on a real
ComfyUI server (server tier).

The reference scores in tests/fixtures/hpsv3 were computed by the package itself
(``HPSv3RewardInferencer.reward``) by tools/hpsv3_reference.py, in a throwaway
environment with the package's transformers 4.45.2 pin; the package is not
installed here.  The tiny model's weights are drawn again from the generator's
seed (tools/hpsv3_reference.tiny_weights), in the package's key layout."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from tiny_verifiers import HPSV3_FIXTURE, build_tiny_hpsv3
from verifiers import CorruptWeightsError, MismatchedWeightsError, MissingWeightsError, VerifierFileError
from verifiers import hpsv3

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import hpsv3_reference as ref  # noqa: E402  (torch only at import)

PREFIX = "InfScale_"
# fp32, CPU.  448 x 448 and 224 x 896 images reach the model unresized on both sides, so only float
# round-off differs (measured max 4e-7); the others are resized by PIL on uint8 there and by torch on
# floats here (measured 1.2e-4).
TOL_EXACT = 1e-5
TOL_RESIZED = 2e-3


@pytest.fixture(scope="module")
def reference():
    with open(os.path.join(HPSV3_FIXTURE, "reference.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_hpsv3(str(tmp_path_factory.mktemp("hpsv3")))


@pytest.fixture(scope="module")
def verifier(tiny_folder):
    model, tok, image_token_id = hpsv3.load_hpsv3(tiny_folder)
    return hpsv3.HPSv3Verifier(model, tok, image_token_id, batch_size=3)


@pytest.fixture(scope="module")
def images(reference):
    arrays = ref.image_arrays()
    assert ref.image_digest(arrays) == reference["image_sha256"], "the test images differ from the reference's"
    return [a.float().div(255)[None] for a in arrays]


def test_hpsv3_matches_reference_package(verifier, reference, images):
    worst = {True: 0.0, False: 0.0}
    assert verifier.reward_id == reference["reward_token_id"]
    assert verifier.model.model.embed_tokens.num_embeddings == reference["vocab_size_after_resize"]
    for rec in reference["records"]:
        prompt = ref.PROMPTS[rec["prompt"]]
        _, gh, gw = verifier.patches(images[rec["image"]])
        assert [1, gh, gw] == rec["image_grid_thw"]
        ids = verifier.token_ids(prompt, gh * gw // 4)
        assert len(ids) == rec["n_tokens"] and ref.ids_digest(ids) == rec["input_ids_sha256"], rec
        got = verifier.score(images[rec["image"]], prompt).item()
        assert got == pytest.approx(rec["mu"], abs=TOL_EXACT if rec["unresized"] else TOL_RESIZED), rec
        worst[rec["unresized"]] = max(worst[rec["unresized"]], abs(got - rec["mu"]))
    assert verifier.token_ids(ref.PROMPTS[0], 256) == reference["first_input_ids"]
    print(f"HPSv3 parity: max |diff| {worst[True]:.2e} (unresized), {worst[False]:.2e} (resized)")
    mus = [r["mu"] for r in reference["records"] if r["unresized"]]
    assert max(mus) - min(mus) > 0.05  # the random model separates images and prompts clearly

    # the package's batched call (one reward() of 4 rows of different lengths, right-padded): the two 448 x 448
    # rows in one batch here too; the 224 x 896 row and the last alone (a batch here holds one image size)
    b = reference["batch"]
    assert b["pairs"] == [[0, 0], [1, 1], [3, 2], [2, 3]] and len(set(b["lengths"])) == 4
    got = verifier.score(torch.cat([images[0], images[1]]), [ref.PROMPTS[0], ref.PROMPTS[1]])
    got = torch.cat([got, verifier.score(images[3], ref.PROMPTS[2]), verifier.score(images[2], ref.PROMPTS[3])])
    assert torch.allclose(got, torch.tensor(b["mu"]), atol=TOL_EXACT), (got, b["mu"])


def test_hpsv3_smart_resize_matches_package(reference):
    for h, w, rh, rw in reference["smart_resize"]:
        assert hpsv3.smart_resize(h, w) == (rh, rw), (h, w)
    with pytest.raises(ValueError, match="aspect ratio"):
        hpsv3.smart_resize(10, 2500)


def test_hpsv3_batched_equals_one_at_a_time(verifier):
    g = torch.Generator().manual_seed(3)
    imgs = torch.rand(5, 96, 128, 3, generator=g)
    prompts = ["a red apple", "a blue car at night, a long prompt " * 8, "x", "a red apple", "sunset {braces}"]
    batched = verifier.score(imgs, prompts)  # batch_size 3: chunks of 3 and 2, rows of different lengths
    single = torch.cat([verifier.score(imgs[i:i + 1], prompts[i]) for i in range(5)])
    assert batched.dtype == torch.float32 and batched.shape == (5,)
    assert torch.allclose(batched, single, atol=1e-5)
    assert len(set(round(s, 5) for s in batched.tolist())) == 5


def test_hpsv3_full_size_keys_and_shapes_on_meta():
    """Our model for the published Qwen2-VL-7B-Instruct config.json, built on the meta device, has exactly the
    keys and shapes of hpsv3's Qwen2VLRewardModelBT (recorded from the package at full size, vocabulary resized
    to 151658 as the package resizes it), less lm_head, which scoring never uses."""
    with open(os.path.join(HPSV3_FIXTURE, "full_size_keys.json")) as f:
        full = {k: tuple(v) for k, v in json.load(f).items()}
    text, vision = hpsv3.read_config(os.path.join(HPSV3_FIXTURE, "qwen2_vl_7b_config.json"))
    ours = {k: tuple(v) for k, v in hpsv3.expected_keys(text, vision, 151658).items()}
    assert full.pop("lm_head.weight") == (151658, 3584)
    assert full == ours
    assert ours["visual.patch_embed.proj.weight"] == (1280, 3, 2, 14, 14)
    assert ours["model.layers.27.self_attn.k_proj.weight"] == (512, 3584)
    assert ours["rm_head.5.weight"] == (2, 16)
    n = sum(int(np.prod(s)) for s in ours.values())
    assert 7.7e9 < n < 7.8e9, n  # 8.29e9 with lm_head (the file), 0.54e9 of which scoring skips


def test_hpsv3_file_errors(tiny_folder, tmp_path):
    import shutil
    cases = {}
    for c in ("no_weights", "no_config", "no_tokenizer", "truncated", "mismatched", "bad_json", "not_qwen",
              "wrong_tokenizer"):
        cases[c] = tmp_path / c
        shutil.copytree(tiny_folder, cases[c])
    os.remove(cases["no_weights"] / "HPSv3.safetensors")
    os.remove(cases["no_config"] / "config.json")
    os.remove(cases["no_tokenizer"] / "tokenizer.json")
    data = (cases["truncated"] / "HPSv3.safetensors").read_bytes()
    (cases["truncated"] / "HPSv3.safetensors").write_bytes(data[: len(data) // 2])
    cfg = json.loads((cases["mismatched"] / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (cases["mismatched"] / "config.json").write_text(json.dumps(cfg))
    (cases["bad_json"] / "config.json").write_text("{not json")
    (cases["not_qwen"] / "config.json").write_text(json.dumps({"hidden_size": 64}))
    tok = json.loads((cases["wrong_tokenizer"] / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|image_pad|>"]
    (cases["wrong_tokenizer"] / "tokenizer.json").write_text(json.dumps(tok))

    with pytest.raises(MissingWeightsError, match="HPSv3.safetensors' not found.*MizzenAI/HPSv3"):
        hpsv3.load_hpsv3(str(cases["no_weights"]))
    with pytest.raises(MissingWeightsError, match="config.json' not found.*Qwen2-VL-7B-Instruct"):
        hpsv3.load_hpsv3(str(cases["no_config"]))
    with pytest.raises(MissingWeightsError, match="tokenizer.json' not found.*Qwen2-VL-7B-Instruct"):
        hpsv3.load_hpsv3(str(cases["no_tokenizer"]))
    with pytest.raises(MissingWeightsError, match="not found.*MizzenAI/HPSv3"):
        hpsv3.load_hpsv3(str(tmp_path / "absent"))
    with pytest.raises(CorruptWeightsError, match="truncated"):
        hpsv3.load_hpsv3(str(cases["truncated"]))
    with pytest.raises(MismatchedWeightsError, match="missing keys.*model.layers.2"):
        hpsv3.load_hpsv3(str(cases["mismatched"]))
    with pytest.raises(VerifierFileError, match="not valid JSON"):
        hpsv3.load_hpsv3(str(cases["bad_json"]))
    with pytest.raises(VerifierFileError, match="not a Qwen2-VL config"):
        hpsv3.load_hpsv3(str(cases["not_qwen"]))
    with pytest.raises(VerifierFileError, match="not Qwen2-VL's tokenizer"):
        hpsv3.load_hpsv3(str(cases["wrong_tokenizer"]))


def test_hpsv3_half_precision_keeps_an_fp32_head(tiny_folder):
    """load_hpsv3(dtype=bf16), as the published bf16 file loads, and the loader node's GPU cast (cast_for_gpu:
    bf16 where the GPU has it, else fp16): the reward head stays fp32 and scores stay finite."""
    g = torch.Generator().manual_seed(5)
    imgs = torch.rand(2, 64, 64, 3, generator=g)
    model, tok, iid = hpsv3.load_hpsv3(tiny_folder, dtype=torch.bfloat16)
    v = hpsv3.HPSv3Verifier(model, tok, iid)
    assert v.param_dtype() == torch.bfloat16 and model.model.norm.weight.dtype == torch.bfloat16
    assert model.rm_head[0].weight.dtype == torch.float32
    s = v.score(imgs, "a cat")
    assert s.dtype == torch.float32 and torch.isfinite(s).all()
    for bf16_ok, dt in ((True, torch.bfloat16), (False, torch.float16)):
        model, tok, iid = hpsv3.load_hpsv3(tiny_folder)
        v = hpsv3.HPSv3Verifier(model, tok, iid)
        v.cast_for_gpu(bf16_ok)
        dtypes = {n.split(".")[1]: p.dtype for n, p in v.named_parameters()}
        assert dtypes == {"visual": dt, "model": dt, "rm_head": torch.float32}
    s16 = v.score(imgs, "a cat")  # fp16 on the CPU: finite, near the bf16 scores of the same weights
    assert torch.isfinite(s16).all() and torch.allclose(s16, s, atol=0.05)


def test_hpsv3_composes_with_ensembles_and_every_strategy(verifier):
    """HPSv3 scores through the ScoreBook (SearchLoop's one recombination), alone and in a mean-rank ensemble,
    in every strategy of the registry on the toy host (its latents decoded to small images)."""
    from search import Strategy, run_strategy
    from search.registry import names
    from toy_host import gaussian_host
    from verifiers.ensemble import EnsembleVerifier
    from verifiers.protocol import ScoreBook

    class Brightness:
        name = "brightness"

        def score(self, imgs, prompt=""):
            return imgs.mean(dim=(1, 2, 3))

    def decode(latents):  # 1 x 4 x 8 x 8 latents -> 28 x 28 images in [0, 1]
        x = torch.sigmoid(latents[:, :3])
        return torch.nn.functional.interpolate(x, size=(28, 28), mode="nearest").permute(0, 2, 3, 1)

    runs = {}
    for name in names():
        sampler = "euler_ancestral" if name == "particles" else "euler"
        for v in (verifier, EnsembleVerifier([verifier, Brightness()])):
            host = gaussian_host(sampler=sampler, steps=2, micro_batch=2)
            book = ScoreBook(v, "a photo of a cat")
            host.score = lambda latents, book=book: book.add(decode(latents))
            host.rescore = book.all
            host.relative = book.relative
            host.member_scores = book.members
            report, finalists = run_strategy(Strategy(name, {}), host, candidates=3, top_k=1, seed=11)
            ranked = report.ranked()
            assert finalists and all(np.isfinite(c.score) for c in ranked), name
            assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
            runs[(name, book.relative)] = [c.score for c in ranked]
    assert len(runs) == 2 * len(names())


# --------------------------------------------------------------------------- a real ComfyUI server
def hpsv3_scoring_graph(folder="tiny-hpsv3", batch=3, seed=5):
    """A stock KSampler batch, decoded, scored by VerifierScore with the HPSv3 loader, picked by BestPick."""
    from graphs import base_graph
    g = base_graph("a red apple on a table")
    g["4"]["inputs"]["batch_size"] = batch
    g["5"] = {"class_type": PREFIX + "HPSv3VerifierLoader", "inputs": {"folder": folder}}
    g["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
        "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    g["12"] = {"class_type": PREFIX + "VerifierScore", "inputs": {"images": ["7", 0], "verifier": ["5", 0],
                                                                 "prompt": "a red apple on a table"}}
    g["13"] = {"class_type": PREFIX + "BestPick", "inputs": {"images": ["7", 0], "scores": ["12", 0], "top_k": 2}}
    g["14"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "hpsv3_best"}}
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["12", 0]}}
    return g


def test_server_hpsv3_loader_scores_a_batch_and_best_pick_takes_the_best(comfy):
    node = comfy.object_info()[PREFIX + "HPSv3VerifierLoader"]
    assert node["category"] == "inference scaling" and "higher is better" in node["description"]
    spec = node["input"]["required"]["folder"]
    assert "tiny-hpsv3" in spec[0] and spec[1].get("tooltip")
    entry = comfy.run_ok(hpsv3_scoring_graph())
    rep = json.loads(entry["outputs"]["8"]["text"][0])
    scores = [c["score"] for c in rep["candidates"]]
    assert len(scores) == 3 and all(np.isfinite(scores))
    assert len(set(round(s, 6) for s in scores)) == 3, "different images must get different scores"
    assert rep["best"]["score"] == max(scores)
    assert len(entry["outputs"]["14"]["images"]) == 1


def test_server_hpsv3_missing_folder_names_folder_and_source(comfy):
    code, body = comfy.queue(hpsv3_scoring_graph(folder="missing-hpsv3"))
    assert code == 400
    text = json.dumps(body)
    assert "missing-hpsv3" in text and "Searched" in text and "MizzenAI/HPSv3" in text
    assert "Qwen2-VL-7B-Instruct" in text


def test_server_search_loop_with_hpsv3_in_an_ensemble(comfy):
    """SearchLoop (random search) scored by a mean-rank ensemble of HPSv3 and CLIPScore; the strategies on the
    toy host: test_hpsv3_composes_with_ensembles_and_every_strategy."""
    from graphs import search_graph
    g = search_graph(seed=31, candidates=3, top_k=1, micro_batch=2, prefix="hpsv3search")
    g["20"] = {"class_type": PREFIX + "HPSv3VerifierLoader", "inputs": {"folder": "tiny-hpsv3"}}
    g["21"] = {"class_type": PREFIX + "VerifierEnsemble", "inputs": {
        "mode": "mean_rank", "verifier_1": ["20", 0], "weight_1": 1.0, "verifier_2": ["5", 0], "weight_2": 1.0}}
    g["6"]["inputs"]["verifier"] = ["21", 0]
    rep = json.loads(comfy.run_ok(g)["outputs"]["8"]["text"][0])
    scores = [c["score"] for c in rep["candidates"]]
    assert len(scores) == 3 and all(1 <= s <= 3 for s in scores)  # mean ranks over the three candidates
    assert sum(scores) == pytest.approx(6.0)
    members = [c["verifier_scores"] for c in rep["candidates"]]
    names = set(members[0])
    assert len(names) == 2 and any(n.startswith("hpsv3(") for n in names), names
    hv = [m[n] for m in members for n in m if n.startswith("hpsv3(")]
    assert len(set(round(v, 6) for v in hv)) == 3 and all(np.isfinite(hv))
