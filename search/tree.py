"""Tree search over the sampling trajectory (in the spirit of Diffusion Tree Search, DTS*, Jain et al. 2025).

The denoising run is a tree.  Its levels are ``levels`` branch points: schedule
positions at relative noise levels evenly spaced from ``first_level`` to
``last_level`` (fractions of **your schedule's** noise span, 1 = its start, 0 =
clean, as in search over paths and successive halving).  A node is a partially
denoised state at a branch point; the root's children are fresh candidate
noises (seeds base+i, random search's candidates) denoised to the first branch
point; a leaf is a finished sample.

Each **expansion** makes children of one node:

* from the root: ``screen`` fresh noises denoised to the first branch point;
* from a node: ``screen`` branches to the next branch point (or the end),
  made by the sampler's own noise with a stochastic sampler (the step keyed by
  the child's own seed), or, with a deterministic one, by re-noising the node
  back by ``renoise`` of the span (at least one step; a fresh seeded noise per
  child) and denoising from there.

The children's x0-predictions (what the sampler's last step predicted, free of
NFEs) are scored and the best one is **rolled out**: denoised to the end, every
branch point on the way becoming a node, the finished sample scored.  The other
children wait; the next expansion of the same node rolls out the best waiting
one (its first stretch is already paid) before making new ones.  **Values are
backed up**: each node keeps the best finished score below it and the number
of rollouts through it.

**Selection** (where the next NFEs go) walks down from the root.  At a node
with N rollouts through it, a new child is made while it has fewer than
max(1, ⌈N^``widening``⌉) children with a rollout (progressive widening; the root
widens faster, by ``root_widening``); otherwise it descends to the child with
the highest value + ``exploration`` · spread · √(ln N / n) (n: the child's
rollouts; value: its best finished score; spread: the standard deviation of
every finished score so far, so the constant means the same on any verifier).

Waves of ``parallel`` selections (each counted as a pending rollout, so a wave
spreads over the tree) run together, so the host batches them; the waves
never depend on the host's micro-batch, and every row's randomness is keyed by
its own node, so the result never does either.  When the chosen expansion no
longer fits the budget, a cheaper one along the best sample's path is taken;
when none fits, the search stops.

**Small budgets.**  Under ``min_generations`` generations the search is
random search's candidates exactly (``settings["fallback"]``, and a note).
Its default, 0, means 8 with a stochastic sampler and none with a
deterministic one: the stochastic sampler's remaining steps add fresh noise,
so the screen at the first branch point predicts the finished sample less
well, and on the shapes benchmark the tree measured below random search at 2
and 4 generations (above it on digits; `bench/README.md`).

**Anytime.**  Every wave finishes samples; stopping at any NFE (the budget, or
early stopping: one observation per finished sample) gives the best finished
sample so far (``report.trace``).

**Replay.**  A finalist that never branched (a fresh noise rolled out) with a
deterministic sampler is exactly its seed's run: a stock KSampler replays it
(``result.seed``).  Every other finalist is a lineage (its ``recipe``: the
starting seed, then re-noisings and sampler runs at noise levels); no stock
node replays it, so the search's own sample is returned, and the report's
``settings["replay"]`` counts each kind.  (With a stochastic sampler even an
unbranched finalist is a lineage: it ran in segments, and a stock sampler
draws its noise in one run.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from .common import (TAG_TREE, TopK, check_budget, check_top_k, checked_scores, derived_noise, end_level, finalist,
                     generation_nfe, score_x0)
from .host import SearchHost, State, derive_seed
from .noise import wrap_seed
from .halving import prune_points
from .paths import _DispatchedPaths, lineage_finalist, paths_work, relative_levels
from .random_search import random_fallback
from .dispatch import Task
from .registry import Algorithm, Param
from .report import CandidateResult, Finalist, SearchReport
from .samplers import facts
from .stopping import StopRule, Stopper

# with a stochastic sampler (min_generations = 0) a budget under this many generations is random search's
STOCHASTIC_MIN_GENERATIONS = 8


# the branch points are placed as successive halving places its prune points: evenly spaced relative levels, each
# at the nearest schedule step, strictly increasing, between 1 and T-1
branch_points = prune_points


@dataclass
class _Node:
    id: int
    depth: int                       # 0 = root, 1..L = branch points, L+1 = finished
    index: int                       # schedule position
    parent: Optional["_Node"]
    state: Optional[State] = None    # one row (None for the root and for finished samples)
    x0_score: Optional[float] = None
    children: List["_Node"] = field(default_factory=list)
    rolled: bool = False             # a rollout went (or goes, in this wave) through it
    visits: int = 0                  # finished rollouts through it
    pending: int = 0                 # rollouts through it in the wave being planned
    planned: int = 0                 # expansions of it in the wave being planned
    best: float = -math.inf          # best finished score below it
    seed: int = 0                    # the starting seed of its lineage
    fresh: bool = True               # its lineage never branched (only the starting noise chose it)
    recipe_ops: List[tuple] = field(default_factory=list)
    nfe: int = 0                     # NFEs along its lineage

    @property
    def waiting(self) -> List["_Node"]:
        return [c for c in self.children if not c.rolled]

    @property
    def rolled_children(self) -> List["_Node"]:
        return [c for c in self.children if c.rolled]


class _DispatchedTree(_DispatchedPaths):
    """The tree over a dispatcher's executors (``search.dispatch.Pool``, the worker servers): a node's state stays
    on the executor that made it; the root's new children go out in chunks taken on demand, a node's children and
    rollouts are made where it lives, finished samples are scored there.  A failed executor's nodes are re-made
    from their recipes elsewhere.  Scores come back as raw member scores, recombined here over every row scored
    so far (a relative verifier), in the one-machine search's order; finished samples' latents only from this
    process (the others are re-made from their recipes, or replayed from their seed)."""

    def __init__(self, dispatch, host: SearchHost, verifier: str):
        super().__init__(dispatch, host, [], 0, verifier)
        self.rows = 0  # rows scored so far (the matrix's length)

    def register(self, node_id: int, seed: int, ops) -> None:
        self.recipes[node_id] = {"seed": int(seed), "ops": [tuple(o) for o in ops]}

    def make(self, kids, parents, noise_seeds, run_seeds, begin: int, renoise, end: int, screened: List[int],
             labels) -> List[float]:
        """Children of one depth: from fresh seeds (``parents`` None) or from their parents' states (re-noised to
        ``renoise`` when given), sampled to ``end``; the x0 scores of the ``screened`` rows."""
        children = [[k.id, -1 if parents is None else parents[r].id, 0 if noise_seeds is None else int(noise_seeds[r]),
                     int(run_seeds[r]), int(r in screened)] for r, k in enumerate(kids)]
        spec_of = (lambda part: {"children": part, "begin": begin, "end": int(end), "renoise": renoise,
                                 "recipes": {c[0]: self.recipes[c[0]] for c in part}})
        cost = float(self.host.nfe(begin if renoise is None else renoise, end))
        if parents is None:  # the root's children: any executor makes them
            plan = self.dispatch.plan(len(children), self.size)
            tasks = []
            for st, c in plan:
                spec = dict(spec_of(children[st:st + c]), kind="paths", op="make", drop=[])
                tasks.append(Task(("make", self.tasks, st), paths_work(spec, self.verifier), spec,
                                  cost=float(c) * cost))
        else:
            tasks = self._tasks("make", children, lambda ch: self.owner[ch[1]], spec_of, cost)
        self._run(tasks, scored=False)
        got: Dict[int, torch.Tensor] = {}
        for key in self.last_queue.order:
            ans = self.last_queue.done[key]
            for r, i in enumerate(ans.get("screened") or []):
                got[i] = ans["members"][r:r + 1]
        if not screened:
            return []
        order = [kids[r].id for r in screened]
        m = torch.cat([got[i] for i in order])
        return self._scores(order, order, m, labels)

    def roll(self, here, children, seeds, begin: int, end: int) -> None:
        items = [[c.id, n.id, int(sd)] for n, c, sd in zip(here, children, seeds)]
        tasks = self._tasks("roll", items, lambda it: self.owner[it[1]],
                            lambda part: {"children": part, "begin": begin, "end": int(end),
                                          "recipes": {it[0]: self.recipes[it[0]] for it in part}},
                            float(self.host.nfe(begin, end)))
        self._run(tasks, scored=False)

    def score(self, finished, labels):
        """The finished samples' scores (recombined over every row so far), the matrix row of the first, and each
        one's final latent (made in this process) or None."""
        T = int(self.host.steps)
        ids = [n.id for n in finished]
        tasks = self._tasks("score", ids, lambda i: self.owner[i],
                            lambda part: {"rows": part, "seeds": [0] * len(part), "begin": T, "end": T,
                                          "recipes": {i: self.recipes[i] for i in part}}, 1.0)
        got, m, latents = self._run(tasks)
        first = sum(int(x.shape[0]) for x in self.matrix)
        sc = self._scores(ids, got, m, labels)
        return sc, first, [latents.get(i) for i in ids]


def tree_search(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1, verifier: str = "verifier",
                stop: StopRule = None, dispatch=None, member_names=(), **params) -> Tuple[SearchReport, List[Finalist]]:
    """``dispatch``: None = every node on this host; else a dispatcher with rounds (``search.dispatch.Pool``, the
    worker servers): each node's state stays on the executor that made it; the same tree, scores and finalists."""
    p = ALGORITHM.resolve(params)
    ALGORITHM.check_sampler(host.sampler_name)
    T = int(host.steps)
    gen = generation_nfe(host)
    budget = int(budget_nfe)
    check_budget(budget, gen * int(top_k), f"tree search with top_k {top_k} (one generation each)")
    check_top_k(top_k, budget // gen, f"the {budget // gen} generations the budget allows")
    stochastic = bool(getattr(facts(host.sampler_name), "stochastic", False))
    min_gen = int(p["min_generations"]) or (STOCHASTIC_MIN_GENERATIONS if stochastic else 1)
    if budget < min_gen * gen:
        return random_fallback(host, algorithm="tree", seed=seed, budget_nfe=budget, top_k=top_k, verifier=verifier,
                               stop=stop, dispatch=dispatch,
                               why=f"a {budget}-NFE budget is under {min_gen} generations ({min_gen * gen} NFEs)"
                               + (", where the tree with a stochastic sampler measured below random search"
                                  if not int(p["min_generations"]) else ""))
    points = branch_points(host, int(p["levels"]), float(p["first_level"]), float(p["last_level"]))
    L = len(points)
    rel = relative_levels(host)
    screen, c_explore = int(p["screen"]), float(p["exploration"])
    alpha, root_alpha = float(p["widening"]), float(p["root_widening"])
    n_gen = budget // gen
    wave = int(p["parallel"]) or max(1, min(8, n_gen // 8))
    base = wrap_seed(seed)
    relative = bool(getattr(host, "relative", False))
    remote = None if dispatch is None else _DispatchedTree(dispatch, host, verifier)

    def index_of(depth: int) -> int:
        return 0 if depth == 0 else (points[depth - 1] if depth <= L else T)

    def back_of(depth: int) -> int:
        """Where a deterministic branch from a node at ``depth`` re-noises to (at least one step back)."""
        i = index_of(depth)
        target = min(1.0, rel[i] + float(p["renoise"]))
        f = min(range(T + 1), key=lambda j: (abs(rel[j] - target), j))
        return max(0, min(f, i - 1))

    def branch_cost(depth: int) -> int:
        """NFEs of one child of a node at ``depth`` (to the next branch point or the end)."""
        start = index_of(depth) if (stochastic or depth == 0) else back_of(depth)
        return int(host.nfe(start, index_of(depth + 1)))

    def rollout_cost(depth: int) -> int:
        return int(host.nfe(index_of(depth), T))

    report = SearchReport(algorithm="tree", top_k=top_k, verifier=verifier, nfe_per_generation=gen,
                          settings={"budget_nfe": budget, "branch_indices": points,
                                    "branch_levels": [rel[i] for i in points], "screen": screen,
                                    "parallel": wave, "sampler_noise": "stochastic" if stochastic else "renoise",
                                    "renoise_indices": [] if stochastic else [back_of(d) for d in range(1, L + 1)],
                                    "expansions_by_depth": [0] * (L + 1), "waves": 0})
    if not points:
        report.notes.append(f"tree search: a {T}-step schedule has no step to branch at between the start and the "
                            "end, so this was a random search")

    nodes: List[_Node] = []

    def new_node(depth: int, parent: Optional[_Node], **kw) -> _Node:
        n = _Node(id=len(nodes), depth=depth, index=index_of(depth), parent=parent, **kw)
        nodes.append(n)
        if parent is not None:
            parent.children.append(n)
        return n

    root = new_node(0, None)
    root.rolled = True
    fresh_count = 0
    spent = 0
    leaves: List[_Node] = []
    leaf_rows: List[int] = []            # each leaf's row among the host's scored rows (relative verifiers)
    results: Dict[int, CandidateResult] = {}
    finals: Dict[int, Finalist] = {}
    keep = TopK(top_k)
    all_scores: List[float] = []
    stopper = Stopper(stop, "finished samples", minimum=top_k)

    def scores_of(latents: torch.Tensor, labels: List[str], final: bool) -> Tuple[List[float], int]:
        first = int(getattr(host, "scored_rows", 0))
        s = checked_scores(host.score(latents) if final else score_x0(host, latents), len(labels), labels, verifier)
        if relative:
            s = host.rescore().reshape(-1).tolist()[first:first + len(labels)]
        return s, first

    screened_x0: Dict[int, List[float]] = {}   # depth -> x0 scores of every screened child made there

    def worth(c: _Node) -> bool:
        """A waiting child is finished only if its x0 score is in the top 1/screen of every screened child's at
        its depth (as successive halving keeps its best fraction); the others are pruned."""
        xs = screened_x0.get(c.depth, [])
        if c.x0_score is None or not xs:
            return True
        above = sum(1 for x in xs if x > c.x0_score)
        return above < len(xs) / float(screen)

    def best_waiting(u: _Node) -> Optional[_Node]:
        w = [c for c in u.waiting if not c.pending and worth(c)]
        return max(w, key=lambda n: (n.x0_score if n.x0_score is not None else -math.inf, -n.id)) if w else None

    # ---------------------------------------------------------------- planning one wave
    def spread() -> float:
        """The standard deviation of the finished scores (a remote grader's -inf left out; 1 below two)."""
        xs = [x for x in all_scores if math.isfinite(x)]
        if len(xs) < 2:
            return 1.0
        m = sum(xs) / len(xs)
        v = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
        return math.sqrt(v) if v > 1e-24 else 1.0

    def allowed(u: _Node) -> int:
        n = u.visits + u.pending
        a = root_alpha if u.depth == 0 else alpha
        return max(1, math.ceil((n + 1) ** a - 1e-9)) if n > 0 else 1

    def cost_at(depth: int, k: int) -> int:
        """NFEs of expanding a node at ``depth``: k = 0 rolls out its best waiting child, else k new children and
        one rollout."""
        if k == 0:
            return rollout_cost(depth + 1)
        return k * branch_cost(depth) + (rollout_cost(depth + 1) if depth < L else 0)

    def cost_of(u: _Node, k: int) -> int:
        return cost_at(u.depth, k)

    def expansion(u: _Node, left: int) -> Optional[int]:
        """The k of ``u``'s next expansion that fits ``left`` NFEs (fewer screened children if need be), or None."""
        if best_waiting(u) is not None:
            return 0 if cost_of(u, 0) <= left else None
        for k in range(screen if u.depth < L else 1, 0, -1):
            if cost_of(u, k) <= left:
                return k
        return None

    def select() -> Optional[_Node]:
        """The node to expand next, or None when the wave has nothing more to plan before results come back."""
        u, sd = root, spread()
        while True:
            kids = u.rolled_children
            if u.depth >= L or len(kids) + u.planned < allowed(u):
                return u
            if not kids:  # its only children are planned in this wave: wait for them
                return None
            n_u = max(1, u.visits + u.pending)

            def ucb(c: _Node) -> Tuple[float, int]:
                v = c.best if c.visits else u.best
                return (v + c_explore * sd * math.sqrt(math.log(n_u + 1) / max(1, c.visits + c.pending)), -c.id)
            u = max(kids, key=ucb)

    def fallback(left: int) -> Optional[Tuple[_Node, int]]:
        """A cheaper expansion that fits ``left`` NFEs: along the best sample's path, deepest first."""
        path = []
        x = max(leaves, key=lambda n: (n.best, -n.id)).parent if leaves else root
        while x is not None:
            path.append(x)
            x = x.parent
        for u in path:  # deepest first, the root last
            k = expansion(u, left)
            if k is not None:
                return u, k
        return None

    # ---------------------------------------------------------------- running one wave
    def run_wave(plan: List[Tuple[_Node, int]]) -> List[_Node]:
        """Expands each planned node once; returns the finished samples (scored, backed up)."""
        nonlocal fresh_count, spent
        to_roll: List[_Node] = []
        made: Dict[int, List[Tuple[_Node, List[_Node]]]] = {}   # depth -> (parent, new children), in plan order
        for u, k in plan:
            if k == 0:
                c = best_waiting(u)
                c.pending = 1
                to_roll.append(c)
                continue
            report.settings["expansions_by_depth"][u.depth] += 1
            kids = []
            for _ in range(k):
                if u.depth == 0:
                    s = wrap_seed(base + fresh_count)
                    fresh_count += 1
                    kids.append(new_node(1, u, seed=s, fresh=True))
                else:
                    kids.append(new_node(u.depth + 1, u, seed=u.seed, fresh=False))
            made.setdefault(u.depth, []).append((u, kids))
        finished: List[_Node] = []
        for depth in sorted(made):   # new children: one host call per depth
            groups = made[depth]
            kids = [c for _, ks in groups for c in ks]
            end = index_of(depth + 1)
            rows, r0 = [], 0
            for _, ks in groups:  # only siblings made together are compared
                if len(ks) > 1 and end != T:
                    rows.extend(range(r0, r0 + len(ks)))
                r0 += len(ks)
            noise_seeds, parents, renoise_at = None, None, None
            if depth == 0:
                run_seeds = [c.seed for c in kids]
                if remote is None:
                    state = host.start(host.initial_noise(run_seeds))
                start = 0
                for c in kids:
                    c.recipe_ops = [("sample", end_level(host, end), c.seed)]
            else:
                parents = [u for u, ks in groups for _ in ks]
                if remote is None:
                    state = State.cat([u.state for u in parents])
                run_seeds = [derive_seed(base, TAG_TREE, c.id, 1) for c in kids]
                ops = [list(u.recipe_ops) for u in parents]
                start = index_of(depth)
                if not stochastic:
                    start = renoise_at = back_of(depth)
                    noise_seeds = [derive_seed(base, TAG_TREE, c.id, 0) for c in kids]
                    if remote is None:
                        state = host.renoise(state, start, derived_noise(state.noise[0:1], noise_seeds))
                    ops = [o + [("renoise", float(host.level(start)), ns)] for o, ns in zip(ops, noise_seeds)]
                for c, o, rs in zip(kids, ops, run_seeds):
                    c.recipe_ops = o + [("sample", end_level(host, end), rs)]
            x0_labels = [f"tree x0 at step {end}: node {kids[r].id}" for r in rows]
            if remote is None:
                new_state, x0 = host.sample(state, end, run_seeds)
            else:
                for c in kids:
                    remote.register(c.id, c.seed, c.recipe_ops)
                remote_sc = remote.make(kids, parents, noise_seeds, run_seeds, index_of(depth), renoise_at, end,
                                        rows, x0_labels)
            cost = int(host.nfe(start, end))
            spent += cost * len(kids)
            for r, c in enumerate(kids):
                if remote is None:
                    c.state = new_state.select([r])
                c.nfe = c.parent.nfe + cost
            if end == T:  # children of the last branch point: finished samples already
                for c in kids:
                    c.rolled = True
                    finished.append(c)
                continue
            if rows:  # screening: the x0-predictions of sibling children, scored (no NFEs)
                sc = scores_of(x0[rows], x0_labels, final=False)[0] if remote is None else remote_sc
                for r, v in zip(rows, sc):
                    kids[r].x0_score = v
                    screened_x0.setdefault(depth + 1, []).append(v)
            for u, ks in groups:
                c = max(ks, key=lambda n: (n.x0_score if n.x0_score is not None else -math.inf, -n.id))
                c.pending = 1
                to_roll.append(c)
        # rollouts: the rows at each depth advance together to the next branch point, down to the end
        for c in to_roll:
            c.rolled = True
        front = list(to_roll)
        while front:
            depth = min(n.depth for n in front)
            here = [n for n in front if n.depth == depth]
            front = [n for n in front if n.depth != depth]
            end = index_of(depth + 1)
            seeds = [n.seed if n.fresh else derive_seed(base, TAG_TREE, n.id, 2) for n in here]
            if remote is None:
                new_state, _ = host.sample(State.cat([n.state for n in here]), end, seeds)
            cost = int(host.nfe(index_of(depth), end))
            spent += cost * len(here)
            made_now = []
            for r, n in enumerate(here):
                child = new_node(depth + 1, n, seed=n.seed, fresh=n.fresh, rolled=True)
                if remote is None:
                    child.state = new_state.select([r])
                child.nfe = n.nfe + cost
                child.recipe_ops = n.recipe_ops + [("sample", end_level(host, end), seeds[r])]
                made_now.append(child)
                (finished if child.depth == L + 1 else front).append(child)
            if remote is not None:
                for c in made_now:
                    remote.register(c.id, c.seed, c.recipe_ops)
                remote.roll(here, made_now, seeds, index_of(depth), end)
        if finished:
            labels = [_label(n) for n in finished]
            if remote is None:
                lat = torch.cat([n.state.latent for n in finished])
                sc, first = scores_of(lat, labels, final=True)
                lats = [lat[r:r + 1] for r in range(len(finished))]
            else:
                sc, first, lats = remote.score(finished, labels)
            for r, (n, v) in enumerate(zip(finished, sc)):
                n.x0_score = v
                i = len(leaves)
                leaves.append(n)
                leaf_rows.append(first + r)
                all_scores.append(v)
                ksampler = n.fresh and not stochastic
                results[i] = CandidateResult(index=i, seed=n.seed if ksampler else None, score=v, nfe=n.nfe,
                                             noise_id=labels[r])
                recipe = {"seed": n.seed, "ops": n.recipe_ops}
                if lats[r] is not None:
                    finals[i] = finalist(lats[r], noise=host.initial_noise([n.seed]) if ksampler else None,
                                         seed=n.seed if ksampler else None, recipe=recipe)
                else:  # made on a worker: a stock KSampler replays an unbranched one, the rest are re-made
                    finals[i] = lineage_finalist(None, recipe)
                    if ksampler:
                        finals[i].noise, finals[i].seed = host.initial_noise([n.seed]), int(n.seed)
                keep.offer(v, i, finals[i])
                x = n
                while x is not None:  # backup
                    x.visits += 1
                    x.best = max(x.best, v)
                    x = x.parent
        for n in nodes:
            n.pending = 0
        return finished

    # ---------------------------------------------------------------- the search
    while True:
        left = budget - spent
        plan: List[Tuple[_Node, int]] = []
        planned = 0
        for _ in range(wave):
            u = select()
            if u is None:
                break
            k = expansion(u, left - planned)
            if k is None:
                alt = fallback(left - planned)
                if alt is None:
                    break
                u, k = alt
            plan.append((u, k))
            planned += cost_of(u, k)
            u.planned += 1
            if k == 0:
                best_waiting(u).pending = 1
            x = u  # a pending rollout through it, so the rest of the wave spreads over the tree
            while x is not None:
                x.pending += 1
                x = x.parent
        if not plan:
            break
        for n in nodes:  # run_wave reserves again what it rolls out, in plan order
            n.pending = n.planned = 0
        done = run_wave(plan)
        report.settings["waves"] += 1
        report.trace.append({"round": report.settings["waves"], "nfe": spent,
                             "best": max(n.best for n in leaves), "finished": len(leaves)})
        for n in done:
            stopper.see(n.x0_score, spent)
        if stopper.fired:
            break

    if relative:  # recombined over every scored row: ranks never depend on the order the tree scored them
        combined = (host.rescore() if remote is None else
                    dispatch.recombine(torch.cat(remote.matrix))).reshape(-1).tolist()
        keep = TopK(top_k)
        for i, row in enumerate(leaf_rows):
            results[i].score = float(combined[row])
            keep.offer(results[i].score, i, finals[i])
    report.candidates = [results[i] for i in sorted(results)]
    report.nfe_total = spent
    if remote is not None:
        remote.report_to(report, "tree node(s)")
    fresh_leaves = sum(1 for n in leaves if n.fresh)
    unrolled = [n for n in nodes if n.depth == 1 and n.parent is root and not n.rolled]
    report.settings.update({
        "pruned": sum(1 for n in unrolled if not worth(n)), "waiting": sum(1 for n in unrolled if worth(n)),
        "fresh_noises": fresh_count, "finished": len(leaves), "finished_fresh": fresh_leaves,
        "finished_branched": len(leaves) - fresh_leaves, "nodes": len(nodes),
        "replay": {"ksampler": sum(1 for r in results.values() if r.seed is not None),
                   "lineage": sum(1 for r in results.values() if r.seed is None)}})
    stopper.close(report, budget, spent)
    if spent < budget and not stopper.fired:
        cheapest = min(cost_at(d, 1) for d in range(0, L + 1))
        report.settings["unspent_reason"] = (f"the remaining {budget - spent} NFEs are less than the cheapest "
                                             f"expansion ({cheapest} NFEs)")
    report.finalize()
    return report, keep.finalists(results)


def _label(n: _Node) -> str:
    if n.fresh:
        return f"tree seed {n.seed} (never branched)"
    steps = []
    x = n
    while x is not None and x.depth > 0:
        steps.append(str(x.id))
        x = x.parent
    return f"tree node {n.id} (from seed {n.seed}, branched; lineage {'/'.join(reversed(steps))})"


def _check(p: Dict[str, Any]) -> None:
    if p["levels"] > 1 and not p["first_level"] > p["last_level"]:
        raise ValueError(f"tree search: first_level ({p['first_level']}) must be above last_level "
                         f"({p['last_level']}): branch points go from noisy to clean")


def _coarse(p: Dict[str, Any], candidates: int) -> Tuple[int, int, float]:
    """Coarse-to-fine: a tree offers its finished samples, 2 replayed by default; a replay re-walks its
    re-noised stretches, about 1 + renoise per branch point."""
    return int(candidates), 2, 1.0 + float(p["levels"]) * float(p["renoise"])


ALGORITHM = Algorithm(
    name="tree", run=tree_search, title="Tree Search (trajectory tree)", node="TreeSearchStrategy",
    description=("Tree search over the sampling trajectory (in the spirit of Diffusion Tree Search): partially "
                 "denoised states at a few branch points are the nodes; children branch by the sampler's own noise "
                 "(stochastic samplers) or by re-noising (deterministic ones); each expansion screens its children on "
                 "their free x0-predictions and finishes the best; finished scores are backed up the tree, and the "
                 "budget goes where the tree says the value is (new fresh noises, or branches near good samples). "
                 "Anytime: each wave finishes samples, and stopping at any NFE keeps the best so far. Finalists that "
                 "never branched replay from their seed in a stock KSampler (deterministic samplers); the others are "
                 "returned as sampled (the report counts each). Needs a single-step sampler."),
    params=(
        Param("levels", 2, "Branch points between the start and the end of the schedule.", min=1, max=8),
        Param("first_level", 0.6, "Noise level of the first branch point, as a fraction of your schedule's noise "
                                  "span (1 = start, 0 = clean); fresh noises are screened there.",
              min=0.05, max=0.95, step=0.05),
        Param("last_level", 0.3, "With levels > 1: noise level of the last branch point (below first_level); the "
                                 "others lie evenly between.", min=0.05, max=0.95, step=0.05),
        Param("screen", 4, "Children made per expansion; their x0-predictions are scored (no NFEs) and the best "
                           "is finished first (1 = no screening).", min=1, max=16),
        Param("exploration", 1.0, "UCB constant, in units of the spread of the finished scores: larger = visits "
                                  "more of the tree, smaller = refines the best branch.",
              min=0.0, max=10.0, step=0.1),
        Param("widening", 0.5, "A node gets a new child while it has fewer than (rollouts through it)^widening "
                               "children (progressive widening).", min=0.0, max=1.0, step=0.05),
        Param("root_widening", 0.7, "The same for the root, i.e. how fast fresh noises are added.",
              min=0.0, max=1.0, step=0.05),
        Param("renoise", 0.2, "Deterministic samplers: how far back (fraction of the span, at least one step) a "
                              "branch re-noises before denoising to the next branch point.",
              min=0.0, max=1.0, step=0.05),
        Param("parallel", 0, "Rollouts planned per wave (run together, so the GPU batches them); 0 = from the "
                             "budget (one per 8 generations, 1 to 8).", min=0, max=256),
        Param("min_generations", 0, "A budget under this many generations runs random search's candidates "
                                    "instead. 0 = automatic: 8 with a stochastic sampler (whose remaining steps add "
                                    "noise, so an early screen predicts the end less well; the tree measured below "
                                    "random search at 2 and 4 generations), none with a deterministic one.",
              min=0, max=64, optional=True),
    ),
    samplers="segmentable", finalists="recipe", dispatch="rounds", check=_check, coarse=_coarse)
