"""Verifier tier: real open_clip classes with random weights, loaded by the
pack's own loading code (no ComfyUI needed)."""
import os
import socket

import pytest
import torch

from tiny_verifiers import build_tiny_clip
from verifiers import (CLIPScoreVerifier, CorruptWeightsError, MismatchedWeightsError, MissingWeightsError,
                       UnsafeCheckpointError, load_open_clip, load_state_dict)
from verifiers.clip_score import build_open_clip
from verifiers.loading import VerifierFileError
from verifiers.loading import check_keys


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verifiers")
    path = build_tiny_clip(str(folder), "tiny-clip", seed=0)
    return path


def images(n, seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, size, size, 3, generator=g)


def test_clipscore_equals_open_clip_arithmetic(tiny):
    import open_clip
    model, tok = load_open_clip("ViT-L-14", tiny)
    v = CLIPScoreVerifier(model, tok, mode="cosine")
    imgs = images(3, size=224)  # already at the model's size: preprocessing is normalisation only
    prompt = "a photo of a cat"
    x = (imgs.permute(0, 3, 1, 2) - torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) / \
        torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ie = model.encode_image(x, normalize=True)
        te = model.encode_text(open_clip.get_tokenizer("its_test_tiny-clip")([prompt]), normalize=True)
    expected = (ie @ te.T).squeeze(1)
    got = v.score(imgs, prompt)
    assert torch.allclose(got, expected, atol=1e-5)
    hessel = CLIPScoreVerifier(model, tok, mode="clipscore").score(imgs, prompt)
    assert torch.allclose(hessel, 2.5 * expected.clamp(min=0), atol=1e-5)


def test_batched_equals_one_at_a_time_and_images_differ(tiny):
    model, tok = load_open_clip("ViT-L-14", tiny)
    v = CLIPScoreVerifier(model, tok, mode="cosine", batch_size=4)
    imgs = images(6, seed=3)
    batched = v.score(imgs, "a red apple")
    single = torch.cat([v.score(imgs[i:i + 1], "a red apple") for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-5)  # stated tolerance: 1e-5 in fp32 on CPU
    assert len(set(batched.tolist())) == 6
    per_prompt = v.score(imgs[:2], ["a red apple", "a blue car"])
    assert per_prompt.shape == (2,)


def test_full_size_vit_l14_keys_and_shapes_on_meta():
    """The real ViT-L-14 (428M parameters) is built on the meta device; its
    state dict is what the loader checks a published file against."""
    import open_clip
    with torch.device("meta"):
        model = open_clip.create_model("ViT-L-14", pretrained=None, device="meta")
    sd = model.state_dict()
    assert sd["visual.conv1.weight"].shape == (1024, 3, 14, 14)
    assert sd["token_embedding.weight"].shape == (49408, 768)
    assert sd["visual.proj"].shape == (1024, 768) and sd["text_projection"].shape == (768, 768)
    assert sum(1 for k in sd if k.startswith("visual.transformer.resblocks.")) == 24 * 12
    check_keys(sd, sd, "meta", "ViT-L-14")  # identical: no error
    bad = dict(sd)
    bad["visual.proj"] = torch.empty(1024, 512, device="meta")
    del bad["ln_final.weight"]
    with pytest.raises(MismatchedWeightsError, match="1 missing keys.*1 shape mismatches"):
        check_keys(sd, bad, "x.safetensors", "open_clip 'ViT-L-14'")


def test_mismatched_architecture_is_refused(tiny, tmp_path):
    # the tiny weights without their JSON config: loaded as full ViT-B-32 they do not fit
    import shutil
    p = tmp_path / "lonely.safetensors"
    shutil.copy(tiny, p)
    with pytest.raises(MismatchedWeightsError, match="does not match open_clip 'ViT-B-32'"):
        load_open_clip("ViT-B-32", str(p))


def test_a_custom_config_stays_out_of_the_architecture_list(tiny, tmp_path):
    """The JSON config beside a weights file is open_clip's architecture for that build only: it never joins
    open_clip.list_models() (the loaders' arch lists), and a config that is no open_clip config is refused."""
    import open_clip
    before = open_clip.list_models()
    model, tok = load_open_clip("ViT-L-14", tiny)
    assert open_clip.list_models() == before
    assert not [a for a in open_clip.list_models() if a.startswith("its_custom__")]
    assert CLIPScoreVerifier(model, tok).score(images(1), "x").shape == (1,)  # built from that config all the same
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(open(tiny, "rb").read())
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(VerifierFileError, match="not an open_clip model config"):
        load_open_clip("ViT-L-14", str(bad))
    assert open_clip.list_models() == before


def test_missing_truncated_and_unsafe_files(tmp_path, tiny):
    with pytest.raises(MissingWeightsError, match="not found"):
        load_state_dict(str(tmp_path / "nope.safetensors"), "https://example.invalid/x")
    data = open(tiny, "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:1000])
    with pytest.raises(CorruptWeightsError, match="truncated"):
        load_state_dict(str(cut))
    cut_pt = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(100)}, cut_pt)
    cut_pt.write_bytes(cut_pt.read_bytes()[:200])
    with pytest.raises(CorruptWeightsError):
        load_state_dict(str(cut_pt))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": Evil()}, evil)
    with pytest.raises(UnsafeCheckpointError, match="arbitrary code"):
        load_state_dict(str(evil))
    ok = tmp_path / "ok.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, ok)
    assert torch.equal(load_state_dict(str(ok))["w"], torch.ones(2))
    legacy = tmp_path / "legacy.pt"  # the pre-zip pickle format still loads
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_state_dict(str(legacy))["w"], torch.ones(3))
    # a model-config JSON picked as weights is named for what it is, not "pickled Python objects"
    cfg = tmp_path / "mine.pt"
    cfg.write_text('{"embed_dim": 512, "vision_cfg": {}}')
    with pytest.raises(CorruptWeightsError, match="a JSON or text file"):
        load_state_dict(str(cfg))


def test_loading_and_scoring_make_no_network_call(tiny, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    model, tok = load_open_clip("ViT-L-14", tiny)
    CLIPScoreVerifier(model, tok).score(images(2), "x")


def test_build_without_weights_is_uninitialised_but_fast():
    import time
    t = time.time()
    build_open_clip("ViT-B-32")
    assert time.time() - t < 30


def test_text_embedding_cache_is_bounded(tiny):
    model, tok = load_open_clip("ViT-L-14", tiny)
    v = CLIPScoreVerifier(model, tok)
    img = images(1)
    first = v.score(img, "prompt 0")
    for i in range(1, 200):  # a long-running server scores many distinct prompts
        v.score(img, f"prompt {i}")
    assert len(v._text_cache) <= v.TEXT_CACHE_SIZE
    assert torch.equal(v.score(img, "prompt 0"), first)  # evicted, then encoded again: the same score


@pytest.mark.parametrize("arch", ["roberta-ViT-B-32", "ViT-B-16-SigLIP"])
def test_hf_tower_architecture_is_refused_offline_at_once(arch, tmp_path, monkeypatch):
    """With download_missing off, an architecture whose text tower or tokenizer is on the Hugging Face Hub is
    built offline: no socket, and a clear error naming the missing repository within 2 s."""
    import open_clip
    from verifiers.clip_score import hf_names
    needs = hf_names(open_clip.get_model_config(arch))
    assert needs, arch
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    import time
    t = time.time()
    with pytest.raises(VerifierFileError, match=f"needs the Hugging Face files of .*{needs[0]}.*download_missing is off"):
        build_open_clip(arch)
    assert time.time() - t < 2 and not calls


def test_self_consistency_equals_a_hand_computation_and_needs_previews(tiny):
    import open_clip
    from verifiers.ensemble import EnsembleVerifier
    from verifiers.protocol import ScoreBook
    from verifiers.self_consistency import PreviewRequired, SelfConsistencyVerifier
    model, tok = load_open_clip("ViT-L-14", tiny)
    v = SelfConsistencyVerifier(model, level=0.4, batch_size=2)
    final, preview = images(3, seed=1, size=224), images(3, seed=2, size=224)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        a = model.encode_image((final.permute(0, 3, 1, 2) - mean) / std, normalize=True)
        b = model.encode_image((preview.permute(0, 3, 1, 2) - mean) / std, normalize=True)
    expected = (a * b).sum(-1)
    assert torch.allclose(v.score(final, "", previews=preview), expected, atol=1e-5)
    assert torch.allclose(v.score(final, "", previews=final), torch.ones(3), atol=1e-5)  # identical: 1
    with pytest.raises(PreviewRequired, match="Search Loop"):
        v.score(final, "a prompt")
    with pytest.raises(PreviewRequired):
        ScoreBook(v, "").add(final)
    # the score book and an ensemble hand the previews on
    assert torch.allclose(ScoreBook(v, "").add(final, preview), expected, atol=1e-5)
    ens = EnsembleVerifier([v, CLIPScoreVerifier(model, tok, mode="cosine")], mode="zscore")
    assert ens.needs_preview and ens.preview_level == 0.4
    m = ens.score_members(final, "a cat", previews=preview)
    assert torch.allclose(m[:, 0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="different noise levels"):
        EnsembleVerifier([v, SelfConsistencyVerifier(model, level=0.3)])
    with pytest.raises(ValueError, match="preview level"):
        SelfConsistencyVerifier(model, level=1.0)
