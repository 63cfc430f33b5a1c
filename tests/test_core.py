"""Core tier: the algorithms and accounting in search/, with toy denoisers (no ComfyUI)."""
import math

import pytest
import torch

from search import (Candidate, NFECounter, UnknownNFEError, candidate_noise, candidate_noises,
                    nfe_per_generation, plan_micro_batch, random_search, run_in_micro_batches, top_k_indices)
from search.noise import seeds_for, wrap_seed
from search.random_search import NonFiniteScoreError


def toy_evaluate(score_of):
    calls = []

    def evaluate(chunk):
        calls.append([c.index for c in chunk])
        return torch.tensor([score_of(c) for c in chunk]), 10, [c.seed for c in chunk]
    return evaluate, calls


def test_random_search_returns_argmax_and_top_k():
    scores = [0.3, 0.9, -1.0, 0.9, 0.5, 0.1, 2.0]
    cands = [Candidate(i, 100 + i) for i in range(len(scores))]
    ev, calls = toy_evaluate(lambda c: scores[c.index])
    report, kept = random_search(cands, ev, top_k=3, micro_batch=3)
    ranked = report.ranked()
    assert [c.index for c in ranked[:3]] == [6, 1, 3]  # tie 0.9/0.9 goes to the lower index
    assert report.best.seed == 106 and report.best.rank == 1
    assert sorted(kept) == [1, 3, 6] and kept[6] == 106  # only the top-k payloads are kept
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert report.nfe_total == 70 and all(c.nfe == 10 for c in report.candidates)
    assert [t["nfe"] for t in report.trace] == [30, 60, 70]
    assert [t["best"] for t in report.trace] == pytest.approx([0.9, 0.9, 2.0])
    assert sorted(c.rank for c in report.candidates) == list(range(1, 8))


def test_top_k_indices_ties_and_bounds():
    assert top_k_indices([1, 3, 3, 2], 2) == [1, 2]
    assert top_k_indices([5.0], 1) == [0]
    with pytest.raises(ValueError):
        random_search([Candidate(0, 0)], toy_evaluate(lambda c: 0.0)[0], top_k=2, micro_batch=1)


def test_nan_score_is_a_clear_error():
    ev, _ = toy_evaluate(lambda c: math.nan if c.index == 2 else 1.0)
    with pytest.raises(NonFiniteScoreError, match="non-finite score.*seed 2"):
        random_search([Candidate(i, i) for i in range(4)], ev, top_k=1, micro_batch=4)


@pytest.mark.parametrize("order", ["forward", "reverse"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_candidate_noise_independent_of_micro_batch_and_order(batch, order):
    shape = (1, 4, 8, 8)
    seeds = seeds_for(1234, 0, 8)
    ref = {s: candidate_noise(shape, s) for s in seeds}
    todo = seeds if order == "forward" else list(reversed(seeds))
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        got = candidate_noises((batch,) + shape[1:], chunk)
        for j, s in enumerate(chunk):
            assert torch.equal(got[j:j + 1], ref[s])


def test_candidate_noise_is_comfy_prepare_noise_formula():
    # comfy.sample.prepare_noise: torch.manual_seed(seed); torch.randn(shape, generator=that, device="cpu")
    g = torch.manual_seed(77)
    expected = torch.randn((1, 4, 8, 8), generator=g, device="cpu")
    assert torch.equal(candidate_noise((1, 4, 8, 8), 77), expected)
    assert wrap_seed(2**64 + 5) == 5


def test_nfe_formula_euler_heun_and_refusals():
    sig = [14.6, 7.0, 3.0, 1.0, 0.0]
    assert nfe_per_generation("euler", sig) == 4
    assert nfe_per_generation("sample_euler_ancestral", sig) == 4
    assert nfe_per_generation("heun", sig) == 7  # Heun's last step (to sigma 0) is an Euler step
    assert nfe_per_generation("heun", [14.6, 7.0, 3.0, 1.0, 0.5]) == 8  # no final zero: 2 per step
    with pytest.raises(UnknownNFEError, match="not known in advance"):
        nfe_per_generation("dpm_adaptive", sig)
    with pytest.raises(UnknownNFEError):
        nfe_per_generation("my_custom_sampler", sig)


def toy_euler(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i])) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def toy_heun(model, x, sigmas):
    # k-diffusion's Heun: an Euler step when the next sigma is 0
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i])) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = (x2 - model(x2, sigmas[i + 1])) / sigmas[i + 1]
            x = x + (d + d2) / 2 * dt
    return x


@pytest.mark.parametrize("sampler,fn", [("euler", toy_euler), ("heun", toy_heun)])
def test_counter_matches_formula(sampler, fn):
    sig = [10.0, 5.0, 2.0, 0.5, 0.0]
    counter = NFECounter(lambda x, s: x * 0.5)
    fn(counter, torch.ones(3, 2), sig)
    assert counter.calls == nfe_per_generation(sampler, sig)


def test_counter_delegates_attributes_and_hooks():
    class Den:
        inner_model = "inner"

        def __call__(self, x, s):
            return x
    seen = []
    c = NFECounter(Den(), on_call=lambda cnt: seen.append(cnt.calls))
    c(torch.zeros(1), 1.0)
    c(torch.zeros(1), 1.0)
    assert c.inner_model == "inner" and seen == [0, 1] and c.calls == 2


class FakeOOM(RuntimeError):
    pass


def test_oom_backoff_halves_and_never_catches_other_errors():
    sizes = []

    def fn(chunk):
        sizes.append(len(chunk))
        if len(chunk) > 2:
            raise FakeOOM()
        return list(chunk)

    out = run_in_micro_batches(list(range(7)), fn, 8, is_oom=lambda e: isinstance(e, FakeOOM))
    assert sum(out, []) == list(range(7))
    assert sizes == [7, 4, 2, 2, 2, 1]

    class Interrupt(Exception):
        pass

    def boom(chunk):
        raise Interrupt()
    with pytest.raises(Interrupt):
        run_in_micro_batches([1, 2], boom, 2, is_oom=lambda e: isinstance(e, FakeOOM))
    with pytest.raises(FakeOOM):  # at batch 1 an OOM is real
        run_in_micro_batches([1], lambda c: (_ for _ in ()).throw(FakeOOM()), 1, is_oom=lambda e: True)


def test_plan_micro_batch():
    assert plan_micro_batch(100, None, None) == 64
    assert plan_micro_batch(5, None, None) == 5
    assert plan_micro_batch(100, 10_000, 1_000, reserve=0.8) == 8
    assert plan_micro_batch(100, 10, 1_000) == 1
    assert plan_micro_batch(100, 10_000, 1_000, requested=3) == 3
    assert plan_micro_batch(2, 10_000, 1_000, requested=30) == 2


def test_report_json_roundtrip():
    import json
    ev, _ = toy_evaluate(lambda c: float(c.index))
    report, _ = random_search([Candidate(i, 10 + i) for i in range(3)], ev, top_k=1, micro_batch=2)
    d = json.loads(report.to_json())
    assert d["best"]["seed"] == 12 and d["candidates"][0]["rank"] == 1
    assert d["algorithm"] == "random" and d["nfe_total"] == 30
