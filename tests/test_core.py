"""Core tier: the algorithms and accounting in search/, with toy denoisers (no ComfyUI)."""
import math

import pytest
import torch

from search import (NFECounter, NonFiniteScoreError, State, UnknownNFEError, candidate_noise, candidate_noises,
                    nfe_per_generation, plan_micro_batch, random_search, run_in_micro_batches, top_k_indices)
from search.noise import seeds_for, wrap_seed


class TableHost:
    """A SearchHost whose candidate with seed s scores ``table[s - base]``: one 10-NFE step per generation."""

    def __init__(self, table, base=100, micro_batch=3):
        self.table, self.base, self.micro_batch = list(table), base, micro_batch
        self.sigmas, self.sampler_name, self.relative, self.steps = torch.tensor([1.0, 0.0]), "euler", False, 1
        self.calls, self.scored = [], []

    def nfe(self, start, end):
        return 10 * (end - start)

    def initial_noise(self, seeds):
        return torch.tensor([float(s) for s in seeds]).view(-1, 1, 1, 1)

    def start(self, noise):
        return State(noise, torch.zeros_like(noise), 0)

    def sample(self, state, end, seeds):
        self.calls.append([int(s) - self.base for s in seeds])
        return State(torch.zeros_like(state.noise), state.noise.clone(), end, [len(seeds)] * len(seeds)), state.noise

    @property
    def scored_rows(self):
        return len(self.scored)

    def score(self, latents):
        s = torch.tensor([self.table[int(v) - self.base] for v in latents.reshape(-1).tolist()])
        self.scored += s.tolist()
        return s

    def rescore(self):
        return torch.tensor(self.scored)


def test_random_search_returns_argmax_and_top_k():
    host = TableHost([0.3, 0.9, -1.0, 0.9, 0.5, 0.1, 2.0], micro_batch=3)
    report, finalists = random_search(host, seed=100, budget_nfe=70, top_k=3)
    ranked = report.ranked()
    assert [c.index for c in ranked[:3]] == [6, 1, 3]  # tie 0.9/0.9 goes to the lower index
    assert report.best.seed == 106 and report.best.rank == 1
    assert [f.result.index for f in finalists] == [6, 1, 3]  # only the top-k are kept, best first
    assert finalists[0].stock_node == "ksampler" and finalists[0].seed == 106 and finalists[0].batch == 1
    assert host.calls == [[0, 1, 2], [3, 4, 5], [6]]  # one micro-batch at a time
    assert report.nfe_total == 70 and all(c.nfe == 10 for c in report.candidates)
    assert [t["nfe"] for t in report.trace] == [10, 20, 30, 40, 50, 60, 70]  # per candidate: no micro-batch
    assert [t["best"] for t in report.trace] == pytest.approx([0.3, 0.9, 0.9, 0.9, 0.9, 0.9, 2.0])
    assert sorted(c.rank for c in report.candidates) == list(range(1, 8))


def test_top_k_indices_ties_and_bounds():
    assert top_k_indices([1, 3, 3, 2], 2) == [1, 2]
    assert top_k_indices([5.0], 1) == [0]
    with pytest.raises(ValueError, match="top_k"):
        random_search(TableHost([0.0]), seed=100, budget_nfe=10, top_k=2)


def test_random_search_refuses_a_budget_below_one_generation():
    # a budget of 1 or 3 NFEs buys no 10-NFE generation: refused, never silently overspent
    for budget in (1, 3, 9):
        with pytest.raises(ValueError, match="too small"):
            random_search(TableHost([0.0] * 4), seed=100, budget_nfe=budget)


def test_nan_score_is_a_clear_error():
    host = TableHost([1.0, 1.0, math.nan, 1.0], micro_batch=4)
    with pytest.raises(NonFiniteScoreError, match="non-finite score.*seed 102"):
        random_search(host, seed=100, budget_nfe=40)


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
    report, _ = random_search(TableHost([0.0, 1.0, 2.0], base=10, micro_batch=2), seed=10, budget_nfe=30)
    d = json.loads(report.to_json())
    assert d["best"]["seed"] == 12 and d["candidates"][0]["rank"] == 1
    assert d["algorithm"] == "random" and d["nfe_total"] == 30


def test_phase_clock_splits_time_and_counts_calls():
    import time
    from search import PhaseClock
    clock = PhaseClock()
    with clock.phase("denoise"):
        time.sleep(0.02)
        with clock.phase("decode"):  # nested: belongs to the outer phase
            pass
    with clock.phase("verify"):
        pass
    d = clock.to_dict(total_seconds=0.1)
    assert d["denoise"]["calls"] == 1 and d["decode"]["calls"] == 0 and d["verify"]["calls"] == 1
    assert d["denoise"]["seconds"] >= 0.02 and d["other"]["seconds"] == pytest.approx(
        0.1 - d["denoise"]["seconds"] - d["verify"]["seconds"], abs=1e-5)
    assert set(d) == {"denoise", "decode", "verify", "rerender", "other"}


def test_sampler_table_drives_nfe_and_requirements():
    from search import SAMPLERS, get_algorithm
    from search.registry import UnsupportedSamplerError
    # every sampler ComfyUI's k-diffusion offers that the old tables knew keeps its NFE count
    assert nfe_per_generation("dpmpp_2m", [3, 2, 1, 0]) == 3 and nfe_per_generation("dpmpp_sde", [3, 2, 1, 0]) == 5
    assert all(f.calls in (1, 2, None) for f in SAMPLERS.values())
    assert all(not f.stochastic or f.calls is not None for f in SAMPLERS.values())
    paths, particles = get_algorithm("paths"), get_algorithm("particles")
    paths.check_sampler("euler")
    with pytest.raises(UnsupportedSamplerError, match="dpmpp_2m"):
        paths.check_sampler("dpmpp_2m")
    with pytest.raises(UnsupportedSamplerError, match="heunpp2"):  # changes its last step at a segment end
        paths.check_sampler("heunpp2")
    with pytest.raises(UnsupportedSamplerError, match="deterministic"):
        particles.check_sampler("euler")
    particles.check_sampler("sample_euler_ancestral")
    get_algorithm("random").check_sampler("dpm_adaptive")  # whole-schedule runs: any sampler


def test_registry_resolves_defaults_and_refuses_bad_values():
    from search import algorithms
    for alg in algorithms().values():
        assert alg.resolve({}) == alg.defaults()  # the defaults themselves are valid
        assert alg.node.endswith("Strategy") and alg.title and alg.description
    # what the finalists carry: a starting noise, or a recipe (a lineage) with its coarse-to-fine callback
    carry = {name: alg.finalists for name, alg in algorithms().items()}
    assert carry == {"random": "noise", "zero_order": "noise", "paths": "recipe", "particles": "recipe",
                     "evolution": "noise", "halving": "noise", "tree": "recipe"}
    assert all((alg.coarse is not None) == (alg.finalists == "recipe") for alg in algorithms().values())
    zo = algorithms()["zero_order"]
    assert zo.resolve({"neighbours": 4})["neighbours"] == 4
    with pytest.raises(ValueError, match="unknown parameter.*nieghbours"):
        zo.resolve({"nieghbours": 4})
    with pytest.raises(ValueError, match="'cosine' must lie in"):
        zo.resolve({"cosine": 1.5})
    with pytest.raises(ValueError, match="whole number"):
        zo.resolve({"neighbours": 2.5})
    with pytest.raises(ValueError, match="backward .* must be larger than forward"):
        algorithms()["paths"].resolve({"forward": 0.9, "backward": 0.5})
    with pytest.raises(ValueError, match="elites"):
        algorithms()["evolution"].resolve({"population": 4, "elites": 4})
    with pytest.raises(ValueError, match="one of"):
        algorithms()["particles"].resolve({"potential": "best"})
