"""The over-optimisation guard (search/guard.py) on the CPU quality benchmark: how often it fires, and whether rightly.

    python bench/quality/guard.py                       # both families: bench/results/guard_{digits,shapes}.{json,md}
    python bench/quality/guard.py --model digits        # one family
    python bench/quality/guard.py --smoke --out-dir /tmp/g   # seconds; run by tests/test_bench_guard.py

On each family of the quality harness (families.py) this trains, seeded and
from scratch, the family's denoiser, search verifier (split A) and held-out
judge (split B), plus a **guard verifier**: the search verifier's architecture
with another seed (37), trained on the judge's split B.  It plays the user's
``held_out_verifier``: a second model of the same kind as the search's reward
(so it can share that kind's blind spots) that never saw the search verifier's
data and is never used to choose.  Split B because the families have no other
labelled data to spare (digits has 1797 images in all); it makes the guard
verifier closer to the judge than a user's held-out model would be to the
truth, so the alarms measured here are if anything optimistic.  The judge
stays the ground truth.

Settings, as harness.py runs them (registry defaults, sizes shrunk where a
budget cannot hold them): random search with the family's deterministic
sampler, zero-order and evolution, at NFE budgets 40-640 (10 NFE per
generation), over 300 prompts (class p mod 10, seed 1000 + 1000 p), all prompts in
lock step (harness.Lockstep).  Every row the search verifier scores is a
finished candidate for these three algorithms; the host's ``score`` is
wrapped to keep each one (final latent, search score, NFEs spent when it was
scored).

Per prompt the guard runs as the pack runs it (engine/pipeline.py): the
held-out verifier scores every ``guard.sample_stride(budget // 10, 32)``-th
finished candidate in scoring order, starting with the first, and the winner;
``guard.summary`` gets the search scores of all candidates of the report and
the sample; it fires when it sets ``warning``.  Held-out scores are log
p(prompt's class), as the search verifier's are.

Ground truth: the held-out metric really degraded when the judge's log p of
the winner is below the median of the judge's log p over the same sampled
candidates (and, as a reference, over all candidates).  A fired guard on a
degraded prompt is a true alarm, on another a false alarm; a degraded prompt
without an alarm is a miss.  The same is reported with the judge itself as
the held-out verifier (an upper bound: a held-out verifier that is the truth).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from harness import (GEN_STEPS, seed_rule, Evaluator, Lockstep, git_state, machine, methods_for,  # noqa: E402
                     strategy_of)
from families import FAMILIES  # noqa: E402
from model import REPO, VerifierMLP, load_digits_data, train_classifier, accuracy  # noqa: E402

from search import guard, run_strategy  # noqa: E402

BUDGETS = (40, 80, 160, 320, 640)
SETTINGS = ("random", "zero_order", "evolution")   # random with the family's deterministic sampler
HELD_OUT_SAMPLES = 32     # engine/pipeline.py's HELD_OUT_SAMPLES (the test checks they agree)
GUARD_SEED = 37           # neither the verifier's (11) nor the judge's (23)
HELD_OUT = ("guard_verifier", "judge")            # who plays the held-out verifier
TRUTH = ("sampled", "all")                        # the median the winner's judge log p is compared with


# --- the guard verifier -----------------------------------------------------------------------------------------
def train_guard_verifier(fam, built, smoke: bool):
    """The search verifier's architecture, seed GUARD_SEED, on the judge's split B (as families.py builds it)."""
    steps = built.meta["classifier_train_steps"]
    if fam.name == "digits":
        data = load_digits_data(seed=0)
        xb, yb, xa, ya = data.x[data.split_b], data.y[data.split_b], data.x[data.split_a], data.y[data.split_a]
        net = train_classifier(VerifierMLP, xb, yb, steps, seed=GUARD_SEED)
        arch = "VerifierMLP"
    else:
        from shapes import ShapesVerifier, load_shapes_data
        d = load_shapes_data(*((1000, 500, 300) if smoke else (6000, 3000, 2000)))  # families.Shapes.build's sets
        xb, yb, xa, ya = d.xb, d.yb, d.xa, d.ya
        net = train_classifier(ShapesVerifier, xb, yb, steps, seed=GUARD_SEED)
        arch = "ShapesVerifier"
    meta = {"architecture": arch + " (the search verifier's)", "seed": GUARD_SEED, "data": "split B (the judge's)",
            "train_steps": steps, "images": len(yb), "acc_on_verifier_split": accuracy(net, xa, ya),
            "acc_on_reference": accuracy(net, built.held_x, built.held_y)}
    return net, meta


def class_logp(net, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    out = [torch.log_softmax(net(x[i:i + chunk]), 1)[torch.arange(len(y[i:i + chunk])), y[i:i + chunk]]
           for i in range(0, len(y), chunk)]
    return torch.cat(out) if out else torch.zeros(0)


# --- one setting: every finished candidate of every prompt ------------------------------------------------------
def run_with_candidates(ev: Evaluator, m, budget: int):
    """harness.Evaluator.run_method's lock-step run, keeping each prompt's finished candidates in scoring order."""
    fam, built = ev.fam, ev.built
    eng = Lockstep({"den": lambda sigma, x, y: built.denoise(x, sigma, y), "score": ev.score_handler}, fam.chunk)
    strat = strategy_of(m, budget)

    def job(p):
        c = ev.classes[p]
        host = fam.host(lambda x, s: eng.call(p, "den", float(s), x, c), lambda z: eng.call(p, "score", None, z, c),
                        steps=m.steps, sampler=m.sampler, schedule=built.schedule)
        kept: Dict[str, list] = {"latents": [], "scores": [], "nfe": []}
        plain = host.score

        def score(latents):  # what search.common.score_x0 reaches too (the toy host has no score_preview)
            s = plain(latents)
            kept["latents"].append(latents.detach().cpu().clone())
            kept["scores"] += [float(v) for v in s.reshape(-1)]
            kept["nfe"] += [int(host.nfe_rows)] * int(latents.shape[0])
            return s

        host.score = score
        r, f = run_strategy(strat, host, candidates=1, top_k=1, seed=ev.seeds[p])
        best = f[0].result
        return {"latent": f[0].latent, "score": float(best.final_score if best.final_score is not None else best.score),
                "report_scores": [float(cd.score) for cd in r.candidates], "nfe": int(r.nfe_total),
                "nfe_counted": int(host.nfe_rows), "cand_latents": torch.cat(kept["latents"]),
                "cand_scores": kept["scores"], "cand_nfe": kept["nfe"]}

    t0 = time.time()
    res = eng.run([job] * ev.prompts)
    assert max(r["nfe"] for r in res) <= budget, (m.label, budget)
    return res, time.time() - t0


def confusion(fired: Sequence[bool], degraded: Sequence[bool]) -> Dict[str, Any]:
    ta = sum(1 for f, d in zip(fired, degraded) if f and d)
    fa = sum(1 for f, d in zip(fired, degraded) if f and not d)
    miss = sum(1 for f, d in zip(fired, degraded) if d and not f)
    n = len(fired)
    return {"prompts": n, "fired": ta + fa, "fire_rate": (ta + fa) / n if n else None,
            "degraded": ta + miss, "degraded_rate": (ta + miss) / n if n else None,
            "true_alarms": ta, "false_alarms": fa, "misses": miss, "true_negatives": n - ta - fa - miss,
            "precision": ta / (ta + fa) if ta + fa else None, "recall": ta / (ta + miss) if ta + miss else None}


def evaluate_guard(ev: Evaluator, res, budget: int, held_nets: Dict[str, Any], samples: int) -> Dict[str, Any]:
    """The guard per prompt with each held-out verifier, against the judge's ground truth."""
    stride = guard.sample_stride(budget // GEN_STEPS, samples)   # as engine/pipeline.py: the expected candidates
    counts = [len(r["cand_scores"]) for r in res]
    cand_cls = torch.cat([torch.full((n,), c, dtype=torch.long) for n, c in zip(counts, ev.classes)])
    lat_all = torch.cat([r["cand_latents"] for r in res])
    win_lat = torch.cat([r["latent"] for r in res])
    held_cand = {k: class_logp(net, lat_all, cand_cls).tolist() for k, net in held_nets.items()}
    held_win = {k: class_logp(net, win_lat, ev.cls_t).tolist() for k, net in held_nets.items()}
    per: Dict[str, list] = {"candidates": counts, "sampled": [], "report_candidates_match": [],
                            "search_above_median": [], "degraded_sampled": [], "degraded_all": []}
    for k in held_nets:
        per[f"fired_{k}"] = []
        per[f"winner_percentile_{k}"] = []
    start = 0
    for p, r in enumerate(res):
        n = counts[p]
        idx = list(range(0, n, stride))            # every stride-th finished candidate, the first included
        per["sampled"].append(len(idx))
        per["report_candidates_match"].append(int(sorted(r["report_scores"]) == sorted(r["cand_scores"])))
        judge = held_cand["judge"][start:start + n]
        jw = held_win["judge"][p]
        per["degraded_sampled"].append(int(jw < statistics.median([judge[i] for i in idx])))
        per["degraded_all"].append(int(jw < statistics.median(judge)))
        for k in held_nets:
            h = held_cand[k][start:start + n]
            s = guard.summary(search_name="verifier", held_out_name=k, search_scores=r["report_scores"],
                              winner_search=r["score"], sampled_search=[r["cand_scores"][i] for i in idx],
                              sampled_held_out=[h[i] for i in idx], winner_held_out=held_win[k][p], stride=stride)
            per[f"fired_{k}"].append(int(s["warning"] is not None))
            per[f"winner_percentile_{k}"].append(round(float(s["winner_percentile"]["held_out"]), 4))
            if k == HELD_OUT[0]:
                per["search_above_median"].append(int(r["score"] > s["median"]["search"]))
        start += n
    out = {"stride": stride, "candidates_mean": float(np.mean(counts)), "candidates_min": int(min(counts)),
           "candidates_max": int(max(counts)), "sampled_mean": float(np.mean(per["sampled"])),
           "report_candidates_match": int(sum(per["report_candidates_match"])),
           "search_above_median_rate": float(np.mean(per["search_above_median"])),
           "degraded_rate": {t: float(np.mean(per[f"degraded_{t}"])) for t in TRUTH},
           "winner_percentile_mean": {k: float(np.mean(per[f"winner_percentile_{k}"])) for k in held_nets},
           "confusion": {k: {t: confusion(per[f"fired_{k}"], per[f"degraded_{t}"]) for t in TRUTH} for k in held_nets},
           "per_prompt": per}
    return out


# --- one family -------------------------------------------------------------------------------------------------
def run_family(fam, *, prompts: int, budgets: Sequence[int], samples: int, smoke: bool, log=print) -> Dict[str, Any]:
    t_start, c_start = time.time(), time.process_time()
    log(f"[{fam.name}] training denoiser, verifier, judge (smoke={smoke})")
    built = fam.build(smoke=smoke, log=log)
    guard_net, guard_meta = train_guard_verifier(fam, built, smoke)
    log(f"[{fam.name}] guard verifier: {guard_meta}")
    t_train = time.time() - t_start
    torch.set_grad_enabled(False)
    ev = Evaluator(fam, built, prompts, log, t_start)
    held_nets = {"guard_verifier": guard_net, "judge": built.judge}
    det = fam.samplers[0]
    results: List[Dict[str, Any]] = []
    for budget in budgets:
        for m in methods_for(fam, budget, {}, [s for s in SETTINGS if s != "random"], False):
            if m.algorithm not in SETTINGS or m.sampler != det:
                continue
            entry = {"method": m.label, "algorithm": m.algorithm, "sampler": m.sampler, "budget_nfe": budget,
                     "derived_from_budget": m.derived}
            if m.skip:
                entry["note"] = f"not run at this budget: {m.skip}"
                results.append(entry)
                log(f"  [{fam.name}] {m.label:12s} B={budget:4d} not run: {m.skip}")
                continue
            res, wall = run_with_candidates(ev, m, budget)
            lat = torch.cat([r["latent"] for r in res])
            nfes = [r["nfe"] for r in res]
            row = ev.measure(m.label, budget, m.sampler, "", lat, [r["score"] for r in res],
                             {"nfe_mean": float(np.mean(nfes)),
                              "nfe_count_mismatch_prompts": int(sum(r["nfe"] != r["nfe_counted"] for r in res))})
            entry["context"] = {k: row[k] for k in ("verifier", "verifier_se", "judge_acc", "judge_acc_se",
                                                    "judge_logp", "judge_logp_se", "fd", "diversity", "nfe_mean",
                                                    "nfe_count_mismatch_prompts")}
            entry.update(evaluate_guard(ev, res, budget, held_nets, samples))
            jc = np.asarray(row["per_prompt"]["judge_correct"], float)
            fired = np.asarray(entry["per_prompt"]["fired_guard_verifier"], bool)
            entry["judge_acc_when_fired"] = float(jc[fired].mean()) if fired.any() else None
            entry["judge_acc_when_quiet"] = float(jc[~fired].mean()) if (~fired).any() else None
            entry["wall_s"] = round(wall, 1)
            c = entry["confusion"]["guard_verifier"]["sampled"]
            log(f"  [{fam.name}] {m.label:12s} B={budget:4d} candidates {entry['candidates_mean']:.0f} stride "
                f"{entry['stride']}: fired {c['fired']}/{c['prompts']} TA {c['true_alarms']} FA {c['false_alarms']} "
                f"miss {c['misses']} (degraded {c['degraded']}) ({time.time() - t_start:.0f}s)")
            results.append(entry)
    meta = dict(built.meta)
    meta.update({"model": fam.name, "description": fam.description, "prompts": prompts, "budgets": list(budgets),
                 "settings": list(SETTINGS), "samplers": list(fam.samplers), "generation_steps": GEN_STEPS,
                 "held_out_samples": samples, "guard_verifier": guard_meta, "smoke": smoke,
                 "wall_s": round(time.time() - t_start, 1), "train_wall_s": round(t_train, 1),
                 "cpu_s": round(time.process_time() - c_start, 1), "threads": torch.get_num_threads()})
    torch.set_grad_enabled(True)
    return {"meta": meta, "results": results, "context_rows": ev.rows}


# --- reports ----------------------------------------------------------------------------------------------------
def _r(v, nd=2):
    return "—" if v is None else f"{v:.{nd}f}"


def _cells(c):
    return [f"{c['fired']} ({_r(c['fire_rate'])})", str(c["true_alarms"]), str(c["false_alarms"]), str(c["misses"]),
            f"{_r(c['precision'])} ({c['true_alarms']}/{c['fired']})",
            f"{_r(c['recall'])} ({c['true_alarms']}/{c['degraded']})"]


def markdown(d) -> str:
    meta, results = d["meta"], d["results"]
    g = meta["guard_verifier"]
    L = [f"# The over-optimisation guard on the quality benchmark: `{meta['model']}`", "",
         f"{meta['description']}. {meta['prompts']} prompts (class = p mod 10, {seed_rule()}); one generation = "
         f"{meta['generation_steps']} NFEs; random search with {meta['samplers'][0]}, zero-order and evolution at "
         "their registry defaults (as harness.py runs them). Per prompt the guard (search/guard.py) runs as "
         f"engine/pipeline.py runs it: the held-out verifier scores every stride-th finished candidate (stride = "
         f"sample_stride(budget / 10, {meta['held_out_samples']})) and the winner, and fires when the winner is "
         "above the median search score but below the median held-out score of the sample.", "",
         f"**Guard verifier** (the user's held_out_verifier): {g['architecture']}, seed {g['seed']}, trained "
         f"{g['train_steps']} steps on {g['data']} ({g['images']} images); accuracy on the verifier's split "
         f"{g['acc_on_verifier_split']:.3f}, on the reference set {g['acc_on_reference']:.3f}. **Ground truth**: the "
         "held-out judge's log p of the winner is below the median of the judge's log p over the same sampled "
         "candidates (\"degraded\"). TA = true alarm (fired, degraded), FA = false alarm (fired, not degraded), "
         "miss = degraded, not fired; precision = TA / fired, recall = TA / degraded. Context: winners' judge "
         "accuracy and Fréchet distance (judge features vs real images); \"above median\" = share of prompts whose "
         "winner is strictly above the median search score (the guard's first condition); \"winner percentile\" = "
         "mean over prompts of the winner's percentile among the sampled candidates on the guard verifier / on the "
         "judge (0.5 = a typical candidate). With stride 1 the sample is every candidate, so both ground truths "
         "agree; with the judge as the held-out verifier and the sampled ground truth the guard fires exactly on "
         "degraded prompts whose winner is above the median search score, by construction.", "",
         "## Guard verifier as the held-out verifier, ground truth on the sample", "",
         "| setting | budget NFE | candidates (stride, sampled) | judge acc | FD | verifier log p | above median | "
         "winner percentile guard / judge | degraded | fired (rate) | TA | FA | miss | precision | recall | "
         "judge acc fired / quiet |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ran = [e for e in results if "confusion" in e]
    for e in results:
        if "confusion" not in e:
            L.append(f"| {e['method']} | {e['budget_nfe']} | " + " | ".join(["—"] * 13) + f" | {e['note']} |")
            continue
        cx, c = e["context"], e["confusion"]["guard_verifier"]["sampled"]
        L.append(f"| {e['method']} | {e['budget_nfe']} | {e['candidates_mean']:.0f} ({e['stride']}, "
                 f"{e['sampled_mean']:.0f}) | {cx['judge_acc']:.3f} | {cx['fd']:.1f} | {cx['verifier']:.3f} | "
                 f"{e['search_above_median_rate']:.2f} | {_r(e['winner_percentile_mean']['guard_verifier'])} / "
                 f"{_r(e['winner_percentile_mean']['judge'])} | {c['degraded']} ({_r(c['degraded_rate'])}) | "
                 + " | ".join(_cells(c)) + f" | {_r(e['judge_acc_when_fired'], 3)} / "
                 f"{_r(e['judge_acc_when_quiet'], 3)} |")
    for k, t, title in (("guard_verifier", "all", "Guard verifier, ground truth on all candidates (reference)"),
                        ("judge", "sampled", "The judge as the held-out verifier (upper bound), ground truth on the "
                                             "sample"),
                        ("judge", "all", "The judge as the held-out verifier (upper bound), ground truth on all "
                                         "candidates")):
        L += ["", f"## {title}", "", "| setting | budget NFE | degraded | fired (rate) | TA | FA | miss | precision | "
              "recall |", "|---|---|---|---|---|---|---|---|---|"]
        for e in ran:
            c = e["confusion"][k][t]
            L.append(f"| {e['method']} | {e['budget_nfe']} | {c['degraded']} ({_r(c['degraded_rate'])}) | "
                     + " | ".join(_cells(c)) + " |")
    acc = [f"verifier accuracy on the judge's split {meta['verifier_acc_on_judge_split']:.3f}",
           f"judge accuracy on the verifier's split {meta['judge_acc_on_verifier_split']:.3f}"]
    L += ["", f"Data: {meta['data']}. Real-image accuracy: {'; '.join(acc)}.", "",
          f"Machine: {meta['machine']}, {meta['threads']} torch thread(s), shared with other jobs; commit "
          f"{meta['commit']} (read at the start of the run); command `{meta['command']}`; wall time {meta['wall_s']} s "
          f"(training {meta['train_wall_s']} s), process CPU time {meta['cpu_s']} s.", ""]
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="digits,shapes", help="comma-separated: " + ", ".join(FAMILIES))
    ap.add_argument("--out-dir", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--smoke", action="store_true", help="tiny run (seconds) through every code path")
    ap.add_argument("--prompts", type=int, default=0, help="default 300 (smoke 20)")
    ap.add_argument("--budgets", default="", help="comma-separated NFE budgets (default 40,80,160,320,640; "
                                                  "smoke 40,80)")
    ap.add_argument("--samples", type=int, default=0, help=f"held-out sample size (default {HELD_OUT_SAMPLES}, the "
                                                           "pack's; smoke 4, so that the stride is above 1)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = ("python bench/quality/guard.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    commit = git_state()  # the code that runs: read before the run
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    for m in models:
        if m not in FAMILIES:
            raise SystemExit(f"unknown model '{m}'; pick from {', '.join(FAMILIES)}")
    prompts = args.prompts or (20 if args.smoke else 300)
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else ([40, 80] if args.smoke else list(BUDGETS))
    samples = args.samples or (4 if args.smoke else HELD_OUT_SAMPLES)
    os.makedirs(args.out_dir, exist_ok=True)
    written = []
    for name in models:
        d = run_family(FAMILIES[name], prompts=prompts, budgets=budgets, samples=samples, smoke=args.smoke)
        d["meta"].update({"commit": commit, "machine": machine(), "command": cmd})
        stem = os.path.join(args.out_dir, f"guard_{name}")
        with open(stem + ".json", "w") as fh:
            json.dump(d, fh, indent=1)
        with open(stem + ".md", "w") as fh:
            fh.write(markdown(d))
        print(f"wrote {stem}.json and .md ({d['meta']['wall_s']} s)")
        written.append(stem)
    return written


if __name__ == "__main__":
    main()
