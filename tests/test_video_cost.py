"""Cheaper scoring of video candidates, without ComfyUI: the latent frames a causal VAE needs for the scored
frames (search/video.py), the sequential keep rule that latent-preview pruning shares with the pre-filter
(verifiers/prefilter.py), and the pre-filter screening video candidates from their frames."""
import math

import pytest
import torch

from search.video import VideoInputError, VideoScoring, frame_indices, latent_frame_of, latent_frames_needed
from verifiers.prefilter import PrefilterVerifier, SequentialGate, place_below, summary
from verifiers.protocol import ScoreBook


def wan(a):  # ComfyUI's VAE.upscale_ratio[0] for Wan 2.1 / 2.2
    return max(0, a * 4 - 3)


def ltx(a):
    return max(0, a * 8 - 7)


@pytest.mark.parametrize("frame,want", [(0, 1), (1, 2), (4, 2), (5, 3), (16, 5), (31, 9), (32, 9)])
def test_wan_frame_mapping(frame, want):
    assert latent_frames_needed(wan, 9, frame) == want          # 9 latent frames = 33 frames
    assert latent_frame_of(wan, 9, frame) == want - 1
    assert wan(want) > frame and (want == 1 or wan(want - 1) <= frame)


def test_other_temporal_ratios_and_bad_frames():
    assert [latent_frames_needed(ltx, 4, f) for f in (0, 1, 8, 9, 24)] == [1, 2, 2, 3, 4]
    with pytest.raises(VideoInputError, match="not in a 33-frame video"):
        latent_frames_needed(wan, 9, 33)


@pytest.mark.parametrize("pick,k,want", [("first", 1, 1), ("first/middle/last", 3, 9), ("evenly spaced", 3, 9),
                                         ("evenly spaced", 1, 5), ("evenly spaced", 2, 9)])
def test_the_latent_prefix_a_pick_needs(pick, k, want):
    idx = VideoScoring(pick, k).indices(wan(9))
    assert latent_frames_needed(wan, 9, max(idx)) == want
    assert frame_indices(33, 5, "first") == [0]


def test_preview_settings_are_checked_and_reported_only_when_on():
    assert "preview_keep" not in VideoScoring().to_dict()
    assert VideoScoring(preview_keep=0.5, preview_warmup=1).to_dict()["preview_keep"] == 0.5
    with pytest.raises(VideoInputError, match="preview_keep"):
        VideoScoring(preview_keep=0.0)
    with pytest.raises(VideoInputError, match="preview_warmup"):
        VideoScoring(preview_keep=0.5, preview_warmup=-1)


PREVIEW = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.95, 0.4, 0.6, 0.05, 0.8, 0.45]


def by_hand(values, keep, warmup):
    return [j < warmup or sum(1 for s in values[:j] if s > v) < math.ceil(keep * (j + 1))
            for j, v in enumerate(values)]


@pytest.mark.parametrize("chunk", [1, 2, 5, 12])
def test_the_preview_rule_decides_the_same_at_any_micro_batch(chunk):
    gate = SequentialGate(keep=0.5, warmup=2)
    got = []
    for i in range(0, len(PREVIEW), chunk):
        got += gate(PREVIEW[i:i + chunk])
    assert got == by_hand(PREVIEW, 0.5, 2)
    assert 4 <= sum(got) <= 9 and got[:2] == [True, True]
    # pruned candidates rank below every decoded one, best preview first; decoded ones keep their scores
    scored = torch.tensor(got)
    real = torch.arange(len(PREVIEW), dtype=torch.float32) * scored
    out = place_below(real, scored, torch.tensor(PREVIEW))
    assert torch.equal(out[scored], real[scored])
    assert out[~scored].max() < out[scored].min()
    pruned = (~scored).nonzero().reshape(-1).tolist()
    assert sorted(pruned, key=lambda i: -float(out[i])) == sorted(pruned, key=lambda i: -PREVIEW[i])


class Frames:
    """Scores a frame by one of its pixel values; counts the frames it was shown."""
    relative = False

    def __init__(self, name, channel):
        self.name, self.channel, self.seen = name, channel, 0

    def score(self, images, prompt):
        self.seen += images.shape[0]
        return images[:, 0, 0, self.channel].float()


def video_frames(n, k, seed=0):
    """n candidates x k scored frames (candidate after candidate): screen in channel 0, main in channel 1."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n * k, 2, 2, 3, generator=g)


@pytest.mark.parametrize("chunk", [1, 3, 8])
@pytest.mark.parametrize("how", ["mean", "min"])
def test_the_prefilter_screens_video_candidates_from_their_frames(chunk, how):
    n, k = 8, 3
    x = video_frames(n, k)
    sc = VideoScoring("evenly spaced", k, how)
    screen, main = Frames("cheap", 0), Frames("main", 1)
    pre = PrefilterVerifier(screen, main, keep=0.5, warmup=2)
    book = ScoreBook(pre, "p")
    for i in range(0, n, chunk):
        rows = x[i * k:(i + chunk) * k]
        book.add_matrix(pre.screen_rows(rows, "p", history=book.matrix(), group=k,
                                        aggregate=lambda s: sc.combine(s.reshape(-1), k)))
    per = x[:, 0, 0, 0].reshape(n, k)
    cand_screen = per.mean(1) if how == "mean" else per.min(1).values
    kept = by_hand(cand_screen.tolist(), 0.5, 2)
    assert main.seen == k * sum(kept) and screen.seen == n * k       # the main verifier: kept candidates' frames
    scores = sc.combine(book.all(), k)
    mains = x[:, 0, 0, 1].reshape(n, k)
    mains = mains.mean(1) if how == "mean" else mains.min(1).values
    keep_t = torch.tensor(kept)
    assert torch.allclose(scores[keep_t], mains[keep_t])
    assert scores[~keep_t].max() < scores[keep_t].min()             # skipped candidates rank below
    skipped = (~keep_t).nonzero().reshape(-1).tolist()
    assert sorted(skipped, key=lambda i: -float(scores[i])) == sorted(skipped, key=lambda i: -float(cand_screen[i]))
    # the summary counts candidates when it is given the per-candidate matrix (what Search Loop reports)
    m = book.matrix()
    per_candidate = torch.stack([sc.combine(m[:, j], k) for j in range(m.shape[1])], 1)
    assert summary(pre, per_candidate)["main_scored"] == sum(kept)
