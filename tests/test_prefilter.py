"""The verifier pre-filter (verifiers/prefilter.py): a cheap screen decides, candidate by candidate, which
images the main verifier scores."""
import math

import pytest
import torch

from verifiers.ensemble import EnsembleVerifier
from verifiers.prefilter import PrefilterVerifier, summary
from verifiers.protocol import ScoreBook

pytestmark = pytest.mark.core


class Fake:
    """Scores an image by one of its pixel values; counts what it was shown."""
    relative = False

    def __init__(self, name, channel, sign=1.0, needs_preview=False):
        self.name, self.channel, self.sign = name, channel, sign
        self.seen = 0
        self.needs_preview = needs_preview
        self.preview_level = 0.4 if needs_preview else None
        self.previews = []

    def score(self, images, prompt, previews=None):
        if self.needs_preview:
            assert previews is not None and previews.shape == images.shape
            self.previews.append(previews[:, 0, 0, 0].clone())
        self.seen += images.shape[0]
        return self.sign * images[:, 0, 0, self.channel].float()


def images_of(screen, main):
    x = torch.zeros(len(screen), 2, 2, 3)
    x[:, 0, 0, 0] = torch.tensor(screen, dtype=torch.float32)
    x[:, 0, 0, 1] = torch.tensor(main, dtype=torch.float32)
    return x


def hand_rule(screen, keep, warmup):
    kept = []
    for j, v in enumerate(screen):
        n = j + 1
        better = sum(1 for s in screen[:j] if s > v)
        kept.append(n <= warmup or better < math.ceil(keep * n))
    return kept


SCREEN = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.95, 0.4, 0.6, 0.05, 0.8, 0.45]
MAIN = [5.0, 1.0, 9.0, 3.0, 2.0, 8.0, 4.0, 6.0, 7.0, 0.5, 2.5, 3.5]


@pytest.mark.parametrize("chunk", [1, 3, 5, 12])
def test_the_main_verifier_scores_exactly_the_candidates_the_rule_admits_whatever_the_micro_batch(chunk):
    screen, main = Fake("cheap", 0), Fake("main", 1)
    pre = PrefilterVerifier(screen, main, keep=0.5, warmup=3)
    book = ScoreBook(pre, "p")
    x = images_of(SCREEN, MAIN)
    for i in range(0, len(SCREEN), chunk):
        book.add(x[i:i + chunk])
    kept = hand_rule(SCREEN, 0.5, 3)
    assert kept[:3] == [True] * 3 and not all(kept) and any(kept[3:])
    assert main.seen == sum(kept) and screen.seen == len(SCREEN)
    m = book.matrix()
    assert torch.equal(~torch.isnan(m[:, 0]), torch.tensor(kept))
    assert m[:, 1].tolist() == pytest.approx(SCREEN)
    scores = book.all().tolist()
    # scored candidates keep the main verifier's score; skipped ones rank below all of them, by screen score
    for j, k in enumerate(kept):
        if k:
            assert scores[j] == MAIN[j]
    floor = min(MAIN[j] for j, k in enumerate(kept) if k)
    skipped = sorted((j for j, k in enumerate(kept) if not k), key=lambda j: -SCREEN[j])
    assert all(scores[j] < floor for j in skipped)
    assert [scores[j] for j in skipped] == sorted((scores[j] for j in skipped), reverse=True)
    s = summary(pre, m)
    assert s["screened"] == 12 and s["main_scored"] == sum(kept) and s["main_skipped"] == 12 - sum(kept)
    # members of a skipped row leave the main verifier out (no NaN in the report)
    j = skipped[0]
    assert book.members(j) == {"screen:cheap": pytest.approx(SCREEN[j])}
    assert set(book.members(0)) == {"main", "screen:cheap"}


def test_keep_one_scores_everything_and_equals_the_main_verifier():
    screen, main = Fake("cheap", 0), Fake("main", 1)
    book = ScoreBook(PrefilterVerifier(screen, main, keep=1.0, warmup=0), "p")
    book.add(images_of(SCREEN, MAIN))
    assert book.all().tolist() == MAIN and main.seen == 12


def test_an_ensemble_main_verifier_is_recombined_over_the_scored_candidates_only():
    screen = Fake("cheap", 0)
    a, b = Fake("a", 1), Fake("b", 2)
    ens = EnsembleVerifier([a, b], mode="mean_rank")
    pre = PrefilterVerifier(screen, ens, keep=0.5, warmup=2)
    x = images_of(SCREEN, MAIN)
    x[:, 0, 0, 2] = torch.arange(12, dtype=torch.float32)
    book = ScoreBook(pre, "p")
    for i in range(0, 12, 4):
        book.add(x[i:i + 4])
    kept = hand_rule(SCREEN, 0.5, 2)
    idx = [j for j, k in enumerate(kept) if k]
    expect = ens.combine(torch.stack([x[idx, 0, 0, 1], x[idx, 0, 0, 2]], 1)).tolist()
    got = book.all().tolist()
    assert [got[j] for j in idx] == pytest.approx(expect)
    assert all(got[j] < min(expect) for j, k in enumerate(kept) if not k)
    assert pre.member_names == ["a", "b", "screen:cheap"]


def test_previews_reach_the_screen_and_the_main_verifier_sees_only_its_rows():
    screen = Fake("selfc", 0, needs_preview=True)
    main = Fake("main", 1)
    pre = PrefilterVerifier(screen, main, keep=0.25, warmup=1)
    assert pre.needs_preview and pre.preview_level == 0.4
    x = images_of(SCREEN, MAIN)
    book = ScoreBook(pre, "p")
    book.add(x, previews=x.clone())
    assert torch.equal(screen.previews[0], x[:, 0, 0, 0])
    assert main.seen == sum(hand_rule(SCREEN, 0.25, 1))


def test_refusals_name_the_fix():
    a, b = Fake("a", 0), Fake("b", 1)
    with pytest.raises(ValueError, match="fraction"):
        PrefilterVerifier(a, b, keep=0.0)
    with pytest.raises(ValueError, match="relative"):
        PrefilterVerifier(EnsembleVerifier([a, b]), b)
    pre = PrefilterVerifier(a, b)
    with pytest.raises(ValueError, match="main verifier"):
        EnsembleVerifier([pre, a])
    with pytest.raises(ValueError, match="chain"):
        PrefilterVerifier(pre, b)
    c = Fake("c", 0, needs_preview=True)
    d = Fake("d", 1, needs_preview=True)
    d.preview_level = 0.2
    with pytest.raises(ValueError, match="different noise levels"):
        PrefilterVerifier(c, d)
