"""Two-model quality harness: every search algorithm at its defaults, at equal NFE budgets, on two model families.

    python bench/quality/harness.py --tag baseline        # both models, full tables:
                                                          #   bench/results/quality_{digits,shapes}_baseline.{json,md}
    python bench/quality/harness.py --model shapes        # one model
    python bench/quality/harness.py --smoke --out-dir /tmp/q   # seconds; run by tests/test_bench_quality.py
    python bench/quality/harness.py --params zero_order.neighbours=4,zero_order.cosine=0.66 --tag zo_n4

Model families (families.py): ``digits`` (8x8 digits, EPS diffusion MLP, VP
sigmas) and ``shapes`` (procedural 16x16 RGB shapes, rectified-flow conv
U-Net, shifted flow schedule).  Each trains, from scratch and seeded, its
denoiser, the search's verifier and a held-out judge.

Prompt p has class p mod 10 and seed 1000 + 1000 p (``prompt_seed``;
``--seed-base S``: S + 1000 p, another draw of the same prompts): a
search's candidates use seeds from its seed up, so prompts 1000 seeds apart
never share a candidate (with seed 1000 + p, prompts p and p + 10 had the same
class and 54 of 64 candidates in common, so random search's 30 prompts of a
class were far fewer independent trials than they looked, and every standard
error against it too small).  Each method runs through
``search.run_strategy(Strategy(name, params, budget), host, candidates=1,
top_k=1, seed=prompt_seed(p))`` on the family's SearchHost with a 10-step schedule
(10 NFEs per generation).  ``params`` is empty, so the algorithm functions'
own defaults apply, except where the defaults cannot run at a budget: a size
the budget cannot hold (evolution's population, and the elites that must stay
below it; paths' count) is shrunk to what it holds, and the settings column
says so.  ``--params alg.key=value,...`` overrides defaults (never shrunk).

Methods: random search with the family's deterministic and stochastic
samplers, zero-order, paths, evolution, successive halving and the tree search
(deterministic sampler) and particles (stochastic sampler); ``tree_sto`` adds
the tree search with the stochastic sampler.  ``--cond-scale`` weakens the
denoiser's class conditioning (a harder task, the stand-in for weak
guidance); ``--early-stop`` adds random search under a plateau rule, once per
host micro-batch in ``--stop-micro-batch``.  Measured on each prompt's winner: verifier score,
judge accuracy and log p, Fréchet distance of judge features against real
images, diversity (mean pairwise L2 between a class's winners), NFEs spent
(reported by the algorithm and counted at the denoiser; runs that spent less
than the budget are flagged).  Comparison: judge accuracy (and verifier
score) minus random search's with the same sampler, paired over prompts, with
its standard error, and whether it is ≥ −1 SE; and per method the smallest
budget whose judge accuracy matches random search's at N = 32 and N = 64
(320 and 640 NFE) within one SE, paired (``matches``).

All prompts of a method run at once: each prompt's search runs in its own
thread and its host's denoiser and verifier calls are gathered into one
batched model call per step (the threads advance in lock step, the model runs
on the main thread, rows are ordered by prompt, so results are deterministic).
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from model import REPO, frechet_distance  # noqa: E402  (also puts the repository and tests/ on sys.path)
from families import FAMILIES  # noqa: E402

from search import StopRule, Strategy, run_strategy  # noqa: E402
from search import evolution as _evolution, paths as _paths, particles as _particles, zero_order as _zo  # noqa: E402
from toy_host import GaussianToy  # noqa: E402

GEN_STEPS = 10                      # one generation = 10 steps = 10 NFEs
BUDGETS = (20, 40, 80, 160, 320, 640)
STRATEGIES = ("zero_order", "paths", "particles", "evolution", "halving", "tree")
# more strategy keys --strategies accepts: another sampler family for an algorithm
EXTRA = {"tree_sto": "tree"}
STOCHASTIC = ("particles", "tree_sto")   # run with the family's stochastic sampler, compared with its random search
LABELS = {"zero_order": "zero-order", "paths": "paths", "particles": "particles (FK)", "evolution": "evolution",
          "halving": "successive halving", "tree": "tree search", "tree_sto": "tree search (stochastic)"}
_FUNCS = {"zero_order": _zo.zero_order_search, "paths": _paths.paths_search,
          "particles": _particles.particle_search, "evolution": _evolution.evolution_search}


# --- lock-step batching of many prompts' searches ---------------------------------------------------------------
class Lockstep:
    """Runs ``jobs`` (one per prompt) in threads; their model calls (``call``) are served together.

    The main thread waits until every live job is blocked in ``call`` (or finished), then runs one model call
    per (kind, argument) group over the rows of all waiting jobs, ordered by job index, and releases them."""

    def __init__(self, handlers: Dict[str, Callable], chunk: int):
        self.handlers, self.chunk = handlers, int(chunk)
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)
        self.pending: Dict[int, tuple] = {}
        self.live = 0
        self.batches = 0

    def call(self, wid: int, kind: str, arg, x: torch.Tensor, c: int) -> torch.Tensor:
        slot = [threading.Event(), None, None]
        with self.lock:
            self.pending[wid] = (kind, arg, x, c, slot)
            if len(self.pending) >= self.live:
                self.ready.notify()
        slot[0].wait()
        if slot[2] is not None:
            raise slot[2]
        return slot[1]

    def run(self, jobs: Sequence[Callable[[int], Any]]) -> List[Any]:
        results: List[Any] = [None] * len(jobs)
        errors: List[tuple] = []
        self.live = len(jobs)

        def work(wid):
            torch.set_num_threads(1)
            try:
                results[wid] = jobs[wid](wid)
            except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
                errors.append((wid, e))
            finally:
                with self.lock:
                    self.live -= 1
                    self.ready.notify()

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(jobs))]
        for t in threads:
            t.start()
        while True:
            with self.lock:
                while not (self.live == 0 or (self.pending and len(self.pending) >= self.live)):
                    self.ready.wait()
                if self.live == 0 and not self.pending:
                    break
                batch = sorted(self.pending.items())
                self.pending = {}
            self._serve(batch)
        for t in threads:
            t.join()
        if errors:
            raise errors[0][1]
        return results

    def _serve(self, batch):
        groups: Dict[tuple, list] = {}
        for wid, (kind, arg, x, c, slot) in batch:
            groups.setdefault((kind, arg), []).append((x, c, slot))
        for (kind, arg), items in groups.items():
            self.batches += 1
            try:
                x = torch.cat([it[0] for it in items])
                y = torch.cat([torch.full((it[0].shape[0],), int(it[1]), dtype=torch.long) for it in items])
                outs = [self.handlers[kind](arg, x[i:i + self.chunk], y[i:i + self.chunk])
                        for i in range(0, len(y), self.chunk)]
                out = torch.cat(outs)
                i = 0
                for xi, _, slot in items:
                    slot[1] = out[i:i + xi.shape[0]]
                    i += xi.shape[0]
            except BaseException as e:  # noqa: BLE001 - handed to the waiting jobs
                for _, _, slot in items:
                    slot[2] = e
            for _, _, slot in items:
                slot[0].set()


# --- methods ----------------------------------------------------------------------------------------------------
@dataclass
class Method:
    label: str
    algorithm: str
    sampler: str
    family_sampler: str                 # "deterministic" | "stochastic": which random search it is compared with
    params: Dict[str, Any] = field(default_factory=dict)
    derived: Dict[str, Any] = field(default_factory=dict)
    steps: int = GEN_STEPS
    coarse_steps: int = 0
    skip: str = ""                      # why it cannot run at this budget
    stop: Any = None                    # a StopRule (early stopping) or None
    micro_batch: int = 1                # the host's micro-batch with early stopping (0 = all candidates at once)


def function_default(alg: str, key: str):
    from search.registry import get  # defaults live in the registry (the functions take **params)
    return get(alg).defaults()[key]


def fit_sizes(alg: str, params: Dict[str, Any], budget: int, gen: int):
    """Shrinks the sizes the defaults cannot afford at ``budget`` (never an overridden one)."""
    n = budget // gen
    out, derived = dict(params), {}
    if alg == "evolution" and "population" not in params and function_default(alg, "population") > n:
        out["population"] = derived["population"] = n
        if "elites" not in params and function_default(alg, "elites") >= n:
            out["elites"] = derived["elites"] = max(0, n - 1)
    if alg == "paths" and "paths" not in params and function_default(alg, "paths") > n:
        out["paths"] = derived["paths"] = n
    return out, derived


def runnable(fam, strategy: Strategy, sampler: str) -> str:
    """'' if the strategy runs at its budget on this family's host (a dry run on an analytic denoiser), else why."""
    mu = torch.zeros(fam.shape)
    h = fam.host(GaussianToy(mu, 0.5, fam.prediction), lambda z: z.flatten(1).mean(1), steps=GEN_STEPS,
                 sampler=sampler, schedule=None)
    try:
        run_strategy(strategy, h, candidates=1, top_k=1, seed=0)
    except ValueError as e:
        return str(e)
    return ""


def methods_for(fam, budget: int, overrides: Dict[str, Dict[str, Any]], strategies: Sequence[str],
                extras: bool, patience: int = 0, target: Optional[float] = None,
                stop_micro_batches: Sequence[int] = (1,)) -> List[Method]:
    det, sto = fam.samplers
    gen = GEN_STEPS
    out = [Method("random", "random", det, "deterministic", dict(overrides.get("random", {}))),
           Method(f"random ({sto})", "random", sto, "stochastic", dict(overrides.get("random", {})))]
    for key in strategies:
        alg = EXTRA.get(key, key)
        params, derived = fit_sizes(alg, overrides.get(key, {}), budget, gen)
        fs = "stochastic" if key in STOCHASTIC else "deterministic"
        out.append(Method(LABELS[key], alg, sto if key in STOCHASTIC else det, fs, params, derived))
    for mb in stop_micro_batches:  # the host's micro-batch under early stopping (1 = one candidate per call)
        tail = "" if list(stop_micro_batches) == [1] else f", micro-batch {mb or 'all'}"
        if patience:  # early stopping on a plateau of random search (patience counts candidates)
            out.append(Method(f"random + early stop (patience {patience}{tail})", "random", det, "deterministic",
                              dict(overrides.get("random", {})), stop=StopRule(patience=int(patience)),
                              micro_batch=int(mb)))
        if target is not None:  # early stopping at a target verifier score
            out.append(Method(f"random + early stop (score >= {target:g}{tail})", "random", det, "deterministic",
                              dict(overrides.get("random", {})), stop=StopRule(target=float(target)),
                              micro_batch=int(mb)))
    if extras:
        out.append(Method("more steps (1 sample)", "random", det, "deterministic", {}, steps=budget))
        out.append(Method("coarse-to-fine random", "random", det, "deterministic", {"rerender": 4}, coarse_steps=4))
    for m in out:
        m.skip = runnable(fam, strategy_of(m, budget), m.sampler) if m.steps == GEN_STEPS else ""
    return out


def strategy_of(m: Method, budget: int) -> Strategy:
    params = dict(m.params)
    rerender = int(params.pop("rerender", 0))  # a Strategy field, not an algorithm parameter
    return Strategy(m.algorithm, params, budget, m.coarse_steps, rerender=rerender, stop=m.stop)


def parse_params(text: str) -> Dict[str, Dict[str, Any]]:
    """``zero_order.neighbours=4,zero_order.cosine=0.66,particles.potential=difference`` -> nested dict."""
    out: Dict[str, Dict[str, Any]] = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        key, _, value = item.partition("=")
        alg, _, name = key.strip().partition(".")
        if not name or not _:
            raise SystemExit(f"--params: '{item}' is not algorithm.parameter=value")
        if alg not in ("random",) + STRATEGIES + tuple(EXTRA):
            raise SystemExit(f"--params: unknown algorithm '{alg}'")
        v: Any = value.strip()
        for conv in (int, float):
            try:
                v = conv(v)
                break
            except ValueError:
                pass
        if v in ("true", "false", "True", "False"):
            v = v in ("true", "True")
        out.setdefault(alg, {})[name.strip()] = v
    return out


# --- statistics -------------------------------------------------------------------------------------------------
def mean_se(v):
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0)


def settings_summary(all_settings: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The algorithm's effective settings: scalars (mean over prompts where they vary), list lengths (mean)."""
    out: Dict[str, Any] = {}
    first = all_settings[0]
    for k, v in first.items():
        if k in ("budget_nfe",):
            continue
        vals = [s.get(k) for s in all_settings]
        if isinstance(v, bool) or isinstance(v, str):
            out[k] = v
        elif isinstance(v, (int, float)):
            nums = [x for x in vals if isinstance(x, (int, float))]
            out[k] = v if all(x == v for x in vals) else {"mean": float(np.mean(nums)), "prompts": len(nums)}
        elif isinstance(v, (list, tuple)):
            lens = [len(x) for x in vals if isinstance(x, (list, tuple))]
            out[f"len({k})"] = lens[0] if len(set(lens)) == 1 else {"mean": float(np.mean(lens))}
    # settings present on some prompts only (e.g. paths' finished_without_search_from_index)
    for k in sorted({k for s in all_settings for k in s} - set(first)):
        n = sum(1 for s in all_settings if k in s)
        out[k] = {"prompts": n}
    return out


# diagnostics kept in the JSON but left out of the table's settings column
_QUIET = {"len(ess)", "len(resampling_steps)", "reward_evaluations"}


def fmt_settings(s: Dict[str, Any]) -> str:
    parts = []
    for k, v in s.items():
        if k in _QUIET:
            continue
        if isinstance(v, dict):
            if "mean" in v:
                parts.append(f"{k}≈{v['mean']:.2f}")
            else:
                parts.append(f"{k} on {v['prompts']} prompts")
        elif isinstance(v, float):
            parts.append(f"{k}={v:g}")
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


# --- the run ----------------------------------------------------------------------------------------------------
def git_state() -> str:
    try:
        head = subprocess.check_output(["git", "-C", REPO, "rev-parse", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.check_output(["git", "-C", REPO, "status", "--porcelain", "--", "search", "bench/quality",
                                         "tests/toy_host.py"], text=True, stderr=subprocess.DEVNULL).strip()
        return head + (" (with uncommitted changes in search/ or bench/quality/)" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores, {platform.machine()}, {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


SEED_STRIDE = 1000  # more than any search here starts candidates (halving at 640 NFE: 80), so no prompt shares one
SEED_BASE = 1000    # main() sets it from --seed-base: another draw of every prompt's candidates, still disjoint


def seed_rule() -> str:
    return f"seed {SEED_BASE} + {SEED_STRIDE}·p"


def prompt_seed(p: int) -> int:
    """Prompt p's search seed: its candidates (seeds from it up) are never another prompt's."""
    return SEED_BASE + SEED_STRIDE * int(p)


class Evaluator:
    """Runs methods over the prompts of one trained family in lock step and measures their winners.

    Prompt p has class p mod 10 and seed ``prompt_seed(p)``.  ``run_method`` takes the denoiser D(x, σ, classes) to search
    with (default: the family's own), so one verifier, judge and reference set can measure several denoisers
    (bench/quality/sizes.py).  Rows are appended to ``rows``; ``run_method`` and ``measure`` return the row and
    the winners' latents."""

    def __init__(self, fam, built, prompts: int, log=print, t_start: float = 0.0):
        self.fam, self.built, self.prompts, self.log = fam, built, int(prompts), log
        self.t_start = t_start or time.time()
        self.verifier, self.judge = built.verifier, built.judge
        self.ref_feats = self.judge.features(built.ref_x).numpy()
        self.classes = [p % 10 for p in range(self.prompts)]
        self.seeds = [prompt_seed(p) for p in range(self.prompts)]
        self.cls_t = torch.tensor(self.classes)
        self.rows: List[Dict[str, Any]] = []

    def score_handler(self, _, x, y):
        return torch.log_softmax(self.verifier(x), 1)[torch.arange(len(y)), y]

    def measure(self, label, budget, sampler, note, lat, vscores, extra=None):
        cls_t = self.cls_t
        logits = self.judge(lat)
        lp = torch.log_softmax(logits, 1)[torch.arange(len(cls_t)), cls_t]
        correct = (logits.argmax(1) == cls_t).float()
        row = {"method": label, "budget_nfe": budget, "sampler": sampler, "note": note}
        row["verifier"], row["verifier_se"] = mean_se(vscores)
        row["judge_acc"], row["judge_acc_se"] = mean_se(correct.tolist())
        row["judge_logp"], row["judge_logp_se"] = mean_se(lp.tolist())
        with warnings.catch_warnings():  # a smoke run has fewer winners than feature dimensions
            warnings.simplefilter("ignore")
            row["fd"] = frechet_distance(self.judge.features(lat).numpy(), self.ref_feats)
        per = []
        for c in range(10):
            z = lat[cls_t == c].flatten(1)
            if len(z) > 1:
                per.append(float(torch.cdist(z, z).sum() / (len(z) * (len(z) - 1))))
        row["diversity"] = float(np.mean(per)) if per else 0.0
        row.update(extra or {})
        row["per_prompt"] = {"judge_correct": [int(v) for v in correct.tolist()],
                             "verifier": [round(float(v), 5) for v in vscores]}
        self.rows.append(row)
        nfe = f" nfe {row['nfe_mean']:.1f}" if "nfe_mean" in row else ""
        self.log(f"  [{self.fam.name}] {label:32s} B={budget:4d} verifier {row['verifier']:7.3f}±"
                 f"{row['verifier_se']:.3f} judge {row['judge_acc']:.3f}±{row['judge_acc_se']:.3f} FD {row['fd']:8.2f} "
                 f"div {row['diversity']:6.2f}{nfe} ({time.time() - self.t_start:.0f}s)")
        return row

    def measure_real(self):
        """The reference row: held-out real images, one per prompt's class."""
        built = self.built
        g = torch.Generator().manual_seed(5)
        idx = []
        for c in self.classes:
            pool = torch.nonzero(built.held_y == c)[:, 0]
            idx.append(int(pool[torch.randint(len(pool), (1,), generator=g)]))
        real = built.held_x[idx]
        return self.measure("real images (reference)", 0, "", "held-out real images", real,
                            self.score_handler(None, real, self.cls_t).tolist()), real

    def run_method(self, m: Method, budget: int, denoise=None, label: str = ""):
        fam, classes, seeds = self.fam, self.classes, self.seeds
        denoise = denoise or self.built.denoise
        eng = Lockstep({"den": lambda sigma, x, y: denoise(x, sigma, y), "score": self.score_handler}, fam.chunk)
        strat = strategy_of(m, budget)

        def job(p):
            c = classes[p]
            host = fam.host(lambda x, s: eng.call(p, "den", float(s), x, c), lambda z: eng.call(p, "score", None, z, c),
                            steps=m.steps, sampler=m.sampler, schedule=self.built.schedule)
            if m.stop is not None:  # the host's micro-batch (1: one candidate per call; prompts still batch)
                host.micro_batch = int(m.micro_batch)
            r, f = run_strategy(strat, host, candidates=1, top_k=1, seed=seeds[p])
            out = {"latent": f[0].latent, "score": float(f[0].result.score), "nfe": int(r.nfe_total),
                   "nfe_counted": int(host.nfe_rows), "score_rows": int(host.score_rows),
                   "settings": dict(r.settings), "candidates": [c.index for c in r.candidates],
                   "sample_calls": len(host.sample_calls)}
            if m.coarse_steps:  # analysis only (not part of the budget): all coarse candidates at full steps
                cands = sorted(r.settings["coarse_report"]["candidates"], key=lambda d: d["index"])
                cs = [d["seed"] for d in cands]
                full, _ = host.sample(host.start(host.initial_noise(cs)), host.steps, cs)
                fs = host.score(full.latent).tolist()
                out["agree"] = float(int(np.argmax([d["score"] for d in cands])) == int(np.argmax(fs)))
            return out

        t0 = time.time()
        res = eng.run([job] * self.prompts)
        lat = torch.cat([r["latent"] for r in res])
        nfes = [r["nfe"] for r in res]
        counted = [r["nfe_counted"] for r in res]
        assert max(nfes) <= budget, (m.label, max(nfes), budget)  # no algorithm may overspend
        settings = [r["settings"] for r in res]
        for s in settings:
            s.pop("coarse_report", None)
        extra = {"algorithm": m.algorithm, "params": m.params, "derived_from_budget": m.derived,
                 "micro_batch": int(m.micro_batch) if m.stop is not None else None,
                 "candidates_used_mean": float(np.mean([len(r.get("candidates", [])) or 0 for r in res])),
                 "sample_calls_mean": float(np.mean([r["sample_calls"] for r in res])),
                 "compared_with": m.family_sampler, "early_stop": None if m.stop is None else m.stop.to_dict(),
                 "nfe_mean": float(np.mean(nfes)), "nfe_min": int(min(nfes)), "nfe_max": int(max(nfes)),
                 "under_budget_prompts": int(sum(n < budget for n in nfes)),
                 "nfe_counted_mean": float(np.mean(counted)),
                 "nfe_count_mismatch_prompts": int(sum(a != b for a, b in zip(nfes, counted))),
                 "verifier_rows_mean": float(np.mean([r["score_rows"] for r in res])),
                 "settings": settings_summary(settings), "wall_s": round(time.time() - t0, 1),
                 "batched_model_calls": eng.batches}
        if m.coarse_steps:
            extra["coarse_winner_is_full_winner"], extra["coarse_winner_is_full_winner_se"] = \
                mean_se([r["agree"] for r in res])
        note = fmt_settings(extra["settings"])
        if m.derived:
            note += "; derived from the budget (defaults do not fit): " + ", ".join(
                f"{k}={v}" for k, v in m.derived.items())
        overridden = {k: v for k, v in m.params.items() if k not in m.derived}
        if overridden and m.label != "coarse-to-fine random":
            note += "; overridden: " + ", ".join(f"{k}={v}" for k, v in overridden.items())
        return self.measure(label or m.label, budget, m.sampler, note, lat, [r["score"] for r in res], extra), lat


def weaken_conditioning(net, scale: float) -> None:
    """Pulls the denoiser's class embeddings toward their mean: e_c <- mean + scale * (e_c - mean).  Below 1 the
    class signal is weaker (a harder task: fewer single samples show their class), the harness's stand-in for
    weak guidance (these models have no unconditional branch to guide with); it costs no model call."""
    if float(scale) == 1.0:
        return
    with torch.no_grad():
        w = net.cls.weight
        mean = w.mean(0, keepdim=True)
        w.copy_(mean + float(scale) * (w - mean))


def run_family(fam, *, prompts: int, budgets: Sequence[int], strategies: Sequence[str],
               overrides: Dict[str, Dict[str, Any]], smoke: bool, extras: bool, train_steps: int, log=print,
               patience: int = 0, target: Optional[float] = None, cond_scale: float = 1.0,
               stop_micro_batches: Sequence[int] = (1,), baselines: bool = True):
    t_start, c_start = time.time(), time.process_time()
    log(f"[{fam.name}] training (smoke={smoke})")
    built = fam.build(smoke=smoke, train_steps=train_steps, log=log)
    weaken_conditioning(built.net, cond_scale)
    t_train = time.time() - t_start
    torch.set_grad_enabled(False)
    ev = Evaluator(fam, built, prompts, log, t_start)
    rows = ev.rows
    ev.measure_real()

    det, sto = fam.samplers
    for sampler in (det, sto) if baselines else ():
        m = Method(f"baseline 1 sample ({sampler})", "random", sampler,
                   "deterministic" if sampler == det else "stochastic")
        ev.run_method(m, GEN_STEPS)
    for budget in budgets:
        for m in methods_for(fam, budget, overrides, strategies, extras, patience, target, stop_micro_batches):
            if m.skip:
                rows.append({"method": m.label, "budget_nfe": budget, "sampler": m.sampler, "algorithm": m.algorithm,
                             "params": m.params, "note": f"not run at this budget: {m.skip}"})
                log(f"  [{fam.name}] {m.label:32s} B={budget:4d} not run: {m.skip}")
                continue
            ev.run_method(m, budget)

    comparison = compare(rows, budgets)
    meta = dict(built.meta)
    meta.update({"model": fam.name, "description": fam.description, "prompts": prompts, "budgets": list(budgets),
                 "cond_scale": float(cond_scale), "stop_micro_batches": list(stop_micro_batches),
                 "generation_steps": GEN_STEPS, "samplers": list(fam.samplers), "strategies": list(strategies),
                 "params_overrides": overrides, "smoke": smoke, "extras": extras, "early_stop_patience": patience,
                 "early_stop_target": target,
                 "wall_s": round(time.time() - t_start, 1), "train_wall_s": round(t_train, 1),
                 "cpu_s": round(time.process_time() - c_start, 1), "threads": torch.get_num_threads()})
    torch.set_grad_enabled(True)
    return meta, rows, comparison


TIE = 5e-4  # differences below the tables' precision (3 decimals) are ties, not losses


def compare(rows, budgets):
    """Each method minus random search with the same sampler family, paired over prompts; "≥ random − 1 SE" is
    Δ ≥ −SE(Δ) − TIE (the tie margin only matters where both saturate, e.g. verifier log p ≈ 0)."""
    out = []
    for b in budgets:
        ref = {r["compared_with"]: r for r in rows if r.get("budget_nfe") == b and r.get("algorithm") == "random"
               and r["method"].startswith("random") and not r.get("early_stop") and "per_prompt" in r}
        for r in rows:
            if r.get("budget_nfe") != b or "per_prompt" not in r or (
                    r["method"].startswith("random") and not r.get("early_stop")):
                continue
            base = ref.get(r["compared_with"])
            if base is None:
                continue
            entry = {"method": r["method"], "budget_nfe": b, "random": base["method"]}
            for key in ("judge_correct", "verifier"):
                d = np.asarray(r["per_prompt"][key], float) - np.asarray(base["per_prompt"][key], float)
                m, se = mean_se(d)
                name = "judge_acc" if key == "judge_correct" else "verifier"
                entry[f"delta_{name}"], entry[f"delta_{name}_se"] = m, se
                entry[f"{name}_ge_random_minus_1se"] = bool(m >= -se - TIE)
            out.append(entry)
    return out


def matches(rows, budgets, references=(320, 640)):
    """Per method, the smallest budget at which its judge accuracy matches random search's at a reference budget
    (N = 32 and N = 64 generations: 320 and 640 NFE): paired over prompts, Δ ≥ −1 SE (as in ``compare``), against
    random search with the same sampler family.  Methods are compared at every budget up to the reference."""
    out = []
    for ref_b in references:
        if ref_b not in budgets:
            continue
        ref = {r["compared_with"]: r for r in rows if r.get("budget_nfe") == ref_b and r.get("algorithm") == "random"
               and r["method"].startswith("random") and not r.get("early_stop") and "per_prompt" in r}
        labels = []
        for r in rows:
            if "per_prompt" in r and r.get("compared_with") in ref and r.get("budget_nfe", 0) >= 10 \
                    and not r["method"].startswith("baseline") and r["method"] not in labels:
                labels.append(r["method"])
        for label in labels:
            tried = sorted((r for r in rows if r["method"] == label and "per_prompt" in r
                            and r["budget_nfe"] <= ref_b), key=lambda r: r["budget_nfe"])
            if not tried:
                continue
            base = ref[tried[0]["compared_with"]]
            entry = {"method": label, "random": base["method"], "reference_budget": ref_b, "budget": None,
                     "tried": [r["budget_nfe"] for r in tried]}
            for r in tried:
                d = (np.asarray(r["per_prompt"]["judge_correct"], float)
                     - np.asarray(base["per_prompt"]["judge_correct"], float))
                m, se = mean_se(d)
                if m >= -se - TIE:
                    entry.update(budget=r["budget_nfe"], nfe_spent=r.get("nfe_mean", r["budget_nfe"]),
                                 fraction=r.get("nfe_mean", r["budget_nfe"]) / ref_b, delta=m, delta_se=se)
                    break
            out.append(entry)
    return out


# --- reports ----------------------------------------------------------------------------------------------------
def _pm(r, k, nd=3):
    return f"{r[k]:.{nd}f} ± {r[k + '_se']:.{nd}f}" if k in r else "—"


def markdown(meta, rows, comparison) -> str:
    L = [f"# Quality benchmark, model `{meta['model']}`: search algorithms at their defaults", "",
         f"{meta['description']}. Denoiser trained {meta['diffusion_train_steps']} steps"
         + (f", conditioning strength {meta['cond_scale']:g} (class embeddings pulled toward their mean: a harder "
            "task)" if meta.get("cond_scale", 1.0) != 1.0 else "") + f". {meta['prompts']} prompts "
         f"(class = p mod 10, {seed_rule()}); one generation = {meta['generation_steps']} steps = "
         f"{meta['generation_steps']} NFEs; samplers {meta['samplers'][0]} (deterministic) and {meta['samplers'][1]} "
         "(stochastic). Mean ± standard error over prompts. Verifier = log p(class | x0) of the search's classifier; "
         "judge = separately trained classifier (other split, seed and architecture) that the search never sees; "
         "FD = Fréchet distance of judge features to real images (lower is better); diversity = mean pairwise L2 "
         "distance between a class's winners. NFE spent: reported by the algorithm (= counted at the denoiser "
         "unless flagged); ⚑ = some prompts spent less than the budget. Settings: the algorithm's effective "
         "settings (≈: mean over prompts).", ""]
    if meta.get("params_overrides"):
        L += [f"Parameter overrides: `{json.dumps(meta['params_overrides'])}`.", ""]
    L += ["| method | budget NFE | NFE spent | verifier log p | judge accuracy | judge log p | FD | diversity | settings |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "verifier" not in r:
            L.append(f"| {r['method']} | {r['budget_nfe']} | — | — | — | — | — | — | {r['note']} |")
            continue
        if "nfe_mean" in r:
            nfe = f"{r['nfe_mean']:.1f}"
            if r["under_budget_prompts"]:
                nfe += f" ⚑ under budget on {r['under_budget_prompts']}/{meta['prompts']} (min {r['nfe_min']})"
            if r["nfe_count_mismatch_prompts"]:
                nfe += f" ⚑ counted {r['nfe_counted_mean']:.1f} on the denoiser"
        else:
            nfe = "0"
        note = r["note"] + (f" [{r['sampler']}]" if r.get("sampler") else "")
        if "coarse_winner_is_full_winner" in r:
            note += f"; coarse winner = full winner {_pm(r, 'coarse_winner_is_full_winner', 2)}"
        L.append(f"| {r['method']} | {r['budget_nfe']} | {nfe} | {_pm(r, 'verifier')} | {_pm(r, 'judge_acc')} | "
                 f"{_pm(r, 'judge_logp')} | {r['fd']:.2f} | {r['diversity']:.2f} | {note} |")
    budgets = meta["budgets"]
    methods = []
    for c in comparison:
        if c["method"] not in methods:
            methods.append(c["method"])
    by = {(c["method"], c["budget_nfe"]): c for c in comparison}
    for name, title in (("judge_acc", "Judge accuracy"), ("verifier", "Verifier log p")):
        L += ["", f"## {title} minus random search's (same sampler), paired over prompts", "",
              "Δ ± standard error of the paired difference; ✓ = Δ ≥ −1 SE (not below random), "
              "✗ = below random by more than 1 SE (differences under 0.0005 count as ties).", "",
              "| method | vs | " + " | ".join(f"{b} NFE" for b in budgets) + " |",
              "|---|---|" + "---|" * len(budgets)]
        for mth in methods:
            cells, vs = [], ""
            for b in budgets:
                c = by.get((mth, b))
                if c is None:
                    cells.append("—")
                    continue
                vs = c["random"]
                ok = "✓" if c[f"{name}_ge_random_minus_1se"] else "✗"
                cells.append(f"{c['delta_' + name]:+.3f} ± {c['delta_' + name + '_se']:.3f} {ok}")
            L.append(f"| {mth} | {vs} | " + " | ".join(cells) + " |")
    found = matches(rows, budgets)
    for ref_b in sorted({m["reference_budget"] for m in found}):
        L += ["", f"## The smallest budget that matches random search at N = {ref_b // meta['generation_steps']} "
              f"({ref_b} NFE)", "",
              "Judge accuracy at each budget up to it, paired over prompts against random search (same sampler) at "
              f"{ref_b} NFE; matched = Δ ≥ −1 SE. NFE spent = mean over prompts (the fraction is of {ref_b}).", "",
              "| method | vs | smallest matching budget | NFE spent | fraction | Δ judge accuracy | budgets tried |",
              "|---|---|---|---|---|---|---|"]
        for m in (x for x in found if x["reference_budget"] == ref_b):
            tried = ", ".join(str(b) for b in m["tried"])
            if m["budget"] is None:
                L.append(f"| {m['method']} | {m['random']} at {ref_b} | none | — | — | — | {tried} |")
            else:
                L.append(f"| {m['method']} | {m['random']} at {ref_b} | {m['budget']} | {m['nfe_spent']:.1f} | "
                         f"{100 * m['fraction']:.0f} % | {m['delta']:+.3f} ± {m['delta_se']:.3f} | {tried} |")
    acc = [f"verifier accuracy on the judge's split {meta['verifier_acc_on_judge_split']:.3f}",
           f"judge accuracy on the verifier's split {meta['judge_acc_on_verifier_split']:.3f}"]
    if "judge_acc_on_reference" in meta:
        acc += [f"verifier / judge accuracy on the reference set {meta['verifier_acc_on_reference']:.3f} / "
                f"{meta['judge_acc_on_reference']:.3f}"]
    L += ["", f"Data: {meta['data']}. Real-image accuracy: {'; '.join(acc)}.", "",
          f"Machine: {meta['machine']}, {meta['threads']} torch thread(s), shared with other jobs; commit "
          f"{meta['commit']}; command `{meta['command']}`; wall time {meta['wall_s']} s (training "
          f"{meta['train_wall_s']} s wall, {meta['train_cpu_s']} s CPU), process CPU time {meta['cpu_s']} s.", ""]
    if meta.get("merged"):
        L += ["Run in parts over the budgets (each part trains the same seeded models on this machine), joined by "
              f"`{meta['merged']['command']}`: " + "; ".join(f"`{p['command']}` ({p['wall_s']} s)"
                                                            for p in meta["merged"]["parts"]) + ".", ""]
    if meta.get("rerendered"):
        L += [f"Comparison and tables re-rendered from the JSON's per-prompt values (numbers unchanged) at commit "
              f"{meta['rerendered']['commit']}: `{meta['rerendered']['command']}`.", ""]
    return "\n".join(L)


def rerender(paths: Sequence[str], cmd: str) -> None:
    """Recomputes the comparison and rewrites the markdown of finished runs from their JSON (no model runs)."""
    for path in paths:
        with open(path) as fh:
            d = json.load(fh)
        d["comparison"] = compare(d["rows"], d["meta"]["budgets"])
        d["matches"] = matches(d["rows"], d["meta"]["budgets"])
        d["meta"]["rerendered"] = {"commit": git_state(), "command": cmd}
        with open(path, "w") as fh:
            json.dump(d, fh, indent=1)
        with open(os.path.splitext(path)[0] + ".md", "w") as fh:
            fh.write(markdown(d["meta"], d["rows"], d["comparison"]))
        print(f"re-rendered {path}")


def merge(paths: Sequence[str], out_stem: str, cmd: str) -> None:
    """One result from runs of the same model, settings and commit over different budgets (a long run cut into
    parts, each training the same seeded model): rows joined in budget order, the comparison and the matches
    recomputed.  Refuses parts whose model, prompts or training differ."""
    parts = []
    for path in paths:
        with open(path) as fh:
            parts.append(json.load(fh))
    keys = ("model", "prompts", "diffusion_train_steps", "cond_scale", "commit", "smoke", "seed_base")
    first = parts[0]["meta"]
    for d in parts[1:]:
        bad = [k for k in keys if d["meta"].get(k) != first.get(k)]
        if bad:
            raise SystemExit(f"--merge: {', '.join(bad)} differ between {paths[0]} and the other parts")
    budgets = sorted({b for d in parts for b in d["meta"]["budgets"]})
    rows, seen = [], set()
    for d in parts:  # the parts' shared rows (the reference images, one-sample baselines) once
        for r in d["rows"]:
            key = (r["method"], r["budget_nfe"])
            if r["budget_nfe"] not in d["meta"]["budgets"] and key in seen:
                continue
            if key not in seen:
                seen.add(key)
                rows.append(r)
    order = {b: i for i, b in enumerate(budgets)}
    rows.sort(key=lambda r: order.get(r["budget_nfe"], -1))  # stable: each budget keeps its method order
    meta = dict(first)
    meta.update({"budgets": budgets, "wall_s": round(sum(d["meta"]["wall_s"] for d in parts), 1),
                 "cpu_s": round(sum(d["meta"]["cpu_s"] for d in parts), 1),
                 "merged": {"parts": [{"command": d["meta"]["command"], "budgets": d["meta"]["budgets"],
                                       "wall_s": d["meta"]["wall_s"]} for d in parts], "command": cmd}})
    comparison = compare(rows, budgets)
    with open(out_stem + ".json", "w") as fh:
        json.dump({"meta": meta, "rows": rows, "comparison": comparison, "matches": matches(rows, budgets)}, fh,
                  indent=1)
    with open(out_stem + ".md", "w") as fh:
        fh.write(markdown(meta, rows, comparison))
    print(f"merged {len(parts)} parts into {out_stem}.json and .md")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="digits,shapes", help="comma-separated: " + ", ".join(FAMILIES))
    ap.add_argument("--out-dir", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--tag", default="", help="file names quality_<model>[_<tag>].json/.md")
    ap.add_argument("--smoke", action="store_true", help="tiny run (seconds) that exercises every code path")
    ap.add_argument("--prompts", type=int, default=0, help="default 300 (smoke 20)")
    ap.add_argument("--budgets", default="", help="comma-separated NFE budgets (default 20,40,80,160,320,640; smoke 20,80)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help="which algorithms besides random search (default all: " + ",".join(STRATEGIES) + "; also "
                         "tree_sto: the tree search with the stochastic sampler)")
    ap.add_argument("--params", default="", help="overrides, e.g. zero_order.neighbours=4,zero_order.cosine=0.66")
    ap.add_argument("--train-steps", default="", help="denoiser training steps per model, e.g. digits=2000,shapes=1500 "
                    "(defaults: " + ", ".join(f"{k}={f.default_train_steps}" for k, f in FAMILIES.items()) + ")")
    ap.add_argument("--extras", action="store_true", help="add 'more steps (1 sample)' and coarse-to-fine random rows "
                    "(on in --smoke)")
    ap.add_argument("--early-stop", type=int, default=0, metavar="PATIENCE",
                    help="add random search with early stopping on a plateau of PATIENCE candidates")
    ap.add_argument("--early-stop-target", type=float, default=None, metavar="SCORE",
                    help="add random search that stops once a candidate's verifier score (log p) reaches SCORE")
    ap.add_argument("--cond-scale", type=float, default=1.0, metavar="S",
                    help="conditioning strength: the denoiser's class embeddings pulled toward their mean, "
                         "e = mean + S * (e - mean); below 1 = a harder task (fewer single samples show their class), "
                         "the stand-in for weak guidance (default 1: as trained)")
    ap.add_argument("--stop-micro-batch", default="1", metavar="LIST",
                    help="the host's micro-batch for the early-stopping rows, comma-separated (0 = all candidates in "
                         "one call); one row per size (default 1)")
    ap.add_argument("--no-baselines", action="store_true", help="skip the one-sample rows")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed-base", type=int, default=1000, metavar="S",
                    help="prompt p's seed is S + 1000 p: another S draws other candidates for the same prompts")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="join runs of one model over different budgets "
                    "(same settings and commit) into quality_<model>[_<tag>].json/.md in --out-dir")
    ap.add_argument("--rerender", nargs="+", metavar="JSON", help="only recompute the comparison and rewrite the "
                    "markdown of finished runs from their JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = "python bench/quality/harness.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.rerender:
        rerender(args.rerender, cmd)
        return []
    if args.merge:
        with open(args.merge[0]) as fh:
            model = json.load(fh)["meta"]["model"]
        merge(args.merge, os.path.join(args.out_dir, f"quality_{model}" + (f"_{args.tag}" if args.tag else "")), cmd)
        return []
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    for m in models:
        if m not in FAMILIES:
            raise SystemExit(f"unknown model '{m}'; pick from {', '.join(FAMILIES)}")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for s in strategies:
        if s not in STRATEGIES + tuple(EXTRA):
            raise SystemExit(f"unknown strategy '{s}'; pick from {', '.join(STRATEGIES + tuple(EXTRA))}")
    train = {}
    for item in filter(None, args.train_steps.split(",")):
        k, _, v = item.partition("=")
        train[k.strip()] = int(v)
    overrides = parse_params(args.params)
    prompts = args.prompts or (20 if args.smoke else 300)
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else ([20, 80] if args.smoke else list(BUDGETS))
    os.makedirs(args.out_dir, exist_ok=True)
    written = []
    commit = git_state()  # the code that runs: read before the run (a commit made during it would be wrong)
    global SEED_BASE
    SEED_BASE = int(args.seed_base)
    for name in models:
        meta, rows, comparison = run_family(FAMILIES[name], prompts=prompts, budgets=budgets, strategies=strategies,
                                            overrides=overrides, smoke=args.smoke, extras=args.extras or args.smoke,
                                            train_steps=train.get(name, 0),
                                            patience=args.early_stop or (4 if args.smoke else 0),
                                            target=args.early_stop_target, cond_scale=args.cond_scale,
                                            stop_micro_batches=[int(v) for v in args.stop_micro_batch.split(",")],
                                            baselines=not args.no_baselines)
        meta.update({"commit": commit, "machine": machine(), "command": cmd, "seed_base": SEED_BASE})
        stem = os.path.join(args.out_dir, f"quality_{name}" + (f"_{args.tag}" if args.tag else ""))
        with open(stem + ".json", "w") as fh:
            json.dump({"meta": meta, "rows": rows, "comparison": comparison,
                       "matches": matches(rows, meta["budgets"])}, fh, indent=1)
        with open(stem + ".md", "w") as fh:
            fh.write(markdown(meta, rows, comparison))
        print(f"wrote {stem}.json and .md ({meta['wall_s']} s)")
        written.append(stem)
    return written


if __name__ == "__main__":
    main()
