"""Searching with worker machines (the nodes are ``nodes/worker_nodes.py``):
the random search's dispatcher over worker servers, the worker prompt, the
audit of the workers' claims, and what a worker answers.  The fingerprint is
``engine/fingerprint.py``, the HTTP transport ``engine/workers.py``, the
random search itself ``search/random_search.py``.

Design: the master sends each worker *the same graph* it is running (ComfyUI's
hidden PROMPT), cut to the Search Loop node's inputs, with that node turned
into a Search Shard node carrying the shard (candidate range, base seed, a
token and the master's fingerprint).  The worker loads the same model files by
name, encodes the same prompts, samples candidates ``start .. start+count-1``
exactly as Search Loop would, and answers JSON text only: ids, seeds, raw
member scores, NFEs and its fingerprint, never an image.  The master checks
the answer, ranks all N, and re-renders its finalists itself."""
from __future__ import annotations

import collections
import copy
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

import torch

from .fingerprint import WHAT, differences, fingerprint, fingerprint_digest
from .host import ComfyHost
from .devices import build as device_set
from .progress import Progress, throw_if_interrupted
from .sampling import SamplingPlan, SearchInputError
from .vae import scoring_vae
from .types import PREFIX
from .workers import ShardJob, WorkerConfig, WorkerDispatch, WorkerRefused
from ..search import algorithms, get_algorithm, run_strategy
from ..search.dispatch import HostExecutor, TaskQueue, plan_chunks
from ..search.coarse_to_fine import lineage, replay
from ..search.common import checked_scores, score_x0
from ..search.halving import rows_work
from ..search.paths import paths_spec, paths_work
from ..search.sharded import member_rows
from ..search.report import Finalist
from ..search.sharded import (PROTOCOL, ShardAnswerError, ShardRows, answer, check_answer, check_noises_answer,
                              check_rows_answer, encode_noise, noises_answer, noises_spec, noises_work, rows_answer,
                              rows_spec, run_shard)
from ..verifiers.protocol import ScoreBook, capabilities, name_of

SHARD_NODE = "SearchShard"
# Every strategy whose registry entry has a ``dispatch`` protocol searches with worker machines: random search's
# chunks, successive halving's, paths', particles' and the tree search's rows (each row's state stays on the
# worker that made it), and zero-order's and evolution's rounds of noises (each worker is sent its rows' noises
# and answers their scores)
# Search Loop's inputs that a worker's Search Shard node does not take (everything else is sent): what only the
# master does (strategy, workers, the held-out guard, the finalists' re-render, devices) and what workers refuse
# (video, two experts)
NOT_SENT = ("strategy", "workers", "held_out_verifier", "exact_winner", "video_scoring", "model_2", "switch_step",
            "devices", "shard")


# --------------------------------------------------------------------------- the worker graph
def shard_graph(graph: Dict[str, Any], node_id: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    """The prompt a worker runs: the Search Loop node's upstream graph, the node turned into a Search Shard
    node (only the inputs Search Shard takes: no strategy, workers or held-out verifier) that carries ``spec``."""
    if node_id not in graph:
        raise SearchInputError(f"Search Loop (node {node_id}) is not in the prompt ComfyUI gave it: cannot build "
                               "the workers' prompt")
    node = copy.deepcopy(graph[node_id])
    inputs = {k: v for k, v in node.get("inputs", {}).items() if k not in NOT_SENT}
    inputs["shard"] = json.dumps(spec, sort_keys=True)
    out = {node_id: {"class_type": PREFIX + SHARD_NODE, "inputs": inputs}}
    todo = [v[0] for v in inputs.values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]
    while todo:
        nid = todo.pop()
        if nid in out:
            continue
        if nid not in graph:
            raise SearchInputError(f"node {nid} feeding Search Loop is not in the prompt: cannot build the workers' "
                                   "prompt")
        n = copy.deepcopy(graph[nid])
        out[nid] = {"class_type": n["class_type"], "inputs": n.get("inputs", {})}
        todo.extend(v[0] for v in out[nid]["inputs"].values()
                    if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str))
    return out


# --------------------------------------------------------------------------- the master's side
def check_workers_allowed(strategy, plan: SamplingPlan, verifier, held_out) -> None:
    """Refuses what cannot be sharded over workers yet, saying why (never a silently different search)."""
    if strategy is not None and not get_algorithm(strategy.name).dispatch:
        titles = ", ".join(a.title for a in algorithms().values() if a.dispatch)
        raise SearchInputError(f"'{get_algorithm(strategy.name).title}' does not search with worker machines yet "
                               f"(it runs on this machine's GPUs only); these do: {titles}. Disconnect Search "
                               "Workers, or pick one of those")
    if strategy is not None and strategy.stop is not None and strategy.stop.active and strategy.name == "random":
        raise SearchInputError("early stopping reads candidates in order, which shards on several machines do not "
                               "have: turn early stopping off or disconnect Search Workers")
    if getattr(plan, "video", False) or getattr(plan, "model_2", None) is not None:
        raise SearchInputError("searching with worker machines is implemented for image models with one diffusion "
                               "model; video candidates and two experts (model_2) run on this machine only: "
                               "disconnect Search Workers")
    if plan.nfe_per_generation() is None:
        raise SearchInputError(f"sampler '{plan.sampler_label}' picks its own steps, so a worker's NFEs cannot be "
                               "checked: pick a fixed-step sampler to search with worker machines")
    if capabilities(verifier).prefilter:
        raise SearchInputError("a verifier pre-filter decides from every candidate screened before, in order, which "
                               "shards on several machines do not have: connect its main verifier (or an ensemble) "
                               "directly, or disconnect Search Workers")
    if held_out is not None:
        raise SearchInputError("the held-out verifier scores a sample of finished images, which workers do not send "
                               "back: disconnect held_out_verifier or Search Workers")


def agree(claimed: torch.Tensor, own: torch.Tensor, tolerance: float) -> bool:
    """Whether a worker's claimed member scores match this machine's own within ``tolerance``
    (|claimed - own| <= tolerance * (1 + |own|) for every member; -inf only against -inf)."""
    for c, o in zip(claimed.reshape(-1).tolist(), own.reshape(-1).tolist()):
        if math.isinf(c) or math.isinf(o):
            if c != o:
                return False
        elif abs(c - o) > tolerance * (1.0 + abs(o)):
            return False
    return True


class Audit:
    """The master's check of its workers' claims: it samples and scores some of each worker's candidates
    itself (``audit_per_shard`` a shard, drawn at random where the worker cannot foresee them) and every
    finalist a worker scored, and compares.  A worker whose claim disagrees is a liar for this search."""

    def __init__(self, host: ComfyHost, base: int, config: WorkerConfig, rng: Optional[random.Random] = None):
        self.host, self.base, self.config = host, base, config
        self.rng = rng or random.SystemRandom()
        self.own: Dict[int, ShardRows] = {}    # candidate -> this machine's own render and scores of it
        self.checked: set = set()              # shards whose sample was audited
        self.nfe = 0

    def own_rows(self, index: int) -> ShardRows:
        if index not in self.own:
            rows = run_shard(self.host, self.base, index, 1, keep=1)
            self.own[index] = rows
            self.nfe += int(sum(rows.nfe))
        return self.own[index]

    def compare(self, dispatch: WorkerDispatch, index: int, liars: Dict[str, str]) -> Optional[str]:
        """Checks candidate ``index`` against the worker that claimed it; the worker's URL ('local' for this
        machine's own shards, which need no check)."""
        shard = next(((s, c) for (s, c) in dispatch.ran if s <= index < s + c), None)
        url = dispatch.ran.get(shard, "local") if shard is not None else "local"
        if url == "local" or url in liars:
            return url
        claimed = dispatch.done[shard].rows[index - shard[0]]
        own = self.own_rows(index).rows[0]
        if not agree(claimed, own, self.config.audit_tolerance):
            fmt = lambda t: ", ".join(f"{v:.4g}" for v in t.reshape(-1).tolist())  # noqa: E731
            liars[url] = (f"its claimed score of candidate {index} ({fmt(claimed)}) disagrees with this machine's "
                          f"own ({fmt(own)}) beyond the tolerance of {self.config.audit_tolerance:g}")
        return url

    def sample(self, dispatch: WorkerDispatch, liars: Dict[str, str]) -> None:
        k = int(self.config.audit_per_shard)
        for (s, c), url in sorted(dispatch.ran.items()):
            if url == "local" or (s, c) in self.checked or k <= 0:
                continue
            self.checked.add((s, c))
            for i in sorted(self.rng.sample(range(s, s + c), min(k, c))):
                self.compare(dispatch, i, liars)

    def finalists(self, dispatch: WorkerDispatch, finalists: List[Finalist], liars: Dict[str, str]) -> None:
        """Every finalist a worker scored is rendered and scored here (this machine needs its image anyway);
        where the claim holds, the finalist carries this machine's own latent from now on."""
        for f in finalists:
            if f.latent is not None:
                continue
            i = f.result.index
            url = self.compare(dispatch, i, liars)
            kept = self.own_rows(i).kept.get(i)  # none for a relative verifier: the finish step re-renders it
            if url not in liars and kept is not None:
                f.latent, f.noise, f.batch = kept.latent, kept.noise, kept.batch


class ShardDispatcher:
    """The random search's dispatcher over worker servers (``search.random_search.Dispatcher``): the chunks go
    through :class:`~.workers.WorkerDispatch` (taken on demand, ``search/dispatch.py``), and a relative
    verifier's member scores are recombined by the verifier's own rule."""

    def __init__(self, workers: WorkerDispatch, verifier, prompt: str):
        self.workers, self.verifier, self.prompt = workers, verifier, prompt

    def plan(self, n: int, floor: int = 1):
        return self.workers.plan(n, floor)

    def __call__(self, plan, run_local, steps=None):
        return self.workers(plan, run_local, steps)

    def recombine(self, matrix: torch.Tensor) -> torch.Tensor:
        b = ScoreBook(self.verifier, self.prompt)
        b.add_matrix(matrix)
        return b.all()


class RoundsDispatcher:
    """A search's rounds over the worker servers (``search.dispatch.Pool``'s interface), for two kinds of task.

    * **rows** (successive halving, ``search/halving.py``): the first round's rows go out in chunks taken on
      demand; each row's state then stays on the machine that made it (a worker keeps it between the master's
      prompts, :class:`HeldRows`), and each later round sends every machine its rows' instruction (continue
      these to step L, drop those).  A worker that fails has its rows re-run from their seeds elsewhere.
    * **noises** (zero-order, evolution, ``search/evaluate.py``): each round's noises go out in chunks taken on
      demand, as exact float32 tensors with the seed of each row's in-sampler randomness; a worker renders and
      scores them and answers the scores.  A failed worker's chunk runs elsewhere.

    This machine is an executor too ('local', its rows' state in ``local.held``).  Every remote answer is
    recorded (``claims``) for the audit."""

    def __init__(self, workers: WorkerDispatch, host: ComfyHost, base: int, verifier, prompt: str, mine, members: int,
                 graph, node_id: str, progress: Progress):
        self.workers, self.host, self.base = workers, host, int(base)
        self.verifier, self.prompt, self.mine, self.members = verifier, prompt, mine, int(members)
        self.graph, self.node_id, self.progress = graph, node_id, progress
        self.search = uuid.uuid4().hex      # the workers keep this search's rows under it
        self.local = HostExecutor("local", host)
        self.queues: List[TaskQueue] = []
        self.dead: Dict[str, str] = {}
        self.speed: Dict[str, Any] = {}
        self.claims: List[Any] = []         # (worker, end, rows, member scores) of every rows answer a worker gave
        self.noise_claims: List[Any] = []   # (worker, noises, seeds, member scores) of every noises answer
        self.path_claims: List[Any] = []    # (worker, at the end, rows, their recipes, member scores) of paths answers

    def executors(self) -> int:
        return self.workers.executors()

    def plan(self, n: int, floor: int = 1):
        return plan_chunks(n, self.executors(), max(int(floor), int(self.workers.config.min_chunk)))

    def recombine(self, matrix: torch.Tensor) -> torch.Tensor:
        b = ScoreBook(self.verifier, self.prompt)
        b.add_matrix(matrix)
        return b.all()

    def __call__(self, plan, run_local, steps=None):
        """Random search's chunks (a strategy's random-search fallback): the workers' chunk protocol."""
        return self.workers(plan, run_local, steps)

    def _graph(self, job: ShardJob) -> Dict[str, Any]:
        common = dict(protocol=PROTOCOL, search=self.search, seed=self.base, token=job.token,
                      expect=fingerprint_digest(self.mine, job.token))
        if job.task.spec.get("steps"):  # a coarse-to-fine search's coarse steps
            common["steps"] = int(job.task.spec["steps"])
        if job.task.spec.get("kind") == "noises":
            spec = dict(common, kind="noises", noise=encode_noise(job.task.spec["noises"]),
                        seeds=list(job.task.spec["seeds"]))
        elif job.task.spec.get("kind") == "paths":
            spec = dict(common, kind="paths", **{k: v for k, v in job.task.spec.items()
                                                  if k in ("op", "rows", "seeds", "children", "begin", "renoise",
                                                           "end", "drop", "lineage") and v is not None})
        else:
            spec = dict(rows_spec(job.task.spec), kind="rows", **common)
        return shard_graph(self.graph, self.node_id, spec)

    def _check(self, url: str, job: ShardJob, ans: Any) -> Dict[str, Any]:
        if not isinstance(ans, dict):
            raise ShardAnswerError(f"the answer of worker {url} is malformed: not a JSON object")
        diff = differences(self.mine, ans.get("fingerprint"))
        if diff:
            raise WorkerRefused(f"worker {url} is refused: its " + "; its ".join(WHAT.get(k, k) for k in diff)
                                + " differ from this machine's. Its scores were not used")
        if job.task.spec.get("kind") == "noises":
            seeds = list(job.task.spec["seeds"])
            out = check_noises_answer(ans, rows=len(seeds), members=self.members,
                                      nfe=len(seeds) * int(self.host.nfe(0, int(self.host.steps))), token=job.token,
                                      source=f"worker {url}")
            self.noise_claims.append((url, job.task.spec["noises"], seeds, out["members"]))
            return out
        if job.task.spec.get("kind") == "paths":
            return self._check_paths(url, job, ans)
        spec = rows_spec(job.task.spec)
        nfe = len(spec["rows"]) * int(self.host.nfe(spec["begin"], spec["end"]))
        out = check_rows_answer(ans, spec=spec, members=self.members, nfe=nfe, token=job.token,
                                source=f"worker {url}")
        self.claims.append((url, spec["end"], list(spec["rows"]), out["members"]))
        return out

    def _check_paths(self, url: str, job: ShardJob, ans: Any) -> Dict[str, Any]:
        """A paths answer, validated: the instruction's rows in order, their member scores (none for ``start``),
        the NFEs the instruction costs, and the NFEs a lineage replay cost (at most the lineage's own)."""
        spec = job.task.spec
        op, steps = spec["op"], int(self.host.steps)
        rows = [c[0] for c in spec["children"]] if "children" in spec else list(spec["rows"])
        members = 0 if op in ("start", "roll") else self.members
        renoise = spec.get("renoise")
        nfe = len(rows) * int(self.host.nfe(renoise if renoise is not None else spec["begin"], spec["end"]))
        screened = None
        if op == "make":  # the tree's new children: only the screened ones are scored
            screened = [c[0] for c in spec["children"] if c[4]] if int(spec["end"]) < steps else []
            if ans.get("screened") != screened:
                raise ShardAnswerError(f"the answer of worker {url} for the tree's new children is malformed: it "
                                       "screened other children than asked. Its scores were not used")
        if op == "advance" and int(spec["end"]) < steps:  # each particle's x0 probe
            nfe += len(rows) * int(getattr(self.host, "nfe_predict", 1))
        src = f"worker {url}"

        def bad(why: str) -> ShardAnswerError:
            return ShardAnswerError(f"the answer of {src} for {len(rows)} path row(s) is malformed: {why}. Its "
                                    "scores were not used")
        if ans.get("protocol") != PROTOCOL or ans.get("token") != job.token or ans.get("kind") != "paths":
            raise bad("another protocol, request or kind")
        if ans.get("rows") != rows:
            raise bad("it names other rows than the instruction's, or not in order")
        scored = rows if screened is None else screened
        ms = ans.get("members")
        if not isinstance(ms, list) or len(ms) != (len(scored) if members else len(rows)):
            raise bad(f"expected member scores of {len(scored)} rows")
        got = check_rows_answer({"protocol": PROTOCOL, "token": job.token, "kind": "rows",
                                 "rows": list(range(len(scored))), "members": ms, "nfe": nfe, "replay": False},
                                spec={"rows": list(range(len(scored))), "end": spec["end"]}, members=members, nfe=nfe,
                                token=job.token, source=src) if members and scored else None
        if type(ans.get("nfe")) is not int or ans["nfe"] != nfe:
            raise bad(f"it spent {ans.get('nfe')!r} NFEs, expected {nfe}")
        most = len(spec.get("lineage") or {}) * steps * max(1, len(self.host.sigmas))
        if type(ans.get("replayed")) is not int or not 0 <= ans["replayed"] <= most:
            raise bad("its replayed NFEs are out of range")
        m = got["members"] if got is not None else torch.zeros(len(scored) if members else len(rows), 0)
        if members and scored:
            recipes = spec.get("recipes") or {}
            probes = [c[3] for c in spec["children"]] if op == "advance" else [None] * len(scored)
            self.path_claims.append((url, int(spec["end"]) >= steps, scored, [recipes.get(i) for i in scored], m,
                                     probes))
        if type(ans.get("remade")) is not int or not 0 <= ans["remade"] <= len(spec.get("lineage") or {}):
            raise bad("its count of re-made rows is out of range")
        return {"rows": rows, "members": m, "nfe": nfe, "latents": None, "replayed": int(ans["replayed"]),
                "remade": int(ans["remade"]), "screened": screened,
                "digests": self._digests(ans, rows, bad) if int(spec["end"]) >= steps and members and op != "make"
                else None}

    @staticmethod
    def _digests(ans: Any, rows: List[int], bad) -> Optional[List[str]]:
        d = ans.get("digests")
        if not isinstance(d, list) or len(d) != len(rows) or \
                not all(isinstance(x, str) and re.fullmatch(r"[0-9a-f]{64}", x) for x in d):
            raise bad("its final samples' digests are not one 64-hex-digit string a row")
        return list(d)

    def run(self, tasks, orphan=None, extra=()) -> TaskQueue:
        queue = TaskQueue([], orphan)
        queue.dead.update(self.dead)
        for url in list(self.workers.banned) + sorted(self.workers.faulty):
            queue.dead.setdefault(url, "failed before")
        queue.speed = self.speed  # measured speeds carry over from round to round
        for t in tasks:
            queue.add(t)
        self.queues.append(queue)
        try:
            self.workers.drive(queue, self.local.run, graph_for=self._graph, check=self._check,
                               on_remote=lambda ans: self.progress.advance(int(ans["nfe"])))
        finally:
            self.dead.update(queue.dead)
        return queue

    def ran_on(self) -> Dict[str, int]:
        """Rows sampled per machine, over every round."""
        by: Dict[str, int] = {}
        for q in self.queues:
            for key in q.order:
                who = q.ran.get(key, "local")
                by[who] = by.get(who, 0) + int(q.done[key]["members"].shape[0])
        return by

    def audit(self, audit: "Audit", finalists: List[Finalist], liars: Dict[str, str]) -> None:
        """The workers' claims checked here: ``audit_per_shard`` rows of each answer, drawn where the worker
        cannot foresee them, sampled to the same step and scored on this machine; and every finalist a worker
        finished, rendered and scored here (this machine needs its image anyway)."""
        if self.workers.ran:  # a random-search fallback's chunks
            audit.sample(self.workers, liars)
            audit.finalists(self.workers, finalists, liars)
        k, steps = int(audit.config.audit_per_shard), int(self.host.steps)
        final: Dict[int, Any] = {}
        for url, end, rows, got in self.claims:
            if end >= steps:
                for r, i in enumerate(rows):
                    final[i] = (url, got[r])
            if k <= 0 or url in liars:
                continue
            for r in sorted(audit.rng.sample(range(len(rows)), min(k, len(rows)))):
                i = rows[r]
                if end >= steps:
                    own = audit.own_rows(i).rows[0]
                else:
                    ans = rows_work(self.base, {"rows": [i], "begin": 0, "end": end, "fresh": True},
                                    name_of(self.verifier))(self.host, {})
                    audit.nfe += int(ans["nfe"])
                    own = ans["members"][0]
                self._compare(url, i, end, got[r], own, audit, liars)
        self._audit_noises(audit, finalists, liars)
        self._audit_paths(audit, finalists, liars)
        for f in finalists:
            i = f.result.index
            if f.latent is not None or i not in final:
                continue
            url, claimed = final[i]
            if url in liars:
                continue
            mine = audit.own_rows(i)
            self._compare(url, i, steps, claimed, mine.rows[0], audit, liars)
            kept = mine.kept.get(i)  # none for a relative verifier: the finish step re-renders it
            if url not in liars and kept is not None:
                f.latent, f.noise, f.batch = kept.latent, kept.noise, kept.batch

    def _audit_noises(self, audit: "Audit", finalists: List[Finalist], liars: Dict[str, str]) -> None:
        """Noise rows: ``audit_per_shard`` rows of each answer rendered and scored here; and every finalist a
        worker rendered (it carries its noise and seed), rendered here, which gives it its latent."""
        k = int(audit.config.audit_per_shard)
        verifier = name_of(self.verifier)

        def own(noise: torch.Tensor, seed: int) -> Dict[str, Any]:
            got = noises_work(noise, [int(seed)], [f"audit of noise row (seed {seed})"], verifier)(self.host, {})
            audit.nfe += int(got["nfe"])
            audit.own[("noise", int(seed))] = got
            return got
        claimed: Dict[int, Any] = {}
        for url, noises, seeds, got in self.noise_claims:
            for r, sd in enumerate(seeds):
                claimed[int(sd)] = (url, noises[r:r + 1], got[r])
            if k <= 0 or url in liars:
                continue
            for r in sorted(audit.rng.sample(range(len(seeds)), min(k, len(seeds)))):
                mine = own(noises[r:r + 1], seeds[r])
                self._compare(url, r, int(self.host.steps), got[r], mine["members"][0], audit, liars,
                              what=f"noise row of seed {seeds[r]}")
        for f in finalists:
            if f.latent is not None or f.seed is None or int(f.seed) not in claimed:
                continue
            url, noise, members = claimed[int(f.seed)]
            if url in liars:
                continue
            mine = own(noise, int(f.seed))
            self._compare(url, f.result.index, int(self.host.steps), members, mine["members"][0], audit, liars)
            if url not in liars:
                f.latent, f.batch = mine["latents"][0:1], (mine["batch"] or [None])[0]

    def _own_path(self, audit: "Audit", recipe: Dict[str, Any], final: bool, probe: Optional[int] = None):
        """A path or particle row re-made here from its recipe: (its raw member scores, its final latent or
        None).  Part-way, a path is scored on its last segment's x0-prediction, a particle on its x0 probe
        (``probe``: the probe's seed)."""
        key = ("path", json.dumps(recipe, sort_keys=True), final, probe)
        if key not in audit.own:
            verifier = name_of(self.verifier)
            if final:
                lat, nfe = replay(self.host, recipe)
                first = int(self.host.scored_rows)
                sc = checked_scores(self.host.score(lat), 1, ["audit of a path"], verifier)
            else:
                state, x0, nfe = lineage(self.host, recipe)
                if probe is not None:
                    x0 = self.host.predict_x0(state, [int(probe)])
                    nfe += int(getattr(self.host, "nfe_predict", 1))
                lat = None
                first = int(self.host.scored_rows)
                sc = checked_scores(score_x0(self.host, x0), 1, ["audit of a path"], verifier)
            audit.nfe += int(nfe)
            audit.own[key] = (member_rows(self.host, first, 1, sc)[0], lat)
        return audit.own[key]

    def _audit_paths(self, audit: "Audit", finalists: List[Finalist], liars: Dict[str, str]) -> None:
        """Paths: ``audit_per_shard`` rows of each answer re-made here from their recipes and scored; and every
        finalist a worker finished, re-made here (which gives it its latent)."""
        k = int(audit.config.audit_per_shard)
        final: Dict[str, Any] = {}
        for url, at_end, rows, recipes, got, probes in self.path_claims:
            for r, rec in enumerate(recipes):
                if at_end and rec is not None:
                    final[json.dumps(rec, sort_keys=True)] = (url, got[r])
            if k <= 0 or url in liars:
                continue
            for r in sorted(audit.rng.sample(range(len(rows)), min(k, len(rows)))):
                if recipes[r] is None:
                    continue
                own, _ = self._own_path(audit, recipes[r], at_end, probes[r])
                self._compare(url, rows[r], 0, got[r], own, audit, liars, what=f"path row {rows[r]}")
        for f in finalists:
            if f.latent is not None or f.recipe is None:
                continue
            rec = {"seed": int(f.recipe["seed"]), "ops": [list(op) for op in f.recipe["ops"]]}
            claim = final.get(json.dumps(rec, sort_keys=True))
            if claim is None:
                claim = final.get(json.dumps(f.recipe, sort_keys=True))
            own, lat = self._own_path(audit, f.recipe, True)
            if claim is not None:
                self._compare(claim[0], f.result.index, int(self.host.steps), claim[1], own, audit, liars)
            f.latent = lat

    @staticmethod
    def _compare(url: str, i: int, end: int, claimed: torch.Tensor, own: torch.Tensor, audit: "Audit",
                 liars: Dict[str, str], what: str = "") -> None:
        if url in liars or agree(claimed, own, audit.config.audit_tolerance):
            return
        fmt = lambda t: ", ".join(f"{v:.4g}" for v in t.reshape(-1).tolist())  # noqa: E731
        liars[url] = (f"its claimed score of {what or f'candidate {i} at step {end}'} ({fmt(claimed)}) disagrees "
                      f"with this machine's own ({fmt(own)}) beyond the tolerance of "
                      f"{audit.config.audit_tolerance:g}")



def sharded_search(config: WorkerConfig, graph, node_id, plan: SamplingPlan, strategy, host: ComfyHost,
                   budget: int, top_k: int, seed: int, verifier, prompt: str, vae, progress: Progress,
                   rng: Optional[random.Random] = None):
    """SearchLoop's random search with shards on the worker machines: (report, finalists).  Workers' claims are
    audited (:class:`Audit`); a worker that fails the audit is dropped and its shards run again elsewhere."""
    if not graph or node_id is None:
        raise SearchInputError("Search Loop did not get its own prompt from ComfyUI (hidden PROMPT / UNIQUE_ID), "
                               "so it cannot send it to the workers")
    node_id = str(node_id)
    # a coarse-to-fine search's workers sample on its coarse steps (the finalists' full steps are this machine's)
    work_host = host.with_steps(int(strategy.coarse_steps)) if strategy is not None and strategy.coarse_steps \
        else host
    gen = int(work_host.nfe(0, int(work_host.steps)))
    t0 = time.perf_counter()
    mine = fingerprint(plan, vae, verifier, prompt)
    fingerprint_s = time.perf_counter() - t0
    book = ScoreBook(verifier, prompt)
    members = len(book.member_names) if book.relative else 1
    base = int(seed)

    def graph_for(job: ShardJob) -> Dict[str, Any]:
        spec = {"protocol": PROTOCOL, "start": job.start, "count": job.count, "seed": base, "token": job.token,
                "expect": fingerprint_digest(mine, job.token)}
        if job.task is not None and job.task.spec.get("steps"):
            spec["steps"] = int(job.task.spec["steps"])
        return shard_graph(graph, node_id, spec)

    def check(url: str, job: ShardJob, ans: Any):
        if not isinstance(ans, dict):
            raise ShardAnswerError(f"the answer of worker {url} is malformed: not a JSON object")
        diff = differences(mine, ans.get("fingerprint"))
        if diff:
            raise WorkerRefused(f"worker {url} is refused: its " + "; its ".join(WHAT.get(k, k) for k in diff)
                                + " differ from this machine's. Its scores were not used")
        return check_answer(ans, start=job.start, count=job.count, base_seed=base, members=members, nfe=gen,
                            token=job.token, source=f"worker {url}")

    dispatch = WorkerDispatch(config, graph_for, node_id, check, throw_if_interrupted,
                              on_remote=lambda rows: progress.advance(sum(rows.nfe)))
    audit = Audit(work_host, base, config, rng)

    in_rounds = strategy is not None and get_algorithm(strategy.name).dispatch in ("rounds", "noises")
    dispatcher: Any = ShardDispatcher(dispatch, verifier, prompt)
    dropped: List[Dict[str, str]] = []
    try:
        for _ in range(len(config.urls) + 1):  # each pass drops at least one worker, or is the last
            if in_rounds:  # every pass from scratch: the rows a dropped worker held are gone with it
                dispatcher = RoundsDispatcher(dispatch, work_host, base, verifier, prompt, mine, members, graph,
                                              node_id, progress)
            report, finalists = run_strategy(strategy, host, budget_nfe=budget, top_k=top_k, seed=base,
                                             verifier=name_of(verifier), dispatch=dispatcher,
                                             member_names=book.member_names)
            liars: Dict[str, str] = {}
            if in_rounds:
                dispatcher.audit(audit, finalists, liars)
            else:
                audit.sample(dispatch, liars)
                if not liars:
                    audit.finalists(dispatch, finalists, liars)
            if not liars:
                break
            for url, why in liars.items():
                dispatch.ban(url, why)
                dropped.append({"worker": url, "why": why})
                logging.warning("[inference scaling] worker %s was dropped from this search: %s", url, why)
    except (WorkerRefused, ShardAnswerError) as e:
        raise SearchInputError(str(e)) from None
    ran = report.settings.get("shards", [])
    report.settings["workers"] = {"pool": config.source, "workers": len(config.urls), "local": bool(config.local),
                                  "timeout_s": float(config.timeout_s), "faults": list(dispatch.notes),
                                  "fingerprint_s": round(fingerprint_s, 3),
                                  "audit": {"per_shard": int(config.audit_per_shard),
                                            "tolerance": float(config.audit_tolerance),
                                            "candidates": len(audit.own), "nfe": int(audit.nfe),
                                            "dropped": dropped}}
    by = {}
    for s in ran:
        by[s["ran_on"]] = by.get(s["ran_on"], 0) + int(s["count"])
    in_rounds = in_rounds and not ran  # a strategy's random-search fallback ran chunks
    if in_rounds:
        by = {("this machine" if k == "local" else f"worker {k}"): v for k, v in dispatcher.ran_on().items()}
    report.notes.extend(dispatch.notes)
    where = {i: s["ran_on"] for s in ran for i in range(s["start"], s["start"] + s["count"])}
    lost = sum(1 for c in report.candidates if c.score == -math.inf and where.get(c.index, "local") != "local")
    if lost:  # this machine's own count (report.verifier_failures) sees only its own grader calls
        report.notes.append(f"{lost} candidate(s) scored on worker machines got -inf (a remote grader gave no valid "
                            "answer there): they rank last")
    report.notes.append(("rows sampled and scored (over every round): " if in_rounds else
                         "candidates sampled and scored: ") + ", ".join(f"{v} on {k}" for k, v in by.items())
                        + "; the finalists were re-rendered on this machine, which also checked "
                        f"{len(audit.own)} of the workers' candidates by sampling and scoring them itself")
    return report, finalists


class HeldRows:
    """The rows' states a worker keeps between a master's rounds (successive halving over workers), one dict
    per search id.  Bounded: the ``most`` searches used last are kept (an older one is dropped whole, as is one
    unused for ``ttl_s`` seconds); a master whose rows were dropped gets "holds no state" and re-runs them
    elsewhere from their seeds."""

    def __init__(self, most: int = 2, ttl_s: float = 3600.0):
        self.most, self.ttl_s = int(most), float(ttl_s)
        self.lock = threading.Lock()
        self.searches: "collections.OrderedDict[str, Any]" = collections.OrderedDict()

    def get(self, search: str) -> Dict[Any, Any]:
        now = time.monotonic()
        with self.lock:
            for k in [k for k, (t, _) in self.searches.items() if now - t > self.ttl_s]:
                del self.searches[k]
            _, held = self.searches.pop(search, (now, {}))
            self.searches[search] = (now, held)
            while len(self.searches) > self.most:
                self.searches.popitem(last=False)
            return held


HELD = HeldRows()
SEARCH_ID = re.compile(r"^[0-9a-f]{32}$")


def answer_shard(plan: SamplingPlan, vae, verifier, prompt: str, seed: int, micro_batch: int,
                 shard: str) -> Dict[str, Any]:
    """What a worker's Search Shard node answers: the shard's candidates sampled and scored as Search Loop would
    (ids, seeds, raw member scores, NFEs and this worker's fingerprint), or a refusal when its fingerprint is not
    the master's.  A rows task (``kind`` "rows", successive halving's rounds) continues rows this worker holds
    (or starts them), keeps their state for the next round and answers their scores (:func:`answer_rows`)."""
    try:
        spec = json.loads(shard)
        if not isinstance(spec, dict):
            raise TypeError
    except (ValueError, TypeError):
        raise SearchInputError("Search Shard needs the shard JSON Search Loop writes; this node runs on worker "
                               "machines and is not placed by hand") from None
    if spec.get("kind") in ("rows", "noises", "paths"):
        return answer_rows(plan, vae, verifier, prompt, seed, micro_batch, spec)
    try:
        start, count, base, token = (int(spec["start"]), int(spec["count"]), int(spec["seed"]),
                                     str(spec["token"]))
    except (ValueError, KeyError, TypeError):
        raise SearchInputError("Search Shard needs the shard JSON Search Loop writes (start, count, seed, "
                               "token); this node runs on worker machines and is not placed by hand") from None
    if spec.get("protocol") != PROTOCOL:
        raise SearchInputError(f"the master speaks shard protocol {spec.get('protocol')!r}, this worker "
                               f"{PROTOCOL}: install the same pack version on both machines")
    if start < 0 or count < 1 or base != int(seed):
        raise SearchInputError(f"shard {start}..{start + count - 1} of seed {base} does not belong to this "
                               f"search (seed {seed})")
    mine = fingerprint(plan, vae, verifier, prompt)
    if spec.get("expect") != fingerprint_digest(mine, token):  # refused before any sampling: the master
        # compares this fingerprint (computed here, from what this worker loaded) and names what differs
        out = {"protocol": PROTOCOL, "token": token, "start": start, "count": count, "fingerprint": mine,
               "refused": "fingerprint", "candidates": []}
    else:
        gen = plan.nfe_per_generation() or max(1, plan.sigmas.numel() - 1)
        progress = Progress(total=count * gen, model=plan.model)
        vae = scoring_vae(plan, vae)
        lanes = device_set(plan, "all", vae)  # every GPU of the worker; their copies go when the shard ends
        try:
            host = at_steps(ComfyHost(plan, vae, verifier, prompt, progress, plan.micro_batch(count, int(micro_batch)),
                                      mask_seed=int(seed), devices=lanes), spec)
            rows = run_shard(host, base, start, count, verifier=name_of(verifier))
        finally:
            lanes.release()
        out = answer(rows, base_seed=base, token=token, fingerprint=mine)
    return out


def at_steps(host: ComfyHost, spec: Dict[str, Any]) -> ComfyHost:
    """The worker's host on a coarse-to-fine search's coarse steps (``steps`` in the task), else as it is."""
    steps = spec.get("steps")
    if steps is None:
        return host
    if type(steps) is not int or not 1 <= steps < int(host.steps):
        raise SearchInputError(f"a task for {steps!r} coarse steps of a {int(host.steps)}-step schedule")
    return host.with_steps(steps)


def answer_rows(plan: SamplingPlan, vae, verifier, prompt: str, seed: int, micro_batch: int,
                spec: Dict[str, Any]) -> Dict[str, Any]:
    """A noises task on a worker: render each noise row (its seed keys the in-sampler randomness), score it,
    answer the scores.  A rows task on a worker: start ``rows`` from their seeds (``fresh``) or continue the ones this worker
    holds for the search, drop ``drop``, sample them to step ``end``, score their x0-predictions (their final
    latents at the end) and keep their state here for the next round (:data:`HELD`)."""
    if spec.get("protocol") != PROTOCOL:
        raise SearchInputError(f"the master speaks shard protocol {spec.get('protocol')!r}, this worker "
                               f"{PROTOCOL}: install the same pack version on both machines")
    noises, paths = spec.get("kind") == "noises", spec.get("kind") == "paths"
    try:
        if noises:
            noise, seeds = noises_spec(spec, like=list(plan.template.shape[1:]))
            task = {"rows": seeds, "begin": 0, "end": 1, "replay": False}
        elif paths:
            task = paths_spec(spec)
            task["rows"] = [c[0] for c in task["children"]] if "children" in task else task["rows"]
            task["replay"] = False
        else:
            task = rows_spec(spec)
        base, token, search = int(spec["seed"]), str(spec["token"]), str(spec["search"])
    except (ValueError, KeyError, TypeError) as e:
        raise SearchInputError(f"Search Shard got a rows task it cannot read ({e}); this node runs on worker "
                               "machines and is not placed by hand") from None
    if base != int(seed) or not SEARCH_ID.match(search):
        raise SearchInputError(f"a rows task of seed {base} does not belong to this search (seed {seed})")
    mine = fingerprint(plan, vae, verifier, prompt)
    if spec.get("expect") != fingerprint_digest(mine, token):
        return {"protocol": PROTOCOL, "kind": spec.get("kind"), "token": token, "fingerprint": mine,
                "refused": "fingerprint", "rows": [], "members": [], "nfe": 0, "replay": task["replay"]}
    n = len(task["rows"])
    progress = Progress(total=max(1, n * (task["end"] - task["begin"])), model=plan.model)
    vae = scoring_vae(plan, vae)
    lanes = device_set(plan, "all", vae)
    try:
        host = at_steps(ComfyHost(plan, vae, verifier, prompt, progress, plan.micro_batch(n, int(micro_batch)),
                                  mask_seed=int(seed), devices=lanes), spec)
        if noises:
            labels = [f"noise row (seed {s})" for s in seeds]
            out = noises_work(noise, seeds, labels, name_of(verifier))(host, {})
            return noises_answer(out, token=token, fingerprint=mine)
        if paths:
            if task["end"] > int(host.steps):
                raise SearchInputError(f"a paths instruction to step {task['end']} of a {int(host.steps)}-step "
                                       "schedule")
            out = paths_work(task, name_of(verifier))(host, HELD.get(search))
            return {"protocol": PROTOCOL, "kind": "paths", "token": token, "fingerprint": mine, "refused": None,
                    "rows": [int(i) for i in out["rows"]], "members": [[float(v) for v in r] for r in out["members"]],
                    "nfe": int(out["nfe"]), "replayed": int(out["replayed"]), "remade": int(out["remade"]),
                    "digests": out.get("digests"), "screened": out.get("screened")}
        if task["end"] > int(host.steps):
            raise SearchInputError(f"a rows task to step {task['end']} of a {int(host.steps)}-step schedule")
        out = rows_work(base, task, name_of(verifier))(host, HELD.get(search))
    finally:
        lanes.release()
    return rows_answer(out, token=token, fingerprint=mine)
