"""Verifier tier, part I: the LAION aesthetic predictor (real head, real open_clip
classes, random weights), ensembles and the opt-in download (no ComfyUI)."""
import socket
import sys
import types

import pytest
import torch

from tiny_verifiers import build_aesthetic_mlp, build_tiny_clip, build_tiny_clip_768
from search import State, random_search
from verifiers import CLIPScoreVerifier, load_open_clip
from verifiers.aesthetic import AestheticMLP, AestheticVerifier, load_aesthetic_mlp
from verifiers.download import DownloadError, resolve
from verifiers.ensemble import EnsembleVerifier, average_ranks, mean_rank, zscore
from verifiers.protocol import ScoreBook, recombine
from verifiers.loading import CorruptWeightsError, MismatchedWeightsError, MissingWeightsError


def images(n, seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, size, size, 3, generator=g)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("aesthetic")
    return {"clip": build_tiny_clip_768(str(d), "tiny-clip-768", seed=1),
            "clip32": build_tiny_clip(str(d), "tiny-clip-32", seed=0),
            "mlp": build_aesthetic_mlp(str(d), "tiny-aesthetic.pth", seed=2), "dir": d}


def aesthetic(files):
    model, tok = load_open_clip("ViT-L-14", files["clip"])
    return AestheticVerifier(CLIPScoreVerifier(model, tok, mode="cosine"), load_aesthetic_mlp(files["mlp"])), model


# ------------------------------------------------------------------ aesthetic
def test_published_head_layout_full_size():
    """The keys and shapes of sac+logos+ava1-l14-linearMSE.pth (the reference MLP's
    Sequential: Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear)."""
    published = {"layers.0.weight": (1024, 768), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
                 "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,),
                 "layers.6.weight": (16, 64), "layers.6.bias": (16,), "layers.7.weight": (1, 16),
                 "layers.7.bias": (1,)}
    assert {k: tuple(v.shape) for k, v in AestheticMLP().state_dict().items()} == published
    import open_clip
    with torch.device("meta"):
        clip = open_clip.create_model("ViT-L-14", pretrained=None, device="meta")
    assert clip.visual.output_dim == 768  # the full ViT-L-14 feeds the full head


def test_aesthetic_equals_reference_arithmetic(files):
    v, model = aesthetic(files)
    mlp = load_aesthetic_mlp(files["mlp"])
    imgs = images(3, size=224)  # at the model's size: preprocessing is normalisation only
    x = (imgs.permute(0, 3, 1, 2) - torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)) / \
        torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    with torch.no_grad():
        e = model.encode_image(x).numpy()
    import numpy as np
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)  # the reference's normalized()
    with torch.no_grad():
        expected = mlp(torch.from_numpy(e)).reshape(-1)
    got = v.score(imgs, "ignored")
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(v.score(imgs, "another prompt"), got)  # the prompt is not used


def test_aesthetic_batched_equals_single_and_images_differ(files):
    v, _ = aesthetic(files)
    v.batch_size = 4
    imgs = images(6, seed=5)
    batched = v.score(imgs)
    single = torch.cat([v.score(imgs[i:i + 1]) for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-5)  # tolerance: 1e-5, fp32 on CPU
    assert len(set(batched.tolist())) == 6


def test_aesthetic_file_errors(files, tmp_path):
    with pytest.raises(MissingWeightsError, match="not found"):
        load_aesthetic_mlp(str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth"))
    data = open(files["mlp"], "rb").read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptWeightsError, match="truncated"):
        load_aesthetic_mlp(str(cut))
    other = tmp_path / "other.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(768, 10)).state_dict(), other)
    with pytest.raises(MismatchedWeightsError, match="LAION aesthetic MLP"):
        load_aesthetic_mlp(str(other))
    # a head for 768-d embeddings on a CLIP with 32-d embeddings
    model, tok = load_open_clip("ViT-L-14", files["clip32"])
    with pytest.raises(MismatchedWeightsError, match="needs CLIP ViT-L-14"):
        AestheticVerifier(CLIPScoreVerifier(model, tok), load_aesthetic_mlp(files["mlp"]))


# ------------------------------------------------------------------ ensembles
def test_average_ranks_with_ties():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert average_ranks(torch.tensor([5.0, 5.0, 5.0])).tolist() == [2.0, 2.0, 2.0]
    assert average_ranks(torch.tensor([0.1, -2.0, 7.0])).tolist() == [2.0, 1.0, 3.0]


def test_mean_rank_hand_computed():
    # 4 candidates, 3 verifiers (aesthetic-, clip- and reward-like scales)
    m = torch.tensor([[5.0, 0.20, 1.0],
                      [6.0, 0.10, 1.0],
                      [4.0, 0.30, -1.0],
                      [6.0, 0.25, 0.5]])
    # ranks: col0 [2, 3.5, 1, 3.5], col1 [2, 1, 4, 3], col2 [3.5, 3.5, 1, 2]
    assert mean_rank(m).tolist() == pytest.approx([7.5 / 3, 8 / 3, 6 / 3, 8.5 / 3])
    # weights 2:1:1 -> (2*r0 + r1 + r2) / 4
    assert mean_rank(m, [2, 1, 1]).tolist() == pytest.approx([9.5 / 4, 11.5 / 4, 7 / 4, 12 / 4])


def test_zscore_hand_computed():
    m = torch.tensor([[1.0, 10.0], [2.0, 10.0], [3.0, 40.0]])
    # col0: mean 2, std sqrt(2/3) -> [-1.2247, 0, 1.2247]; col1: mean 20, std 14.142 -> [-0.7071, -0.7071, 1.4142]
    expect = [(-1.22474487 - 0.70710678) / 2, (0 - 0.70710678) / 2, (1.22474487 + 1.41421356) / 2]
    assert zscore(m).tolist() == pytest.approx(expect, abs=1e-6)
    assert zscore(torch.tensor([[1.0], [1.0]])).tolist() == [0.0, 0.0]  # constant column: no information


class Fixed:
    def __init__(self, name, values):
        self.name, self.values = name, torch.tensor(values)

    def score(self, images, prompt):
        return self.values[images[:, 0, 0, 0].long()]


def test_nested_ensemble_equals_flat_and_modes_do_not_mix():
    a, b, c = Fixed("a", [1.0, 3.0, 2.0, 0.0]), Fixed("b", [0.5, 0.1, 0.9, 0.2]), Fixed("c", [9.0, 9.0, 1.0, 2.0])
    imgs = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 2, 3).contiguous()
    flat = EnsembleVerifier([a, b, c], [1, 1, 2])
    nested = EnsembleVerifier([EnsembleVerifier([a, b], [1, 1]), c], [2, 2])
    assert nested.members == [a, b, c]
    assert torch.allclose(nested.score(imgs, ""), flat.score(imgs, ""))
    with pytest.raises(ValueError, match="cannot nest"):
        EnsembleVerifier([EnsembleVerifier([a], mode="zscore"), b])
    with pytest.raises(ValueError, match="weights"):
        EnsembleVerifier([a, b], [0, 0])


class BookHost:
    """A SearchHost whose candidate i's decoded "image" is the constant i, scored through a ScoreBook (the one
    recombination of relative scores that SearchLoop's host uses)."""

    def __init__(self, verifier, micro_batch):
        self.micro_batch, self.book = micro_batch, ScoreBook(verifier, "")
        self.sigmas, self.sampler_name, self.steps = torch.tensor([1.0, 0.0]), "euler", 1

    relative = property(lambda self: self.book.relative)
    scored_rows = property(lambda self: self.book.count)

    def nfe(self, start, end):
        return 5 * (end - start)

    def initial_noise(self, seeds):
        return torch.tensor([float(s - 100) for s in seeds]).view(-1, 1, 1, 1)

    def start(self, noise):
        return State(noise, torch.zeros_like(noise), 0)

    def sample(self, state, end, seeds):
        return State(torch.zeros_like(state.noise), state.noise.clone(), end), state.noise

    def score(self, latents):
        return self.book.add(latents.view(-1, 1, 1, 1).expand(-1, 2, 2, 3))

    def rescore(self):
        return self.book.all()

    def member_scores(self, row):
        return self.book.members(row)


def test_relative_scores_in_random_search_do_not_depend_on_micro_batch():
    rng = torch.Generator().manual_seed(0)
    table = torch.randn(9, 3, generator=rng)
    table[4, 0] = table[2, 0]  # a tie
    ens = EnsembleVerifier([Fixed("x", table[:, 0].tolist()), Fixed("y", table[:, 1].tolist()),
                            Fixed("z", table[:, 2].tolist())])
    results = []
    for mb in (1, 2, 4, 9):
        report, finalists = random_search(BookHost(ens, mb), seed=100, budget_nfe=45, top_k=3)
        results.append([(c.index, c.score) for c in report.ranked()])
        assert [f.result.index for f in finalists] == [c.index for c in report.ranked()[:3]]
    assert all(r == results[0] for r in results)
    expected = mean_rank(table)
    assert [s for _, s in sorted(results[0])] == pytest.approx(expected.tolist())
    assert report.candidates[0].verifier_scores.keys() == {"x", "y", "z"}
    assert report.candidates[0].verifier_scores["y"] == pytest.approx(float(table[0, 1]))


def test_score_book_recombines_over_every_row():
    a, b = Fixed("a", [1.0, 3.0, 2.0, 0.0]), Fixed("b", [0.5, 0.1, 0.9, 0.2])
    imgs = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 2, 3).contiguous()
    ens = EnsembleVerifier([a, b])
    book = ScoreBook(ens, "")
    first = book.add(imgs[:2])  # ranks among the first two only
    assert first.tolist() == pytest.approx(mean_rank(torch.tensor([[1.0, 0.5], [3.0, 0.1]])).tolist())
    book.add(imgs[2:])
    assert book.all().tolist() == pytest.approx(ens.score(imgs, "").tolist())  # over all four
    assert recombine(ens, book.matrix()).tolist() == pytest.approx(book.all().tolist())
    single = ScoreBook(a, "")
    assert single.add(imgs).tolist() == [1.0, 3.0, 2.0, 0.0] and not single.relative and single.members(0) == {}


# ------------------------------------------------------------------ download
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_download_off_means_no_network_and_a_clear_error(monkeypatch, tmp_path):
    no_network(monkeypatch)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # importing it would raise: it must not be touched
    with pytest.raises(MissingWeightsError) as e:
        resolve("sac+logos+ava1-l14-linearMSE.pth", lambda n: None, [str(tmp_path)], "x", allow_download=False)
    msg = str(e.value)
    assert "sac+logos+ava1-l14-linearMSE.pth" in msg and str(tmp_path) in msg
    assert "huggingface.co/camenduru/improved-aesthetic-predictor" in msg and "download_missing" in msg


def test_download_on_fetches_into_the_first_folder_with_progress(monkeypatch, tmp_path, files):
    calls = []

    def fake_download(repo_id, filename, local_dir, tqdm_class):
        calls.append((repo_id, filename))
        bar = tqdm_class(total=4, disable=True)
        bar.update(2)
        bar.update(2)
        bar.close()
        out = local_dir + "/" + filename
        open(out, "wb").write(open(files["mlp"], "rb").read())
        return out
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=fake_download))
    seen = []
    path = resolve("sac+logos+ava1-l14-linearMSE.pth", lambda n: None, [str(tmp_path / "a"), str(tmp_path / "b")],
                   "x", allow_download=True, progress=lambda d, t: seen.append((d, t)))
    assert path == str(tmp_path / "a" / "sac+logos+ava1-l14-linearMSE.pth")
    assert calls == [("camenduru/improved-aesthetic-predictor", "sac+logos+ava1-l14-linearMSE.pth")]
    assert seen[-1] == (4, 4)
    assert isinstance(load_aesthetic_mlp(path), AestheticMLP)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["sac+logos+ava1-l14-linearMSE.pth"]  # no temp left

    def failing(**k):
        raise OSError("no route to host")
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=failing))
    with pytest.raises(DownloadError, match="by hand"):
        resolve("ViT-L-14-openai.safetensors", lambda n: None, [str(tmp_path / "c")], "x", allow_download=True)
    # unknown files are never downloaded, whatever the switch says
    with pytest.raises(MissingWeightsError):
        resolve("mystery.safetensors", lambda n: None, [str(tmp_path)], "x", allow_download=True)
