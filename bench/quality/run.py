"""CPU quality benchmark: every search algorithm at equal NFE budgets on 8x8 digits.

    python bench/quality/run.py --out bench/results/quality.json     # full (< 15 min on 2 cores)
    python bench/quality/run.py --smoke --out /tmp/q.json            # < 60 s, run by tests/test_bench_quality.py

Trains (from scratch, seeded) a class-conditional EPS diffusion model, a
verifier classifier and a separate judge (bench/quality/model.py), then for
each prompt (class = p mod 10, seed ``harness.prompt_seed(p)``, so no two
prompts share a candidate seed) runs each method through
``search.run_strategy`` over a SearchHost of the model, and measures the
winner: verifier score (what the search maximises), judge accuracy and
judge log p (held-out classifier), Fréchet distance of judge features against
all real digits, and diversity (mean pairwise L2 distance of a class's winners).
Writes JSON to --out and the markdown table next to it (.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import (REPO, JudgeCNN, VerifierMLP, accuracy, digits_host, frechet_distance, load_digits_data,  # noqa: E402
                   train_classifier, train_diffusion)

if REPO not in sys.path:
    sys.path.insert(0, REPO)
from search import Strategy, run_strategy  # noqa: E402
from toy_host import GaussianToy, ToyHost  # noqa: E402
from harness import prompt_seed, seed_rule  # noqa: E402

BASE_STEPS = 10          # Euler steps of one generation: 10 NFEs
COARSE_STEPS = 4


def methods(budget: int, gen: int):
    """(label, strategy, sampler, note) for one budget; None strategy = not runnable at this budget."""
    n = budget // gen
    out = [("more steps (1 sample)", None, "euler", f"{budget} Euler steps")]
    out.append(("random", Strategy("random", {}, budget), "euler", f"N={n}"))
    out.append(("random (euler_ancestral)", Strategy("random", {}, budget), "euler_ancestral", f"N={n}"))
    out.append(("zero-order", Strategy("zero_order", {"neighbours": 2, "cosine": 0.95}, budget), "euler",
                "N=2, t=0.95"))
    npaths = paths_n_for(budget, M=4)
    out.append(("paths", Strategy("paths", {"paths": npaths, "noises_per_path": 4}, budget) if npaths else None,
                "euler", f"N={npaths}, M=4, σ=0.11, Δf=0.78, Δb=0.81"))
    out.append(("particles (FK)", Strategy("particles", {"interval": 2, "potential": "max", "lam": 10.0}, budget),
                "euler_ancestral", f"k={n}, every 2 steps, max, λ=10"))
    pop = min(8, n)
    out.append(("evolution", Strategy("evolution", {"population": pop, "elites": min(2, pop - 1)}, budget)
                if pop >= 2 else None, "euler", f"P={pop}, E={min(2, max(pop - 1, 0))}, β=0.2"))
    c2f_ok = budget >= 4 * (gen + COARSE_STEPS) + COARSE_STEPS
    out.append(("coarse-to-fine random", Strategy("random", {}, budget, COARSE_STEPS, rerender=4) if c2f_ok else None,
                "euler", f"{COARSE_STEPS} coarse steps, 4 re-rendered"))
    return out


def paths_n_for(budget: int, M: int) -> int:
    """The largest Paths-N whose full run fits the budget (a dry run on an analytic toy host, same schedule)."""
    best = 0
    for n in range(1, 65):
        h = ToyHost(GaussianToy(torch.zeros(1, 1, 8, 8), 0.5), lambda z: z.flatten(1).mean(1), shape=(1, 1, 8, 8),
                    steps=BASE_STEPS)
        try:
            r, _ = run_strategy(Strategy("paths", {"paths": n, "noises_per_path": M}, budget), h, candidates=1,
                                top_k=1, seed=0)
        except ValueError:
            break
        if "finished_without_search_from_index" in r.settings:
            break
        best = n
    return best


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "-C", REPO, "rev-parse", "HEAD"], text=True).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def mean_se(v):
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "quality.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny run (< 60 s) that exercises every code path")
    ap.add_argument("--prompts", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--diffusion-steps", type=int, default=0,
                    help="training steps of the diffusion model (default 2000; fewer = an undertrained model "
                         "with more headroom for search)")
    ap.add_argument("--budgets", default="",
                    help="comma-separated NFE budgets (default 20,80,320,1280; smoke 20,80)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    smoke = args.smoke
    prompts = args.prompts or (20 if smoke else 500)
    budgets = [20, 80] if smoke else [20, 80, 320, 1280]
    if args.budgets:
        budgets = [int(b) for b in args.budgets.split(",")]
    diff_steps, clf_steps = (150, 150) if smoke else (2000, 800)
    diff_steps = args.diffusion_steps or diff_steps
    log = print

    data = load_digits_data(seed=0)
    A, B = data.split_a, data.split_b
    log(f"training verifier/judge ({clf_steps} steps) and diffusion model ({diff_steps} steps)")
    verifier = train_classifier(VerifierMLP, data.x[A], data.y[A], clf_steps, seed=11)
    judge = train_classifier(JudgeCNN, data.x[B], data.y[B], clf_steps, seed=23)
    diffusion = train_diffusion(data, diff_steps, seed=1, log=log)
    t_train = time.time() - t_start
    torch.set_grad_enabled(False)
    real_feats = judge.features(data.x).numpy()
    meta = {"verifier_acc_on_judge_split": accuracy(verifier, data.x[B], data.y[B]),
            "judge_acc_on_verifier_split": accuracy(judge, data.x[A], data.y[A])}

    def measure(latents: torch.Tensor, classes: torch.Tensor):
        logits = judge(latents)
        lp = torch.log_softmax(logits, 1)[torch.arange(len(classes)), classes]
        return {"judge_correct": (logits.argmax(1) == classes).float().tolist(), "judge_logp": lp.tolist(),
                "feats": judge.features(latents).numpy()}

    def diversity(latents: torch.Tensor, classes: torch.Tensor) -> float:
        per = []
        for c in range(10):
            z = latents[classes == c].flatten(1)
            if len(z) > 1:
                d = torch.cdist(z, z)
                per.append(float(d.sum() / (len(z) * (len(z) - 1))))
        return float(np.mean(per))

    classes = torch.tensor([p % 10 for p in range(prompts)])
    seeds = [prompt_seed(p) for p in range(prompts)]
    rows = []

    def summarise(label, budget, note, winners, vscores, nfes, extra=None):
        lat = torch.cat(winners)
        m = measure(lat, classes)
        row = {"method": label, "budget_nfe": budget, "note": note}
        row["verifier"], row["verifier_se"] = mean_se(vscores)
        row["judge_acc"], row["judge_acc_se"] = mean_se(m["judge_correct"])
        row["judge_logp"], row["judge_logp_se"] = mean_se(m["judge_logp"])
        with warnings.catch_warnings():  # a smoke run has fewer winners than feature dimensions
            warnings.simplefilter("ignore")
            row["fd"] = frechet_distance(m["feats"], real_feats)
        row["diversity"] = diversity(lat, classes)
        row["nfe_mean"] = float(np.mean(nfes))
        row["nfe_max"] = int(np.max(nfes))
        row.update(extra or {})
        rows.append(row)
        log(f"  {label:26s} B={budget:5d} verifier {row['verifier']:.3f}±{row['verifier_se']:.3f} "
            f"judge {row['judge_acc']:.3f}±{row['judge_acc_se']:.3f} FD {row['fd']:.2f} div {row['diversity']:.2f} "
            f"nfe {row['nfe_mean']:.0f} ({time.time() - t_start:.0f}s)")

    # reference: real held-out digits (judge split), one per prompt's class
    gen_real = torch.Generator().manual_seed(5)
    real_idx = []
    for c in classes.tolist():
        pool = B[data.y[B] == c]
        real_idx.append(int(pool[torch.randint(len(pool), (1,), generator=gen_real)]))
    real = data.x[real_idx]
    summarise("real digits (reference)", 0, "held-out split", list(real.split(1)),
              [float(verifier(real)[i].log_softmax(0)[c]) for i, c in enumerate(classes.tolist())], [0])

    def one_sample_each(steps: int, sampler: str):
        """Each prompt's single sample (its seed) at ``steps`` steps, all prompts in one batch: the same
        computation as a per-prompt run_strategy("random", N=1), checked here on the first prompts."""
        h = digits_host(diffusion, verifier, classes, steps=steps, sampler=sampler)
        st, _ = h.sample(h.start(h.initial_noise(seeds)), steps, seeds)
        scores = h.score(st.latent).tolist()
        for p in range(3):
            hp = digits_host(diffusion, verifier, int(classes[p]), steps=steps, sampler=sampler)
            r, f = run_strategy(Strategy("random", {}, hp.nfe(0, steps)), hp, candidates=1, top_k=1, seed=seeds[p])
            torch.testing.assert_close(f[0].latent, st.latent[p:p + 1], rtol=1e-4, atol=1e-4)
            assert abs(r.best.score - scores[p]) < 1e-3
        return list(st.latent.split(1)), scores

    gen = BASE_STEPS
    for sampler in ("euler", "euler_ancestral"):
        win, vs = one_sample_each(gen, sampler)
        summarise(f"baseline 1 sample ({sampler})", gen, f"{gen} steps", win, vs, [gen])

    for budget in budgets:
        for label, strat, sampler, note in methods(budget, gen):
            if label.startswith("more steps"):
                win, vs = one_sample_each(budget, sampler)
                summarise(label, budget, note, win, vs, [budget])
                continue
            if strat is None:
                rows.append({"method": label, "budget_nfe": budget, "note": note + " (budget too small)"})
                continue
            win, vs, nfes, agree, rho = [], [], [], [], []
            for p in range(prompts):
                c = int(classes[p])
                h = digits_host(diffusion, verifier, c, steps=gen, sampler=sampler)
                r, f = run_strategy(strat, h, candidates=1, top_k=1, seed=seeds[p])
                win.append(f[0].latent)
                vs.append(f[0].result.score)
                nfes.append(r.nfe_total)
                assert r.nfe_total <= budget, (label, r.nfe_total, budget)
                if strat.coarse_steps:  # analysis only (not part of the budget): all coarse candidates at full steps
                    cands = r.settings["coarse_report"]["candidates"]
                    cands = sorted(cands, key=lambda d: d["index"])
                    cs = [d["seed"] for d in cands]
                    full, _ = h.sample(h.start(h.initial_noise(cs)), h.steps, cs)
                    full_scores = h.score(full.latent).tolist()
                    coarse_scores = [d["score"] for d in cands]
                    agree.append(float(int(np.argmax(coarse_scores)) == int(np.argmax(full_scores))))
                    if len(cs) > 2:
                        from scipy.stats import spearmanr
                        rho.append(float(spearmanr(coarse_scores, full_scores).statistic))
            extra = {}
            if agree:
                extra["coarse_winner_is_full_winner"], extra["coarse_winner_is_full_winner_se"] = mean_se(agree)
                if rho:
                    extra["spearman_coarse_full"], extra["spearman_coarse_full_se"] = mean_se(rho)
            summarise(label, budget, note + (f" [{sampler}]" if sampler != "euler" else ""), win, vs, nfes, extra)

    wall = time.time() - t_start
    cmd = "python bench/quality/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta.update({"prompts": prompts, "budgets": budgets, "base_steps": gen, "coarse_steps": COARSE_STEPS,
                 "diffusion_train_steps": diff_steps, "classifier_train_steps": clf_steps, "smoke": smoke,
                 "wall_s": round(wall, 1), "train_s": round(t_train, 1), "threads": args.threads,
                 "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, "
                            f"{platform.system()} {platform.release()}, torch {torch.__version__}",
                 "python": platform.python_version(), "commit": git_commit(), "command": cmd})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    md = os.path.splitext(args.out)[0] + ".md"
    with open(md, "w") as fh:
        fh.write(markdown(meta, rows))
    log(f"wrote {args.out} and {md} in {wall:.0f}s")
    return meta, rows


def markdown(meta, rows) -> str:
    def f(r, k, nd=3):
        if k not in r:
            return "—"
        se = r.get(k + "_se")
        return f"{r[k]:.{nd}f} ± {se:.{nd}f}" if se is not None else f"{r[k]:.{nd}f}"
    lines = [
        f"Quality benchmark, diffusion model trained {meta['diffusion_train_steps']} steps, "
        f"{meta['prompts']} prompts (class = p mod 10, {seed_rule()}), one generation = "
        f"{meta['base_steps']} Euler steps = {meta['base_steps']} NFEs. Mean ± standard error over prompts. "
        "Verifier = log p(class | x0) of the search's classifier; judge = separately trained CNN "
        "(other split, seed, architecture); FD = Fréchet distance of judge features to all real digits "
        "(lower is better); diversity = mean pairwise L2 distance between a class's winners.",
        "",
        "| method | budget NFE | NFE spent (mean) | verifier log p | judge accuracy | judge log p | FD | diversity | "
        "coarse winner = full winner | Spearman coarse/full | settings |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "verifier" not in r:
            lines.append(f"| {r['method']} | {r['budget_nfe']} | — | — | — | — | — | — | — | — | {r['note']} |")
            continue
        lines.append(f"| {r['method']} | {r['budget_nfe']} | {r['nfe_mean']:.0f} | {f(r, 'verifier')} | "
                     f"{f(r, 'judge_acc')} | {f(r, 'judge_logp')} | {r['fd']:.2f} | {r['diversity']:.2f} | "
                     f"{f(r, 'coarse_winner_is_full_winner', 2)} | {f(r, 'spearman_coarse_full', 2)} | {r['note']} |")
    lines += ["", f"Machine: {meta['machine']}, {meta['threads']} torch thread(s); commit {meta['commit']}; "
              f"command `{meta['command']}`; wall time {meta['wall_s']} s (training {meta['train_s']} s). "
              f"Verifier accuracy on real held-out digits {meta['verifier_acc_on_judge_split']:.3f}, judge "
              f"{meta['judge_acc_on_verifier_split']:.3f}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
