"""The search algorithms over the SearchHost protocol, on the toy host (tests/toy_host.py)."""
import math

import pytest
import torch

from search import (Strategy, UnsupportedSamplerError, effective_sample_size, evolution_search, neighbour,
                    particle_search,
                    paths_search, resample_indices, run_strategy, zero_order_search)
from search.host import State, derive_seed
from search.noise import candidate_noise
from search.common import top_k_indices
from toy_host import STRATEGIES, GaussianToy, ToyHost, gaussian_host

def _run(name, params, sampler, micro_batch, coarse=0, budget=0, candidates=12, prediction="eps", top_k=2, seed=7,
         rerender=0):
    host = gaussian_host(sampler=sampler, steps=12, micro_batch=micro_batch, prediction=prediction)
    report, finalists = run_strategy(Strategy(name, params, budget_nfe=budget, coarse_steps=coarse, rerender=rerender),
                                     host, candidates=candidates, top_k=top_k, seed=seed)
    return host, report, finalists


# --- zero-order ----------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0.95, 0.5, 0.0, -0.3])
def test_neighbour_has_exact_cosine_and_norm(t):
    x = candidate_noise((1, 4, 16, 16), 3) * 1.7
    y = neighbour(x, t, 11)
    cos = torch.nn.functional.cosine_similarity(x.flatten().double(), y.flatten().double(), dim=0)
    assert float(cos) == pytest.approx(t, abs=1e-5)
    assert float(y.norm()) == pytest.approx(float(x.norm()), rel=1e-5)
    assert torch.equal(y, neighbour(x, t, 11)) and not torch.equal(y, neighbour(x, t, 12))


def test_zero_order_pivot_moves_only_on_improvement_and_counts_its_own_generation():
    host = gaussian_host(steps=8)
    report, finalists = zero_order_search(host, seed=3, budget_nfe=8 * 9, neighbours=2, cosine=0.9, top_k=1,
                                          start_noises=1, step_growth=1.0)
    assert report.nfe_total == 72 == host.nfe_rows  # pivot (1) + 4 rounds of 2
    assert report.settings["rounds"] == 4 and len(report.candidates) == 9
    assert report.candidates[0].seed == 3 and report.candidates[0].noise_id == "zo start 0 (seed 3)"
    assert report.candidates[1].noise_id == "zo r1 n0 (pivot zo start 0, seed 3)" and report.candidates[1].seed is None
    assert report.settings["cosines"] == [pytest.approx(0.9)] * 4  # step_growth 1: the paper's fixed step
    # the pivot is always the best candidate seen so far (it only moves to a better neighbour)
    seen = [report.candidates[0].score]
    for rnd, t in enumerate(report.trace[1:], start=1):
        seen += [c.score for c in report.candidates[1 + 2 * (rnd - 1):1 + 2 * rnd]]
        assert t["pivot"] == max(seen) == t["best"]
    assert finalists[0].result.score == max(seen)


def test_zero_order_last_round_is_cut_to_the_budget():
    host = gaussian_host(steps=8)
    report, _ = zero_order_search(host, seed=3, budget_nfe=8 * 4 + 5, neighbours=2, start_noises=1)
    assert report.nfe_total == 32 == host.nfe_rows and len(report.candidates) == 4  # pivot, 2, then 1


# --- host semantics ----------------------------------------------------------------------------

@pytest.mark.parametrize("prediction,sampler", [("eps", "euler"), ("eps", "euler_ancestral"), ("flow", "euler")])
def test_segmented_run_equals_unsegmented(prediction, sampler):
    host = gaussian_host(prediction=prediction, sampler=sampler, steps=10)
    seeds = [5, 6, 7]
    start = host.start(host.initial_noise(seeds))
    whole, x0_whole = host.sample(start, 10, seeds)
    part, _ = host.sample(start, 3, seeds)
    part, _ = host.sample(part, 7, seeds)
    part, x0_part = host.sample(part, 10, seeds)
    torch.testing.assert_close(part.latent, whole.latent, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x0_part, x0_whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_renoise_gives_the_forward_process_marginal(prediction):
    s, n = 0.5, 40000
    host = ToyHost(GaussianToy(torch.zeros(1, 1, 1, 1), s, prediction), lambda z: z.flatten(1).mean(1),
                   shape=(1, 1, 1, 1), steps=10, prediction=prediction)
    i, j = 7, 2
    si, sj = float(host.sigmas[i]), float(host.sigmas[j])
    g = torch.Generator().manual_seed(0)
    x0 = 1.0 + s * torch.randn(n, 1, 1, 1, generator=g)
    eps = torch.randn(n, 1, 1, 1, generator=g)
    if prediction == "eps":
        xi, want_var, want_mean = x0 + si * eps, s * s + sj * sj, 1.0
    else:
        xi, want_var, want_mean = (1 - si) * x0 + si * eps, ((1 - sj) * s) ** 2 + sj * sj, 1 - sj
    state = State(torch.zeros_like(xi), host.inverse_scale(si, xi), i)
    out = host.renoise(state, j, torch.randn(n, 1, 1, 1, generator=g))
    xj = host.x_of(out)
    assert out.index == j
    assert float(xj.var()) == pytest.approx(want_var, rel=0.03)
    assert float(xj.mean()) == pytest.approx(want_mean, abs=0.03 * math.sqrt(want_var))


def test_levels_and_coarser_schedules():
    host = gaussian_host(steps=20)
    assert host.level(0) == pytest.approx(1.0) and host.level(20) == 0.0
    assert host.index_at_level(0.0) == 20 and host.index_at_level(1.0) == 0
    assert all(host.level(i) > host.level(i + 1) for i in range(20))
    coarse = host.with_steps(5)
    assert coarse.steps == 5 and coarse.sigmas[0] == host.sigmas[0]


# --- paths ------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_paths_keeps_exactly_the_top_n_and_spends_the_stated_nfes(prediction):
    N, M, T = 3, 4, 20
    host = gaussian_host(prediction=prediction, steps=T)
    renoised = []
    orig = host.renoise

    def spy(state, index, noise):  # the parents of each round, as the search hands them to renoise
        renoised.append(state)
        return orig(state, index, noise)
    host.renoise = spy
    outputs = []
    orig_sample = host.sample

    def spy_sample(state, end, seeds):
        out = orig_sample(state, end, seeds)
        outputs.append(out[0])
        return out
    host.sample = spy_sample
    report, finalists = paths_search(host, seed=1, budget_nfe=10**6, paths=N, noises_per_path=M, top_k=2)
    rounds = report.settings["rounds"]
    assert len(rounds) >= 2 and rounds[-1]["end_index"] == T
    s_idx = report.settings["start_index"]
    expected = N * host.nfe(0, s_idx) + sum(N * M * host.nfe(r["renoise_index"], r["end_index"]) for r in rounds)
    assert report.nfe_total == expected == host.nfe_rows
    for r, nxt in zip(rounds[:-1], renoised[1:]):
        assert r["kept_rows"] == top_k_indices(r["scores"], N) and len(r["kept_rows"]) == N
        out = outputs[r["round"]]  # outputs[0] is the initial denoise to the search start
        torch.testing.assert_close(host.x_of(nxt)[::M], host.x_of(out.select(r["kept_rows"])))
    # each round ends later in the schedule; levels follow start + k·(Δf − Δb)
    ends = [r["end_index"] for r in rounds]
    assert ends == sorted(set(ends)) and ends[0] > s_idx
    last = rounds[-1]
    assert [c.score for c in report.ranked()][:2] == [finalists[0].result.score, finalists[1].result.score]
    assert finalists[0].result.score == max(last["scores"]) and finalists[0].noise is None
    assert len(report.candidates) == N * M


def test_paths_small_budget_finishes_without_search_and_never_exceeds():
    host = gaussian_host(steps=20)
    paper = {"start_level": 0.11, "forward": 0.78, "backward": 0.81}
    report, finalists = paths_search(host, seed=1, budget_nfe=2 * 20 + 5, paths=2, noises_per_path=4, **paper)
    assert report.nfe_total == 40 == host.nfe_rows and report.settings["rounds"] == []
    assert len(report.candidates) == 2 and any("no search round" in n for n in report.notes)
    # 5 NFEs more: the regular round does not fit, but a last round straight to the end, re-noising as far
    # back as the rest allows (one step), with 2 re-noisings per path, does
    host = gaussian_host(steps=20)
    report, _ = paths_search(host, seed=1, budget_nfe=2 * 20 + 10, paths=2, noises_per_path=4, **paper)
    s = report.settings["start_index"]
    assert report.settings["rounds"][0]["renoise_index"] == s - 1 and report.settings["rounds"][0]["end_index"] == 20
    assert report.settings["rounds"][0]["noises_per_path"] == 2
    assert report.nfe_total == 2 * s + 2 * 2 * (20 - s + 1) == host.nfe_rows <= 50
    with pytest.raises(ValueError, match="too small"):
        paths_search(gaussian_host(steps=20), seed=1, budget_nfe=39, paths=2)


def test_paths_with_start_level_zero_still_searches_the_last_step():
    host = gaussian_host(steps=20)
    report, finalists = paths_search(host, seed=1, budget_nfe=200, paths=2, noises_per_path=2, start_level=0.0)
    assert report.settings["start_index"] == 19 and len(finalists) == 1
    assert report.nfe_total <= 200 and report.settings["rounds"]


# --- particles ---------------------------------------------------------------------------------

def chi_square_p_value(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's goodness-of-fit test (scipy.stats.chisquare's p-value): the chi-square survival function at the
    statistic, with k - 1 degrees of freedom, is the regularised upper incomplete gamma Q((k - 1) / 2, stat / 2)."""
    o, e = observed.double(), expected.double()
    stat = ((o - e) ** 2 / e).sum()
    return float(torch.special.gammaincc(torch.tensor((o.numel() - 1) / 2, dtype=torch.float64), stat / 2))


def test_chi_square_p_value_is_pearsons():
    e = torch.tensor([1000.0, 8000.0, 2000.0, 6000.0, 3000.0])
    assert chi_square_p_value(e, e) == 1.0
    # scipy.stats.chisquare's p-values for these counts
    assert chi_square_p_value(torch.tensor([1010.0, 7950.0, 2040.0, 6000.0, 3000.0]), e) == pytest.approx(0.8760363177042725)
    assert chi_square_p_value(torch.tensor([900.0, 8200.0, 2040.0, 5900.0, 2960.0]), e) == pytest.approx(0.0012340980408667936)


@pytest.mark.parametrize("method", ["multinomial", "systematic"])
def test_resampling_frequencies_match_the_weights(method):
    w = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    g = torch.Generator().manual_seed(derive_seed(99, 1))
    draws, n = 4000, 5
    idx = torch.tensor([resample_indices(w, n, g, method) for _ in range(draws)])  # draws x n
    c = torch.nn.functional.one_hot(idx, 5).sum(1).float()  # each draw's copies of each index
    if method == "systematic":  # each index gets floor(n·w) or ceil(n·w) copies
        assert torch.all(c >= torch.floor(n * w)) and torch.all(c <= torch.ceil(n * w))
    counts = c.sum(0)
    expected = (w * draws * n).tolist()
    if method == "multinomial":
        assert chi_square_p_value(counts, torch.tensor(expected)) > 1e-3
    else:
        torch.testing.assert_close(counts / (draws * n), w, atol=0.01, rtol=0)
    # unnormalised weights are the same distribution, and a seeded generator repeats itself
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert resample_indices(w * 7, 16, g1, method) == resample_indices(w, 16, g2, method)


def test_ess():
    assert effective_sample_size(torch.zeros(8)) == pytest.approx(8.0)
    assert effective_sample_size(torch.tensor([0.0, -1e9, -1e9])) == pytest.approx(1.0)


def test_particles_need_a_stochastic_sampler():
    with pytest.raises(UnsupportedSamplerError, match="stochastic"):
        _run("particles", {}, "euler", 0)


def test_particles_resample_towards_the_reward():
    # with a strong potential every particle at the end descends from few ancestors, and the final
    # best beats the best of the same particles without resampling (random search at the same seeds)
    host = gaussian_host(sampler="euler_ancestral", steps=12)
    r, f = run_strategy(Strategy("particles", {"lam": 200.0, "interval": 2, "ess_threshold": 0.0}), host,
                        candidates=16, top_k=1, seed=2)
    # each particle costs a generation (12) plus an x0 probe at each of the 5 resampling steps: 11 fit in 192
    assert r.settings["particles"] == 11
    assert r.settings["resampled_at"] == [2, 4, 6, 8, 10] and r.settings["reward_evaluations"] == 11 * 5
    assert r.nfe_total == 11 * (12 + 5) == host.nfe_rows and r.settings["probe_nfe"] == 11 * 5
    assert "only 5 were left" in r.notes[0]
    assert r.settings["distinct_lineages"] < 11
    origins = {c.noise_id.split("from seed ")[1] for c in r.candidates}
    assert len(origins) == r.settings["distinct_lineages"]
    base, _ = run_strategy(Strategy("random"), gaussian_host(sampler="euler_ancestral", steps=12), candidates=16,
                           top_k=1, seed=2)
    assert r.best.score > base.best.score


# --- evolution ----------------------------------------------------------------------------------

def test_evolution_keeps_its_elites_and_mutates_with_unit_variance():
    host = gaussian_host(steps=6)
    P, E = 6, 2
    report, finalists = evolution_search(host, seed=4, budget_nfe=6 * 22, population=P, elites=E, top_k=3)
    gens = report.settings["generations"]
    assert len(gens) == 1 + 4 and len(gens[-1]) == P  # 6 + 4 + 4 + 4 + 4 = 22 generations' worth
    by = {c.index: c.score for c in report.candidates}
    for prev, nxt in zip(gens, gens[1:]):
        elites = sorted(prev, key=lambda i: (-by[i], i))[:E]
        assert nxt[:E] == elites
        assert all(i not in prev for i in nxt[E:])  # the rest are new children
    assert report.nfe_total == 132 == host.nfe_rows and len(report.candidates) == 22
    assert [f.result.index for f in finalists] == [c.index for c in report.ranked()[:3]]
    # a child's noise: √(1−β²)·parent + β·ε stays unit variance
    child = finalists[0].noise
    assert 0.8 < float(child.std()) < 1.2


# --- every algorithm --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,params,sampler", STRATEGIES)
def test_deterministic_independent_of_micro_batch_and_within_budget(name, params, sampler):
    runs = [_run(name, params, sampler, mb) for mb in (0, 1, 5)]
    host0, rep0, fin0 = runs[0]
    assert rep0.nfe_total <= 12 * 12 and rep0.nfe_total == host0.nfe_rows
    if name == "paths":  # fixed at 2 paths: it spends what they need, and says so
        assert "paths is fixed at 2" in rep0.settings["unspent_reason"] and rep0.notes
    else:  # within one generation of the budget
        assert rep0.nfe_total >= 12 * 12 - 12
    for host, rep, fin in runs[1:]:
        assert rep.to_dict() == rep0.to_dict()
        assert len(fin) == len(fin0) == 2
        for a, b in zip(fin, fin0):
            assert torch.equal(a.latent, b.latent) and a.seed == b.seed
            assert (a.noise is None and b.noise is None) or torch.equal(a.noise, b.noise)
    other = _run(name, params, sampler, 0, seed=8)[1]
    assert other.to_dict()["candidates"] != rep0.to_dict()["candidates"]


@pytest.mark.parametrize("name,params,sampler", STRATEGIES)
@pytest.mark.parametrize("budget", [12 * 3, 12 * 7 + 5, 12 * 30])
def test_never_exceeds_the_budget(name, params, sampler, budget):
    try:
        host, rep, fin = _run(name, params, sampler, 0, budget=budget)
    except ValueError as e:  # a budget below the algorithm's minimum is refused up front, spending nothing
        assert "too small" in str(e)
        return
    assert rep.nfe_total == host.nfe_rows <= budget
    assert rep.trace[-1]["nfe"] == rep.nfe_total and all(t["nfe"] <= budget for t in rep.trace)
    assert [t["nfe"] for t in rep.trace] == sorted(t["nfe"] for t in rep.trace)


@pytest.mark.parametrize("name,params,sampler", [s for s in STRATEGIES if s[0] in ("random", "zero_order", "evolution")])
def test_finalists_replay_from_their_noise_and_seed(name, params, sampler):
    host, rep, fin = _run(name, params, sampler, 0)
    for f in fin:
        state, _ = host.sample(host.start(f.noise), host.steps, [f.seed])
        assert torch.equal(state.latent, f.latent)
        assert float(host.score(state.latent)[0]) == f.result.score


def test_random_strategy_is_best_of_n_with_seeds_base_plus_i():
    host, rep, fin = _run("random", {}, "euler", 0, candidates=6, top_k=1)
    assert [c.seed for c in rep.candidates] == [7 + i for i in range(6)]
    assert rep.nfe_total == 6 * 12 and fin[0].seed == rep.best.seed
    assert torch.equal(fin[0].noise, candidate_noise((1, 4, 8, 8), rep.best.seed))


# --- coarse to fine ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,params", [("random", {}), ("zero_order", {}), ("evolution", {"population": 4})])
def test_coarse_to_fine_rerenders_at_full_steps(name, params):
    host, rep, fin = _run(name, params, "euler", 0, coarse=4, candidates=10, rerender=3)
    assert rep.algorithm == f"coarse_to_fine({name})"
    assert rep.settings["coarse_report"]["nfe_total"] == rep.settings["coarse_nfe"]
    assert rep.nfe_total == rep.settings["coarse_nfe"] + 3 * 12 == host.nfe_rows <= 10 * 12
    assert len(rep.candidates) == 3 and len(rep.settings["coarse_scores"]) == 3
    full, _ = host.sample(host.start(fin[0].noise), host.steps, [fin[0].seed])
    assert torch.equal(full.latent, fin[0].latent) and fin[0].result.score == rep.best.score
    # the coarse host really had fewer steps: its candidates each cost 4 NFEs
    assert {c["nfe"] for c in rep.settings["coarse_report"]["candidates"]} == {4}


@pytest.mark.parametrize("name,params,sampler", [
    ("paths", {"paths": 2, "noises_per_path": 2, "start_level": 0.4, "forward": 0.5, "backward": 0.7}, "euler"),
    ("particles", {"particles": 4, "interval": 3}, "euler_ancestral")])
def test_recipes_replay_path_algorithms_exactly(name, params, sampler):
    """A path/particle finalist's recipe re-makes it bit for bit on the same
    schedule (so on a finer one it is the same lineage at full steps)."""
    from search.coarse_to_fine import replay, replay_cost
    host, rep, fin = _run(name, params, sampler, 0, candidates=8, top_k=2)
    for f in fin:
        again = gaussian_host(sampler=sampler, steps=12)
        lat, nfe = replay(again, f.recipe)
        assert torch.equal(lat, f.latent)
        assert nfe == replay_cost(again, f.recipe) == again.nfe_rows


@pytest.mark.parametrize("name,params,sampler", [
    ("paths", {"paths": 2, "noises_per_path": 2, "start_level": 0.4, "forward": 0.5, "backward": 0.7}, "euler"),
    ("particles", {"particles": 4, "interval": 2}, "euler_ancestral")])
def test_coarse_to_fine_replays_path_algorithms_at_full_steps(name, params, sampler):
    host, rep, fin = _run(name, params, sampler, 0, coarse=4, candidates=12, top_k=1)
    assert rep.algorithm == f"coarse_to_fine({name})"
    assert rep.nfe_total == host.nfe_rows <= 12 * 12  # never over the budget
    assert {c["nfe"] for c in rep.settings["coarse_report"]["candidates"]} <= set(range(1, 4 * 3 + 1))
    full = gaussian_host(sampler=sampler, steps=12)
    from search.coarse_to_fine import replay
    lat, _ = replay(full, fin[0].recipe)  # the finalist is its lineage at the full 12 steps
    assert torch.equal(lat, fin[0].latent)
    assert rep.settings["rerender"] >= 1 and fin[0].result.score == rep.best.score


def test_strategy_refusals():
    with pytest.raises(ValueError, match="unknown search algorithm"):
        _run("beam", {}, "euler", 0)
    with pytest.raises(ValueError, match="unknown parameter"):
        _run("zero_order", {"lambda": 3}, "euler", 0)
    host = ToyHost(GaussianToy(torch.zeros(1, 4, 8, 8), 0.5), lambda z: z.flatten(1).mean(1), sampler="euler")
    host.sampler_name = "dpmpp_2m"
    with pytest.raises(UnsupportedSamplerError, match="multistep"):
        run_strategy(Strategy("paths"), host, candidates=8, top_k=1, seed=0)


def test_search_finds_better_samples_than_no_search():
    # on the toy objective every algorithm's winner beats the single sample of the base seed
    base = _run("random", {}, "euler", 0, candidates=1, top_k=1)[1].best.score
    for name, params, sampler in STRATEGIES:
        if sampler == "euler":
            assert _run(name, params, sampler, 0, candidates=24, top_k=1)[1].best.score > base, name


# --- issue #13: the fixes, pinned ------------------------------------------------------------------

def _constant_host(**kw):
    host = gaussian_host(**kw)
    host.scorer = lambda z: torch.zeros(z.shape[0])
    return host


def test_particles_score_the_x0_prediction_of_the_state_they_return():
    host = gaussian_host(sampler="euler_ancestral", steps=10)
    probes, scored = [], []
    orig_probe, orig_score = host.predict_x0, host.score

    def probe(state, seeds):
        x0 = orig_probe(state, seeds)
        probes.append((state.index, host.x_of(state).clone(), x0.clone()))
        return x0

    def score(latents):
        scored.append(latents.clone())
        return orig_score(latents)
    host.predict_x0, host.score = probe, score
    returned = []
    orig_sample = host.sample

    def sample(state, end, seeds):
        out = orig_sample(state, end, seeds)
        returned.append((end, host.x_of(out[0]).clone()))
        return out
    host.sample = sample
    r, _ = particle_search(host, seed=5, budget_nfe=4 * 13, interval=3, lam=1.0, ess_threshold=0.0)
    assert r.settings["resampling_steps"] == [3, 6, 9] and r.settings["particles"] == 4  # 4 x (10 + 3 probes)
    assert [i for i, _, _ in probes] == [3, 6, 9]
    for (i, x_probe, x0), (end, x_returned), s in zip(probes, returned, scored):
        assert end == i
        torch.testing.assert_close(x_probe, x_returned)  # the probe sees the returned state, fresh noise included
        torch.testing.assert_close(s, x0)                # and that probe's x0 is what the verifier scores
        # ...which is the model's prediction at that state, not the previous step's
        torch.testing.assert_close(x0, host.denoiser(x_returned, float(host.sigmas[i])))
    assert r.nfe_total == 4 * (10 + 3) == host.nfe_rows and r.settings["probe_nfe"] == 12


def test_particles_count_their_distinct_lineages():
    host = gaussian_host(sampler="euler_ancestral", steps=10)
    greedy, _ = particle_search(host, seed=5, budget_nfe=16 * 12, interval=5, lam=50.0, ess_threshold=0.0)
    mild, _ = particle_search(gaussian_host(sampler="euler_ancestral", steps=10), seed=5, budget_nfe=16 * 12,
                              interval=5, lam=0.0, ess_threshold=0.0)
    k = greedy.settings["particles"]
    assert k == 17 and greedy.settings["distinct_lineages"] < 6  # 192 // (10 steps + 1 probe)
    # lambda 0: uniform weights; systematic resampling then keeps exactly one copy of every particle
    assert mild.settings["resampling"] == "systematic" and mild.settings["distinct_lineages"] == k
    assert greedy.settings["lineages_alive"][-1] == greedy.settings["distinct_lineages"]



def test_particles_standardized_temperature_ignores_the_verifier_scale():
    runs = []
    for scale in (1.0, 1000.0):
        host = gaussian_host(sampler="euler_ancestral", steps=10)
        inner = host.scorer
        host.scorer = lambda z, inner=inner, scale=scale: inner(z) * scale
        r, _ = particle_search(host, seed=9, budget_nfe=8 * 12, interval=3, lam=1.0)
        runs.append(r)
    assert runs[0].settings["resampled_at"] == runs[1].settings["resampled_at"]
    assert [c.noise_id for c in runs[0].candidates] == [c.noise_id for c in runs[1].candidates]


def test_particles_below_two_particles_run_without_resampling_and_say_so():
    host = gaussian_host(sampler="euler_ancestral", steps=10)
    r, _ = particle_search(host, seed=1, budget_nfe=21, interval=5)
    assert r.settings["particles"] == 2 and r.settings["resampling_steps"] == [] and r.nfe_total == 20
    assert "without resampling" in r.notes[0]


def test_zero_order_step_grows_while_no_neighbour_wins_and_resets_after_a_win(monkeypatch):
    import search.zero_order as zo
    calls = []
    orig = zo.neighbour

    def spy(pivot, cosine, seed):
        calls.append(cosine)
        return orig(pivot, cosine, seed)
    monkeypatch.setattr(zo, "neighbour", spy)
    # a constant verifier: no neighbour ever beats the pivot (a tie keeps it), so the angle grows each round
    host = _constant_host(steps=4)
    r, f = zo.zero_order_search(host, seed=2, budget_nfe=4 * (3 + 2 * 5), neighbours=2, cosine=0.95,
                                start_noises=3, step_growth=2.0)
    theta = math.acos(0.95)
    want = [math.cos(min(math.pi / 2, theta * 2 ** r)) for r in range(5)]
    assert r.settings["cosines"] == pytest.approx(want) and r.settings["pivot_moves"] == 0
    assert calls == pytest.approx([c for c in want for _ in range(2)])
    assert want[-1] == pytest.approx(0.0, abs=1e-12)  # capped at 90 degrees
    assert f[0].result.index == 0 and f[0].seed == 2  # ties: the lowest candidate index
    # a verifier every new candidate beats: each round wins, so the step stays at the base angle
    host = gaussian_host(steps=4)
    count = iter(range(10**6))
    host.scorer = lambda z: torch.tensor([float(next(count)) for _ in range(z.shape[0])])
    r, _ = zo.zero_order_search(host, seed=2, budget_nfe=4 * 11, neighbours=2, cosine=0.9, start_noises=1,
                                step_growth=2.0)
    assert r.settings["cosines"] == pytest.approx([0.9] * 5) and r.settings["pivot_moves"] == 5


def test_zero_order_starts_from_the_best_of_its_start_noises():
    host = gaussian_host(steps=6)
    r, _ = zero_order_search(host, seed=11, budget_nfe=6 * 10, start_noises=4)
    starts = r.candidates[:4]
    assert [c.seed for c in starts] == [11, 12, 13, 14]  # random search's first candidates (KSampler-replayable)
    best = max(starts, key=lambda c: (c.score, -c.index))
    assert r.trace[0]["pivot"] == best.score
    assert f"pivot zo start {best.index}" in r.candidates[4].noise_id
    # a budget below the start noises is a random search over what fits, and says so
    r, _ = zero_order_search(gaussian_host(steps=6), seed=11, budget_nfe=6 * 3, start_noises=4)
    assert r.settings["start_noises"] == 3 and r.settings["rounds"] == 0 and "random search" in r.notes[0]


@pytest.mark.parametrize("prediction", ["eps", "flow"])
@pytest.mark.parametrize("steps", [4, 6, 10, 20, 30])
@pytest.mark.parametrize("levels", [{}, {"start_level": 0.11, "forward": 0.78, "backward": 0.81},
                                    {"start_level": 0.9, "forward": 0.05, "backward": 0.1}])
def test_paths_always_has_a_search_round_from_two_generations(prediction, steps, levels):
    for gens in (2, 3, 4, 8):
        for extra in (0, steps // 2):
            budget = gens * steps + extra
            host = gaussian_host(prediction=prediction, steps=steps)
            r, f = paths_search(host, seed=3, budget_nfe=budget, min_generations=2, **levels)
            assert r.settings["rounds"], (steps, levels, budget)
            assert r.nfe_total == host.nfe_rows <= budget
            if r.settings["rounds"][-1]["end_index"] < steps:  # a later round did not fit: the report says so
                assert "finished_without_search_from_index" in r.settings and "without search" in r.notes[-1]
            elif r.nfe_total < budget:
                assert r.settings["unspent_reason"]
            assert len(f) == 1 and f[0].recipe is not None


def test_paths_below_two_generations_says_it_did_not_search():
    host = gaussian_host(steps=10)
    params = {"min_generations": 1}  # search at any budget (the default falls back under four generations)
    r, _ = run_strategy(Strategy("paths", params, budget_nfe=12), host, candidates=1, top_k=1, seed=0)
    assert r.settings["rounds"] == [] and r.nfe_total == 10
    assert any("no search round" in n for n in r.notes) and any("spent 10 of the 12" in n for n in r.notes)
    # under four generations it searches, but the report says random search did better there
    r, _ = run_strategy(Strategy("paths", params, budget_nfe=30), gaussian_host(steps=10), candidates=1, top_k=1,
                        seed=0)
    assert r.settings["rounds"] and any("under four generations" in n for n in r.notes)
    r, _ = run_strategy(Strategy("paths", {}, budget_nfe=40), gaussian_host(steps=10), candidates=1, top_k=1, seed=0)
    assert not any("under four generations" in n for n in r.notes)


@pytest.mark.parametrize("budget", [10, 12, 20, 35])
def test_paths_under_four_generations_is_random_search_with_recipes(budget):
    """At its defaults, paths under four generations runs random search's candidates (it measured below random
    search at two generations), says so, and its finalists still carry recipes (coarse-to-fine replays them)."""
    from search.coarse_to_fine import replay
    rand, rfin = run_strategy(Strategy("random", {}, budget_nfe=budget), gaussian_host(steps=10), candidates=1,
                              top_k=1, seed=4)
    rep, fin = run_strategy(Strategy("paths", {}, budget_nfe=budget), gaussian_host(steps=10), candidates=1,
                            top_k=1, seed=4)
    assert rep.algorithm == "paths" and rep.settings["fallback"] == "random"
    assert [(c.seed, c.score) for c in rep.candidates] == [(c.seed, c.score) for c in rand.candidates]
    assert torch.equal(fin[0].latent, rfin[0].latent) and fin[0].stock_node == "ksampler"
    assert "random search" in rep.notes[0] and "under 4 generations" in rep.notes[0]
    lat, _ = replay(gaussian_host(steps=10), fin[0].recipe)
    assert torch.equal(lat, fin[0].latent)
    r40, _ = run_strategy(Strategy("paths", {}, budget_nfe=40), gaussian_host(steps=10), candidates=1, top_k=1,
                          seed=4)
    assert "fallback" not in r40.settings and r40.settings["rounds"]


def test_paths_levels_are_relative_to_the_users_schedule():
    from search.paths import relative_levels, round_plan
    host = gaussian_host(steps=10)
    rel = relative_levels(host)
    assert rel[0] == pytest.approx(1.0) and rel[-1] == 0.0
    # an img2img-like schedule that starts part-way (the last 6 steps of a 15-step one) is searched over its span
    part = gaussian_host(steps=15)
    part.sigmas = part.sigmas[9:]
    s, rounds = round_plan(part, 0.6, 0.1, 0.3)
    assert 1 <= s <= 5 and rounds and rounds[-1][1] == 6
    assert all(f < b and f >= 0 for f, b in rounds)


@pytest.mark.parametrize("budget_gens,want", [(2, 2), (4, 2), (9, 3), (30, 10)])
def test_evolution_population_comes_from_the_budget(budget_gens, want):
    host = gaussian_host(steps=5)
    r, _ = evolution_search(host, seed=1, budget_nfe=5 * budget_gens, generations=3, min_population=2)
    assert r.settings["population"] == want and r.nfe_total == 5 * budget_gens == host.nfe_rows


@pytest.mark.parametrize("budget_gens,want", [(2, 2), (4, 4), (8, 8), (9, 8), (16, 8), (30, 10)])
def test_evolution_draws_a_fresh_pool_of_min_population_first(budget_gens, want):
    host = gaussian_host(steps=5)
    r, _ = evolution_search(host, seed=1, budget_nfe=5 * budget_gens)
    assert r.settings["population"] == want and r.nfe_total == 5 * budget_gens == host.nfe_rows
    assert [c.seed for c in r.candidates[:want]] == [1 + i for i in range(want)]  # random search's candidates


@pytest.mark.parametrize("name", ["zero_order", "evolution"])
@pytest.mark.parametrize("budget_gens", [2, 4, 8])
def test_small_budgets_are_exactly_random_search_and_say_so(name, budget_gens):
    """Up to 8 generations zero-order and evolution draw only fresh noises: random search's candidates, scores
    and winner, so a poor first pool is never exploited (the issue's losses at 4 and 8 generations)."""
    rand, rfin = run_strategy(Strategy("random", {}, budget_nfe=6 * budget_gens), gaussian_host(steps=6),
                              candidates=1, top_k=1, seed=9)
    rep, fin = run_strategy(Strategy(name, {}, budget_nfe=6 * budget_gens), gaussian_host(steps=6), candidates=1,
                            top_k=1, seed=9)
    assert [(c.seed, c.score) for c in rep.candidates] == [(c.seed, c.score) for c in rand.candidates]
    assert fin[0].result.seed == rfin[0].result.seed and torch.equal(fin[0].latent, rfin[0].latent)
    assert any("random search" in n for n in rep.notes)
    # one generation more and they exploit
    more, _ = run_strategy(Strategy(name, {}, budget_nfe=6 * 9), gaussian_host(steps=6), candidates=1, top_k=1,
                           seed=9)
    assert any(c.seed is None for c in more.candidates)


@pytest.mark.parametrize("name,sampler", [("random", "euler"), ("zero_order", "euler"), ("paths", "euler"),
                                          ("particles", "euler_ancestral"), ("evolution", "euler"), ("tree", "euler")])
def test_ties_go_to_the_lowest_candidate_index(name, sampler):
    host = _constant_host(sampler=sampler, steps=6)
    params = {"ess_threshold": 0.5} if name == "particles" else {}  # equal weights: ESS = k, never resampled
    r, f = run_strategy(Strategy(name, params, budget_nfe=6 * 12), host, candidates=1, top_k=2, seed=4)
    assert [c.index for c in r.ranked()] == sorted(c.index for c in r.candidates)
    assert [x.result.index for x in f] == [0, 1]
    if name == "zero_order":
        assert r.settings["pivot_moves"] == 0
    if name == "paths":
        assert all(rd["kept_rows"] == list(range(r.settings["paths"])) for rd in r.settings["rounds"])
    if name == "particles":  # equal rewards: equal weights, never resampled, every lineage survives
        assert r.settings["resampled_at"] == [] and r.settings["distinct_lineages"] == r.settings["particles"]


@pytest.mark.parametrize("name,sampler", [("random", "euler"), ("zero_order", "euler"), ("paths", "euler"),
                                          ("particles", "euler_ancestral"), ("evolution", "euler"), ("tree", "euler"),
                                          ("tree", "euler_ancestral")])
@pytest.mark.parametrize("budget", [20, 35, 40, 80, 160, 640])
def test_defaults_spend_the_budget_or_say_why(name, sampler, budget):
    host = gaussian_host(sampler=sampler, steps=10)
    r, _ = run_strategy(Strategy(name, {}, budget_nfe=budget), host, candidates=1, top_k=1, seed=6)
    assert r.nfe_total == host.nfe_rows <= budget
    if r.nfe_total < budget:
        assert r.notes and f"spent {r.nfe_total} of the {budget}-NFE budget" in r.notes[-1]
        if name == "random":  # random search states no reason of its own: the generic one (a whole step)
            assert "the rest holds no further full step of the algorithm" in r.notes[-1]
        else:
            assert r.settings["unspent_reason"] and r.settings["unspent_reason"] in r.notes[-1]
    if budget >= 40 and name == "paths":  # under four generations paths is random search (see above)
        assert r.settings["rounds"]
