"""Particle resampling: Feynman–Kac steering (Singhal et al. 2025).

k particles start from the candidate noises of seeds base+i and run a
*stochastic* sampler (copies of a particle must diverge afterwards).  At the
resampling steps (every ``interval`` schedule steps, before the end) each
particle's reward r_t is the verifier's score of the model's x0-prediction
**at the state the sampler returned** (``host.predict_x0``: after that step's
fresh noise, so the ranking sees exactly what is resampled), and the
particle's log-weight grows by the log-potential:

* ``difference``: λ·(r_t − r_{t−1})   (r before the first step = 0, so the
  product of potentials telescopes to exp(λ·r_t))
* ``max``:        λ·max_{s≤t} r_s
* ``sum``:        λ·Σ_{s≤t} r_s
* ``current``:    λ·r_t

With ``reward_scale`` = ``standardized`` the potential's increment is divided
by its standard deviation over the k particles before λ multiplies it, so λ is
a temperature in units of the particles' spread and means the same whatever
the verifier's scale (``raw``: λ multiplies the verifier's own units, as in FK
steering).  If ``ess_threshold`` is 0 the particles are resampled at every
resampling step; otherwise only when the effective sample size 1/Σw² of the
normalised weights drops below ``ess_threshold``·k.  Resampling (multinomial
or systematic, from a generator seeded per step) copies states, their reward
history and lineage, and resets the weights to uniform.  Segment j of row i
runs with the derived seed (base, segment, i), so copies diverge.  The final
pick is by the score of the final samples (ties: the lowest particle index).
``settings["distinct_lineages"]`` counts the starting noises that still have a
descendant at the end (k = no particle was ever lost, 1 = full collapse).

Cost: k × (NFEs per generation + R × ``host.nfe_predict``), R resampling
steps; k = ``particles``, or as many as the budget holds when 0.  When the
budget cannot hold two particles with their probes, the particles run without
resampling (a random search with the stochastic sampler) and the report says so.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple  # noqa: F401

import torch

from .common import (TAG_PARTICLES, TopK, check_budget, check_top_k, checked_scores, end_level, generation_nfe,
                     score_x0, top_k_indices)
from .host import SearchHost, derive_seed, final_latents
from .paths import _DispatchedPaths, digest, lineage_finalist
from .noise import seeds_for, wrap_seed
from .registry import Algorithm, Param
from .report import CandidateResult, Finalist, SearchReport
from .stopping import StopRule, Stopper

POTENTIALS = ("difference", "max", "sum", "current")
RESAMPLING = ("multinomial", "systematic")
REWARD_SCALES = ("standardized", "raw")


def resample_indices(weights: torch.Tensor, n: int, generator: torch.Generator,
                     method: str = "multinomial") -> List[int]:
    """``n`` ancestor indices drawn with probabilities ``weights`` (normalised here)."""
    w = weights.detach().double().reshape(-1)
    if (w < 0).any() or not torch.isfinite(w).all() or w.sum() <= 0:
        raise ValueError("resampling weights must be finite, non-negative and not all zero")
    w = w / w.sum()
    if method == "multinomial":
        return torch.multinomial(w, n, replacement=True, generator=generator).tolist()
    if method == "systematic":
        u0 = torch.rand((), generator=generator, dtype=torch.float64)
        positions = (u0 + torch.arange(n, dtype=torch.float64)) / n
        cdf = torch.cumsum(w, 0)
        cdf[-1] = 1.0
        return torch.searchsorted(cdf, positions, right=True).clamp(max=len(w) - 1).tolist()
    raise ValueError(f"unknown resampling method '{method}'; pick one of {', '.join(RESAMPLING)}")


def effective_sample_size(log_weights: torch.Tensor) -> float:
    w = torch.softmax(log_weights.double(), 0)
    return float(1.0 / (w * w).sum())


def resampling_steps(steps: int, interval: int) -> List[int]:
    if interval < 1:
        raise ValueError(f"the resampling interval must be at least 1 step, got {interval}")
    return list(range(interval, steps, interval))


def standardized(v: torch.Tensor) -> torch.Tensor:
    """``v`` over its standard deviation across particles (0 where all are equal); the mean is kept
    out too, which the softmax of the weights ignores anyway."""
    v = v.double()
    sd = float(v.std(unbiased=False)) if v.numel() > 1 else 0.0
    return torch.zeros_like(v) if not sd > 1e-12 else (v - v.mean()) / sd


def particle_plan(host: SearchHost, budget_nfe: int, particles: int, interval: int) -> Tuple[int, List[int]]:
    """(k, resampling steps) for a budget: ``particles`` (or as many as fit when 0) with a probe at each
    resampling step; without resampling when fewer than two particles and their probes fit."""
    gen, T = generation_nfe(host), int(host.steps)
    probe = int(getattr(host, "nfe_predict", 1))
    stops = resampling_steps(T, int(interval))
    per = gen + probe * len(stops)
    k = int(particles) if particles else int(budget_nfe) // per
    if k < 2 or k * per > int(budget_nfe):
        return (int(particles) if particles else int(budget_nfe) // gen), []
    return k, stops


class _HostParticles:
    """The particles on one host: all k states in one batch (the host micro-batches)."""

    def __init__(self, host: SearchHost, origin: List[int], verifier: str):
        self.host, self.verifier = host, verifier
        self.state = host.start(host.initial_noise(origin))

    @property
    def index(self) -> int:
        return int(self.state.index)

    def advance(self, end: int, run_seeds, probe_seeds, labels, recipes) -> Optional[List[float]]:
        """Every particle sampled on to ``end``; before the end, the scores of the x0-predictions at the states
        returned (``probe_seeds``), else None."""
        self.state, _ = self.host.sample(self.state, end, run_seeds)
        if end >= int(self.host.steps):
            return None
        x0 = self.host.predict_x0(self.state, probe_seeds)
        return checked_scores(score_x0(self.host, x0), len(labels), labels, self.verifier)

    def select(self, idx: List[int]) -> None:
        self.state = self.state.select(idx)

    def final(self, labels):
        """(the final scores, each particle's final latent, a digest per particle: equal digests, equal samples)."""
        latents = final_latents(self.state)
        scores = checked_scores(self.host.score(latents), len(labels), labels, self.verifier)
        rows = [latents[i:i + 1] for i in range(len(labels))]
        return scores, rows, [digest(r) for r in rows]


class _DispatchedParticles(_DispatchedPaths):
    """The particles over a dispatcher's executors (``search.dispatch.Pool``, the worker servers): they start in
    chunks taken on demand; a particle's state then stays on the executor that made it; a resampled copy is made
    where its parent lives (no state crosses machines), and sampled on there with its own seed.  A failed
    executor's particles are re-made from their recipes elsewhere.  Final samples come back as scores and a
    digest each (for the distinct-finalists rule); their latents only from this process."""

    def __init__(self, dispatch: Any, host: SearchHost, origin: List[int], verifier: str):
        super().__init__(dispatch, host, origin, 0, verifier)
        self.final_scores: List[float] = []
        self.final_latents: List[Any] = []

    def advance(self, end: int, run_seeds, probe_seeds, labels, recipes) -> Optional[List[float]]:
        T = int(self.host.steps)
        children = []
        for k, parent in enumerate(self.ids):
            cid = self.next_id
            self.next_id += 1
            self.recipes[cid] = recipes[k]
            children.append([cid, parent, int(run_seeds[k]), int(probe_seeds[k]) if probe_seeds else 0])
        begin = self.index_now
        per = float(self.host.nfe(begin, end)) + (0.0 if end >= T else float(getattr(self.host, "nfe_predict", 1)))
        tasks = self._tasks("advance", children, lambda c: self.owner[c[1]],
                            lambda part: {"children": part, "begin": begin, "end": int(end),
                                          "recipes": {c[0]: self.recipes[c[0]] for c in part}}, per)
        got, m, latents = self._run(tasks)
        for p in set(self.ids):  # the parents are not needed any more
            self.dropped.setdefault(self.owner[p], []).append(p)
        self.ids = [c[0] for c in children]
        self.index_now = int(end)
        scores = self._scores(self.ids, got, m, labels)
        if end >= T:
            self.final_scores = scores
            self.final_latents = [latents.get(i) for i in self.ids]
            return None
        return scores

    def select(self, idx: List[int]) -> None:
        kept = [self.ids[i] for i in idx]
        for i in set(self.ids) - set(kept):
            self.dropped.setdefault(self.owner[i], []).append(i)
        self.ids = kept

    def final(self, labels):
        return self.final_scores, self.final_latents, [self.digests[i] for i in self.ids]


def particle_search(host: SearchHost, *, seed: int, budget_nfe: int, top_k: int = 1, verifier: str = "verifier",
                    stop: StopRule = None, dispatch=None, member_names=(), **params
                    ) -> Tuple[SearchReport, List[Finalist]]:
    """``dispatch``: None = every particle on this host; else a dispatcher with rounds (``search.dispatch.Pool``,
    the worker servers): each particle's state stays on the executor that made it and a resampled copy is made
    where its parent lives; the same weights, resamplings, samples and finalists whoever holds which."""
    p = ALGORITHM.resolve(params)
    ALGORITHM.check_sampler(host.sampler_name)
    particles, interval, potential, lam = p["particles"], p["interval"], p["potential"], p["lam"]
    ess_threshold, resampling, scale = p["ess_threshold"], p["resampling"], p["reward_scale"]
    gen, T = generation_nfe(host), int(host.steps)
    probe = int(getattr(host, "nfe_predict", 1))
    k, resample_at = particle_plan(host, budget_nfe, particles, interval)
    check_budget(budget_nfe, max(k, 1) * gen, f"particle resampling with {max(k, 1)} particle(s)")
    check_top_k(top_k, k, "the number of particles")
    base = wrap_seed(seed)
    stops = resample_at + [T]
    report = SearchReport(algorithm="particles", top_k=top_k, verifier=verifier, nfe_per_generation=gen,
                          settings={"particles": k, "interval": int(interval), "potential": potential,
                                    "lambda": float(lam), "ess_threshold": float(ess_threshold),
                                    "resampling": resampling, "reward_scale": scale, "budget_nfe": int(budget_nfe),
                                    "resampling_steps": stops[:-1], "resampled_at": [], "ess": [],
                                    "reward_evaluations": 0, "probe_nfe": 0, "lineages_alive": []})
    if not resample_at and resampling_steps(T, int(interval)):
        report.notes.append(f"particles: the {int(budget_nfe)}-NFE budget cannot hold two particles with their "
                            f"x0 probes ({2 * (gen + probe * len(resampling_steps(T, int(interval))))} NFEs), so "
                            f"{k} particle(s) ran without resampling: a random search with the stochastic sampler")
    origin = seeds_for(base, 0, k)
    rows_of = _HostParticles(host, origin, verifier) if dispatch is None else \
        _DispatchedParticles(dispatch, host, origin, verifier)
    lineage = list(range(k))
    recipes = [{"seed": s, "ops": []} for s in origin]  # replayable on another schedule (coarse-to-fine)
    logw = torch.zeros(k, dtype=torch.float64)
    prev = torch.zeros(k, dtype=torch.float64)
    run_max = torch.full((k,), -math.inf, dtype=torch.float64)
    run_sum = torch.zeros(k, dtype=torch.float64)
    spent = 0
    # observations: the best x0 reward at each scoring step; when the rule fires the top_k particles are
    # finished without further resampling (the other particles' remaining steps are saved)
    stopper = Stopper(stop, "scoring rounds")
    for seg, end in enumerate(stops):
        start = rows_of.index
        run_seeds = [derive_seed(base, TAG_PARTICLES, seg, i) for i in range(k)]
        recipes = [{"seed": r["seed"], "ops": r["ops"] + [("sample", end_level(host, end), rs)]}
                   for r, rs in zip(recipes, run_seeds)]
        labels = [f"fk step {end} particle {i} (from seed {origin[lineage[i]]})" for i in range(k)]
        if end == T:
            labels = [f"fk particle {i} (from seed {origin[lineage[i]]})" for i in range(k)]
        # the reward of the state just returned: its own x0-prediction (after this segment's last noise)
        got = rows_of.advance(end, run_seeds, [derive_seed(base, TAG_PARTICLES, seg, i, 0x50) for i in range(k)],
                              labels, recipes)
        spent += k * host.nfe(start, end)
        if end == T:
            break
        spent += k * probe
        report.settings["probe_nfe"] += k * probe
        r = torch.tensor(got, dtype=torch.float64)
        report.settings["reward_evaluations"] += k
        dead = r == -math.inf  # a remote grader's failed answer: the particle gets weight 0
        if bool(dead.all()):
            raise ValueError(f"the {verifier} scored every particle -inf (failed answers) at step {end}: "
                             "nothing to resample from; check the remote grader's server")
        r = torch.where(dead, r[~dead].min(), r)
        run_max = torch.maximum(run_max, r)
        run_sum = run_sum + r
        if potential == "difference":
            inc = r - prev
        elif potential == "max":
            inc = run_max.clone()
        elif potential == "sum":
            inc = run_sum.clone()
        else:
            inc = r.clone()
        if scale == "standardized":
            inc = standardized(inc)
        logw = torch.where(dead, torch.full_like(logw, -math.inf), logw + lam * inc)
        prev = r
        ess = effective_sample_size(logw)
        report.settings["ess"].append(ess)
        report.trace.append({"round": seg + 1, "nfe": spent, "best": float(r.max()), "index": end})
        reward = torch.where(dead, torch.full_like(r, -math.inf), r)  # each row's reward, reordered on resampling
        if ess_threshold == 0.0 or ess < ess_threshold * k:
            g = torch.Generator(device="cpu")
            g.manual_seed(derive_seed(base, TAG_PARTICLES, seg, 0xA5))
            idx = resample_indices(torch.softmax(logw, 0), k, g, resampling)
            rows_of.select(idx)
            lineage = [lineage[i] for i in idx]
            recipes = [recipes[i] for i in idx]
            sel = torch.as_tensor(idx, dtype=torch.long)
            prev, run_max, run_sum, reward = prev[sel], run_max[sel], run_sum[sel], reward[sel]
            logw = torch.zeros(k, dtype=torch.float64)
            report.settings["resampled_at"].append(end)
        report.settings["lineages_alive"].append(len(set(lineage)))
        if stopper.see(float(r.max()), spent):
            # keep the top_k rows by their latest reward and finish them without resampling
            best = top_k_indices(reward.tolist(), top_k)
            rows_of.select(best)
            lineage = [lineage[i] for i in best]
            recipes = [recipes[i] for i in best]
            k = len(best)
            fin_seeds = [derive_seed(base, TAG_PARTICLES, seg + 1, i) for i in range(k)]
            start = rows_of.index
            recipes = [{"seed": rr["seed"], "ops": rr["ops"] + [("sample", end_level(host, T), rs)]}
                       for rr, rs in zip(recipes, fin_seeds)]
            rows_of.advance(T, fin_seeds, None, [f"fk particle {i} (from seed {origin[lineage[i]]})"
                                                  for i in range(k)], recipes)
            spent += k * host.nfe(start, T)
            break

    labels = [f"fk particle {i} (from seed {origin[lineage[i]]})" for i in range(k)]
    scores, latents, digests = rows_of.final(labels)
    results: Dict[int, CandidateResult] = {}
    for i in range(k):
        results[i] = CandidateResult(index=i, seed=None, score=scores[i], nfe=gen, noise_id=labels[i])
    # resampling copies particles, and a deterministic last step keeps copies identical: the finalists are
    # the best *distinct* samples, padded with copies only when fewer than top_k distinct ones survive
    order = sorted(range(k), key=lambda i: (-scores[i], i))
    distinct: List[int] = []
    for i in order:
        if not any(digests[i] == digests[j] for j in distinct):
            distinct.append(i)
    chosen = (distinct + [i for i in order if i not in distinct])[:top_k]
    report.settings["distinct_final_samples"] = len(distinct)
    report.settings["distinct_lineages"] = len(set(lineage))
    keep = TopK(top_k)
    for rank, i in enumerate(chosen):
        keep.offer(-rank, i, lineage_finalist(latents[i], recipes[i]))
    report.trace.append({"round": len(stops), "nfe": spent, "best": max(scores), "index": T})
    report.candidates = [results[i] for i in range(k)]
    report.nfe_total = spent
    if dispatch is not None:
        rows_of.report_to(report, "particle(s)")
    stopper.close(report, budget_nfe, spent)
    if spent < int(budget_nfe) and not stopper.fired:
        per = gen + probe * len(resample_at)
        report.settings["unspent_reason"] = (f"one more particle needs {per} NFEs (a generation plus "
                                             f"{len(resample_at)} x0 probe(s)) and only {int(budget_nfe) - spent} "
                                             "were left")
    report.finalize()
    return report, keep.finalists(results)


def _coarse(p: Dict[str, Any], candidates: int) -> Tuple[int, int, float]:
    """Coarse-to-fine: a particle search offers its k particles, 2 replayed by default, each one generation."""
    k = int(p["particles"]) or int(candidates)
    return k, min(2, k), 1.0


ALGORITHM = Algorithm(
    name="particles", run=particle_search, title="Particle Resampling (FK)", node="ParticleStrategy",
    description=("Particle resampling (FK steering, Singhal et al. 2025): k particles sampled together with a "
                 "stochastic sampler; every few steps the x0-prediction of each particle's current state is scored "
                 "(one extra NFE per particle) and the particles resampled by potentials, so compute goes to "
                 "promising ones. Needs an ancestral/SDE sampler. Below two particles' worth of budget it is a "
                 "random search with that sampler (the report says so)."),
    params=(
        Param("particles", 0, "k particles; 0 = as many as the budget holds (each costs a generation plus one NFE "
                              "per resampling step).", min=0, max=4096),
        Param("potential", "max", "max: exp(lambda * best reward so far); difference: exp(lambda * (r_t - r_prev)); "
                                  "sum: exp(lambda * sum of rewards); current: exp(lambda * r_t).", choices=POTENTIALS),
        Param("lam", 2.0, "lambda: 0 = no selection, larger = greedier (fewer distinct lineages survive). With "
                          "reward_scale 'standardized' it is in units of the particles' spread.",
              min=0.0, max=1000.0, step=0.5),
        Param("interval", 5, "Score and resample every this many steps.", min=1, max=1000),
        Param("ess_threshold", 0.0, "0 = resample at every scoring step; otherwise only when the effective sample "
                                    "size falls below this fraction of k (FK steering uses 0.5).",
              min=0.0, max=1.0, step=0.05),
        Param("resampling", "systematic", "How ancestors are drawn from the weights: multinomial or systematic "
                                           "(lower variance).", choices=RESAMPLING, optional=True),
        Param("reward_scale", "standardized", "standardized: lambda multiplies the potential over its spread "
                                              "across the particles (the same temperature for any verifier); raw: "
                                              "lambda multiplies the verifier's own units (FK steering).",
              choices=REWARD_SCALES, optional=True),
    ),
    samplers="stochastic", finalists="recipe", dispatch="rounds", coarse=_coarse)
