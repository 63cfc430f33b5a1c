"""Tree search over the sampling trajectory (search/tree.py), on the toy host."""
import pytest
import torch

from search import Strategy, StopRule, UnsupportedSamplerError, run_strategy
from search.coarse_to_fine import replay
from search.tree import branch_points, tree_search
from toy_host import gaussian_host

pytestmark = pytest.mark.core


def _tree(sampler="euler", steps=10, budget=120, micro_batch=0, seed=5, top_k=2, prediction="eps", **params):
    """The tree itself at every budget (min_generations 1: no random-search fallback; tested on its own below)."""
    params.setdefault("min_generations", 1)
    host = gaussian_host(sampler=sampler, steps=steps, micro_batch=micro_batch, prediction=prediction)
    rep, fin = tree_search(host, seed=seed, budget_nfe=budget, top_k=top_k, **params)
    return host, rep, fin


@pytest.mark.parametrize("sampler,prediction", [("euler", "eps"), ("euler", "flow"), ("euler_ancestral", "eps")])
@pytest.mark.parametrize("budget", [10, 20, 35, 80, 160, 400])
def test_tree_spends_at_most_its_budget_and_counts_every_nfe(sampler, prediction, budget):
    host, rep, fin = _tree(sampler, budget=budget, prediction=prediction, top_k=1)
    assert rep.nfe_total == host.nfe_rows <= budget
    assert budget - rep.nfe_total < 10 or rep.settings["unspent_reason"]
    assert [t["nfe"] for t in rep.trace] == sorted(t["nfe"] for t in rep.trace) and rep.trace[-1]["nfe"] == rep.nfe_total
    assert len(rep.candidates) == rep.settings["finished"] >= 1
    # each finished sample's NFEs are its whole lineage: at most a generation plus its re-noised stretches
    assert all(1 <= c.nfe for c in rep.candidates)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
@pytest.mark.parametrize("parallel", [0, 1, 3])
def test_tree_never_depends_on_the_micro_batch(sampler, parallel):
    runs = [_tree(sampler, budget=150, micro_batch=mb, parallel=parallel) for mb in (0, 1, 4)]
    d0 = runs[0][1].to_dict()
    for host, rep, fin in runs[1:]:
        assert rep.to_dict() == d0
        for a, b in zip(fin, runs[0][2]):
            assert torch.equal(a.latent, b.latent) and a.recipe == b.recipe
    assert _tree(sampler, budget=150, seed=6, parallel=parallel)[1].to_dict()["candidates"] != d0["candidates"]


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_every_finalist_replays_from_its_recipe_and_unbranched_ones_from_their_seed(sampler):
    host, rep, fin = _tree(sampler, budget=200, top_k=6)
    kinds = set()
    for f in fin:
        lat, nfe = replay(gaussian_host(sampler=sampler, steps=10), f.recipe)
        assert torch.equal(lat, f.latent)
        if f.stock_node == "ksampler":  # a fresh noise never branched: the stock run of its seed, in one call
            kinds.add("ksampler")
            again = gaussian_host(sampler=sampler, steps=10)
            state, _ = again.sample(again.start(again.initial_noise([f.result.seed])), 10, [f.result.seed])
            assert torch.equal(state.latent, f.latent) and f.result.nfe == 10
            assert torch.equal(f.noise, again.initial_noise([f.result.seed]))
        else:
            kinds.add("lineage")
            assert f.noise is None and f.result.seed is None
    assert rep.settings["replay"]["ksampler"] + rep.settings["replay"]["lineage"] == len(rep.candidates)
    if sampler == "euler":
        assert rep.settings["replay"]["ksampler"] >= 1 and rep.settings["replay"]["lineage"] >= 1
    else:  # a stochastic sampler ran in segments: even unbranched samples are lineages
        assert rep.settings["replay"]["ksampler"] == 0 and kinds == {"lineage"}


def test_fresh_candidates_are_random_searchs_candidates():
    """A never-branched sample of seed base+i is random search's candidate i, bit for bit."""
    host, rep, fin = _tree("euler", budget=160, top_k=1)
    rhost = gaussian_host(steps=10)
    rrep, _ = run_strategy(Strategy("random", {}, budget_nfe=10 * rep.settings["fresh_noises"]), rhost, candidates=1,
                           top_k=1, seed=5)
    by_seed = {c.seed: c.score for c in rrep.candidates}
    fresh = [c for c in rep.candidates if c.seed is not None]
    assert fresh and all(c.score == by_seed[c.seed] for c in fresh)
    assert {c.seed for c in fresh} <= set(range(5, 5 + rep.settings["fresh_noises"]))


def test_children_branch_by_the_sampler_noise_or_by_renoising():
    calls = {}
    for sampler in ("euler", "euler_ancestral"):
        host = gaussian_host(sampler=sampler, steps=10)
        orig = host.renoise
        n = []
        host.renoise = lambda state, index, noise, orig=orig, n=n: n.append(len(state)) or orig(state, index, noise)
        rep, _ = tree_search(host, seed=1, budget_nfe=200, top_k=1)
        calls[sampler] = (sum(n), rep.settings["finished_branched"])
    assert calls["euler"][0] > 0 and calls["euler"][1] > 0            # deterministic: branches re-noise
    assert calls["euler_ancestral"] == (0, calls["euler_ancestral"][1]) and calls["euler_ancestral"][1] > 0


def test_widening_decides_between_fresh_noises_and_branches():
    _, narrow, _ = _tree("euler", budget=300, top_k=1, root_widening=0.0)
    _, wide, _ = _tree("euler", budget=300, top_k=1, root_widening=1.0, widening=0.0)
    # root_widening 0: one root expansion (its screened noises), everything else branches below it
    assert narrow.settings["expansions_by_depth"][0] == 1 and narrow.settings["fresh_noises"] == narrow.settings["screen"]
    assert narrow.settings["finished_branched"] > narrow.settings["finished_fresh"]
    # root_widening 1: a new fresh noise for every rollout through the root (after its first visit)
    assert wide.settings["fresh_noises"] > 3 * narrow.settings["fresh_noises"]
    assert wide.settings["finished_fresh"] > wide.settings["finished_branched"]


def test_screening_rolls_out_the_child_with_the_best_x0_prediction():
    host = gaussian_host(steps=10)
    seen = []
    orig = host.score

    def score(latents):
        s = orig(latents)
        seen.append(s.clone())
        return s
    host.score = score
    k1 = rep_k1 = branch_points(host, 1, 0.6, 0.6)[0]
    rep, _ = tree_search(host, seed=3, budget_nfe=3 * k1 + (10 - k1), top_k=1, screen=3, levels=1, first_level=0.6,
                         parallel=1)
    # one expansion from the root: three fresh noises to the branch point, their x0 scored, the best finished
    assert rep.settings["fresh_noises"] == 3 and rep.settings["finished"] == 1 and rep_k1 == k1
    x0_scores = seen[0]
    assert len(x0_scores) == 3
    best = int(torch.argmax(x0_scores))
    assert rep.candidates[0].seed == 3 + best


def test_waiting_children_below_the_screened_fraction_are_pruned():
    """As successive halving keeps its best fraction, a screened child is finished later only if its x0 score is
    in the top 1/screen of all screened at its depth: with screen 3 most fresh noises are never finished."""
    _, rep, _ = _tree("euler", budget=300, top_k=1, screen=3, root_widening=1.0)
    s = rep.settings
    assert s["pruned"] > 0 and s["finished_fresh"] < s["fresh_noises"]
    assert s["pruned"] == s["fresh_noises"] - s["finished_fresh"] - s["waiting"]
    _, one, _ = _tree("euler", budget=300, top_k=1, screen=1, root_widening=1.0)
    assert one.settings["pruned"] == 0 and one.settings["finished_fresh"] == one.settings["fresh_noises"]


def test_anytime_a_smaller_budget_is_a_prefix_of_a_larger_one():
    _, small, _ = _tree("euler", budget=60, top_k=1, parallel=1)
    _, large, _ = _tree("euler", budget=300, top_k=1, parallel=1)
    n = len(small.trace) - 1  # the last wave of the small run may be cut to fit
    assert small.trace[:n] == large.trace[:n]
    assert [c.score for c in small.candidates][:small.trace[n - 1]["finished"]] == \
        [c.score for c in large.candidates][:small.trace[n - 1]["finished"]]
    assert all(a["best"] <= b["best"] for a, b in zip(large.trace, large.trace[1:]))


def test_early_stopping_keeps_the_best_finished_sample_so_far():
    _, full, _ = _tree("euler", budget=400, top_k=1)
    target = sorted(t["best"] for t in full.trace)[len(full.trace) // 2]
    host, rep, fin = _tree("euler", budget=400, top_k=1, micro_batch=3)
    host2 = gaussian_host(steps=10)
    rep, fin = run_strategy(Strategy("tree", {}, budget_nfe=400, stop=StopRule(target=target)), host2,
                            candidates=1, top_k=1, seed=5)
    es = rep.settings["early_stop"]
    assert es["stopped"] and rep.nfe_total < full.nfe_total and es["nfe_saved"] == 400 - rep.nfe_total
    assert fin[0].result.score == max(c.score for c in rep.candidates) >= target


def test_branch_points_follow_the_users_schedule():
    host = gaussian_host(steps=10)
    pts = branch_points(host, 3, 0.7, 0.2)
    assert pts == sorted(set(pts)) and 1 <= pts[0] and pts[-1] <= 9 and len(pts) == 3
    short = gaussian_host(steps=2)
    assert branch_points(short, 3, 0.7, 0.2) == [1]
    rep, fin = tree_search(gaussian_host(steps=1), seed=1, budget_nfe=5, top_k=1)
    assert rep.settings["branch_indices"] == [] and rep.nfe_total == 5 and "random search" in rep.notes[0]


def test_tree_refusals():
    with pytest.raises(UnsupportedSamplerError, match="Pick one of"):
        host = gaussian_host(steps=10)
        host.sampler_name = "dpmpp_2m"
        tree_search(host, seed=1, budget_nfe=100)
    with pytest.raises(ValueError, match="first_level"):
        tree_search(gaussian_host(steps=10), seed=1, budget_nfe=100, first_level=0.2, last_level=0.5)
    with pytest.raises(ValueError, match="too small"):
        tree_search(gaussian_host(steps=10), seed=1, budget_nfe=9)


@pytest.mark.parametrize("budget", [10, 25, 40, 79])
def test_a_stochastic_tree_under_eight_generations_is_random_search_exactly(budget):
    """At its defaults (min_generations 0) the tree with a stochastic sampler runs random search's candidates under
    8 generations (it measured below random search at 2 and 4), says so, and its finalists carry recipes."""
    from search.coarse_to_fine import replay
    host = gaussian_host(sampler="euler_ancestral", steps=10)
    rand, rfin = run_strategy(Strategy("random", {}, budget_nfe=budget), host, candidates=1, top_k=1, seed=4)
    rep, fin = run_strategy(Strategy("tree", {}, budget_nfe=budget), gaussian_host(sampler="euler_ancestral",
                                                                                    steps=10),
                            candidates=1, top_k=1, seed=4)
    assert rep.algorithm == "tree" and rep.settings["fallback"] == "random"
    assert [(c.seed, c.score) for c in rep.candidates] == [(c.seed, c.score) for c in rand.candidates]
    assert torch.equal(fin[0].latent, rfin[0].latent)
    assert "random search" in rep.notes[0] and "under 8 generations" in rep.notes[0] and "stochastic" in rep.notes[0]
    lat, _ = replay(gaussian_host(sampler="euler_ancestral", steps=10), fin[0].recipe)
    assert torch.equal(lat, fin[0].latent)


def test_the_small_budget_fallback_follows_the_sampler_and_min_generations():
    def tree(sampler, budget, **params):
        return tree_search(gaussian_host(sampler=sampler, steps=10), seed=4, budget_nfe=budget, top_k=1, **params)[0]
    assert "fallback" not in tree("euler_ancestral", 80).settings            # 8 generations: the tree
    assert "fallback" not in tree("euler", 20).settings                      # deterministic: no floor
    assert tree("euler", 20, min_generations=4).settings["fallback"] == "random"
    assert "fallback" not in tree("euler_ancestral", 20, min_generations=2).settings
