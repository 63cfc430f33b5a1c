"""Core tier: the scale-out simulation (bench/scaleout_sim.py) in its smoke mode: the real dispatcher and the
real random search and successive halving on toy hosts, on a simulated clock, with a worker failing; the
dispatched searches must equal the one-machine searches, and no makespan can beat the ideal."""
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.core

SIM = Path(__file__).resolve().parent.parent / "bench" / "scaleout_sim.py"


def load():
    if "scaleout_sim" not in sys.modules:
        spec = importlib.util.spec_from_file_location("scaleout_sim", SIM)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["scaleout_sim"] = mod  # its dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules["scaleout_sim"]


def test_the_simulation_smoke_run_gives_the_one_machine_results_and_a_makespan_table(tmp_path):
    sim = load()
    out = tmp_path / "sim.json"
    t0 = time.process_time()
    result = sim.main(["--smoke", "--out", str(out)])
    assert time.process_time() - t0 < 30
    assert json.loads(out.read_text())["table"] == result["table"]
    rows = result["rows"]
    assert {(r["strategy"], r["workers"]) for r in rows} == {(s, n) for s in ("random", "halving") for n in (1, 2, 4)}
    for r in rows:
        assert r["same_as_one_machine"] is True, r
        assert r["makespan_s"] >= r["ideal_s"] * 0.999, r  # nothing beats every worker busy from time 0
        assert r["ideal_s"] == pytest.approx(r["work"] / r["total_speed"], rel=1e-3)
        assert (len(r["failed"]) == 1) == (r["workers"] > 1), r  # one failure a run, where another can take over
        if r["strategy"] == "random":  # no dispatcher beats the best possible with micro-batch chunks
            assert 1.0 <= r["bound_ratio"] <= r["ratio"] + 1e-6, r
    halving = [r for r in rows if r["strategy"] == "halving" and r["workers"] > 1]
    assert any(r["replayed_nfe"] > 0 for r in halving)  # a failed worker's rows were re-run elsewhere
    md = out.with_suffix(".md").read_text()
    meta = result["meta"]
    assert meta["commit"] in md and meta["command"] in md and "| workers |" in md
    assert meta["command"].startswith("python bench/scaleout_sim.py --smoke")


def test_the_simulated_clock_hands_a_slow_worker_fewer_chunks():
    sim = load()
    args = sim.parse(["--smoke", "--no-failure"])
    ws = [sim.Worker("fast", 4.0), sim.Worker("slow", 1.0)]
    clock = sim.SimClock(ws, gen=args.steps, backup=False)
    pool = sim.Pool([sim.HostExecutor(w.name, sim.host(args)) for w in ws], drive=clock, seed=args.seed)
    report, _ = sim.strategy_run("random", 4, args)(sim.host(args), pool)
    by = {}
    for s in report.settings["shards"]:
        by[s["ran_on"]] = by.get(s["ran_on"], 0) + s["count"]
    assert by["fast"] > 2 * by["slow"] > 0
    assert clock.now < 1.3 * 32 * args.steps / 5.0  # near the ideal: 32 candidates at 5 NFE-rows/s together


def test_the_simulation_is_deterministic():
    sim = load()
    args = sim.parse(["--smoke"])
    ref = sim.strategy_run("halving", 2, args)(sim.host(args))
    a, b = (sim.one("halving", 2, args, 0, ref) for _ in range(2))
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b and a["failed"] and a["same_as_one_machine"]


def test_the_granularity_bound_is_the_least_time_for_whole_micro_batches():
    sim = load()
    args = sim.parse(["--smoke", "--no-failure"])  # micro-batch 4, 6 steps, scoring 1: a unit is 28 NFE-rows
    ws = [sim.Worker("a", 2.0), sim.Worker("b", 1.0)]
    # 12 candidates = 3 units: a does 2 in 28 s, b one in 28 s
    assert sim.granularity_bound(ws, 12, args) == pytest.approx(28.0, rel=1e-6)
    ws[1].fail_at = 10.0  # b fails before finishing one: a does all 3 alone
    assert sim.granularity_bound(ws, 12, args) == pytest.approx(42.0, rel=1e-6)
