"""Search over paths (Paths-N, Ma et al. 2025 §3.2), placed on the user's schedule.

Levels (``start_level``, ``forward`` Δf, ``backward`` Δb) are fractions of the
**user's schedule's own noise span**: with ``level(i)`` the host's noise level
of schedule position i, the relative level of i is
``(level(i) − level(T)) / (level(0) − level(T))`` (1 = where the schedule
starts, 0 = its clean end).  For a full text-to-image schedule this is the
model's noise timeline; for an img2img schedule that starts part-way it is
that part.  Positions are the nearest schedule indices.

1. N starting noises (seeds base+i) are denoised to the search start
   ``s`` = the index at ``start_level`` (at least 1, at most T−1).
2. Each round, from index c: every one of the N states is forward-noised
   M times (``host.renoise``, fresh seeded unit noise) to f = the index at
   rel(c)+Δf, **at least one step back** (f ≤ c−1), then denoised to b = the
   index at rel(c)+Δf−Δb (the end once that is ≤ 0), **at least one step
   further** (b ≥ c+1).  The x0-prediction of each of the N·M rows is scored
   (at the end of the schedule: the final latent) and the top N rows survive
   (ties: the lower row index, rows numbered parent-major).
3. At the end of the schedule the top-k rows of the last round are the
   finalists (the paper's closing random search among the survivors).

Budget (whole budget spent where it can be):

* ``paths`` = 0 sizes N from the budget: the most paths whose complete search
  fits (at least 1), and the **last round** (the one that reaches the end)
  takes as many re-noisings per path as the rest of the budget holds (at
  least M).  A fixed ``paths`` keeps M in every round and reports what it
  left unspent.
* A round runs only if it and denoising its N survivors to the end still fit.
* With ``paths`` = 0, a budget under ``min_generations`` (4) generations is
  random search's candidates exactly (``settings["fallback"]``, and a note):
  at two generations paths measured below random search on the benchmark
  (one path, one round), and under four it did not beat it.
* When a regular round no longer fits, the search tries one last round
  straight to the end (renoise to f, or less far back when that is too
  expensive) with at least 2 re-noisings per path; only when even that does not
  fit are the N states denoised to the end without search, and the report
  says so (``notes``, ``settings["unspent_reason"]``).  With a start index ≥ 2
  any budget of two generations or more therefore has a search round.

Paths have no single starting noise, so finalists have ``noise=None`` and a
``recipe``; ``CandidateResult.nfe`` is the NFEs along that row's lineage.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from .coarse_to_fine import lineage
from .common import (TAG_PATHS, TopK, check_budget, check_top_k, checked_scores, derived_noise, end_level, finalist,
                     generation_nfe, score_x0, top_k_indices)
from .dispatch import ExecutorFault, Task
from .host import SearchHost, State, derive_seed, final_latents
from .sharded import member_rows
from .noise import seeds_for, wrap_seed
from .random_search import random_fallback
from .registry import Algorithm, Param
from .report import CandidateResult, Finalist, SearchReport
from .stopping import StopRule, Stopper


def relative_levels(host: SearchHost) -> List[float]:
    """The relative noise level of every schedule position (1 at index 0, 0 at the end)."""
    T = int(host.steps)
    lv = [float(host.level(i)) for i in range(T + 1)]
    top, bottom = lv[0], lv[T]
    span = top - bottom
    if not span > 0:  # a degenerate schedule: fall back on positions
        return [1.0 - i / T for i in range(T + 1)]
    return [(v - bottom) / span for v in lv]


def _nearest(rel: List[float], level: float) -> int:
    return min(range(len(rel)), key=lambda i: (abs(rel[i] - level), i))


def search_start(host: SearchHost, start_level: float, rel: Optional[List[float]] = None) -> int:
    rel = rel or relative_levels(host)
    return min(max(_nearest(rel, float(start_level)), 1), int(host.steps) - 1)


def next_round(host: SearchHost, index: int, forward: float, backward: float,
               rel: Optional[List[float]] = None) -> Tuple[int, int]:
    """(renoise index f, end index b) of a round that starts at schedule position ``index``."""
    rel = rel or relative_levels(host)
    T = int(host.steps)
    here = rel[index]
    f = min(max(_nearest(rel, min(1.0, here + forward)), 0), index - 1)
    target = here + forward - backward
    b = T if target <= 1e-9 else _nearest(rel, target)
    return f, min(max(b, index + 1), T)


def round_plan(host: SearchHost, start_level: float, forward: float, backward: float) -> Tuple[int, List[Tuple[int, int]]]:
    """The search start and every regular round's (f, b) up to the end of the schedule."""
    rel = relative_levels(host)
    T = int(host.steps)
    s = search_start(host, start_level, rel)
    rounds, c = [], s
    while c < T:
        f, b = next_round(host, c, forward, backward, rel)
        rounds.append((f, b))
        c = b
    return s, rounds


def plan_cost(host: SearchHost, n: int, m: int, s: int, rounds: List[Tuple[int, int]]) -> int:
    """NFEs of a complete search with n paths and m re-noisings per path per round."""
    return n * int(host.nfe(0, s)) + sum(n * m * int(host.nfe(f, b)) for f, b in rounds)


def paths_for_budget(host: SearchHost, budget_nfe: int, m: int, start_level: float, forward: float,
                     backward: float) -> int:
    """The most paths whose complete search fits ``budget_nfe`` (at least 1)."""
    s, rounds = round_plan(host, start_level, forward, backward)
    per = plan_cost(host, 1, m, s, rounds)
    return max(1, int(budget_nfe) // max(per, 1))


def lineage_finalist(latent: Optional[torch.Tensor], recipe: Dict[str, Any]) -> Finalist:
    """A lineage's finalist: with its latent where it was made here, else its recipe only (whoever finishes the
    search re-makes it: ``search.coarse_to_fine.replay``)."""
    if latent is not None:
        return finalist(latent, recipe=recipe)
    rec = {"seed": int(recipe["seed"]), "ops": [tuple(op) for op in recipe["ops"]]}
    return Finalist(latent=None, result=None, recipe=rec)  # type: ignore[arg-type]


class _HostPaths:
    """The paths on one host: the N surviving states in one batch (the host micro-batches)."""

    def __init__(self, host: SearchHost, seeds: List[int], s_idx: int, verifier: str):
        self.host, self.verifier = host, verifier
        self.state = host.start(host.initial_noise(seeds))
        if s_idx > 0:
            self.state, _ = host.sample(self.state, s_idx, seeds)
        self.new_state: Optional[State] = None

    @property
    def index(self) -> int:
        return int(self.state.index)

    def branch(self, rows, noise_seeds, run_seeds, f_idx, b_idx, labels, parent_recipes, child_recipes):
        """Each row of ``rows`` (a survivor's position) re-noised to ``f_idx`` with its noise seed and sampled to
        ``b_idx`` with its run seed: (each child's final latent at the end of the schedule, else Nones; scores
        of the children's x0-predictions, or of their final latents)."""
        host = self.host
        expanded = self.state.select(rows)
        renoised = host.renoise(expanded, f_idx, derived_noise(expanded.noise[0:1], noise_seeds))
        self.new_state, x0 = host.sample(renoised, b_idx, run_seeds)
        at_end = b_idx == int(host.steps)
        cand = final_latents(self.new_state) if at_end else x0
        scores = checked_scores(host.score(cand) if at_end else score_x0(host, cand), len(rows), labels,
                                self.verifier)
        return ([cand[i:i + 1] for i in range(len(rows))] if at_end else [None] * len(rows)), scores

    def keep(self, keep: List[int]) -> None:
        self.state = self.new_state.select(keep)

    def finish(self, n: int, fin_seeds, labels, recipes):
        state = self.state if n == len(self.state) else self.state.select(range(n))
        state, _ = self.host.sample(state, int(self.host.steps), fin_seeds)
        latents = final_latents(state)
        scores = checked_scores(self.host.score(latents), n, labels, self.verifier)
        return [latents[i:i + 1] for i in range(n)], scores


MAX_ROWS = 65536


def digest(latent: torch.Tensor) -> str:
    """A final latent's fingerprint: two rows with the same digest are the same sample (particles' copies)."""
    import hashlib
    t = latent.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def paths_spec(spec: Any) -> Dict[str, Any]:
    """A paths instruction as plain data, checked (what a worker is sent and acts on).  ValueError otherwise."""
    def ints(v, n=None, what="") -> List[int]:
        if not isinstance(v, list) or len(v) > MAX_ROWS or not all(type(i) is int and 0 <= i < 2 ** 64 for i in v) \
                or (n is not None and len(v) != n):
            raise ValueError(f"a paths instruction's {what} must be a list of non-negative integers")
        return list(v)
    if not isinstance(spec, dict) or spec.get("op") not in ("start", "branch", "finish", "advance", "make", "roll",
                                                            "score"):
        raise ValueError("a paths instruction is an object with op start, branch, finish, advance, make, roll or "
                         "score")
    out: Dict[str, Any] = {"op": spec["op"], "drop": ints(spec.get("drop") or [], what="drop")}
    renoise = spec["op"] == "branch" or (spec["op"] == "make" and spec.get("renoise") is not None)
    for k in ("begin", "end") + (("renoise",) if renoise else ()):
        if type(spec.get(k)) is not int or not 0 <= spec[k] <= 100000:
            raise ValueError(f"a paths instruction's {k} must be a schedule step")
        out[k] = spec[k]
    if spec["op"] == "make":  # the tree search's new children: [id, parent (-1: a fresh seed), noise seed,
        ch = spec.get("children")  # run seed, screened 0/1]
        if not isinstance(ch, list) or not 1 <= len(ch) <= MAX_ROWS:
            raise ValueError("a make instruction has 1 or more children")
        rows = []
        for c in ch:
            if not (isinstance(c, list) and len(c) == 5 and all(type(v) is int for v in c) and c[0] >= 0
                    and c[1] >= -1 and c[2] >= 0 and c[3] >= 0 and c[4] in (0, 1)):
                raise ValueError("a make instruction's children are [id, parent or -1, noise seed, run seed, 0|1]")
            rows.append(list(c))
        out["children"] = rows
        out["renoise"] = spec.get("renoise") if renoise else None
        if not out["begin"] < out["end"] or len({c[0] for c in rows}) != len(rows) or \
                (renoise and not out["renoise"] < out["begin"]):
            raise ValueError("a make instruction samples on past where it began and names each child once")
    elif spec["op"] == "roll":  # the tree search's rollout: [id, parent, run seed]
        out["children"] = [ints(c, 3, "children") for c in (spec.get("children") or [])]
        if not out["children"] or not out["begin"] < out["end"] or \
                len({c[0] for c in out["children"]}) != len(out["children"]):
            raise ValueError("a roll instruction has children, samples on, and names each child once")
    elif spec["op"] in ("branch", "advance"):
        ch = spec.get("children")
        if not isinstance(ch, list) or not 1 <= len(ch) <= MAX_ROWS:
            raise ValueError("a branch or advance instruction has 1 or more children")
        out["children"] = [ints(c, 4, "children") for c in ch]
        back = out["renoise"] < out["begin"] if spec["op"] == "branch" else True
        if not back or not out["begin"] < out["end"] or len({c[0] for c in out["children"]}) != len(ch):
            raise ValueError("a branch re-noises back; it and an advance sample on past where they began and name "
                             "each child once")
    else:
        out["rows"] = ints(spec.get("rows"), what="rows")
        out["seeds"] = ints(spec.get("seeds"), len(out["rows"]), "seeds")
        if not out["rows"] or len(set(out["rows"])) != len(out["rows"]):
            raise ValueError("a paths instruction names each of its rows once, and at least one")
    lin = spec.get("lineage") or {}
    if not isinstance(lin, dict) or len(lin) > MAX_ROWS:
        raise ValueError("a paths instruction's lineage maps rows to recipes")
    out["lineage"] = {}
    for k, r in lin.items():
        ops = r.get("ops") if isinstance(r, dict) else None
        if not str(k).isdigit() or type(r.get("seed")) is not int or not isinstance(ops, list) or len(ops) > 4096:
            raise ValueError("a paths instruction's lineage maps rows to recipes (a seed and operations)")
        clean = []
        for op in ops:
            if not (isinstance(op, list) and len(op) == 3 and op[0] in ("sample", "renoise")
                    and type(op[1]) in (int, float) and 0.0 <= float(op[1]) <= 1.0 and type(op[2]) is int):
                raise ValueError("a recipe's operations are [sample|renoise, level, seed]")
            clean.append((op[0], float(op[1]), int(op[2])))
        out["lineage"][int(k)] = {"seed": int(r["seed"]), "ops": clean}
    return out


def paths_work(spec: Dict[str, Any], verifier: str):
    """What an executor does with one of a dispatched paths search's instructions (``held``: row id -> its
    one-row state, kept between rounds): drop ``drop``; then

    * ``start``: start ``rows`` from their seeds (noise and sampler seed) and sample them to ``end``;
    * ``branch``: each child ``[id, parent, noise seed, run seed]`` made from its parent's state re-noised to
      ``renoise`` and sampled to ``end``; with ``lineage`` (parent -> recipe), the parents are first re-made
      from their recipes (their executor failed);
    * ``finish``: ``rows`` sampled to the end with ``seeds``;

    and scores what ``branch`` and ``finish`` made (x0-predictions, or final latents at the end).  The answer:
    the rows, their raw member scores, NFEs, and (in this process) their final latents."""
    def work(host: SearchHost, held: Dict[Any, Any]) -> Dict[str, Any]:
        T = int(host.steps)
        for i in spec.get("drop") or ():
            held.pop(i, None)
        op, end = spec["op"], int(spec["end"])
        replayed, remade = 0, 0
        if op == "start":
            ids, seeds = list(spec["rows"]), list(spec["seeds"])
            state = host.start(host.initial_noise(seeds))
            if end > 0:
                state, _ = host.sample(state, end, seeds)
            for r, i in enumerate(ids):
                held[i] = state.select([r])
            return {"rows": ids, "members": torch.zeros(len(ids), 0), "nfe": len(ids) * int(host.nfe(0, end)),
                    "latents": None, "replayed": 0, "remade": 0}

        def state_of(i: Any) -> State:
            nonlocal replayed, remade
            if i not in held:
                recipe = (spec.get("lineage") or {}).get(i)
                if recipe is None:
                    raise ExecutorFault(f"holds no state for path row {i}")
                held[i], _, cost = lineage(host, recipe)
                replayed += cost
                remade += 1
            return held[i]
        if op == "branch":
            children = [list(c) for c in spec["children"]]
            ids = [c[0] for c in children]
            parents = State.cat([state_of(c[1]) for c in children])
            if int(parents.index) != int(spec["begin"]):
                raise ExecutorFault(f"holds path rows at step {int(parents.index)}, not {int(spec['begin'])}")
            renoised = host.renoise(parents, int(spec["renoise"]),
                                    derived_noise(parents.noise[0:1], [c[2] for c in children]))
            state, x0 = host.sample(renoised, end, [c[3] for c in children])
            nfe = len(ids) * int(host.nfe(int(spec["renoise"]), end))
        elif op == "advance":  # particles: each child a copy of its parent, sampled on with its own seed
            children = [list(c) for c in spec["children"]]
            ids = [c[0] for c in children]
            parents = State.cat([state_of(c[1]) for c in children])
            if int(parents.index) != int(spec["begin"]):
                raise ExecutorFault(f"holds particles at step {int(parents.index)}, not {int(spec['begin'])}")
            state, _ = host.sample(parents, end, [c[2] for c in children])
            nfe = len(ids) * int(host.nfe(int(spec["begin"]), end))
            if end < T:  # the reward of the state just returned: its own x0-prediction
                x0 = host.predict_x0(state, [c[3] for c in children])
                nfe += len(ids) * int(getattr(host, "nfe_predict", 1))
        elif op == "finish":
            ids = list(spec["rows"])
            state = State.cat([state_of(i) for i in ids])
            begin = int(state.index)
            state, x0 = host.sample(state, T, list(spec["seeds"]))
            nfe = len(ids) * int(host.nfe(begin, T))
        elif op == "make":  # the tree search's new children: from fresh seeds, or from parents (re-noised)
            children = [list(c) for c in spec["children"]]
            ids = [c[0] for c in children]
            if children[0][1] < 0:
                state = host.start(host.initial_noise([c[3] for c in children]))
            else:
                state = State.cat([state_of(c[1]) for c in children])
                if int(state.index) != int(spec["begin"]):
                    raise ExecutorFault(f"holds tree nodes at step {int(state.index)}, not {int(spec['begin'])}")
                if spec.get("renoise") is not None:
                    state = host.renoise(state, int(spec["renoise"]),
                                         derived_noise(state.noise[0:1], [c[2] for c in children]))
            begin = int(state.index)
            state, x0 = host.sample(state, end, [c[3] for c in children])
            nfe = len(ids) * int(host.nfe(begin, end))
            for r, i in enumerate(ids):
                held[i] = state.select([r])
            screened = [r for r, c in enumerate(children) if c[4]]
            first = int(getattr(host, "scored_rows", 0))
            if screened and end < T:
                labels = [f"tree node {ids[r]}" for r in screened]
                sc = checked_scores(score_x0(host, x0[screened]), len(screened), labels, verifier)
                members = member_rows(host, first, len(screened), sc)
            else:
                members = torch.zeros(0, 1)
            return {"rows": ids, "screened": [ids[r] for r in screened], "members": members, "nfe": nfe,
                    "latents": None, "replayed": int(replayed), "remade": int(remade), "digests": None}
        elif op == "roll":  # the tree search's rollouts: each child the next stretch of its parent's run
            children = [list(c) for c in spec["children"]]
            ids = [c[0] for c in children]
            state = State.cat([state_of(c[1]) for c in children])
            if int(state.index) != int(spec["begin"]):
                raise ExecutorFault(f"holds tree nodes at step {int(state.index)}, not {int(spec['begin'])}")
            state, _ = host.sample(state, end, [c[2] for c in children])
            for r, i in enumerate(ids):
                held[i] = state.select([r])
            return {"rows": ids, "members": torch.zeros(len(ids), 0),
                    "nfe": len(ids) * int(host.nfe(int(spec["begin"]), end)), "latents": None,
                    "replayed": int(replayed), "remade": int(remade), "digests": None}
        elif op == "score":  # the tree search's finished samples, scored
            ids = list(spec["rows"])
            state = State.cat([state_of(i) for i in ids])
            if int(state.index) != T:
                raise ExecutorFault(f"holds tree nodes at step {int(state.index)}, not the end")
            nfe, x0 = 0, None
            for i in ids:
                held.pop(i, None)
        else:
            raise ValueError(f"unknown paths instruction {op!r}")
        at_end = end >= T
        cand = final_latents(state) if at_end else x0
        first = int(getattr(host, "scored_rows", 0))
        labels = [f"path row {i}" for i in ids]
        scores = checked_scores(host.score(cand) if at_end else score_x0(host, cand), len(ids), labels, verifier)
        if not at_end:
            for r, i in enumerate(ids):
                held[i] = state.select([r])
        return {"rows": ids, "members": member_rows(host, first, len(ids), scores), "nfe": nfe,
                "latents": cand if at_end else None, "replayed": int(replayed), "remade": int(remade),
                "digests": [digest(cand[r]) for r in range(len(ids))] if at_end else None}
    return work


class _DispatchedPaths:
    """The paths over a dispatcher's executors (``search.dispatch.Pool``, the worker servers): the N starting
    rows are cut into chunks the executors take on demand; a path's state then stays on the executor that made
    it, its children are made there (re-noised and sampled from it), and the survivors stay where they were
    made; the losers and the parents are dropped with the next instruction.  A task whose executor failed runs
    elsewhere, its parents first re-made from their recipes (the same rows: a row depends only on its seeds);
    those NFEs are counted apart.  Scores come back as raw member scores, recombined here over every row scored
    so far (a relative verifier), in the one-machine search's order."""

    def __init__(self, dispatch: Any, host: SearchHost, seeds: List[int], s_idx: int, verifier: str):
        self.dispatch, self.host, self.verifier = dispatch, host, verifier
        self.relative = bool(getattr(host, "relative", False))
        self.matrix: List[torch.Tensor] = []
        self.owner: Dict[int, str] = {}
        self.dropped: Dict[str, List[int]] = {}
        self.recipes: Dict[int, Dict[str, Any]] = {}
        self.digests: Dict[int, str] = {}
        self.replayed_rows = self.replayed_nfe = self.tasks = 0
        self.index_now = int(s_idx)
        self.next_id = len(seeds)
        self.size = max(1, int(getattr(host, "micro_batch", 0) or 1))
        self.ids = list(range(len(seeds)))
        for i, sd in enumerate(seeds):
            self.recipes[i] = {"seed": int(sd), "ops": [("sample", end_level(host, s_idx), int(sd))] if s_idx > 0
                               else []}
        plan = dispatch.plan(len(seeds), self.size)
        tasks = [Task(("start", st), paths_work({"op": "start", "rows": self.ids[st:st + c],
                                                  "seeds": seeds[st:st + c], "end": s_idx}, verifier),
                      {"kind": "paths", "op": "start", "rows": self.ids[st:st + c], "seeds": seeds[st:st + c],
                       "begin": 0, "end": s_idx}, cost=float(c * max(1, host.nfe(0, s_idx))))
                 for st, c in plan]
        self._run(tasks, scored=False)
        self.children: List[int] = []

    @property
    def index(self) -> int:
        return self.index_now

    def _orphan(self, task: Task, dead: str) -> Task:
        spec = dict(task.spec)
        parents = [c[1] for c in spec["children"] if c[1] >= 0] if "children" in spec else list(spec["rows"])
        spec["lineage"] = {i: self.recipes[i] for i in parents}
        spec["drop"] = []
        return Task((task.key, "replay"), paths_work(spec, self.verifier), spec, cost=task.cost * 2)

    def _run(self, tasks: List[Task], scored: bool = True):
        queue = self.dispatch.run(tasks, orphan=self._orphan)
        self.tasks += len(queue.order)
        self.last_queue = queue
        rows, members, latents = [], [], {}
        for key in queue.order:
            ans, who = queue.done[key], queue.ran[key]
            for r, i in enumerate(ans["rows"]):
                if i in self.owner and self.owner[i] != who and self.owner[i] not in self.dispatch.dead:
                    self.dropped.setdefault(self.owner[i], []).append(i)
                self.owner[i] = who
                rows.append(i)
                if ans["latents"] is not None:
                    latents[i] = ans["latents"][r:r + 1]
                if ans.get("digests"):
                    self.digests[i] = ans["digests"][r]
            self.replayed_nfe += int(ans.get("replayed") or 0)
            self.replayed_rows += int(ans.get("remade") or 0)
            members.append(ans["members"])
        return rows, (torch.cat(members) if scored and members else None), latents

    def _tasks(self, op: str, items: List[Any], owner_of, spec_of, cost_each: float) -> List[Task]:
        by: Dict[str, List[Any]] = {}
        for it in items:
            by.setdefault(owner_of(it), []).append(it)
        tasks = []
        for who, its in by.items():
            drop = self.dropped.pop(who, [])
            for j in range(0, len(its), self.size):
                spec = dict(spec_of(its[j:j + self.size]), kind="paths", op=op, drop=drop if j == 0 else [])
                tasks.append(Task((op, self.tasks, who, j), paths_work(spec, self.verifier), spec, owner=who,
                                  cost=float(len(its[j:j + self.size]) * cost_each)))
        return tasks

    def _scores(self, order: List[int], rows: List[int], m: torch.Tensor, labels) -> List[float]:
        pos = {i: r for r, i in enumerate(rows)}
        m = m[[pos[i] for i in order]].float()
        if self.relative:
            self.matrix.append(m)
            s = self.dispatch.recombine(torch.cat(self.matrix)).reshape(-1).tolist()[-len(order):]
        else:
            s = self.dispatch.recombine(m).reshape(-1).tolist()
        return checked_scores(torch.tensor(s), len(order), labels, self.verifier)

    def branch(self, rows, noise_seeds, run_seeds, f_idx, b_idx, labels, parent_recipes, child_recipes):
        children = []
        for k, q in enumerate(rows):
            cid = self.next_id
            self.next_id += 1
            self.recipes[cid] = child_recipes[k]
            children.append([cid, self.ids[q], int(noise_seeds[k]), int(run_seeds[k])])
        begin = self.index_now
        tasks = self._tasks("branch", children, lambda c: self.owner[c[1]],
                            lambda part: {"children": part, "begin": begin, "renoise": int(f_idx),
                                          "end": int(b_idx), "recipes": {c[0]: self.recipes[c[0]] for c in part}},
                            float(self.host.nfe(f_idx, b_idx)))
        got, m, latents = self._run(tasks)
        order = [c[0] for c in children]
        scores = self._scores(order, got, m, labels)
        for p in set(self.ids):  # the parents are not needed any more
            self.dropped.setdefault(self.owner[p], []).append(p)
        self.children = order
        self.index_now = int(b_idx)
        return [latents.get(i) for i in order], scores

    def keep(self, keep: List[int]) -> None:
        kept = [self.children[k] for k in keep]
        for i in set(self.children) - set(kept):
            self.dropped.setdefault(self.owner[i], []).append(i)
        self.ids = kept

    def finish(self, n: int, fin_seeds, labels, recipes):
        T = int(self.host.steps)
        items = [(self.ids[k], int(fin_seeds[k])) for k in range(n)]
        begin = self.index_now
        tasks = self._tasks("finish", items, lambda it: self.owner[it[0]],
                            lambda part: {"rows": [it[0] for it in part], "seeds": [it[1] for it in part],
                                          "begin": begin, "end": T}, float(self.host.nfe(begin, T)))
        for t in tasks:  # what each finished row's recipe is, for an audit of a worker's claim
            t.spec["recipes"] = {i: recipes[self.ids.index(i)] for i in t.spec["rows"]}
        got, m, latents = self._run(tasks)
        order = [it[0] for it in items]
        for k, i in enumerate(order):
            self.recipes[i] = recipes[k]
        scores = self._scores(order, got, m, labels)
        return [latents.get(i) for i in order], scores

    def summary(self) -> Dict[str, Any]:
        return {"executors": int(self.dispatch.executors()), "tasks": self.tasks, "failed": dict(self.dispatch.dead),
                "replayed_rows": self.replayed_rows, "replayed_nfe": self.replayed_nfe}

    def report_to(self, report: SearchReport, what: str) -> None:
        """The report's ``settings["dispatch"]``, and a note when rows (``what``) were re-made elsewhere."""
        report.settings["dispatch"] = self.summary()
        if self.replayed_rows:
            report.notes.append(f"{self.replayed_rows} {what} were re-made from their lineage on another executor "
                                f"(theirs had failed, or was behind) ({self.replayed_nfe} NFEs more, not counted in "
                                "the search's)")


def paths_search(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1, verifier: str = "verifier",
                 stop: StopRule = None, dispatch=None, member_names=(), **params
                 ) -> Tuple[SearchReport, List[Finalist]]:
    """``dispatch``: None = every path on this host; else a dispatcher with rounds (``search.dispatch.Pool``,
    the worker servers): each path's state stays on the executor that made it, its re-noisings are made there,
    and the same rows, scores, survivors and finalists come out whoever holds which path."""
    p = ALGORITHM.resolve(params)
    ALGORITHM.check_sampler(host.sampler_name)
    M, T = p["noises_per_path"], int(host.steps)
    start_level, forward, backward = p["start_level"], p["forward"], p["backward"]
    gen = generation_nfe(host)
    budget = int(budget_nfe)
    if not p["paths"] and budget < int(p["min_generations"]) * gen:
        check_budget(budget, gen, "search over paths (one generation)")
        return random_fallback(host, algorithm="paths", seed=seed, budget_nfe=budget, top_k=top_k, verifier=verifier,
                               stop=stop, why=f"a {budget}-NFE budget is under {p['min_generations']} generations "
                               f"({int(p['min_generations']) * gen} NFEs), where paths measured below random search",
                               dispatch=dispatch)
    N = p["paths"] or paths_for_budget(host, budget, M, start_level, forward, backward)
    check_budget(budget, N * gen, f"search over paths with {N} paths (one generation per path)")
    check_top_k(top_k, N, "the number of paths")
    base = wrap_seed(seed)
    rel = relative_levels(host)
    s_idx, plan = round_plan(host, start_level, forward, backward)
    report = SearchReport(algorithm="paths", top_k=top_k, verifier=verifier, nfe_per_generation=gen,
                          settings={"paths": N, "noises_per_path": M, "start_level": float(start_level),
                                    "forward": float(forward), "backward": float(backward),
                                    "budget_nfe": budget, "start_index": s_idx,
                                    "planned_rounds": [list(r) for r in plan], "rounds": []})
    if budget < 4 * gen:
        report.notes.append(f"paths: a {budget}-NFE budget is under four generations ({4 * gen} NFEs), which holds "
                            f"{N} path(s) and few re-noisings; at two generations paths fell below random search "
                            "in the benchmarks (bench/README.md): random search is the better choice here")
    seeds = seeds_for(base, 0, N)
    rows_of = _HostPaths(host, seeds, s_idx, verifier) if dispatch is None else \
        _DispatchedPaths(dispatch, host, seeds, s_idx, verifier)
    spent = N * host.nfe(0, s_idx) if s_idx > 0 else 0
    labels = [f"paths p{i} (seed {s})" for i, s in enumerate(seeds)]
    lineage_nfe = [host.nfe(0, s_idx)] * N
    # how each row was made, replayable on another schedule (coarse-to-fine)
    recipes = [{"seed": s, "ops": [("sample", end_level(host, s_idx), s)] if s_idx > 0 else []} for s in seeds]
    rnd = 0
    final_rows = None  # (latents, labels, lineage nfe, recipes) of rows that reached the end
    final_scores: List[float] = []
    # observations: the best x0 score of each round that does not reach the end; when the rule fires the
    # top_k paths are finished without further search
    stopper = Stopper(stop, "rounds")

    def finish_without_search(n, labels, lineage_nfe, recipes, rnd):
        """The first ``n`` surviving rows denoised to the end (fresh sampler seeds), scored: (rows, scores,
        NFEs)."""
        fin_seeds = [derive_seed(base, TAG_PATHS, rnd + 1, i, 0, 1) for i in range(n)]
        cost = host.nfe(rows_of.index, T)
        recipes = [{"seed": r["seed"], "ops": r["ops"] + [("sample", 0.0, fs)]} for r, fs in zip(recipes, fin_seeds)]
        latents, scores = rows_of.finish(n, fin_seeds, labels, recipes)
        return (latents, labels, [x + cost for x in lineage_nfe], recipes), scores, n * cost

    while rows_of.index < T:
        c = rows_of.index
        f_idx, b_idx = next_round(host, c, forward, backward, rel)
        left = budget - spent
        m = M
        if N * M * host.nfe(f_idx, b_idx) + N * host.nfe(b_idx, T) > left:
            # no room for a regular round: one last round straight to the end, renoising as far back as fits
            b_idx, m = T, 0
            for f in range(f_idx, c):
                most = left // max(1, N * host.nfe(f, T))
                if most >= 2:
                    f_idx, m = f, int(most)
                    break
            if m == 0:
                # not even that: finish the N survivors without search
                final_rows, final_scores, cost = finish_without_search(N, labels, lineage_nfe, recipes, rnd)
                spent += cost
                report.settings["finished_without_search_from_index"] = c
                need = N * 2 * host.nfe(c - 1, T)
                if rnd == 0:
                    report.notes.append(
                        f"paths: the {budget}-NFE budget holds no search round for {N} path(s) (the smallest, "
                        f"2 re-noisings one step back, needs {N * host.nfe(0, s_idx) + need} NFEs), so this was "
                        f"{N} plain sample(s), below random search at equal NFE: raise the budget to at least two "
                        "generations, or lower paths")
                else:
                    report.notes.append(f"paths: after {rnd} round(s) the rest of the budget held no further round, "
                                        f"so the paths were finished from step {c} without search")
                break
        elif b_idx == T and not p["paths"]:
            m = max(M, left // max(1, N * host.nfe(f_idx, T)))  # the last round spends what is left
        rnd += 1
        rows = [q for q in range(N) for _ in range(m)]  # parent-major: row q*m + j
        noise_seeds = [derive_seed(base, TAG_PATHS, rnd, q, j, 0) for q in range(N) for j in range(m)]
        run_seeds = [derive_seed(base, TAG_PATHS, rnd, q, j, 1) for q in range(N) for j in range(m)]
        round_cost = N * m * host.nfe(f_idx, b_idx)
        spent += round_cost
        at_end = b_idx == T
        row_labels = [f"{labels[q]} r{rnd} m{j}" for q in range(N) for j in range(m)]
        row_recipes = [{"seed": recipes[q]["seed"],
                        "ops": recipes[q]["ops"] + [("renoise", float(host.level(f_idx)), noise_seeds[j]),
                                                    ("sample", end_level(host, b_idx), run_seeds[j])]}
                       for j, q in enumerate(rows)]
        cand, scores = rows_of.branch(rows, noise_seeds, run_seeds, f_idx, b_idx, row_labels, recipes, row_recipes)
        keep = top_k_indices(scores, N)
        row_nfe = [lineage_nfe[q] + host.nfe(f_idx, b_idx) for q in range(N) for _ in range(m)]
        report.settings["rounds"].append({"round": rnd, "renoise_index": f_idx, "end_index": b_idx,
                                          "noises_per_path": m, "kept_rows": keep, "scores": scores})
        report.trace.append({"round": rnd, "nfe": spent, "best": scores[keep[0]], "level": rel[b_idx],
                             "index": b_idx})
        if at_end:
            final_rows = (cand, row_labels, row_nfe, row_recipes)
            final_scores = scores
        rows_of.keep(keep)
        labels = [row_labels[i] for i in keep]
        lineage_nfe = [row_nfe[i] for i in keep]
        recipes = [row_recipes[i] for i in keep]
        if not at_end and stopper.see(scores[keep[0]], spent):
            n = min(top_k, N)  # the survivors are best first: finish the top_k without search
            final_rows, final_scores, cost = finish_without_search(n, labels[:n], lineage_nfe[:n], recipes[:n], rnd)
            spent += cost
            break

    latents, row_labels, row_nfe, row_recipes = final_rows
    results: Dict[int, CandidateResult] = {}
    keeper = TopK(top_k)
    for i, (lab, sc) in enumerate(zip(row_labels, final_scores)):
        results[i] = CandidateResult(index=i, seed=None, score=sc, nfe=row_nfe[i], noise_id=lab)
        keeper.offer(sc, i, lineage_finalist(latents[i], row_recipes[i]))
    if not report.trace or report.trace[-1]["nfe"] != spent:
        report.trace.append({"round": rnd + 1, "nfe": spent, "best": max(final_scores), "level": 0.0, "index": T})
    report.candidates = [results[i] for i in sorted(results)]
    report.nfe_total = spent
    if dispatch is not None:
        rows_of.report_to(report, "path row(s)")
    stopper.close(report, budget, spent)
    if spent < budget and not stopper.fired:
        if "finished_without_search_from_index" in report.settings:
            report.settings["unspent_reason"] = "the rest of the budget held no further search round"
        elif p["paths"]:
            report.settings["unspent_reason"] = (f"paths is fixed at {N} (0 sizes the search from the budget), so "
                                                 "the rest was left")
        else:
            report.settings["unspent_reason"] = (f"another path would need {plan_cost(host, 1, M, s_idx, plan)} NFEs "
                                                 f"and a further re-noising in the last round "
                                                 f"{N * host.nfe(report.settings['rounds'][-1]['renoise_index'], T)}")
    report.finalize()
    return report, keeper.finalists(results)


def _check(p: Dict[str, Any]) -> None:
    if p["backward"] <= p["forward"]:
        raise ValueError(f"paths: backward ({p['backward']}) must be larger than forward ({p['forward']}), or the "
                         "search never reaches the end of the schedule")


def _coarse(p: Dict[str, Any], candidates: int) -> Tuple[int, int, float]:
    """Coarse-to-fine: a paths search offers its N paths (all replayed by default; 2 when N comes from the
    budget); replaying one lineage on the full schedule costs this many full generations (it re-walks its
    re-noised stretches)."""
    st, fw, bw = p["start_level"], p["forward"], p["backward"]
    rounds = math.ceil(st / (bw - fw)) if st > 0 and bw > fw else 0
    n = int(p["paths"]) or 2
    return n, n, (1.0 - st) + rounds * min(1.0, bw)


ALGORITHM = Algorithm(
    name="paths", run=paths_search, title="Search over Paths", node="PathsStrategy",
    description=("Search over paths (Paths-N, Ma et al. 2025): N noises denoised to the search start; then "
                 "repeatedly each is re-noised M times forward by delta_f and denoised back by delta_b, the "
                 "x0-predictions are scored and the best N kept, until the schedule ends. Levels are fractions "
                 "of YOUR schedule's noise span (1 = its start, 0 = clean), each round at least one step back and "
                 "one step on. Spends the whole budget (more paths, more re-noisings in the last round). With paths "
                 "0, a budget under min_generations (4) runs random search's candidates instead, since paths "
                 "measured below random search there; with a fixed paths count, below two generations it cannot "
                 "search and under four the report warns. Needs a "
                 "single-step sampler (see the README's sampler table)."),
    params=(
        Param("paths", 0, "N paths kept each round; 0 = as many as the budget holds.", min=0, max=256),
        Param("noises_per_path", 2, "M re-noisings of each path per round (the last round takes what the budget "
                                    "has left).", min=1, max=64),
        Param("start_level", 0.6, "Where the search starts, as a fraction of your schedule's noise span (1 = its "
                                  "start, 0 = clean; paper: 0.11 on 30+ steps).", min=0.0, max=1.0, step=0.01),
        Param("forward", 0.2, "Forward re-noising interval, same units (paper: 0.78); at least one step.",
              min=0.0, max=1.0, step=0.01),
        Param("backward", 0.4, "Backward denoising interval (paper: 0.81); must exceed forward so each round makes "
                               "progress; at least one step.", min=0.01, max=1.0, step=0.01),
        Param("min_generations", 4, "With paths = 0: a budget under this many generations runs random search's "
                                    "candidates instead (paths measured below random search at two generations); "
                                    "2 = search from two generations on.", min=1, max=64, optional=True),
    ),
    samplers="segmentable", finalists="recipe", check=_check, dispatch="rounds", coarse=_coarse)
