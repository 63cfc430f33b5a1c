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

import copy
import json
import logging
import math
import random
import time
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
from ..search import get_algorithm, run_strategy
from ..search.report import Finalist
from ..search.sharded import PROTOCOL, ShardAnswerError, ShardRows, answer, check_answer, run_shard
from ..verifiers.protocol import ScoreBook, capabilities, name_of

SHARD_NODE = "SearchShard"
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
    if strategy is not None and strategy.name != "random":
        raise SearchInputError(f"'{get_algorithm(strategy.name).title}' works in rounds that each depend on the "
                               "last round's scores; searching with worker machines is implemented for random search "
                               "only: disconnect Search Workers, or use random search")
    if strategy is not None and strategy.coarse_steps:
        raise SearchInputError("coarse-to-fine picks finalists from a coarse round before re-rendering them; with "
                               "worker machines only plain random search runs: set coarse_steps to 0 or disconnect "
                               "Search Workers")
    if strategy is not None and strategy.stop is not None and strategy.stop.active:
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
    """The random search's dispatcher over worker servers (``search.random_search.Dispatcher``): the shards go
    through :class:`~.workers.WorkerDispatch`, and a relative verifier's member scores are recombined by the
    verifier's own rule."""

    def __init__(self, workers: WorkerDispatch, verifier, prompt: str):
        self.workers, self.verifier, self.prompt = workers, verifier, prompt

    def parts(self) -> int:
        return self.workers.parts()

    def __call__(self, plan, run_local):
        return self.workers(plan, run_local)

    def recombine(self, matrix: torch.Tensor) -> torch.Tensor:
        b = ScoreBook(self.verifier, self.prompt)
        b.add_matrix(matrix)
        return b.all()


def sharded_search(config: WorkerConfig, graph, node_id, plan: SamplingPlan, strategy, host: ComfyHost,
                   budget: int, top_k: int, seed: int, verifier, prompt: str, vae, progress: Progress,
                   rng: Optional[random.Random] = None):
    """SearchLoop's random search with shards on the worker machines: (report, finalists).  Workers' claims are
    audited (:class:`Audit`); a worker that fails the audit is dropped and its shards run again elsewhere."""
    if not graph or node_id is None:
        raise SearchInputError("Search Loop did not get its own prompt from ComfyUI (hidden PROMPT / UNIQUE_ID), "
                               "so it cannot send it to the workers")
    node_id = str(node_id)
    gen = plan.nfe_per_generation()
    t0 = time.perf_counter()
    mine = fingerprint(plan, vae, verifier, prompt)
    fingerprint_s = time.perf_counter() - t0
    book = ScoreBook(verifier, prompt)
    members = len(book.member_names) if book.relative else 1
    base = int(seed)

    def graph_for(job: ShardJob) -> Dict[str, Any]:
        spec = {"protocol": PROTOCOL, "start": job.start, "count": job.count, "seed": base, "token": job.token,
                "expect": fingerprint_digest(mine, job.token)}
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
    audit = Audit(host, base, config, rng)

    dispatcher = ShardDispatcher(dispatch, verifier, prompt)
    dropped: List[Dict[str, str]] = []
    try:
        for _ in range(len(config.urls) + 1):  # each pass drops at least one worker, or is the last
            report, finalists = run_strategy(strategy, host, budget_nfe=budget, top_k=top_k, seed=base,
                                             verifier=name_of(verifier), dispatch=dispatcher,
                                             member_names=book.member_names)
            liars: Dict[str, str] = {}
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
    report.notes.extend(dispatch.notes)
    where = {i: s["ran_on"] for s in ran for i in range(s["start"], s["start"] + s["count"])}
    lost = sum(1 for c in report.candidates if c.score == -math.inf and where.get(c.index, "local") != "local")
    if lost:  # this machine's own count (report.verifier_failures) sees only its own grader calls
        report.notes.append(f"{lost} candidate(s) scored on worker machines got -inf (a remote grader gave no valid "
                            "answer there): they rank last")
    report.notes.append("candidates sampled and scored: " + ", ".join(f"{v} on {k}" for k, v in by.items())
                        + "; the finalists were re-rendered on this machine, which also checked "
                        f"{len(audit.own)} of the workers' candidates by sampling and scoring them itself")
    return report, finalists


def answer_shard(plan: SamplingPlan, vae, verifier, prompt: str, seed: int, micro_batch: int,
                 shard: str) -> Dict[str, Any]:
    """What a worker's Search Shard node answers: the shard's candidates sampled and scored as Search Loop would
    (ids, seeds, raw member scores, NFEs and this worker's fingerprint), or a refusal when its fingerprint is not
    the master's."""
    try:
        spec = json.loads(shard)
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
            host = ComfyHost(plan, vae, verifier, prompt, progress, plan.micro_batch(count, int(micro_batch)),
                             mask_seed=int(seed), devices=lanes)
            rows = run_shard(host, base, start, count, verifier=name_of(verifier))
        finally:
            lanes.release()
        out = answer(rows, base_seed=base, token=token, fingerprint=mine)
    return out
