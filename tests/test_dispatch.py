"""Core tier: the pull model (search/dispatch.py) on the toy host: random search in chunks taken on demand by
several executors, and successive halving in rounds with each row's state on the executor that made it, give
the one-machine search's result whoever ran what, with an executor failing mid-search."""
import math

import pytest
import torch

from search import Strategy, run_strategy
from search.dispatch import ExecutorFault, HostExecutor, Pool, Task, TaskQueue, drive_serial, plan_chunks
from search.halving import halving_search
from search.random_search import random_search
from toy_host import gaussian_host, mean_rank, two_member_relative

pytestmark = pytest.mark.core

SEED, STEPS = 5, 8


def host(micro_batch=0):
    return gaussian_host(steps=STEPS, micro_batch=micro_batch)


class Failing(HostExecutor):
    """An executor that fails on its ``at``-th task (1 = the first) and on every one after it."""

    def __init__(self, name, host, at):
        super().__init__(name, host)
        self.at, self.calls = at, 0

    def run(self, task):
        self.calls += 1
        if self.calls >= self.at:
            raise ExecutorFault("went away")
        return super().run(task)


def executors(k, fail_at=None):
    out = [HostExecutor(f"e{j}", host(micro_batch=1 + j % 3)) for j in range(k)]
    if fail_at is not None:
        out[1] = Failing("e1", host(), fail_at)
    return out


def same(a, b):
    (ra, fa), (rb, fb) = a, b
    assert [(c.index, c.seed, c.score, c.rank, c.nfe) for c in ra.candidates] == \
        [(c.index, c.seed, c.score, c.rank, c.nfe) for c in rb.candidates]
    assert [f.result.index for f in fa] == [f.result.index for f in fb]
    assert ra.nfe_total == rb.nfe_total and ra.trace == rb.trace


# --------------------------------------------------------------------------- the queue
def test_the_queue_hands_out_on_demand_pins_owned_rows_and_puts_a_failed_task_back_first():
    tasks = [Task(k, spec={"start": k, "count": 1}) for k in range(3)] + [Task("p", spec={"rows": [9]}, owner="b")]
    q = TaskQueue(tasks, orphan=lambda t, dead: Task(t.key, spec={"rows": t.spec["rows"], "replay": True}))
    assert q.take("a").key == 0 and q.take("a").key == 1  # whoever asks gets the next free task
    assert q.take("b").key == 2 and q.take("a") is None   # the pinned task is b's alone
    q.fail(Task(1, spec={"start": 1, "count": 1}), "a", "timed out")
    assert [t.key for t in q.pending] == [1, "p"] and q.take("a") is None  # a failed: it takes nothing more
    q.finish(Task(0), "a", "r0")  # a's earlier answer still counts
    q.fail(None, "b", "went away")  # b failed running task 2: it goes back; its pinned task becomes a free replay
    assert [t.key for t in q.pending] == [2, "p", 1] and q.pending[1].owner is None and q.pending[1].spec["replay"]
    for key in (2, "p", 1):
        t = q.take("c")
        assert t.key == key
        q.finish(t, "c", f"r{key}")
    assert q.complete() and q.results() == ["r0", "r1", "r2", "rp"]
    assert q.ran == {0: "a", 1: "c", 2: "c", "p": "c"} and set(q.dead) == {"a", "b"}
    assert q.notes == ["a timed out: its task (candidates 1..1) was re-assigned",
                       "b went away: its task (candidates 2..2) was re-assigned"]


def test_a_backup_run_of_a_running_task_gives_the_first_answer_and_a_failure_then_loses_nothing():
    q = TaskQueue([Task(k, spec={"start": k, "count": 1}, cost=10.0) for k in range(2)])
    now = [0.0]
    q.clock = lambda: now[0]
    q.speed.update({"a": (10.0, 10.0), "b": (10.0, 10.0), "c": (10.0, 1.0), "d": (10.0, 1.0)})  # c, d: 10x
    t0 = q.take("a")
    now[0] = 1.0
    t1 = q.take("b")
    now[0] = 2.0
    assert q.take("c") is None  # nothing pending, no backups asked for
    # the run that would end last, if a backup ends sooner: b's (at 11; c's at 3), then a's (at 10)
    assert q.take("c", backup=True) is t1 and q.take("d", backup=True) is t0 and q.backups == 2
    assert q.take("e", backup=True) is None  # one backup a task
    q.speed["x"] = (10.0, 10.0)
    assert TaskQueue([]).take("x", backup=True) is None
    assert q.finish(t0, "d", "d0") == ["a"]  # the backup won: a's run can be stopped
    assert q.finish(t0, "a", "a0") == [] and q.done[0] == "d0" and q.ran[0] == "d"
    q.fail(t1, "b", "went away")  # its backup still runs it: nothing goes back
    assert not q.pending and q.notes == []
    q.finish(t1, "c", "c1")
    assert q.complete() and q.results() == ["d0", "c1"]


def test_a_backup_is_not_started_where_it_would_end_later():
    q = TaskQueue([Task(0, spec={"start": 0, "count": 1}, cost=10.0)])
    now = [0.0]
    q.clock = lambda: now[0]
    q.take("a")
    now[0] = 3.0
    assert q.take("b", backup=True) is None  # equal speeds (unmeasured): b would end 3 s after a


def test_an_idle_executor_steals_a_backlogged_owners_last_pinned_task_when_its_replay_ends_sooner():
    def orphan(t, dead):
        return [Task((t.key, "replay"), spec={"rows": t.spec["rows"], "replay": True}, cost=11.0)]

    def queue(k):
        return TaskQueue([Task(("o", j), spec={"rows": [j]}, owner="o", cost=5.0) for j in range(k)], orphan)
    q = queue(2)  # equal speeds while unmeasured: the owner's 10 waiting are done before a replay of 11
    assert q.take("x", steal=True) is None and q.steals == 0
    q = queue(3)  # 15 > 11: the last one is re-run by x from scratch
    t = q.take("x", steal=True)
    assert t.key == (("o", 2), "replay") and t.owner is None and q.steals == 1
    assert q.order == [("o", 0), ("o", 1), (("o", 2), "replay")]
    assert [p.key for p in q.pending] == [("o", 0), ("o", 1)]
    assert q.take("x", steal=True) is None  # 10 left: no longer worth it
    now = [0.0]  # measured speeds: the owner did 5 in 5 s, x 5 in 1 s; the owner's 10 take 10 s, a replay 2.2 s
    q = queue(4)
    q.clock = lambda: now[0]
    a, b = q.take("o"), Task("free", spec={"start": 0, "count": 1}, cost=5.0)
    q.add(b)
    q.take("x")
    now[0] = 1.0
    q.finish(b, "x", "done")
    now[0] = 5.0
    q.finish(a, "o", "done")
    assert q.rate("o") == 1.0 and q.rate("x") == 5.0
    assert q.take("x", steal=True).key == (("o", 3), "replay")  # 15 s of the owner's against 2.2 s
    assert q.take("x", steal=True).key == (("o", 2), "replay")  # 10 s against 2.2 s
    assert q.take("x", steal=True).key == (("o", 1), "replay")  # 5 s against 2.2 s: still sooner
    assert q.take("x", steal=True) is None and q.steals == 3 and not q.pending


def test_chunks_fall_in_size_by_factoring_and_never_below_the_micro_batch():
    assert plan_chunks(64, 4) == [(0, 8), (8, 8), (16, 8), (24, 8), (32, 4), (36, 4), (40, 4), (44, 4),
                                  (48, 2), (50, 2), (52, 2), (54, 2), (56, 1), (57, 1), (58, 1), (59, 1),
                                  (60, 1), (61, 1), (62, 1), (63, 1)]
    assert plan_chunks(64, 4, floor=4)[-4:] == [(48, 4), (52, 4), (56, 4), (60, 4)]
    assert plan_chunks(10, 1, floor=64) == [(0, 10)] and plan_chunks(3, 16) == [(0, 1), (1, 1), (2, 1)]
    for n in (1, 7, 100, 1000):
        for e in (1, 3, 16, 64):
            for floor in (1, 4, 16):
                plan = plan_chunks(n, e, floor)
                assert [i for s, c in plan for i in range(s, s + c)] == list(range(n))
                sizes = [c for _, c in plan]
                assert sizes == sorted(sizes, reverse=True) or sizes[-1] < floor  # falling (the last: the rest)
                assert all(c >= min(floor, n - s) for s, c in plan)


# --------------------------------------------------------------------------- random search
N, TOP_K = 20, 3


def reference_random():
    return random_search(host(micro_batch=4), seed=SEED, budget_nfe=N * STEPS, top_k=TOP_K)


@pytest.mark.parametrize("k, local", [(1, False), (3, True), (5, False)])
def test_random_search_in_chunks_on_several_executors_equals_one_machine(k, local):
    pool = Pool(executors(k), local=local, seed=SEED)
    got = random_search(host(micro_batch=2), seed=SEED, budget_nfe=N * STEPS, top_k=TOP_K, dispatch=pool)
    same(got, reference_random())
    shards = got[0].settings["shards"]
    assert [(s["start"], s["count"]) for s in shards] == plan_chunks(N, k + local, 2)
    assert len({s["ran_on"] for s in shards}) == k + local  # everyone took chunks


def test_random_search_with_a_failing_executor_re_runs_its_chunk_elsewhere():
    pool = Pool(executors(3, fail_at=2), seed=SEED)
    got = random_search(host(), seed=SEED, budget_nfe=N * STEPS, top_k=TOP_K, dispatch=pool)
    same(got, reference_random())
    assert pool.dead == {"e1": "went away"}
    ran = [s["ran_on"] for s in got[0].settings["shards"]]
    assert ran.count("e1") == 1 and ran.count("e0") > 1  # its first chunk counts; the one it dropped ran elsewhere
    assert any("e1 went away: its task" in n for q in pool.queues for n in q.notes)


def test_every_executor_failing_is_an_error_naming_them():
    pool = Pool([Failing("a", host(), 1), Failing("b", host(), 2)], seed=SEED)
    with pytest.raises(ExecutorFault, match="every executor failed.*a went away.*b went away"):
        random_search(host(), seed=SEED, budget_nfe=N * STEPS, top_k=TOP_K, dispatch=pool)


# --------------------------------------------------------------------------- successive halving
HALVING = [({"rounds": 1}, 1), ({"rounds": 3, "first_level": 0.7, "last_level": 0.3, "keep": 0.5}, 2),
           ({"rounds": 2, "first_level": 0.6, "last_level": 0.3, "keep": 0.4, "starts": 17}, 3)]


def halving(params, top_k, dispatch=None, budget=40 * STEPS, hst=None):
    return halving_search(hst or host(micro_batch=3), seed=SEED, budget_nfe=budget, top_k=top_k,
                          dispatch=dispatch, **params)


def same_halving(a, b):
    same(a, b)
    assert a[0].settings["stages"] == b[0].settings["stages"]
    assert a[0].settings["rank_correlation"] == b[0].settings["rank_correlation"]


@pytest.mark.parametrize("params, top_k", HALVING)
@pytest.mark.parametrize("k", [1, 4])
def test_halving_in_rounds_on_several_executors_equals_one_machine(params, top_k, k):
    ref = halving(params, top_k)
    pool = Pool(executors(k))
    got = halving(params, top_k, pool)
    same_halving(got, ref)
    d = got[0].settings["dispatch"]
    assert d["replayed_rows"] == 0 and d["failed"] == {}
    assert len(pool.queues) == len(ref[0].settings["stages"]) + 1  # one queue a round, the first in chunks
    for q in pool.queues[1:]:  # later rounds: one instruction per executor, run where its rows live
        assert all(key[2] == who for key, who in q.ran.items())
    for fa, fb in zip(got[1], ref[1]):  # the finalists' latents are the one machine's, bit for bit
        assert torch.equal(fa.latent, fb.latent) and torch.equal(fa.noise, fb.noise) and fa.seed == fb.seed
    if k > 1:
        assert len({who for q in pool.queues[:1] for who in q.ran.values()}) == k


@pytest.mark.parametrize("at", [1, 2, 3, 4])
def test_halving_with_an_executor_failing_mid_search_re_runs_its_rows_from_their_seeds(at):
    params, top_k = HALVING[1]
    ref = halving(params, top_k)
    pool = Pool(executors(4, fail_at=at))
    got = halving(params, top_k, pool)
    same_halving(got, ref)
    d = got[0].settings["dispatch"]
    assert d["failed"] == {"e1": "went away"}
    assert "e1" not in set(d["finished_on"].values())
    if at > 1:  # it held rows when it failed: they were replayed elsewhere, their NFEs counted apart
        assert d["replayed_rows"] > 0 and d["replayed_nfe"] > 0
        assert any("re-run from their seeds" in n for n in got[0].notes)


def test_halving_through_run_strategy_with_early_stopping_and_a_relative_verifier():
    from search import StopRule

    def relative(hst):
        return two_member_relative(hst, rescore=True)

    strat = Strategy("halving", {"rounds": 2, "first_level": 0.7, "last_level": 0.3}, budget_nfe=30 * STEPS)
    ref = run_strategy(strat, relative(host()), top_k=2, seed=SEED)
    pool = Pool([HostExecutor(f"e{j}", relative(host())) for j in range(3)], recombine=mean_rank)
    got = run_strategy(strat, relative(host()), top_k=2, seed=SEED, dispatch=pool, member_names=("a", "b"))
    same_halving(got, ref)
    assert set(got[0].candidates[0].verifier_scores) == {"a", "b"}
    stop = Strategy("halving", {"rounds": 3, "first_level": 0.7, "last_level": 0.3}, budget_nfe=30 * STEPS,
                    stop=StopRule(target=-1e9))
    a = run_strategy(stop, host(), top_k=1, seed=SEED)
    b = run_strategy(stop, host(), top_k=1, seed=SEED, dispatch=Pool(executors(3)))
    same_halving(b, a)
    assert a[0].settings["finished"] == 1 and math.isfinite(a[0].candidates[0].score)


def test_every_strategy_takes_a_dispatcher():
    from search.registry import names
    from search import get_algorithm
    assert all(get_algorithm(n).dispatch for n in names()), [n for n in names() if not get_algorithm(n).dispatch]


# --------------------------------------------------------------------------- noise strategies
NOISE = [("zero_order", {"neighbours": 3, "start_noises": 4}), ("zero_order", {"neighbours": 5, "start_noises": 1}),
         ("evolution", {"population": 6, "elites": 2}), ("evolution", {})]


def noise_same(a, b):
    same(a, b)
    assert [c.noise_id for c in a[0].candidates] == [c.noise_id for c in b[0].candidates]
    for fa, fb in zip(a[1], b[1]):  # the finalists' noises and seeds: what the finalist step replays
        assert torch.equal(fa.noise, fb.noise) and fa.seed == fb.seed


@pytest.mark.parametrize("name, params", NOISE)
@pytest.mark.parametrize("k, fail_at", [(1, None), (3, None), (4, 1)])
def test_noise_strategies_in_chunks_on_several_executors_equal_one_machine(name, params, k, fail_at):
    strat = Strategy(name, params, budget_nfe=30 * STEPS)
    ref = run_strategy(strat, host(micro_batch=3), top_k=2, seed=SEED)
    pool = Pool(executors(k, fail_at=fail_at))
    got = run_strategy(strat, host(micro_batch=3), top_k=2, seed=SEED, dispatch=pool)
    noise_same(got, ref)
    d = got[0].settings["dispatch"]
    assert d["executors"] == k and d["tasks"] >= len(got[0].trace) - 1
    assert d["failed"] == ({} if fail_at is None else {"e1": "went away"})
    if k > 1:  # the work was shared: more than one executor rendered rows
        assert len({who for q in pool.queues for who in q.ran.values()}) > 1
    for f in got[1]:  # rendered in this process: every finalist keeps its latent, bit for bit the one machine's
        ref_f = next(r for r in ref[1] if r.result.index == f.result.index)
        assert torch.equal(f.latent, ref_f.latent)


@pytest.mark.parametrize("name", ["zero_order", "evolution"])
def test_noise_strategies_with_a_relative_verifier_and_early_stopping_equal_one_machine(name):
    from search import StopRule

    def relative(hst):
        return two_member_relative(hst, rescore=True, recombined=True)

    strat = Strategy(name, {}, budget_nfe=24 * STEPS)
    ref = run_strategy(strat, relative(host()), top_k=2, seed=SEED)
    pool = Pool([HostExecutor(f"e{j}", relative(host())) for j in range(3)], recombine=mean_rank)
    got = run_strategy(strat, relative(host()), top_k=2, seed=SEED, dispatch=pool, member_names=("a", "b"))
    same(got, ref)
    stop = Strategy(name, {}, budget_nfe=40 * STEPS, stop=StopRule(patience=3))
    a = run_strategy(stop, host(micro_batch=2), top_k=1, seed=SEED)
    b = run_strategy(stop, host(micro_batch=2), top_k=1, seed=SEED, dispatch=Pool(executors(3)))
    same(b, a)


def test_a_slow_executor_leaves_the_last_task_to_a_faster_one_that_ends_it_sooner():
    now = [0.0]
    q = TaskQueue([Task(k, spec={"start": k, "count": 1}, cost=10.0) for k in range(4)])
    q.clock = lambda: now[0]
    q.speed = {"fast": (10.0, 5.0), "slow": (10.0, 10.0)}  # 2 and 1 cost per second, measured
    a = q.take("fast")
    assert a.key == 0
    # three pending: fast (busy until 5 s) would end them at 10, 15, 20 s; slow ends one at 10 s: it takes one
    b = q.take("slow")
    assert b.key == 1
    now[0] = 5.0
    q.finish(a, "fast", "r0")
    assert q.take("fast").key == 2
    # one task left: fast ends its running task at 10 s and this one at 15 s; slow (busy until 10 s) at 20 s
    now[0] = 9.0
    q.finish(b, "slow", "r1")
    assert q.take("slow") is None and q.deferred == 1
    q.defer = False  # without the rule, whoever asks first takes what is pending
    assert q.take("slow").key == 3


def test_drive_serial_runs_the_executors_in_turn():
    pool = Pool(executors(2), seed=SEED)
    q = pool.run([Task(k, (lambda k: lambda h, held: k * 10)(k)) for k in range(5)])
    assert q.results() == [0, 10, 20, 30, 40] and [q.ran[k] for k in range(5)] == ["e0", "e1"] * 2 + ["e0"]
    assert drive_serial is pool.drive


# --------------------------------------------------------------------------- search over paths
PATHS = [({"paths": 3, "noises_per_path": 2, "start_level": 0.6, "forward": 0.2, "backward": 0.4}, 2),
         ({}, 1), ({"paths": 0, "noises_per_path": 3}, 2)]


def paths_same(a, b):
    same(a, b)
    assert a[0].settings["rounds"] == b[0].settings["rounds"]
    for fa, fb in zip(a[1], b[1]):
        assert fa.recipe == fb.recipe


@pytest.mark.parametrize("params, top_k", PATHS)
@pytest.mark.parametrize("k, fail_at", [(1, None), (3, None), (4, 1), (4, 3)])
def test_paths_with_each_paths_state_where_it_was_made_equals_one_machine(params, top_k, k, fail_at):
    from search.paths import paths_search
    ref = paths_search(host(micro_batch=3), seed=SEED, budget_nfe=40 * STEPS, top_k=top_k, **params)
    pool = Pool(executors(k, fail_at=fail_at))
    # a search host of micro-batch 1: the work goes out in small parts (the results do not depend on it)
    got = paths_search(host(micro_batch=1), seed=SEED, budget_nfe=40 * STEPS, top_k=top_k, dispatch=pool,
                       **params)
    paths_same(got, ref)
    for fa, fb in zip(got[1], ref[1]):  # made in this process: the finalists' latents, bit for bit
        assert torch.equal(fa.latent, fb.latent)
    d = got[0].settings["dispatch"]
    assert d["executors"] == k and d["failed"] == ({} if fail_at is None else {"e1": "went away"})
    if k > 1:
        assert len({who for q in pool.queues for who in q.ran.values()}) > 1
    if fail_at == 3:  # it held paths when it failed: they were re-made from their recipes elsewhere
        assert d["replayed_rows"] > 0 and d["replayed_nfe"] > 0
        assert any("re-made from their lineage" in n for n in got[0].notes)


def test_paths_with_a_relative_verifier_early_stopping_and_its_random_fallback_equal_one_machine():
    from search import StopRule

    def relative(hst):
        return two_member_relative(hst, rescore=True, recombined=True)

    strat = Strategy("paths", {"paths": 3}, budget_nfe=30 * STEPS)
    ref = run_strategy(strat, relative(host()), top_k=2, seed=SEED)
    pool = Pool([HostExecutor(f"e{j}", relative(host())) for j in range(3)], recombine=mean_rank)
    got = run_strategy(strat, relative(host()), top_k=2, seed=SEED, dispatch=pool, member_names=("a", "b"))
    paths_same(got, ref)
    stop = Strategy("paths", {"paths": 4}, budget_nfe=40 * STEPS, stop=StopRule(target=-1e9))
    paths_same(run_strategy(stop, host(), top_k=1, seed=SEED, dispatch=Pool(executors(3))),
               run_strategy(stop, host(), top_k=1, seed=SEED))
    small = Strategy("paths", {}, budget_nfe=2 * STEPS)  # under min_generations: random search, through the pool
    a = run_strategy(small, host(), top_k=1, seed=SEED, dispatch=Pool(executors(2)))
    same(a, run_strategy(small, host(), top_k=1, seed=SEED))
    assert a[0].settings["fallback"] == "random" and a[0].settings["shards"]


# --------------------------------------------------------------------------- particles
def stochastic_host(micro_batch=0):
    from toy_host import gaussian_host as g
    h = g(steps=STEPS, micro_batch=micro_batch)
    h.sampler_name = "euler_ancestral"
    return h


PARTICLES = [({"particles": 5, "interval": 2, "ess_threshold": 0.0}, 2), ({"particles": 6, "interval": 3}, 1),
             ({}, 2)]


@pytest.mark.parametrize("params, top_k", PARTICLES)
@pytest.mark.parametrize("k, fail_at", [(1, None), (3, None), (4, 1), (4, 3)])
def test_particles_with_each_particles_state_where_it_was_made_equal_one_machine(params, top_k, k, fail_at):
    from search.particles import particle_search
    ref = particle_search(stochastic_host(micro_batch=3), seed=SEED, budget_nfe=30 * STEPS, top_k=top_k, **params)
    pool = Pool(executors(k, fail_at=fail_at))
    for ex in pool.members:  # the executors sample with the same (stochastic) sampler as the search
        ex.host.sampler_name = "euler_ancestral"
    got = particle_search(stochastic_host(micro_batch=1), seed=SEED, budget_nfe=30 * STEPS, top_k=top_k,
                          dispatch=pool, **params)
    same(got, ref)
    for key in ("resampled_at", "ess", "lineages_alive", "distinct_final_samples", "distinct_lineages"):
        assert got[0].settings[key] == ref[0].settings[key], key
    for fa, fb in zip(got[1], ref[1]):
        assert fa.recipe == fb.recipe and torch.equal(fa.latent, fb.latent)
    d = got[0].settings["dispatch"]
    assert d["executors"] == k
    assert d["failed"] == ({} if fail_at is None else {"e1": "went away"}) or (fail_at == 3 and not d["failed"])
    if d["failed"] and fail_at == 3:  # it held particles when it failed: re-made from their recipes elsewhere
        assert d["replayed_rows"] > 0 and any("re-made from their lineage" in n for n in got[0].notes)


# --------------------------------------------------------------------------- coarse-to-fine
@pytest.mark.parametrize("name, params", [("random", {}), ("halving", {"rounds": 1}), ("zero_order", {}),
                                          ("evolution", {}), ("paths", {"paths": 3})])
def test_coarse_to_fine_over_several_executors_equals_one_machine(name, params):
    """The coarse search's work runs on each executor's host re-scheduled to the coarse steps; the finalists
    are re-rendered at full steps on the search's own host."""
    strat = Strategy(name, params, budget_nfe=30 * STEPS, coarse_steps=4)
    ref = run_strategy(strat, host(micro_batch=2), top_k=2, seed=SEED)
    pool = Pool(executors(3), seed=SEED)
    got = run_strategy(strat, host(micro_batch=1), top_k=2, seed=SEED, dispatch=pool)
    same(got, ref)
    assert got[0].settings["coarse_report"]["candidates"] == ref[0].settings["coarse_report"]["candidates"]
    for fa, fb in zip(got[1], ref[1]):
        assert torch.equal(fa.latent, fb.latent)
    assert len({who for q in pool.queues for who in q.ran.values()}) > 1
    assert got[0].settings["coarse_report"]["nfe_per_generation"] == 4  # the executors sampled 4 steps


def test_coarse_to_fine_with_a_relative_verifier_is_refused_over_several_executors():
    strat = Strategy("random", {}, budget_nfe=30 * STEPS, coarse_steps=4)
    with pytest.raises(ValueError, match="coarse-to-fine ranks its coarse and full-step candidates together"):
        run_strategy(strat, two_member_relative(host()), top_k=1, seed=SEED, dispatch=Pool(executors(2), seed=SEED))


# --------------------------------------------------------------------------- tree search
TREE = [({}, 2), ({"levels": 2, "first_level": 0.7, "last_level": 0.4, "screen": 3, "parallel": 3}, 1)]


@pytest.mark.parametrize("params, top_k", TREE)
@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("k, fail_at", [(1, None), (3, None), (4, 1), (4, 4)])
def test_tree_search_with_each_nodes_state_where_it_was_made_equals_one_machine(params, top_k, stochastic, k,
                                                                               fail_at):
    from search.tree import tree_search

    def make(mb):
        h = host(micro_batch=mb)
        if stochastic:
            h.sampler_name = "euler_ancestral"
        return h
    ref = tree_search(make(3), seed=SEED, budget_nfe=30 * STEPS, top_k=top_k, **params)
    pool = Pool(executors(k, fail_at=fail_at))
    for ex in pool.members:
        ex.host.sampler_name = make(1).sampler_name
    got = tree_search(make(1), seed=SEED, budget_nfe=30 * STEPS, top_k=top_k, dispatch=pool, **params)
    same(got, ref)
    for key in ("expansions_by_depth", "waves", "nodes", "finished", "replay"):
        assert got[0].settings[key] == ref[0].settings[key], key
    for fa, fb in zip(got[1], ref[1]):
        assert fa.recipe == fb.recipe and torch.equal(fa.latent, fb.latent) and fa.seed == fb.seed
    d = got[0].settings["dispatch"]
    assert d["executors"] == k
    assert d["failed"] == ({} if fail_at is None else {"e1": "went away"})
    if fail_at == 4 and not stochastic:  # it held nodes needed later: re-made from their recipes elsewhere
        assert d["replayed_rows"] > 0 and any("re-made from their lineage" in n for n in got[0].notes)
    if k > 1:
        assert len({who for q in pool.queues for who in q.ran.values()}) > 1


def test_tree_search_with_a_relative_verifier_over_several_executors_equals_one_machine():
    def relative(hst):
        return two_member_relative(hst, rescore=True, recombined=True)

    strat = Strategy("tree", {"parallel": 2}, budget_nfe=30 * STEPS)
    ref = run_strategy(strat, relative(host()), top_k=2, seed=SEED)
    pool = Pool([HostExecutor(f"e{j}", relative(host())) for j in range(3)], recombine=mean_rank)
    got = run_strategy(strat, relative(host()), top_k=2, seed=SEED, dispatch=pool, member_names=("a", "b"))
    same(got, ref)
