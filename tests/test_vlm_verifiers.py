"""VQAScore and the VLM rubric grader (verifiers/vlm.py, vqascore.py, vlm_rubric.py) on tiny random
Qwen2.5-VL / Qwen3-VL models built from their configs and written as the published folders.

The reference is t2v-metrics' own computation for its Qwen2-VL VQAScore model (t2v_metrics 3.0,
``models/vqascore_models/qwen2vl_model.py``, ``Qwen2VLModel.forward``), reproduced here step for step
with transformers: the chat template with the image first, ``processor(text=[text], images=[image])``,
``model.generate(max_new_tokens=1, do_sample=False, output_scores=True)``, the softmax over the whole
vocabulary and the probability of ``tokenizer.encode(answer)[0]``; the model is loaded by transformers'
own ``from_pretrained`` from the same folder.  The images' sides are multiples of the processor's 28 (32)
pixels and their values multiples of 1/255, so qwen_vl_utils' resize (which t2v-metrics calls first) and
the processor's are identities and both paths see the same pixels."""
import os

import pytest
import torch

from tiny_verifiers import build_tiny_qwen_vl, published_qwen_keys

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Qwen2_5_VLForConditionalGeneration"):
    pytest.skip("this transformers has no Qwen2.5-VL", allow_module_level=True)

from verifiers import vlm as vlm_mod  # noqa: E402
from verifiers.ensemble import EnsembleVerifier, mean_rank  # noqa: E402
from verifiers.loading import MismatchedWeightsError, MissingWeightsError, VerifierFileError  # noqa: E402
from verifiers.vlm_rubric import ASPECT_NAMES, VLMRubricVerifier  # noqa: E402
from verifiers.vqascore import DEFAULT_TEMPLATE, VQAScoreVerifier  # noqa: E402

PROMPTS = ["a cat", "a red dog on a blue sofa, photographed at night", "x"]
KINDS = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vlm"))
    out = {kind: build_tiny_qwen_vl(root, name=f"tiny-{kind}", kind=kind, seed=1) for kind in KINDS}
    out["tied"] = build_tiny_qwen_vl(root, name="tiny-qwen2.5-vl-tied", kind="qwen2_5_vl", tied=True, seed=2)
    return out


@pytest.fixture(scope="module")
def loaded(folders):
    return {k: vlm_mod.load_qwen_vl(v) for k, v in folders.items()}


def images_for(kind, n=3, seed=0, cells=(2, 3)):
    side = 28 if kind == "qwen2_5_vl" else 32
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, cells[0] * side, cells[1] * side, 3), generator=g).float() / 255


def reference_model(folder, kind):
    cls = (transformers.Qwen2_5_VLForConditionalGeneration if kind == "qwen2_5_vl"
           else transformers.Qwen3VLForConditionalGeneration)
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    return model, transformers.AutoProcessor.from_pretrained(folder)


def reference_inputs(processor, image, question):
    from PIL import Image
    pil = Image.fromarray((image * 255).round().to(torch.uint8).numpy())
    messages = [{"role": "user", "content": [{"type": "image", "image": pil}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=[pil], padding=True, return_tensors="pt")


def t2v_metrics_vqascore(model, processor, images, prompts, template, answer="Yes"):
    """Qwen2VLModel.forward of t2v_metrics 3.0, image by image."""
    out = []
    for image, prompt in zip(images, prompts):
        inputs = reference_inputs(processor, image, template.format(prompt))
        with torch.inference_mode():
            gen = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
        probs = torch.nn.functional.softmax(gen.scores[0], dim=-1)
        out.append(probs[0, processor.tokenizer.encode(answer)[0]].item())
    return torch.tensor(out)


@pytest.mark.parametrize("kind", KINDS)
def test_vqascore_equals_t2v_metrics_computation(folders, loaded, kind):
    model, processor = reference_model(folders[kind], kind)
    imgs = images_for(kind)
    template = DEFAULT_TEMPLATE.replace("{prompt}", "{}")
    ref = t2v_metrics_vqascore(model, processor, imgs, PROMPTS, template)
    v = VQAScoreVerifier(loaded[kind], max_pixels=None)
    ours = v.score(imgs, PROMPTS)  # one batch of 3, left-padded (the prompts differ in length)
    assert ours.shape == (3,) and torch.isfinite(ours).all()
    assert torch.allclose(ours, ref, atol=1e-4, rtol=0), (ours, ref)
    assert torch.allclose(ours, ref, rtol=1e-3, atol=0), (ours, ref)  # also relative: the values are small
    assert len(set(ours.tolist())) == 3  # the images and prompts give different scores
    # t2v-metrics' own Qwen default question and another answer word go through the same path
    ref2 = t2v_metrics_vqascore(model, processor, imgs[:1], PROMPTS[:1], 'Does this image show "{}"?', "No")
    v2 = VQAScoreVerifier(loaded[kind], template='Does this image show "{}"?', answer="No", max_pixels=None)
    assert torch.allclose(v2.score(imgs[:1], PROMPTS[:1]), ref2, atol=1e-4, rtol=1e-3)


def test_vqascore_batched_equals_one_at_a_time(loaded):
    vlm = loaded["qwen2_5_vl"]
    imgs = images_for("qwen2_5_vl", n=4, seed=3)
    prompts = PROMPTS + ["two apples and a knife"]
    batched = VQAScoreVerifier(vlm, max_pixels=None, batch_size=4).score(imgs, prompts)
    single = torch.cat([VQAScoreVerifier(vlm, max_pixels=None, batch_size=1).score(imgs[i:i + 1], prompts[i])
                        for i in range(4)])
    assert torch.allclose(batched, single, atol=1e-6, rtol=1e-5), (batched, single)
    chunked = VQAScoreVerifier(vlm, max_pixels=None, batch_size=3).score(imgs, prompts)
    assert torch.allclose(chunked, single, atol=1e-6, rtol=1e-5)


def test_vqascore_resizes_like_the_processor(folders, loaded):
    """An image off the 28-px grid (and over max_pixels) is resized by the processor's size rule; the
    pixel values equal the processor's own (torchvision backend, float input) up to interpolation round-off."""
    vlm = loaded["qwen2_5_vl"]
    processor = transformers.AutoProcessor.from_pretrained(folders["qwen2_5_vl"])
    g = torch.Generator().manual_seed(5)
    img = torch.rand(1, 100, 150, 3, generator=g)
    max_pixels = 56 * 84
    ours, grid = vlm.pixel_values(img, max_pixels)
    ref = processor.image_processor(images=[img[0].permute(2, 0, 1)], do_rescale=False, return_tensors="pt",
                                    size={"shortest_edge": 56 * 56, "longest_edge": max_pixels})
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    assert grid[0, 1] * 14 * grid[0, 2] * 14 <= max_pixels
    assert (ours - ref["pixel_values"]).abs().max() < 0.05  # bicubic round-off, in normalised units
    # the verifier scores it (and the default max_pixels) without error
    s = VQAScoreVerifier(vlm, max_pixels=max_pixels).score(img, "a cat")
    assert torch.isfinite(s).all() and 0 < float(s) < 1


def rubric_reference(model, processor, image, question):
    """Expected answer over "1".."10" with transformers directly: generate's first scores, and a forward pass
    with "1" appended for P("0" | "1") (Qwen spells "10" as "1", "0")."""
    tok = processor.tokenizer
    inputs = reference_inputs(processor, image, question)
    with torch.inference_mode():
        gen = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
        first = torch.softmax(gen.scores[0][0].float(), -1)
        one = tok.encode("1")[0]
        ids = torch.cat([inputs["input_ids"], torch.tensor([[one]])], 1)
        kw = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        extra = {}
        if "mm_token_type_ids" in inputs:
            extra["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, 1, dtype=torch.long)
                                                    .to(inputs["mm_token_type_ids"].dtype)], 1)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kw, **extra).logits[0, -1]
    zero = torch.softmax(logits.float(), -1)[tok.encode("0")[0]]
    digits = [first[tok.encode(str(d))[0]] for d in range(1, 10)]
    probs = torch.stack([digits[0] * (1 - zero)] + digits[1:] + [digits[0] * zero])
    probs = probs / probs.sum()
    return float((probs * torch.arange(1, 11)).sum())


@pytest.mark.parametrize("kind", KINDS)
def test_rubric_expected_scores_equal_reference(folders, loaded, kind):
    model, processor = reference_model(folders[kind], kind)
    imgs = images_for(kind, n=2, seed=7)
    prompts = PROMPTS[:2]
    rubric = VLMRubricVerifier(loaded[kind], max_pixels=None, batch_size=2)
    assert rubric.aspects == list(ASPECT_NAMES) and rubric.ten[0] == "one_then"
    m = rubric.matrix(imgs, prompts)
    assert m.shape == (2, 5) and ((m >= 1) & (m <= 10)).all()
    ref = torch.tensor([[rubric_reference(model, processor, imgs[i], q.replace("{prompt}", prompts[i]))
                         for q in rubric.questions] for i in range(2)])
    assert torch.allclose(m, ref, atol=1e-4, rtol=0), (m, ref)
    one = torch.cat([VLMRubricVerifier(loaded[kind], max_pixels=None, batch_size=1).matrix(imgs[i:i + 1], prompts[i])
                     for i in range(2)])
    assert torch.allclose(m, one, atol=1e-5)
    mean = rubric.score(imgs, prompts)
    assert torch.allclose(mean, m.mean(1), atol=1e-6)


def test_rubric_members_share_one_pass_and_compose(loaded):
    vlm = loaded["qwen2_5_vl"]
    rubric = VLMRubricVerifier(vlm, weights=[2, 1, 1, 0, 1], max_pixels=None, batch_size=8)
    assert rubric.aspects == ["accuracy_to_prompt", "originality", "visual_quality", "emotional_resonance"]
    calls = []
    real = vlm.last_logits

    def counting(images, questions, *a, **k):
        calls.append(len(questions))
        return real(images, questions, *a, **k)
    vlm.last_logits = counting
    try:
        imgs = images_for("qwen2_5_vl", n=5, seed=11)
        ens = rubric.ensemble("mean_rank")
        assert isinstance(ens, EnsembleVerifier) and ens.relative
        assert ens.member_names == [f"vlm_rubric:{a}" for a in rubric.aspects]
        members = ens.score_members(imgs, "a cat")
        assert calls == [5 * 4]  # one forward pass: 5 images x 4 aspects
        m = rubric.matrix(imgs, "a cat")
        assert torch.allclose(members, m, atol=1e-6)
        assert torch.allclose(ens.combine(members), mean_rank(m, [2, 1, 1, 1]))
        calls.clear()
        # nested in a bigger mean-rank ensemble with another verifier: flattened, aspects are members
        other = VQAScoreVerifier(vlm, max_pixels=None)
        outer = EnsembleVerifier([ens, other], [1.0, 1.0], "mean_rank")
        assert len(outer.members) == 5 and outer.member_names[-1] == "vqascore"
        cols = outer.score_members(imgs, "a cat")
        assert cols.shape == (5, 5) and torch.allclose(cols[:, :4], m, atol=1e-6)
        assert calls == [20, 5]
    finally:
        del vlm.last_logits
    # a new batch (a new tensor) is never served from the kept matrix
    a = images_for("qwen2_5_vl", n=2, seed=12)
    b = images_for("qwen2_5_vl", n=2, seed=13)
    with torch.inference_mode():  # ComfyUI's decoded images are inference tensors (no version counter)
        inf = a.clone()
    assert torch.allclose(rubric.ensemble("zscore").score_members(inf, "a cat"), rubric.matrix(a, "a cat"), atol=1e-6)
    col_a = rubric.members()[0].score(a, "a cat")
    col_b = rubric.members()[0].score(b, "a cat")
    assert torch.allclose(col_b, rubric.matrix(b, "a cat")[:, 0]) and not torch.allclose(col_a, col_b)


def test_tied_embeddings_and_published_layout(folders, loaded):
    """Qwen2.5-VL-3B ties lm_head to the embeddings (no lm_head in its files): loaded and tied."""
    vlm = loaded["tied"]
    emb = vlm.model.get_input_embeddings().weight
    assert vlm.model.lm_head.weight.data_ptr() == emb.data_ptr()  # one tensor, not an equal copy
    model, processor = reference_model(folders["tied"], "qwen2_5_vl")
    imgs = images_for("qwen2_5_vl", n=1, seed=9)
    ref = t2v_metrics_vqascore(model, processor, imgs, PROMPTS[:1], DEFAULT_TEMPLATE.replace("{prompt}", "{}"))
    assert torch.allclose(VQAScoreVerifier(vlm, max_pixels=None).score(imgs, PROMPTS[:1]), ref, atol=1e-4, rtol=1e-3)


def test_missing_and_wrong_files_name_the_folder_and_source(folders, tmp_path):
    import shutil
    src = folders["qwen2_5_vl"]
    for missing in ("model.safetensors", "preprocessor_config.json", "config.json", "tokenizer.json"):
        dst = tmp_path / f"no-{missing}"
        shutil.copytree(src, dst)
        os.remove(dst / missing)
        if missing == "tokenizer.json":
            os.remove(dst / "vocab.json")
        with pytest.raises(MissingWeightsError) as e:
            vlm_mod.load_qwen_vl(str(dst))
        assert str(dst) in str(e.value) and "huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct" in str(e.value), missing
    with pytest.raises(MissingWeightsError) as e:
        vlm_mod.load_qwen_vl(str(tmp_path / "absent"))
    assert "absent" in str(e.value) and str(tmp_path) in str(e.value) and "huggingface.co/Qwen" in str(e.value)
    # weights of another size: every mismatch named
    bad = tmp_path / "mismatch"
    shutil.copytree(src, bad)
    shutil.copy(os.path.join(folders["qwen3_vl"], "model.safetensors"), bad / "model.safetensors")
    with pytest.raises(MismatchedWeightsError, match="Qwen2_5_VLForConditionalGeneration"):
        vlm_mod.load_qwen_vl(str(bad))
    # not a Qwen-VL at all
    other = tmp_path / "other"
    shutil.copytree(src, other)
    (other / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(VerifierFileError, match="not one of the Qwen-VL models"):
        vlm_mod.load_qwen_vl(str(other))
    assert not vlm_mod.is_vlm_folder(str(other)) and vlm_mod.is_vlm_folder(src)


# Qwen2.5-VL-3B-Instruct's and -7B-Instruct's config.json (huggingface.co/Qwen), the fields that set shapes
QWEN25_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                        spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                        fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
FULL_SIZE = {
    "Qwen2.5-VL-3B-Instruct": dict(
        text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                  num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
        vision=dict(QWEN25_VL_VISION, out_hidden_size=2048), tied=True),
    "Qwen2.5-VL-7B-Instruct": dict(
        text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
        vision=dict(QWEN25_VL_VISION, out_hidden_size=3584), tied=False),
    # Qwen/Qwen3-VL-8B-Instruct's config.json; its files use transformers' nested layout already
    "Qwen3-VL-8B-Instruct": dict(
        text=dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
        vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, num_position_embeddings=2304,
                    out_hidden_size=4096, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                    deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh"), tied=False),
}
PUBLISHED_COUNTS = {"Qwen2.5-VL-3B-Instruct": 3754622976, "Qwen2.5-VL-7B-Instruct": 8292166656,
                    "Qwen3-VL-8B-Instruct": 8767123696}  # 3.75 B, 8.29 B, 8.77 B on the model cards


def full_size_model(name):
    spec = FULL_SIZE[name]
    if name.startswith("Qwen3"):
        text = dict(spec["text"], rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                                   "mrope_section": [24, 20, 20], "mrope_interleaved": True})
        return "qwen3_vl", transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig(
            text_config=text, vision_config=spec["vision"], tie_word_embeddings=False))
    text = dict(spec["text"], rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                               "mrope_section": [16, 24, 24]})
    return "qwen2_5_vl", transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(
        text_config=text, vision_config=spec["vision"], tie_word_embeddings=spec["tied"]))


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_key_layouts_on_meta(name):
    """The full-size models on the meta device: the published key layout (Qwen2.5-VL: ``visual.*``,
    ``model.*``, no lm_head when tied; Qwen3-VL: transformers' own) maps onto every key of transformers'
    class, with the published parameter counts."""
    with torch.device("meta"):
        kind, model = full_size_model(name)
    expected = model.state_dict()
    published = published_qwen_keys(expected, kind)
    if kind == "qwen2_5_vl":
        assert any(k.startswith("visual.blocks.31.") for k in published)
        assert any(k.startswith("model.layers.") for k in published) and "model.embed_tokens.weight" in published
    else:
        assert "model.visual.deepstack_merger_list.2.linear_fc2.weight" in published
    tied = FULL_SIZE[name]["tied"]
    if tied:
        published.pop("lm_head.weight")
    mapped = vlm_mod.to_model_keys(published, list(expected))
    from verifiers.loading import check_keys
    check_keys(expected, mapped, name, "full-size", ignore=("lm_head.",) if tied else ())
    assert set(mapped) == set(expected) - ({"lm_head.weight"} if tied else set())
    n = sum(p.numel() for p in model.parameters())
    assert n == PUBLISHED_COUNTS[name], n


def test_half_precision_cast_keeps_rotary_tables_fp32(folders, loaded):
    """What ComfyUI's model management does on a GPU (nodes/verifier_models.shared_part): parameters to bf16,
    the rotary frequency buffers stay fp32; scores stay close to fp32's (here on the CPU)."""
    vlm = vlm_mod.load_qwen_vl(folders["qwen2_5_vl"])
    vlm.cast_for_gpu(True)
    assert {p.dtype for p in vlm.parameters()} == {torch.bfloat16}
    buffers = {n: b.dtype for n, b in vlm.named_buffers() if "inv_freq" in n}
    assert buffers and set(buffers.values()) == {torch.float32}, buffers
    imgs = images_for("qwen2_5_vl", n=2, seed=21)
    half = VQAScoreVerifier(vlm, max_pixels=None).score(imgs, PROMPTS[:2])
    full = VQAScoreVerifier(loaded["qwen2_5_vl"], max_pixels=None).score(imgs, PROMPTS[:2])
    assert half.dtype == torch.float32 and torch.allclose(half, full, rtol=0.1), (half, full)
