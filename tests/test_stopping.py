"""Early stopping (search/stopping.py) for every strategy, on the toy host."""
import math

import torch

import pytest

from search import StopRule, Stopper, Strategy, run_strategy
from search.random_search import random_search
from toy_host import gaussian_host

pytestmark = pytest.mark.core

STRATS = [
    ("random", {}, "euler"),
    ("zero_order", {"neighbours": 3}, "euler"),
    ("evolution", {"population": 4, "elites": 1}, "euler"),
    ("paths", {"paths": 4, "noises_per_path": 2}, "euler"),
    ("particles", {"particles": 8, "interval": 2}, "euler_ancestral"),
]


def test_stopper_fires_exactly_at_the_stated_condition():
    s = Stopper(StopRule(target=0.5))
    assert [s.see(v) for v in (0.1, 0.4, 0.49)] == [False] * 3
    assert s.see(0.5) and s.at == 4 and "target" in s.reason
    assert s.see(-9.0)  # stays fired
    # plateau: a rise counts only above min_improvement over the best at the last counted rise
    s = Stopper(StopRule(patience=3, min_improvement=0.1))
    seq = [1.0, 1.05, 1.09, 1.2, 1.25, 1.3, 1.29]
    fired = [s.see(v) for v in seq]
    # 1.0 rise; 1.05, 1.09 (< 1.1): 2 without; 1.2 (> 1.1): rise; 1.25, 1.3 (< 1.3 exactly? 1.3 > 1.3 no), 1.29: 3
    assert fired == [False, False, False, False, False, False, True]
    assert s.at == 7 and s.best == pytest.approx(1.3)
    # creeping rises below min_improvement do not reset patience
    s = Stopper(StopRule(patience=4, min_improvement=0.05))
    assert [s.see(1 + 0.01 * i) for i in range(5)] == [False, False, False, False, True]
    # never before `minimum` observations (the top_k finalists)
    s = Stopper(StopRule(target=0.0), minimum=3)
    assert [s.see(5.0) for _ in range(3)] == [False, False, True]
    # no rule: never
    s = Stopper(None)
    assert not any(s.see(v) for v in range(100)) and s.report(10, 10) is None


@pytest.mark.parametrize("bad", [dict(target=math.nan), dict(patience=-1), dict(min_improvement=-0.1)])
def test_stop_rule_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="early stopping"):
        StopRule(**bad)


def _scores_in_order(report):
    return [c.score for c in sorted(report.candidates, key=lambda c: c.index)]


@pytest.mark.parametrize("name,params,sampler", STRATS)
def test_every_strategy_stops_on_target_and_saves_nfes(name, params, sampler):
    host = gaussian_host(sampler=sampler, steps=8)
    full, _ = run_strategy(Strategy(name, params, budget_nfe=8 * 40), host, candidates=1, top_k=1, seed=5)
    # a target the full search reaches part-way: its median trace value
    bests = [t["best"] for t in full.trace]
    target = sorted(bests)[len(bests) // 2]
    host = gaussian_host(sampler=sampler, steps=8, micro_batch=2)  # random search: a micro-batch of 2 candidates
    rep, fin = run_strategy(Strategy(name, params, budget_nfe=8 * 40, stop=StopRule(target=target)), host,
                            candidates=1, top_k=1, seed=5)
    es = rep.settings["early_stop"]
    assert es["stopped"] and "target" in es["reason"]
    assert rep.nfe_total == host.nfe_rows < full.nfe_total
    assert es["nfe_saved"] == 8 * 40 - rep.nfe_total > 0
    assert any("stopped early" in n for n in rep.notes)
    assert len(fin) == 1
    # deterministic for a seed
    again, _ = run_strategy(Strategy(name, params, budget_nfe=8 * 40, stop=StopRule(target=target)),
                            gaussian_host(sampler=sampler, steps=8, micro_batch=2), candidates=1, top_k=1, seed=5)
    assert _scores_in_order(again) == _scores_in_order(rep) and again.nfe_total == rep.nfe_total


@pytest.mark.parametrize("name,params,sampler", STRATS[:3])
def test_candidate_strategies_stop_at_the_first_candidate_that_reaches_the_target(name, params, sampler):
    host = gaussian_host(sampler=sampler, steps=8)
    full, _ = run_strategy(Strategy(name, params, budget_nfe=8 * 30), host, candidates=1, top_k=1, seed=9)
    order = _scores_in_order(full)
    target = sorted(order)[-3]  # the third best: reached before the end
    first = next(i for i, s in enumerate(order) if s >= target)
    rep, _ = run_strategy(Strategy(name, params, budget_nfe=8 * 30, stop=StopRule(target=target)),
                          gaussian_host(sampler=sampler, steps=8, micro_batch=1), candidates=1, top_k=1, seed=9)
    assert rep.settings["early_stop"]["at"] == first + 1
    got = _scores_in_order(rep)
    assert got[:first + 1] == order[:first + 1]   # the same candidates up to the stop
    if name == "random":
        assert len(got) == first + 1 and rep.nfe_total == 8 * (first + 1)
    else:  # zero-order / evolution finish the round (generation) the stop falls in
        assert first + 1 <= len(got) < len(order)


def test_random_search_stop_never_depends_on_the_micro_batch():
    runs = []
    for mb in (1, 3, 0):
        host = gaussian_host(steps=6, micro_batch=mb)
        rep, fin = random_search(host, seed=11, budget_nfe=6 * 20, top_k=2, stop=StopRule(patience=4))
        runs.append((_scores_in_order(rep), rep.settings["early_stop"]["at"], [f.result.index for f in fin]))
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][1] < 20


@pytest.mark.parametrize("rule", [StopRule(patience=4), StopRule(patience=3, min_improvement=0.01),
                                  StopRule(target=-0.39), StopRule(patience=6, target=-0.39)])
def test_random_search_stop_pays_for_no_candidate_it_drops_at_any_micro_batch(rule):
    """The stop decision and the micro-batch fit together: a call never holds more candidates than the rule
    certainly uses, so every micro-batch size spends exactly the NFEs of one candidate per call."""
    runs = []
    for mb in (1, 3, 8, 64, 0):
        host = gaussian_host(steps=6, micro_batch=mb)
        rep, fin = random_search(host, seed=11, budget_nfe=6 * 40, top_k=1, stop=rule)
        seen = len(rep.candidates)
        assert host.nfe_rows == rep.nfe_total == 6 * seen, mb   # nothing sampled beyond what was used
        assert not any("left out" in n for n in rep.notes), mb
        runs.append((_scores_in_order(rep), rep.nfe_total, fin[0].result.index))
    assert all(r == runs[0] for r in runs) and runs[0][1] < 6 * 40  # the stop fired, at the same candidate


def test_stopper_horizon_is_what_the_rule_certainly_uses():
    s = Stopper(StopRule(patience=4))
    assert s.horizon() == 5          # the first observation is a rise, then 4 without one
    s.see(1.0)
    assert s.horizon() == 4
    s.see(0.5)
    s.see(0.4)
    assert s.horizon() == 2
    s.see(2.0)                       # a rise: patience starts over
    assert s.horizon() == 4
    for _ in range(4):
        s.see(0.0)
    assert s.fired and s.horizon() == 0
    t = Stopper(StopRule(target=1.0), minimum=3)
    assert t.horizon() == 3
    t.see(0.0)
    t.see(0.0)
    t.see(0.0)
    assert t.horizon() == 1          # any candidate may reach a target
    assert Stopper(None).horizon() is None


def test_plateau_stops_after_patience_candidates_without_a_rise():
    host = gaussian_host(steps=6)
    rep, _ = random_search(host, seed=2, budget_nfe=6 * 64, stop=StopRule(patience=5, min_improvement=0.0))
    s = _scores_in_order(rep)
    best, since = -math.inf, 0
    for i, v in enumerate(s):
        since = 0 if v > best else since + 1
        best = max(best, v)
        if since == 5:
            assert i == len(s) - 1
            break
    else:
        pytest.fail("the plateau rule never held, but the search stopped")
    assert rep.settings["early_stop"]["reason"].startswith("the best score rose by no more than")


def test_no_rule_spends_the_budget_and_reports_nothing():
    host = gaussian_host(steps=6)
    rep, _ = run_strategy(Strategy("zero_order", budget_nfe=6 * 10), host, candidates=1, top_k=1, seed=1)
    assert rep.nfe_total == 60 and "early_stop" not in rep.settings


def test_relative_verifier_refuses_early_stopping():
    host = gaussian_host(steps=6)
    host.relative = True
    with pytest.raises(ValueError, match="relative"):
        run_strategy(Strategy("random", stop=StopRule(target=1.0)), host, candidates=4, top_k=1, seed=1)


def test_coarse_to_fine_keeps_the_rule():
    host = gaussian_host(steps=8)
    rep, fin = run_strategy(Strategy("random", budget_nfe=8 * 20, coarse_steps=4, stop=StopRule(patience=2)),
                            host, candidates=1, top_k=1, seed=3)
    assert rep.settings["early_stop"]["stopped"] and len(fin) == 1


# --- successive halving (search/halving.py) ---------------------------------------------------

from search.halving import candidates_for_budget, cost_of, halving_search, plan_cost, spearman, survivors  # noqa: E402


def test_spearman_matches_a_hand_computation():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = ranks differ: [1,2,3,4] vs [2,1,4,3] -> 1 - 6*4/(4*15) = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_survivors_keep_the_stated_fraction_and_never_fewer_than_top_k():
    assert survivors(30, 0.5, 2, 1) == [30, 15, 8]
    assert survivors(10, 0.25, 3, 2) == [10, 3, 2, 2]
    assert survivors(7, 0.5, 1, 1) == [7, 4]


@pytest.mark.parametrize("budget_gens", [2, 3, 5, 8, 16, 33])
@pytest.mark.parametrize("micro_batch", [0, 3])
def test_halving_spends_at_most_its_budget_and_keeps_the_right_fraction(budget_gens, micro_batch):
    host = gaussian_host(steps=10, micro_batch=micro_batch)
    budget = 10 * budget_gens
    rep, fin = halving_search(host, seed=4, budget_nfe=budget, top_k=1)
    n = rep.settings["started"]
    pts = rep.settings["prune_indices"]
    live = [s["live"] for s in rep.settings["stages"]] + [rep.settings["finished"]]
    assert rep.nfe_total == host.nfe_rows == cost_of(host, live, pts) <= budget
    assert plan_cost(host, n + 1, 0.5, pts, 1) > budget  # the most candidates the budget holds
    assert n == candidates_for_budget(host, budget, 0.5, pts, 1) >= budget_gens  # never fewer than random search
    planned = survivors(n, 0.5, len(pts), 1)
    assert live[:-1] == planned[:-1] and planned[-1] <= live[-1] <= live[-2]
    # the last stage took what the budget had left: one more finisher would not fit (or all finished)
    assert live[-1] == live[-2] or rep.nfe_total + host.nfe(pts[-1], 10) > budget
    for r, stage in enumerate(rep.settings["stages"]):  # the kept ones are the best x0 scores of the stage
        order = sorted(range(len(stage["scores"])), key=lambda j: (-stage["scores"][j], j))
        assert stage["kept"] == [stage["candidates"][j] for j in order[:live[r + 1]]]
    assert len(rep.candidates) == rep.settings["finished"] and len(fin) == 1


def test_halving_winner_is_exactly_its_seeds_full_run():
    host = gaussian_host(steps=10)
    rep, fin = halving_search(host, seed=21, budget_nfe=10 * 12, top_k=2)
    assert [f.stock_node for f in fin] == ["ksampler", "ksampler"]
    for f in fin:
        ref = gaussian_host(steps=10)
        state, _ = ref.sample(ref.start(ref.initial_noise([f.result.seed])), 10, [f.result.seed])
        assert torch.equal(state.latent, f.latent)  # the same as a random search candidate of that seed
        assert torch.equal(f.noise, ref.initial_noise([f.result.seed]))


def test_halving_is_micro_batch_independent_and_reports_rank_correlation():
    a = halving_search(gaussian_host(steps=10, micro_batch=0), seed=8, budget_nfe=200, top_k=1)[0]
    b = halving_search(gaussian_host(steps=10, micro_batch=2), seed=8, budget_nfe=200, top_k=1)[0]
    assert [(c.index, c.score) for c in a.candidates] == [(c.index, c.score) for c in b.candidates]
    rho = a.settings["rank_correlation"]
    assert len(rho) == len(a.settings["prune_indices"]) and all(r is None or -1 <= r <= 1 for r in rho)


def test_halving_refuses_bad_settings_and_multistep_samplers():
    host = gaussian_host(steps=10)
    with pytest.raises(ValueError, match="first_level"):
        run_strategy(Strategy("halving", {"rounds": 2, "first_level": 0.3, "last_level": 0.6}), host, candidates=4,
                     top_k=1, seed=0)
    with pytest.raises(ValueError, match="too small"):
        halving_search(host, seed=0, budget_nfe=5, top_k=1)
    from search import UnsupportedSamplerError
    host.sampler_name = "dpmpp_2m"
    with pytest.raises(UnsupportedSamplerError):
        halving_search(host, seed=0, budget_nfe=100, top_k=1)


def test_halving_early_stop_finishes_only_top_k():
    host = gaussian_host(steps=10)
    rep, fin = run_strategy(Strategy("halving", budget_nfe=300, stop=StopRule(target=-1e9)), host, candidates=1,
                            top_k=1, seed=2)
    assert rep.settings["early_stop"]["stopped"] and rep.settings["finished"] == 1
    assert rep.nfe_total < 300 and len(rep.settings["stages"]) == 1
