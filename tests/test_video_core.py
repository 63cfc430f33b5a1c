"""Video candidates without ComfyUI: frame picks and aggregates (search/video.py), and every strategy on
5-D (B x C x T x H x W) latents on the toy host."""
import pytest
import torch

from search import Strategy, run_strategy
from search.noise import candidate_noise
from search.video import VideoInputError, VideoScoring, aggregate, frame_indices, split_videos
from toy_host import STRATEGIES, gaussian_host


VIDEO_SHAPE = (1, 4, 5, 6, 6)  # B x C x T x H x W


@pytest.mark.parametrize("total,want", [(1, [0]), (2, [0, 1]), (5, [0, 2, 4]), (33, [0, 16, 32]), (8, [0, 3, 7])])
def test_first_middle_last(total, want):
    assert frame_indices(total, 99, "first/middle/last") == want


@pytest.mark.parametrize("total,k,want", [(33, 3, [0, 16, 32]), (9, 5, [0, 2, 4, 6, 8]), (33, 1, [16]),
                                          (3, 8, [0, 1, 2]), (10, 4, [0, 3, 6, 9])])
def test_evenly_spaced(total, k, want):
    assert frame_indices(total, k, "evenly spaced") == want


def test_aggregates_and_selection_order():
    s = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]])
    assert aggregate(s, "mean").tolist() == pytest.approx([2.0, 3.5 / 3])
    assert aggregate(s, "min").tolist() == [1.0, -1.0]
    videos = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1, 1, 1).expand(2, 5, 2, 2, 3)
    sc = VideoScoring("evenly spaced", 3, "min")
    frames = sc.select(videos)
    assert frames.shape == (6, 2, 2, 3)
    assert frames[:, 0, 0, 0].tolist() == [0, 2, 4, 5, 7, 9]  # candidate after candidate
    assert sc.combine(frames[:, 0, 0, 0], 3).tolist() == [0.0, 5.0]


def test_bad_settings_and_frame_counts_are_clear():
    with pytest.raises(VideoInputError, match="not a whole number of 4-frame videos"):
        split_videos(torch.zeros(10, 2, 2, 3), 4)
    assert split_videos(torch.zeros(12, 2, 2, 3), 4).shape == (3, 4, 2, 2, 3)
    with pytest.raises(VideoInputError, match="frame pick"):
        VideoScoring("random")
    with pytest.raises(VideoInputError, match="aggregate"):
        VideoScoring(aggregate="median")
    with pytest.raises(VideoInputError, match="at least 1"):
        frame_indices(5, 0, "evenly spaced")


def test_fewer_frames_than_asked_are_recorded_and_said():
    """k evenly spaced frames of a shorter video: each frame is scored once; the report's ``frames`` is what was
    scored, ``frames_requested`` what was asked, and the shortfall is a message that says what to do."""
    k50 = VideoScoring("evenly spaced", 50)
    assert k50.indices(5) == [0, 1, 2, 3, 4]
    assert k50.to_dict(5) == {"pick": "evenly spaced", "frames": 5, "aggregate": "mean", "frames_requested": 50}
    assert k50.to_dict()["frames"] == 50  # before any video is seen: the setting
    assert k50.shortfall(5) == ("Video Scoring asks for 50 frames per video (evenly spaced), but each video has "
                                "only 5 frames: 5 were scored; set frames to 5 or fewer in Video Scoring, or make "
                                "longer videos")
    assert k50.shortfall(50) is None and k50.shortfall(81) is None
    default = VideoScoring()
    assert default.to_dict(33) == {"pick": "first/middle/last", "frames": 3, "aggregate": "mean"}
    assert default.shortfall(33) is None
    assert "has only 1 frame: 1 was scored; make longer videos, or pick 'first'" in default.shortfall(1)
    assert default.to_dict(1)["frames_requested"] == 3
    first = VideoScoring("first", 7)
    assert first.to_dict(9)["frames"] == 1 and first.shortfall(1) is None


def test_candidate_noise_of_a_video_latent_is_prepare_noise():
    # comfy.sample.prepare_noise: torch.manual_seed(seed); randn(latent.size()) on the CPU
    g = torch.manual_seed(1234)
    want = torch.randn(VIDEO_SHAPE, generator=g)
    assert torch.equal(candidate_noise(VIDEO_SHAPE, 1234), want)


def _run(name, params, sampler, micro_batch, budget=0):
    host = gaussian_host(sampler=sampler, steps=8, micro_batch=micro_batch, shape=VIDEO_SHAPE)
    report, fin = run_strategy(Strategy(name, params, budget_nfe=budget), host, candidates=6, top_k=2, seed=3)
    return host, report, fin


@pytest.mark.parametrize("name,params,sampler", STRATEGIES + [("halving", {}, "euler")])
def test_every_strategy_searches_video_latents_independent_of_micro_batch(name, params, sampler):
    host0, rep0, fin0 = _run(name, params, sampler, 0)
    assert rep0.nfe_total <= 6 * 8
    assert all(f.latent.shape == VIDEO_SHAPE for f in fin0)
    host1, rep1, fin1 = _run(name, params, sampler, 1)
    assert rep1.to_dict() == rep0.to_dict()
    for a, b in zip(fin0, fin1):
        assert torch.equal(a.latent, b.latent)


def test_coarse_to_fine_on_video_latents():
    host = gaussian_host(steps=8, shape=VIDEO_SHAPE)
    rep, fin = run_strategy(Strategy("random", {}, coarse_steps=2), host, candidates=6, top_k=2, seed=3)
    assert fin[0].latent.shape == VIDEO_SHAPE and rep.nfe_total <= 6 * 8


def test_the_video_native_attribute_and_ensembles():
    """verifiers/protocol.py's video-native verifiers score whole clips; an ensemble is one kind or the other."""
    from verifiers.ensemble import EnsembleVerifier
    from verifiers.protocol import is_video_native

    class Image:
        name, relative = "img", False

        def score(self, images, prompt):
            return images.mean(dim=(1, 2, 3))

    class Clip(Image):
        name, video_native = "clip", True

        def score(self, clips, prompt):
            return clips.mean(dim=(1, 2, 3, 4))

    assert is_video_native(Clip()) and not is_video_native(Image())
    assert EnsembleVerifier([Clip(), Clip()]).video_native
    assert not EnsembleVerifier([Image(), Image()]).video_native
    with pytest.raises(ValueError, match="one kind per ensemble"):
        EnsembleVerifier([Clip(), Image()])
    clips = torch.rand(3, 4, 2, 2, 3)
    assert EnsembleVerifier([Clip(), Clip()], mode="zscore").score(clips, "p").shape == (3,)
