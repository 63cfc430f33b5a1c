"""Scale-out simulation: makespan against the ideal for 1-64 simulated worker machines (CPU, seconds).

The search itself is real: the real random search and the real successive
halving (``search/``) hand their work to the real dispatcher
(``search.dispatch.Pool`` over a ``TaskQueue``: chunks taken on demand,
halving's rounds with each row's state on the executor that made it, a failed
executor's work re-run elsewhere), and every task is computed on a toy host
(``tests/toy_host.py``, one per simulated worker).  Only time is simulated: a
discrete-event clock (:class:`SimClock`, no sleeping) takes the place of the
threads that would run the workers, and decides, in simulated time, which
worker is free next and so takes the next task.

A simulated worker has a speed (NFE-rows per second; drawn uniformly between
``--speed-min`` and ``--speed-max``), a start-up latency (before its first
task), a per-request latency (added to every task), and may fail at a given
time: the task it is running is lost at ``fail time + --detect`` (the master
notices it then) and goes back to the queue; rows it held are re-run
elsewhere from their seeds.  A task costs its NFE-rows plus ``--score-cost``
NFE-rows per candidate it scores.

The **ideal** is the total work of the one-machine search (its NFEs plus its
scoring) divided by the total speed of all workers (the failed one included):
what a perfectly divisible job would take with every worker busy from time 0
and no latency.  The ratio makespan / ideal is what this reports, per number
of workers, for both strategies.  Each run also checks that the dispatched
search's candidates, scores and winners equal the one-machine search's.

    python bench/scaleout_sim.py --out bench/results/scaleout_sim.json
    python bench/scaleout_sim.py --smoke          # a few seconds: 1, 2 and 4 workers, small searches
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for p in (REPO, os.path.join(REPO, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from search.dispatch import HostExecutor, Pool, TaskQueue  # noqa: E402
from search.halving import halving_search  # noqa: E402
from search.random_search import random_search  # noqa: E402
from toy_host import gaussian_host  # noqa: E402


@dataclass
class Worker:
    name: str
    speed: float                  # NFE-rows per second
    startup: float = 0.0          # seconds before it can take its first task
    latency: float = 0.0          # seconds added to every task (the request, the prompt's own overhead)
    fail_at: Optional[float] = None  # seconds: it stops working then


class SimClock:
    """A driver for ``search.dispatch.Pool`` on a simulated clock: each worker takes the next task when it is
    free in simulated time; a task takes ``latency + cost / speed``.  The clock carries over from one queue to
    the next (halving's rounds), so the makespan is the whole search's."""

    def __init__(self, workers: Sequence[Worker], detect: float = 0.0, score_cost: float = 0.0, gen: int = 1,
                 backup: bool = True, steal: bool = True):
        self.backup = bool(backup)  # idle workers run backups of the last running tasks (TaskQueue.take)
        self.steal = bool(steal)    # idle workers re-run a backlogged worker's last pinned rows (TaskQueue.take)
        self.gen = int(gen)  # NFEs of one full generation: random search's chunk of c candidates is c of them
        self.workers = {w.name: w for w in workers}
        self.detect, self.score_cost = float(detect), float(score_cost)
        self.now = 0.0
        self.busy: Dict[str, float] = {w.name: 0.0 for w in workers}   # seconds spent on tasks (lost ones too)
        self.requests = 0
        self.lost = 0.0   # seconds of work lost with the failed worker's task

    def cost(self, task) -> float:
        s = task.spec
        if "count" in s:  # random search: full generations
            return float(s["count"]) * (self.gen + self.score_cost)
        return float(task.cost) + self.score_cost * len(s["rows"])  # halving: its NFE-rows

    def __call__(self, queue: TaskQueue, executors) -> None:
        by = {ex.name: ex for ex in executors}
        self.t = self.now
        queue.clock = lambda: self.t  # the queue measures speeds on the simulated clock
        for name, w in self.workers.items():  # failed between rounds: its rows are re-run elsewhere
            if w.fail_at is not None and w.fail_at <= self.now and name not in queue.dead:
                queue.fail(None, name, "failed")
        events: List[tuple] = []  # (time, order, kind, worker, task): "free", "done" or "lost"
        current: Dict[str, tuple] = {}  # worker -> (order of its pending event, started, task)
        task_start: Dict[str, float] = {}
        order = 0

        def push(t: float, kind: str, name: str, task=None) -> int:
            nonlocal order
            order += 1
            heapq.heappush(events, (t, order, kind, name, task))
            return order
        for name in by:
            if name not in queue.dead:
                push(max(self.now, self.workers[name].startup), "free", name)
        idle: List[str] = []
        end = self.now

        def wake(t: float) -> None:
            nonlocal idle
            for other in idle:
                push(t, "free", other)
            idle = []
        while not queue.complete():
            if not events:
                raise RuntimeError("no simulated worker is left to finish the search")
            t, k, kind, name, task = heapq.heappop(events)
            self.t = t
            w = self.workers[name]
            if kind in ("done", "lost") and current.get(name, (None,))[0] != k:
                continue  # a backup that lost the race: it was stopped, and is free again already
            if kind == "lost":  # the master notices the failure now: the task (and its rows) go elsewhere
                current.pop(name, None)
                queue.fail(task, name, "failed")
                wake(t)
                continue
            if kind == "done":
                current.pop(name, None)
                result = by[name].run(task)  # the real work, on this worker's toy host
                self.busy[name] += t - task_start[name]
                end = max(end, t)
                for other in queue.finish(task, name, result):  # the other run of it is stopped now
                    self.busy[other] += t - task_start[other]
                    current.pop(other, None)
                    push(t, "free", other)
                push(t, "free", name)
                wake(t)  # the last task's backup runs may free someone for nothing: they look again
                continue
            if w.fail_at is not None and w.fail_at <= t:  # it died while idle
                current[name] = (push(max(t, w.fail_at) + self.detect, "lost", name), t, None)
                continue
            task = queue.take(name, backup=self.backup, steal=self.steal)
            if task is None:
                idle.append(name)
                continue
            self.requests += 1
            task_start[name] = t
            took = w.latency + self.cost(task) / w.speed
            if w.fail_at is not None and w.fail_at < t + took:  # it dies mid-task
                self.lost += w.fail_at - t
                self.busy[name] += w.fail_at - t
                current[name] = (push(w.fail_at + self.detect, "lost", name, task), t, task)
                continue
            current[name] = (push(t + took, "done", name, task), t, task)
        self.now = end


def workers_for(n: int, *, seed: int, speed_min: float, speed_max: float, startup: float, latency: float,
                fail: bool, fail_frac: float, ideal: float) -> List[Worker]:
    rng = random.Random(seed * 1000 + n)
    ws = [Worker(f"w{j}", rng.uniform(speed_min, speed_max), startup, latency) for j in range(n)]
    if fail and n > 1:
        ws[rng.randrange(n)].fail_at = fail_frac * ideal
    return ws


def strategy_run(name: str, n: int, args, hosts: Optional[Dict[str, object]] = None):
    """The one-machine search (hosts None) or the dispatched one, for ``n`` workers' worth of work."""
    candidates = int(args.per_worker) * n
    steps = int(args.steps)
    budget = candidates * steps
    if name == "random":
        def run(host, dispatch=None):
            return random_search(host, seed=args.seed, budget_nfe=budget, top_k=args.top_k, dispatch=dispatch)
    else:
        params = {"rounds": args.rounds, "keep": args.keep, "first_level": args.first_level,
                  "last_level": args.last_level}

        def run(host, dispatch=None):
            return halving_search(host, seed=args.seed, budget_nfe=budget, top_k=args.top_k, dispatch=dispatch,
                                  **params)
    return run


def host(args):
    return gaussian_host(steps=int(args.steps), micro_batch=int(args.micro_batch), shape=(1, 4, 8, 8))


def work_of(report, score_cost: float) -> float:
    """The one-machine search's work: its NFEs plus the scoring of every candidate row it scored."""
    if report.algorithm == "halving":
        scored = sum(s["live"] for s in report.settings["stages"]) + report.settings["finished"]
    else:
        scored = len(report.candidates)
    return float(report.nfe_total) + score_cost * scored


def same(a, b) -> bool:
    (ra, fa), (rb, fb) = a, b
    return ([(c.index, c.seed, c.score, c.rank) for c in ra.candidates]
            == [(c.index, c.seed, c.score, c.rank) for c in rb.candidates]
            and [f.result.index for f in fa] == [f.result.index for f in fb] and ra.nfe_total == rb.nfe_total)


def granularity_bound(ws: Sequence[Worker], candidates: int, args) -> float:
    """A lower bound on random search's makespan when no chunk holds fewer than a micro-batch of candidates:
    the least time T by which the workers (each from its start-up, paying one request's latency, the failed
    one only until it fails) can finish whole micro-batches enough for every candidate.  No dispatcher can
    do better with that granularity; the gap between it and the ideal is the price of the micro-batch."""
    mb = max(1, int(args.micro_batch))
    unit = mb * (int(args.steps) + float(args.score_cost))  # NFE-rows of one micro-batch of candidates
    units = -(-int(candidates) // mb)

    def done(t: float) -> int:
        total = 0
        for w in ws:
            end = t if w.fail_at is None else min(t, w.fail_at)
            total += max(0, int((end - w.startup - w.latency) * w.speed / unit + 1e-9))
        return total
    lo, hi = 0.0, 1.0
    while done(hi) < units:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if done(mid) >= units else (mid, hi)
    return hi


def one(name: str, n: int, args, rep: int, ref) -> Dict[str, object]:
    run = strategy_run(name, n, args)
    work = work_of(ref[0], args.score_cost)
    probe = workers_for(n, seed=args.seed + rep, speed_min=args.speed_min, speed_max=args.speed_max,
                        startup=args.startup, latency=args.latency, fail=False, fail_frac=0, ideal=0)
    total_speed = sum(w.speed for w in probe)
    ideal = work / total_speed
    ws = workers_for(n, seed=args.seed + rep, speed_min=args.speed_min, speed_max=args.speed_max,
                     startup=args.startup, latency=args.latency, fail=not args.no_failure,
                     fail_frac=args.fail_frac, ideal=ideal)
    clock = SimClock(ws, detect=args.detect, score_cost=args.score_cost, gen=int(args.steps))
    pool = Pool([HostExecutor(w.name, host(args)) for w in ws], drive=clock, seed=args.seed)
    t0 = time.perf_counter()
    got = run(host(args), pool)
    cpu = time.perf_counter() - t0
    failed = [w.name for w in ws if w.fail_at is not None]
    return {"strategy": name, "workers": n, "repeat": rep, "candidates": len(ref[0].candidates)
            if name == "random" else ref[0].settings["started"],
            "work": round(work, 3), "total_speed": round(total_speed, 4), "ideal_s": round(ideal, 4),
            "makespan_s": round(clock.now, 4), "ratio": round(clock.now / ideal, 4),
            "requests": clock.requests, "failed": failed,
            "fail_at_s": None if not failed else round(next(w.fail_at for w in ws if w.fail_at is not None), 4),
            "lost_s": round(clock.lost, 4),
            "bound_ratio": round(granularity_bound(ws, len(ref[0].candidates), args) / ideal, 4)
            if name == "random" else None,
            "replayed_nfe": got[0].settings.get("dispatch", {}).get("replayed_nfe", 0),
            "same_as_one_machine": same(got, ref), "wall_s": round(cpu, 3)}


def run_all(args) -> Dict[str, object]:
    rows = []
    for name in args.strategies:
        for n in args.workers:
            ref = strategy_run(name, n, args)(host(args))
            for rep in range(args.repeats):
                rows.append(one(name, n, args, rep, ref))
    table = []
    for name in args.strategies:
        for n in args.workers:
            rs = [r for r in rows if r["strategy"] == name and r["workers"] == n]
            bounds = [r["bound_ratio"] for r in rs if r.get("bound_ratio") is not None]
            table.append({"strategy": name, "workers": n, "mean_ratio": round(sum(r["ratio"] for r in rs) / len(rs), 4),
                          "max_ratio": round(max(r["ratio"] for r in rs), 4),
                          "mean_bound": round(sum(bounds) / len(bounds), 4) if bounds else None,
                          "same_as_one_machine": all(r["same_as_one_machine"] for r in rs)})
    return {"rows": rows, "table": table}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def markdown(result: Dict[str, object]) -> str:
    meta = result["meta"]
    lines = [f"Scale-out simulation, commit {meta['commit']}, {meta['date']}, {meta['machine']}.",
             "", f"Command: `{meta['command']}`", "",
             f"Settings: {meta['settings_text']}", "",
             "| workers | random search: makespan / ideal (mean, worst) | random search: best possible with "
             "micro-batch chunks (mean) | successive halving: makespan / ideal (mean, worst) | results equal the "
             "one-machine search |",
             "|---|---|---|---|---|"]
    by = {(r["strategy"], r["workers"]): r for r in result["table"]}
    for n in meta["workers"]:
        cells = []
        for name in ("random", "halving"):
            r = by.get((name, n))
            cells.append("-" if r is None else f"{r['mean_ratio']:.3f} ({r['max_ratio']:.3f})")
        ok = all(by[(s, n)]["same_as_one_machine"] for s in ("random", "halving") if (s, n) in by)
        b = (by.get(("random", n)) or {}).get("mean_bound")
        lines.append(f"| {n} | {cells[0]} | {'-' if b is None else f'{b:.3f}'} | {cells[1]} | "
                     f"{'yes' if ok else 'NO'} |")
    return "\n".join(lines) + "\n"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--strategies", nargs="+", default=["random", "halving"], choices=["random", "halving"])
    ap.add_argument("--per-worker", type=int, default=32, help="candidates per worker (the search grows with them)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--micro-batch", type=int, default=4, help="the hosts' micro-batch: the smallest chunk")
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--first-level", type=float, default=0.6)
    ap.add_argument("--last-level", type=float, default=0.3)
    ap.add_argument("--speed-min", type=float, default=1.0, help="NFE-rows per second of the slowest worker")
    ap.add_argument("--speed-max", type=float, default=2.0)
    ap.add_argument("--startup", type=float, default=2.0, help="seconds before a worker takes its first task")
    ap.add_argument("--latency", type=float, default=0.5, help="seconds added to every task (per request)")
    ap.add_argument("--score-cost", type=float, default=1.0, help="NFE-rows of work to score one candidate row")
    ap.add_argument("--detect", type=float, default=5.0, help="seconds until the master notices a failed worker")
    ap.add_argument("--fail-frac", type=float, default=0.4, help="a worker fails at this fraction of the ideal")
    ap.add_argument("--no-failure", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="runs per point (other speeds, another failing worker)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--smoke", action="store_true", help="1, 2 and 4 workers, 8 candidates each, one repeat")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.smoke:
        args.workers, args.per_worker, args.repeats, args.steps = [1, 2, 4], 8, 1, 6
    return args


def main(argv=None) -> Dict[str, object]:
    args = parse(argv)
    t0 = time.time()
    result = run_all(args)
    settings = {k: getattr(args, k) for k in ("per_worker", "steps", "micro_batch", "top_k", "rounds", "keep",
                                              "first_level", "last_level", "speed_min", "speed_max", "startup",
                                              "latency", "score_cost", "detect", "fail_frac", "no_failure",
                                              "repeats", "seed")}
    result["meta"] = {"commit": commit(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
                      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
                      "command": "python bench/scaleout_sim.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                      "workers": list(args.workers), "settings": settings, "wall_s": round(time.time() - t0, 2),
                      "smoke": bool(args.smoke),
                      "settings_text": (f"{args.per_worker} candidates per worker, {args.steps} steps, speeds uniform "
                                        f"in [{args.speed_min:g}, {args.speed_max:g}] NFE-rows/s, start-up "
                                        f"{args.startup:g} s, {args.latency:g} s per request, scoring "
                                        f"{args.score_cost:g} NFE-row per candidate, "
                                        + ("no failure" if args.no_failure else
                                           f"one worker (of 2 or more) failing at {args.fail_frac:g} x the ideal, "
                                           f"noticed {args.detect:g} s later")
                                        + f"; halving: {args.rounds} prune round(s), keep {args.keep:g}, levels "
                                        f"{args.first_level:g}..{args.last_level:g}; {args.repeats} run(s) per point")}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
