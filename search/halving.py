"""Successive halving on x0-predictions: start many candidates, keep the best part-way, finish only those.

N candidate noises (seeds base+i, exactly random search's candidates, so a
stock KSampler with a finalist's seed replays it) are denoised together.  At
each prune point the x0-prediction of every live candidate (what the sampler's
last step predicted, so free of NFEs) is scored and only the best ``keep``
fraction (at least ``top_k``; ties: the lower index) goes on.  The survivors of
the last prune point are denoised to the end, scored, and the best ``top_k``
are the finalists.

Prune points are ``rounds`` noise levels evenly spaced from ``first_level`` to
``last_level``, as fractions of **your schedule's** noise span (1 = where it
starts, 0 = its clean end; the same scale as search over paths), each at the
nearest schedule step (at least one step after the previous one, before the
end).  N is the most candidates whose whole run fits the budget, so at equal
NFEs halving starts more candidates than random search finishes.

Whether pruning on x0-predictions is safe depends on the model: the report's
``settings["rank_correlation"]`` gives, for each prune point, the Spearman
rank correlation between the candidates' scores there and their final scores,
over the candidates that reached the end (a value near 0 means that prune was
close to a coin toss).  Needs a single-step (segmentable) sampler.

Early stopping: one observation per prune point (the best x0 score); when the
rule fires the ``top_k`` best are finished at once.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .common import (TopK, check_budget, check_top_k, checked_scores, finalist, generation_nfe, score_x0,
                     top_k_indices)
from .dispatch import ExecutorFault, Task
from .host import SearchHost, State, final_latents
from .noise import seeds_for, wrap_seed
from .paths import relative_levels
from .registry import Algorithm, Param
from .report import CandidateResult, Finalist, SearchReport
from .sharded import member_rows
from .stopping import StopRule, Stopper


def prune_points(host: SearchHost, rounds: int, first_level: float, last_level: float) -> List[int]:
    """The schedule indices of the prune points (strictly increasing, between 1 and T-1; may be fewer than
    ``rounds`` on a short schedule)."""
    T = int(host.steps)
    rel = relative_levels(host)
    if rounds == 1:
        levels = [float(first_level)]
    else:
        levels = [first_level + (last_level - first_level) * r / (rounds - 1) for r in range(rounds)]
    out: List[int] = []
    for lv in levels:
        i = min(range(T + 1), key=lambda j: (abs(rel[j] - lv), j))
        i = max(i, (out[-1] + 1) if out else 1)
        if i <= T - 1:
            out.append(i)
    return out


def survivors(n: int, keep: float, rounds: int, top_k: int) -> List[int]:
    """Live candidates in each stage: n, then ceil(previous * keep) at each prune point (at least top_k)."""
    out = [int(n)]
    for _ in range(rounds):
        out.append(min(out[-1], max(int(top_k), math.ceil(out[-1] * float(keep) - 1e-9))))
    return out


def cost_of(host: SearchHost, live: Sequence[int], points: Sequence[int]) -> int:
    """NFEs of a run with ``live[s]`` candidates in stage s (stages split at the prune points)."""
    bounds = [0] + list(points) + [int(host.steps)]
    return sum(int(live[s]) * int(host.nfe(bounds[s], bounds[s + 1])) for s in range(len(bounds) - 1))


def plan_cost(host: SearchHost, n: int, keep: float, points: Sequence[int], top_k: int) -> int:
    return cost_of(host, survivors(n, keep, len(points), top_k), points)


def fill_last_stage(host: SearchHost, live: List[int], points: Sequence[int], budget_nfe: int) -> List[int]:
    """The planned survivors with the last stage widened by what the budget has left (never beyond the
    candidates alive before the last prune), so the budget is spent as far as whole runs allow."""
    if not points:
        return list(live)
    left = int(budget_nfe) - cost_of(host, live, points)
    per = int(host.nfe(points[-1], int(host.steps)))
    out = list(live)
    out[-1] = min(out[-2], out[-1] + max(0, left) // max(1, per))
    return out


def candidates_for_budget(host: SearchHost, budget_nfe: int, keep: float, points: Sequence[int], top_k: int) -> int:
    """The most starting candidates whose whole run fits the budget (0 if not even top_k fit)."""
    n = 0
    while plan_cost(host, n + 1, keep, points, top_k) <= int(budget_nfe):
        n += 1
    return n


def spearman(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (average ranks for ties); None below 3 pairs or with a constant side."""
    if len(a) < 3:
        return None

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for t in range(i, j + 1):
                r[order[t]] = (i + j) / 2.0
            i = j + 1
        return r

    ra, rb = ranks(list(a)), ranks(list(b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


def _scores(host: SearchHost, latents, labels, verifier, final: bool) -> List[float]:
    """Scores of these rows; with a relative verifier, recombined over every row scored so far."""
    first = int(getattr(host, "scored_rows", 0))
    s = checked_scores(host.score(latents) if final else score_x0(host, latents), len(labels), labels, verifier)
    if bool(getattr(host, "relative", False)):
        s = host.rescore().reshape(-1).tolist()[first:first + len(labels)]
    return s


class _HostRounds:
    """The rounds on one host: every live row in one state, sampled together (the host micro-batches)."""

    def __init__(self, host: SearchHost, seeds: List[int], verifier: str):
        self.host, self.seeds, self.verifier = host, seeds, verifier
        self.noise = host.initial_noise(seeds)
        self.state = host.start(self.noise)

    def advance(self, alive: List[int], end: int, labels: List[str]) -> List[float]:
        final = end >= int(self.host.steps)
        self.state, x0 = self.host.sample(self.state, end, [self.seeds[i] for i in alive])
        return _scores(self.host, final_latents(self.state) if final else x0, labels, self.verifier, final=final)

    def keep(self, best: List[int], alive: List[int]) -> None:
        self.state = self.state.select(best)

    def finalist(self, row: int, i: int) -> Finalist:
        return finalist(final_latents(self.state)[row:row + 1], self.noise[i:i + 1], self.seeds[i])


def _rows_work(base: int, rows: List[int], end: int, verifier: str, drop: Sequence[int] = (), fresh: bool = False,
               replay: bool = False, expect: Optional[int] = None):
    """What an executor does with one round's instruction for its rows (``held``: candidate -> its one-row
    state, kept on the executor between rounds): drop ``drop``; start ``rows`` from their seeds (``fresh``: the
    first round, or a replay of rows whose executor failed) or continue them; sample them to schedule index
    ``end``; score their x0-predictions (their final latents at the end).  The answer: the rows, their raw
    member scores (a relative verifier's are recombined by the master) and, at the end, the finalists."""
    def work(host: SearchHost, held: Dict[Any, Any]) -> Dict[str, Any]:
        for i in drop:
            held.pop(i, None)
        seeds = [seeds_for(base, i, 1)[0] for i in rows]
        if fresh:
            noise = host.initial_noise(seeds)
            state = host.start(noise)
        else:
            missing = [i for i in rows if i not in held]
            if missing:
                raise ExecutorFault(f"holds no state for candidate(s) {missing[:5]}")
            state = State.cat([held[i][0] for i in rows])
            noise = torch.cat([held[i][1] for i in rows])
        if expect is not None and int(state.index) != int(expect):
            raise ExecutorFault(f"holds candidate(s) {rows[:5]} at step {int(state.index)}, not {int(expect)}")
        if not int(state.index) < int(end) <= int(host.steps):
            raise ValueError(f"cannot sample from step {int(state.index)} to step {int(end)} of {int(host.steps)}")
        final, begin = end >= int(host.steps), int(state.index)
        state, x0 = host.sample(state, end, seeds)
        first = int(getattr(host, "scored_rows", 0))
        labels = [f"halving candidate {i} (seed {sd})" for i, sd in zip(rows, seeds)]
        got = host.score(final_latents(state)) if final else score_x0(host, x0)
        scores = checked_scores(got, len(rows), labels, verifier)
        out: Dict[str, Any] = {"rows": list(rows), "members": member_rows(host, first, len(rows), scores),
                               "nfe": len(rows) * int(host.nfe(begin, end)), "replay": bool(replay), "finalists": {}}
        for r, i in enumerate(rows):
            if final:
                held.pop(i, None)
                out["finalists"][i] = finalist(state.latent[r:r + 1], noise[r:r + 1], seeds[r])
            else:
                held[i] = (state.select([r]), noise[r:r + 1])
        return out
    return work


def rows_work(base: int, spec: Dict[str, Any], verifier: str = "verifier"):
    """The work of a rows task from its plain-data ``spec`` (what a worker server is sent: ``rows``, ``begin``,
    ``end``, ``drop``, ``fresh``, ``replay``), as :func:`_rows_work` builds it in this process."""
    return _rows_work(int(base), [int(i) for i in spec["rows"]], int(spec["end"]), verifier,
                      drop=[int(i) for i in spec.get("drop") or ()], fresh=bool(spec.get("fresh")),
                      replay=bool(spec.get("replay")), expect=spec.get("begin"))


class _DispatchedRounds:
    """The rounds over a dispatcher's executors (``search.dispatch.Pool``): the first round's rows are cut into
    chunks the executors take on demand; each row's state then stays on the executor that made it, and each
    later round sends every executor one instruction for its rows (continue these to index L, drop those).  A
    row whose executor failed is re-run from its seed elsewhere (the same result: a row depends only on its
    seed); those NFEs are counted apart (``replayed_nfe``), never in the search's own."""

    def __init__(self, dispatch: Any, host: SearchHost, base: int, seeds: List[int], verifier: str):
        self.dispatch, self.host, self.base, self.seeds, self.verifier = dispatch, host, base, seeds, verifier
        self.owner: Dict[int, str] = {}      # candidate -> the executor holding its state
        self.dropped: Dict[str, List[int]] = {}
        self.matrix: List[torch.Tensor] = []  # every round's member rows, in scoring order (relative verifiers)
        self.relative = bool(getattr(host, "relative", False))
        self.kept: Dict[int, Finalist] = {}
        self.replayed_rows = 0
        self.replayed_nfe = 0
        self.tasks = 0
        self.round = 0
        self.index = 0                        # the schedule index every live row is at

    def _orphan(self, end: int):
        """A failed executor's rows of this round: re-run from their seeds elsewhere, in chunks of the
        micro-batch, so that several executors share them."""
        size = max(1, int(getattr(self.host, "micro_batch", 0) or 1))

        def orphan(task: Task, dead: str) -> List[Task]:
            rows = list(task.spec["rows"])
            return [Task((task.key, "replay", j), _rows_work(self.base, rows[j:j + size], end, self.verifier,
                                                             fresh=True, replay=True),
                         {"rows": rows[j:j + size], "begin": 0, "end": end, "fresh": True, "replay": True},
                         cost=float(len(rows[j:j + size]) * self.host.nfe(0, end)))
                    for j in range(0, len(rows), size)]
        return orphan

    def advance(self, alive: List[int], end: int, labels: List[str]) -> List[float]:
        self.round += 1
        nfe = self.host.nfe
        if not self.owner:  # the first round: chunks of fresh rows, taken on demand
            plan = self.dispatch.plan(len(alive), max(1, int(getattr(self.host, "micro_batch", 0) or 1)))
            tasks = [Task(("start", s), _rows_work(self.base, alive[s:s + c], end, self.verifier, fresh=True),
                          {"rows": alive[s:s + c], "begin": 0, "end": end, "fresh": True},
                          cost=float(c * nfe(0, end))) for s, c in plan]
        else:
            by: Dict[str, List[int]] = {}
            for i in alive:
                by.setdefault(self.owner[i], []).append(i)
            tasks = []
            size = max(1, int(getattr(self.host, "micro_batch", 0) or 1))
            for who, rows in by.items():  # its rows in micro-batches: an idle executor may re-run the last ones
                drop = self.dropped.pop(who, [])
                for j in range(0, len(rows), size):
                    part = rows[j:j + size]
                    tasks.append(Task(("rows", self.round, who, j),
                                      _rows_work(self.base, part, end, self.verifier, drop=drop if j == 0 else ()),
                                      {"rows": part, "begin": self.index, "end": end,
                                       "drop": drop if j == 0 else []}, owner=who,
                                      cost=float(len(part) * nfe(self.index, end))))
        queue = self.dispatch.run(tasks, orphan=self._orphan(end))
        self.tasks += len(queue.order)
        members: Dict[int, torch.Tensor] = {}
        for key in queue.order:
            ans, who = queue.done[key], queue.ran[key]
            replay = bool(ans["replay"])
            for r, i in enumerate(ans["rows"]):
                members[i] = ans["members"][r]
                if i in self.owner and self.owner[i] != who and self.owner[i] not in self.dispatch.dead:
                    self.dropped.setdefault(self.owner[i], []).append(i)  # its old state there is stale
                self.owner[i] = who
                if replay:
                    self.replayed_rows += 1
            if replay:
                self.replayed_nfe += int(ans["nfe"])
            for i, f in ans["finalists"].items():
                self.kept[i] = f
        m = torch.stack([members[i] for i in alive]).float()
        if self.relative:
            self.matrix.append(m)
            s = self.dispatch.recombine(torch.cat(self.matrix)).reshape(-1).tolist()[-len(alive):]
        else:
            s = self.dispatch.recombine(m).reshape(-1).tolist()
        self.index = end
        return checked_scores(torch.tensor(s), len(alive), labels, self.verifier)

    def keep(self, best: List[int], alive: List[int]) -> None:
        kept = {alive[j] for j in best}
        for i in alive:
            if i not in kept:
                self.dropped.setdefault(self.owner.pop(i), []).append(i)

    def finalist(self, row: int, i: int) -> Finalist:
        return self.kept.get(i) or Finalist(latent=None, result=None,  # type: ignore[arg-type]
                                            noise=self.host.initial_noise([self.seeds[i]]), seed=self.seeds[i])


def halving_search(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1, verifier: str = "verifier",
                   stop: StopRule = None, dispatch: Any = None, member_names: Sequence[str] = (),
                   **params) -> Tuple[SearchReport, List[Finalist]]:
    """``dispatch``: None = every row on this host; else a dispatcher with rounds (``search.dispatch.Pool``):
    the same candidates, prunes, scores, ranking and finalists whichever executor holds which row."""
    p = ALGORITHM.resolve(params)
    ALGORITHM.check_sampler(host.sampler_name)
    keep, T = float(p["keep"]), int(host.steps)
    gen = generation_nfe(host)
    check_budget(budget_nfe, gen * int(top_k), f"successive halving with top_k {top_k} (one generation each)")
    points = prune_points(host, int(p["rounds"]), float(p["first_level"]), float(p["last_level"]))
    n = int(p["starts"]) or candidates_for_budget(host, budget_nfe, keep, points, top_k)
    check_top_k(top_k, n, "the number of candidates")
    need = plan_cost(host, n, keep, points, top_k)
    check_budget(budget_nfe, need, f"successive halving with {n} candidates")
    live_plan = survivors(n, keep, len(points), top_k)
    if not p["starts"]:
        live_plan = fill_last_stage(host, live_plan, points, budget_nfe)
    base = wrap_seed(seed)
    report = SearchReport(algorithm="halving", top_k=top_k, verifier=verifier, nfe_per_generation=gen,
                          settings={"started": n, "keep": keep, "budget_nfe": int(budget_nfe),
                                    "prune_indices": points, "prune_levels": [relative_levels(host)[i] for i in points],
                                    "planned_survivors": live_plan, "stages": [], "rank_correlation": []})
    if not points:
        report.notes.append(f"successive halving: a {T}-step schedule has no step to prune at between the start and "
                            "the end, so this was a random search")
    seeds = seeds_for(base, 0, n)
    rounds = _HostRounds(host, seeds, verifier) if dispatch is None else \
        _DispatchedRounds(dispatch, host, base, seeds, verifier)
    alive = list(range(n))              # candidate index of each live row
    early: Dict[int, List[float]] = {}  # candidate -> its x0 scores at the prune points it reached
    spent, index = 0, 0
    stopper = Stopper(stop, "prune rounds")
    for r, point in enumerate(points):
        labels = [f"halving x0 at step {point}: candidate {i} (seed {seeds[i]})" for i in alive]
        sc = rounds.advance(alive, point, labels)
        spent += len(alive) * int(host.nfe(index, point))
        index = point
        for i, v in zip(alive, sc):
            early.setdefault(i, []).append(v)
        fired = stopper.see(max(sc), spent)
        k = top_k if fired else live_plan[r + 1]
        best = top_k_indices(sc, k)
        report.settings["stages"].append({"index": point, "live": len(alive), "candidates": list(alive),
                                          "kept": [alive[j] for j in best], "scores": sc})
        report.trace.append({"round": r + 1, "nfe": spent, "best": max(sc), "index": point})
        rounds.keep(best, alive)
        alive = [alive[j] for j in best]
        if fired:
            break
    labels = [f"halving candidate {i} (seed {seeds[i]})" for i in alive]
    final = rounds.advance(alive, T, labels)
    spent += len(alive) * int(host.nfe(index, T))
    keeper = TopK(top_k)
    results: Dict[int, CandidateResult] = {}
    for row, (i, v) in enumerate(zip(alive, final)):
        results[i] = CandidateResult(index=i, seed=seeds[i], score=v, nfe=gen, noise_id=labels[row])
        keeper.offer(v, i, rounds.finalist(row, i))
    if dispatch is not None:
        if bool(getattr(host, "relative", False)) and member_names:
            last = rounds.matrix[-1]
            for row, i in enumerate(alive):
                results[i].verifier_scores = {k: float(v) for k, v in zip(member_names, last[row].tolist())
                                              if math.isfinite(v)}
        report.settings["dispatch"] = {"executors": int(dispatch.executors()), "tasks": rounds.tasks,
                                       "failed": dict(dispatch.dead), "replayed_rows": rounds.replayed_rows,
                                       "replayed_nfe": rounds.replayed_nfe,
                                       "finished_on": {i: rounds.owner.get(i, "?") for i in alive}}
        if rounds.replayed_rows:
            report.notes.append(f"{rounds.replayed_rows} row(s) were re-run from their seeds on another executor "
                                f"(theirs had failed, or was behind) ({rounds.replayed_nfe} NFEs more, not counted "
                                "in the search's)")
    for r in range(len(report.settings["stages"])):
        rho = spearman([early[i][r] for i in alive], final)
        report.settings["rank_correlation"].append(rho)
    report.trace.append({"round": len(report.settings["stages"]) + 1, "nfe": spent, "best": max(final), "index": T})
    report.candidates = [results[i] for i in sorted(results)]
    report.settings["finished"] = len(alive)
    report.nfe_total = spent
    stopper.close(report, budget_nfe, spent)
    if spent < int(budget_nfe) and not stopper.fired:
        if p["starts"]:
            report.settings["unspent_reason"] = (f"starts is fixed at {n} (0 sizes the search from the budget), so "
                                                 "the rest was left")
        else:
            report.settings["unspent_reason"] = (f"one more candidate would need "
                                                 f"{plan_cost(host, n + 1, keep, points, top_k) - need} NFEs and one "
                                                 f"more finisher {int(host.nfe(points[-1], T)) if points else gen}")
    report.finalize()
    return report, keeper.finalists(results)


def _check(p: Dict[str, Any]) -> None:
    if p["rounds"] > 1 and not p["first_level"] > p["last_level"]:
        raise ValueError(f"successive halving: first_level ({p['first_level']}) must be above last_level "
                         f"({p['last_level']}): prune points go from noisy to clean")


ALGORITHM = Algorithm(
    name="halving", run=halving_search, title="Successive Halving (x0 pruning)", node="SuccessiveHalvingStrategy",
    description=("Successive halving on x0-predictions (in the spirit of TTSnap / LatSearch): start more candidates "
                 "than random search could finish, score each one's x0-prediction part-way (no extra NFEs) and "
                 "finish only the best fraction. The report gives the rank correlation between the early and the "
                 "final scores, so you can see whether pruning was safe for your model. Finalists replay in a stock "
                 "KSampler from their seed. Needs a single-step sampler."),
    params=(
        Param("starts", 0, "Candidates started; 0 = as many as the budget holds (more than random search could "
                           "finish).", min=0, max=65536),
        Param("keep", 0.5, "Fraction of the live candidates kept at each prune point (at least top_k).",
              min=0.05, max=0.95, step=0.05),
        Param("rounds", 1, "Prune points.", min=1, max=16),
        Param("first_level", 0.4, "Noise level of the first prune point, as a fraction of your schedule's noise "
                                  "span (1 = start, 0 = clean). Earlier (higher) prunes save more but their "
                                  "x0-predictions predict the final score less well.", min=0.05, max=0.95, step=0.05),
        Param("last_level", 0.2, "With rounds > 1: noise level of the last prune point (same scale; below "
                                 "first_level); the others lie evenly between.", min=0.05, max=0.95, step=0.05),
    ),
    samplers="segmentable", finalists="noise", check=_check, dispatch="rounds")
