"""A small model with search against a large model without it, at matched compute (FLOPs), on both families.

    python bench/quality/sizes.py                      # both families: bench/results/sizes_{digits,shapes}.{json,md}
                                                       #   and the plot bench/results/sizes.png
    python bench/quality/sizes.py --model digits       # one family
    python bench/quality/sizes.py --smoke --out-dir /tmp/s   # seconds; run by tests/test_bench_sizes.py
    python bench/quality/sizes.py --plot-only          # redraw the plot from the JSON files

On each family of the quality harness (families.py) this trains, seeded and
from scratch, a **small** and a **large** denoiser of the same architecture
family (same data, seed, recipe and training steps; SIZES below), plus the
family's verifier (the search's reward) and its held-out judge (another
network on other data, never seen by the search).

Compute is counted in FLOPs of a batch-1 forward pass, measured with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and
attention, 2 FLOPs per multiply-add; elementwise operations, norms and
activations are not counted; attention through its math kernel so that its
matmuls are seen).  A run costs NFEs x the denoiser's FLOPs + verifier calls x
the verifier's FLOPs; a single sample makes no verifier call (its verifier
score is only reported, never used).

1. The large model, one sample, at 5, 10, 20 and 40 steps with the family's
   deterministic and stochastic sampler; the reference is the one with the
   best held-out judge accuracy (ties: the cheaper), and its cost C is the
   unit of the compute axis.
2. The small model with every strategy at its defaults, exactly as
   harness.py runs them (random search with both samplers, zero-order, paths,
   particles, evolution; 10-step generations), at NFE budgets
   floor(m x C / small FLOPs per NFE) for m in 0.1, 0.25, 0.5, 1, 2, 4.  The
   budget matches the denoiser's FLOPs; the verifier's FLOPs come on top and
   are included in each row's measured compute (``compute_x``), which is the
   plot's x axis.  A budget below one 10-step generation cannot be run.
3. Per prompt winner: held-out judge accuracy and log p, Fréchet distance of
   judge features to real images (SE: bootstrap over prompts), diversity
   (mean pairwise L2 between a class's winners; SE over the 10 classes),
   verifier log p.  For each method and held-out metric, the smallest
   measured compute at which the small model is at least as good as the
   large model's reference sample (point estimates), or "never".
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from typing import Any, Dict, List

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import harness  # noqa: E402  (puts the repository and tests/ on sys.path)
from harness import (GEN_STEPS, seed_rule, STRATEGIES, Evaluator, Method, git_state, machine, mean_se,  # noqa: E402
                     methods_for)
from families import FAMILIES  # noqa: E402
from model import REPO, frechet_distance  # noqa: E402

# Same family, same recipe. digits: the large MLP has 4.8x the parameters and FLOPs of the small one (at 64 hidden
# units, 8.6x smaller, the MLP does not learn the digits in 2000 steps: judge accuracy 0.12); shapes: the large U-Net
# has 8.5x the parameters and 8.1x the FLOPs.
SIZES = {"digits": {"small": {"hidden": 96}, "large": {"hidden": 256}},
         "shapes": {"small": {"c1": 16, "c2": 32, "emb": 32}, "large": {"c1": 48, "c2": 96, "emb": 96}}}
TRAIN_STEPS = {"digits": 2000, "shapes": 1200}          # both sizes; --smoke: SMOKE_TRAIN_STEPS
SMOKE_TRAIN_STEPS = {"digits": 40, "shapes": 30}
LARGE_STEPS = (5, 10, 20, 40)
MULTIPLIERS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
FD_BOOTSTRAP = 200


# --- compute ----------------------------------------------------------------------------------------------------
def count_flops(fn) -> int:
    """FLOPs of ``fn()`` as FlopCounterMode counts them, with attention through its math kernel (the fused CPU
    kernels and nn.MultiheadAttention's fast path are invisible to the counter)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), counter:
            fn()
        return int(counter.get_total_flops())
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def n_params(net) -> int:
    return int(sum(p.numel() for p in net.parameters()))


# --- statistics beyond the harness's ------------------------------------------------------------------------------
def fd_se(feats: np.ndarray, ref: np.ndarray, reps: int, seed: int = 0) -> float:
    """Bootstrap standard error of the Fréchet distance over the prompts' winners."""
    g = np.random.default_rng(seed)
    vals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(reps):
            vals.append(frechet_distance(feats[g.integers(0, len(feats), len(feats))], ref))
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def diversity_se(lat: torch.Tensor, classes: torch.Tensor) -> float:
    per = []
    for c in range(10):
        z = lat[classes == c].flatten(1)
        if len(z) > 1:
            per.append(float(torch.cdist(z, z).sum() / (len(z) * (len(z) - 1))))
    return mean_se(per)[1] if len(per) > 1 else 0.0


# --- one family -------------------------------------------------------------------------------------------------
def run_sizes(fam, *, prompts: int, multipliers, large_steps, smoke: bool, train_steps: int, fd_reps: int,
              log=print) -> Dict[str, Any]:
    t_start, c_start = time.time(), time.process_time()
    sizes = SIZES[fam.name]
    log(f"[{fam.name}] training verifier, judge and the small denoiser {sizes['small']} ({train_steps} steps)")
    built = fam.build(smoke=smoke, train_steps=train_steps, log=log, net=sizes["small"])
    log(f"[{fam.name}] training the large denoiser {sizes['large']} ({train_steps} steps)")
    large_denoise, large_net = fam.train_denoiser(built, steps=train_steps, net=sizes["large"], log=log)
    t_train = time.time() - t_start
    torch.set_grad_enabled(False)

    x1, y1 = torch.zeros((1,) + tuple(fam.shape)[1:]), torch.tensor([3])
    sigma = 1.0  # the cost of a call does not depend on the noise level
    flops = {"small": count_flops(lambda: built.denoise(x1, sigma, y1)),
             "large": count_flops(lambda: large_denoise(x1, sigma, y1)),
             "verifier": count_flops(lambda: built.verifier(x1))}
    params = {"small": n_params(built.net), "large": n_params(large_net), "verifier": n_params(built.verifier),
              "judge": n_params(built.judge)}
    log(f"[{fam.name}] FLOPs per call {flops}; parameters {params}")

    ev = Evaluator(fam, built, prompts, log, t_start)
    classes = ev.cls_t

    def annotate(row, lat, model, multiplier=None, single=False):
        row["model"] = model
        if multiplier is not None:
            row["multiplier"] = multiplier
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            feats = ev.judge.features(lat).numpy()
        row["fd_se"] = fd_se(feats, ev.ref_feats, fd_reps)
        row["diversity_se"] = diversity_se(lat, classes)
        if "nfe_mean" in row:
            ver = 0.0 if single else row["verifier_rows_mean"]
            row["denoiser_flops"] = row["nfe_mean"] * flops[model]
            row["verifier_flops"] = ver * flops["verifier"]
            row["compute_flops"] = row["denoiser_flops"] + row["verifier_flops"]

    real, real_lat = ev.measure_real()
    annotate(real, real_lat, "real")

    det, sto = fam.samplers
    large_rows = []
    for sampler in (det, sto):
        for steps in large_steps:
            m = Method(f"large, 1 sample ({sampler}, {steps} steps)", "random", sampler,
                       "deterministic" if sampler == det else "stochastic", steps=steps)
            row, lat = ev.run_method(m, steps, denoise=large_denoise)
            annotate(row, lat, "large", single=True)
            row["steps"] = steps
            large_rows.append(row)
    ref = max(large_rows, key=lambda r: (r["judge_acc"], -r["compute_flops"]))
    unit = ref["compute_flops"]
    log(f"[{fam.name}] large reference: {ref['method']} judge {ref['judge_acc']:.3f} FD {ref['fd']:.1f} "
        f"({unit / 1e6:.2f} MFLOPs)")

    for sampler in (det, sto):
        m = Method(f"small, 1 sample ({sampler}, {GEN_STEPS} steps)", "random", sampler,
                   "deterministic" if sampler == det else "stochastic")
        row, lat = ev.run_method(m, GEN_STEPS)
        annotate(row, lat, "small", single=True)

    budgets = []
    for mult in multipliers:
        budget = int(math.floor(mult * unit / flops["small"] + 1e-9))
        budgets.append(budget)
        if budget < GEN_STEPS:
            for m in methods_for(fam, GEN_STEPS, {}, STRATEGIES, False):
                ev.rows.append({"method": m.label, "budget_nfe": budget, "sampler": m.sampler, "algorithm": m.algorithm,
                                "model": "small", "multiplier": mult,
                                "note": f"not run: {budget} NFE is less than one {GEN_STEPS}-step generation"})
            log(f"  [{fam.name}] x{mult}: budget {budget} NFE < one generation, not run")
            continue
        for m in methods_for(fam, budget, {}, STRATEGIES, False):
            if m.skip:
                ev.rows.append({"method": m.label, "budget_nfe": budget, "sampler": m.sampler, "algorithm": m.algorithm,
                                "model": "small", "multiplier": mult, "note": f"not run at this budget: {m.skip}"})
                log(f"  [{fam.name}] {m.label:32s} B={budget:4d} not run: {m.skip}")
                continue
            row, lat = ev.run_method(m, budget)
            annotate(row, lat, "small", multiplier=mult)

    rows = ev.rows
    for r in rows:
        if "compute_flops" in r:
            r["compute_x"] = r["compute_flops"] / unit
    ref_index = rows.index(ref)
    matches = find_matches(rows, ref)
    meta = dict(built.meta)
    meta.update({"model": fam.name, "description": fam.description, "prompts": prompts, "smoke": smoke,
                 "sizes": sizes, "train_steps": train_steps, "params": params, "flops_per_call": flops,
                 "large_steps": list(large_steps), "multipliers": list(multipliers), "budgets_nfe": budgets,
                 "generation_steps": GEN_STEPS, "samplers": list(fam.samplers), "strategies": list(STRATEGIES),
                 "reference": {"method": ref["method"], "index": ref_index, "steps": ref["steps"],
                               "sampler": ref["sampler"], "compute_flops": unit},
                 "fd_bootstrap": fd_reps,
                 "wall_s": round(time.time() - t_start, 1), "train_wall_s": round(t_train, 1),
                 "cpu_s": round(time.process_time() - c_start, 1), "threads": torch.get_num_threads()})
    torch.set_grad_enabled(True)
    return {"meta": meta, "rows": rows, "matches": matches}


# the metrics on which a match is looked for (diversity is reported, not matched: samples far from the data are
# "diverse" too); verifier log p is the search's own reward, not a held-out metric
METRICS = (("judge_acc", "judge accuracy", +1), ("fd", "Fréchet distance", -1), ("judge_logp", "judge log p", +1),
           ("verifier", "verifier log p", +1))


def search_methods(rows) -> List[str]:
    out = []
    for r in rows:
        if r.get("model") == "small" and "multiplier" in r and r["method"] not in out:
            out.append(r["method"])
    return out


def find_matches(rows, ref) -> Dict[str, Any]:
    """For each small-model search method and metric: the smallest measured compute (in units of the large
    reference sample) at which its point estimate is at least as good as the reference's (with the difference and
    its standard error); None if never."""
    out: Dict[str, Any] = {}
    measured = [r for r in rows if r.get("model") == "small" and "multiplier" in r and "compute_x" in r]
    for key, _, sign in METRICS:
        per = {}
        for mth in search_methods(rows):
            pts = sorted((r for r in measured if r["method"] == mth), key=lambda r: r["compute_x"])
            hit = next((r for r in pts if sign * (r[key] - ref[key]) >= 0), None)
            per[mth] = None if hit is None else {
                "compute_x": hit["compute_x"], "multiplier": hit["multiplier"], "budget_nfe": hit["budget_nfe"],
                "value": hit[key], "delta": hit[key] - ref[key],
                # unpaired: different models (the same prompts, but not the same samples)
                "delta_se": math.sqrt(hit.get(key + "_se", 0.0) ** 2 + ref.get(key + "_se", 0.0) ** 2)}
        hits = [(v["compute_x"], k) for k, v in per.items() if v is not None]
        out[key] = {"reference": ref[key], "methods": per,
                    "first": None if not hits else {"method": min(hits)[1], "compute_x": min(hits)[0]}}
    return out


# --- reports ----------------------------------------------------------------------------------------------------
def _pm(r, k, nd=3):
    return f"{r[k]:.{nd}f} ± {r[k + '_se']:.{nd}f}" if k in r and k + "_se" in r else "—"


def _sci(v):
    return f"{v / 1e6:.3g} M"


def markdown(d) -> str:
    meta, rows, matches = d["meta"], d["rows"], d["matches"]
    fl, pa, ref = meta["flops_per_call"], meta["params"], rows[meta["reference"]["index"]]
    L = [f"# Small model with search vs large model without, at matched compute: `{meta['model']}`", "",
         f"{meta['description']}. Both denoisers trained {meta['train_steps']} steps on the same data with the same "
         f"seed and recipe: **small** {json.dumps(meta['sizes']['small'])}, {pa['small']:,} parameters, "
         f"{_sci(fl['small'])}FLOPs per NFE; **large** {json.dumps(meta['sizes']['large'])}, {pa['large']:,} "
         f"parameters ({pa['large'] / pa['small']:.1f}x), {_sci(fl['large'])}FLOPs per NFE "
         f"({fl['large'] / fl['small']:.1f}x). Search reward: the family's verifier ({pa['verifier']:,} parameters, "
         f"{_sci(fl['verifier'])}FLOPs per image scored); evaluation: the held-out judge, a different network "
         f"({pa['judge']:,} parameters) trained on other images, never seen by the search. "
         f"FLOPs: torch's FlopCounterMode on one batch-1 call (matmul, convolution, attention; 2 per multiply-add).",
         "",
         f"**Unit of compute (1x)**: one sample of the large model at its best step count by held-out judge "
         f"accuracy: {ref['method']}, {_sci(ref['compute_flops'])}FLOPs. A small-model budget m x = "
         f"floor(m x {_sci(ref['compute_flops'])}/ {_sci(fl['small'])}) NFEs; each row's compute adds the "
         f"verifier calls the search made (a single sample makes none). {meta['prompts']} prompts (class = p mod 10, "
         f"{seed_rule()}); mean ± standard error over prompts (FD: bootstrap over prompts, {meta['fd_bootstrap']} "
         f"resamples; diversity: over the 10 classes). FD = Fréchet distance of judge features to real images "
         f"(lower is better).", "",
         "| model | method | budget | compute (x large) | NFE spent | verifier calls | judge accuracy | FD | "
         "diversity | verifier log p | judge log p |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "judge_acc" not in r:
            L.append(f"| {r['model']} | {r['method']} | {r['multiplier']}x = {r['budget_nfe']} NFE | — | — | — | — | — "
                     f"| — | — | {r['note']} |")
            continue
        if r["model"] == "real":
            budget, comp, nfe, ver = "—", "—", "—", "—"
        else:
            budget = f"{r['multiplier']}x = {r['budget_nfe']} NFE" if "multiplier" in r else f"{r['budget_nfe']} NFE"
            comp = f"{r['compute_x']:.3f}"
            nfe = f"{r['nfe_mean']:.1f}"
            ver = f"{r['verifier_rows_mean']:.1f}" if "multiplier" in r else "0 (not needed)"
        name = f"**{r['method']}** (reference)" if r is ref else r["method"]
        L.append(f"| {r['model']} | {name} | {budget} | {comp} | {nfe} | {ver} | {_pm(r, 'judge_acc')} | "
                 f"{_pm(r, 'fd', 1)} | {_pm(r, 'diversity', 2)} | {_pm(r, 'verifier')} | {_pm(r, 'judge_logp')} |")
    L += ["", "## Where the small model with search first matches the large model's reference sample", "",
          "Smallest measured compute (x one large sample) at which the method's point estimate is at least as good "
          "as the reference's (judge accuracy, judge log p, verifier: ≥; FD: ≤), with the difference to the "
          "reference there ± its standard error (unpaired); \"never\" = at no budget up to "
          f"{max(meta['multipliers'])}x. Held-out metrics: judge accuracy, FD, judge log p; the verifier is the "
          "search's own reward.", "",
          "| method | " + " | ".join(f"{name} (large: {matches[k]['reference']:.3f})" if k != "fd" else
                                     f"{name} (large: {matches[k]['reference']:.1f})" for k, name, _ in METRICS) + " |",
          "|---|" + "---|" * len(METRICS)]
    for mth in search_methods(rows):
        cells = []
        for k, _, _ in METRICS:
            v = matches[k]["methods"][mth]
            nd = 1 if k == "fd" else 3
            cells.append("never" if v is None else f"{v['compute_x']:.2f}x ({v['budget_nfe']} NFE; "
                         f"Δ {v['delta']:+.{nd}f} ± {v['delta_se']:.{nd}f})")
        L.append(f"| {mth} | " + " | ".join(cells) + " |")
    cells = []
    for k, _, _ in METRICS:
        f = matches[k]["first"]
        cells.append("never" if f is None else f"{f['compute_x']:.2f}x ({f['method']})")
    L.append("| **any method** | " + " | ".join(cells) + " |")
    acc = [f"verifier accuracy on the judge's split {meta['verifier_acc_on_judge_split']:.3f}",
           f"judge accuracy on the verifier's split {meta['judge_acc_on_verifier_split']:.3f}"]
    L += ["", f"Data: {meta['data']}. Real-image accuracy: {'; '.join(acc)}.", "",
          f"Machine: {meta['machine']}, {meta['threads']} torch thread(s), shared with other jobs; commit "
          f"{meta['commit']}{' (' + meta['commit_note'] + ')' if meta.get('commit_note') else ''}; command "
          f"`{meta['command']}`; wall time {meta['wall_s']} s (training "
          f"{meta['train_wall_s']} s), process CPU time {meta['cpu_s']} s.", ""]
    if meta.get("rerendered"):
        L += [f"Matches and tables re-rendered from the JSON's rows (measurements unchanged) at commit "
              f"{meta['rerendered']['commit']}: `{meta['rerendered']['command']}`.", ""]
    return "\n".join(L)


# --- the plot (Pillow only) ---------------------------------------------------------------------------------------
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def _font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def plot(results: List[Dict[str, Any]], path: str) -> str:
    """One panel per (family, held-out metric): metric against compute (log axis, x one large sample), one curve
    per small-model method, the large model's reference sample as a horizontal line."""
    from PIL import Image, ImageDraw
    metrics = (("judge_acc", "held-out judge accuracy (higher is better)"),
               ("fd", "Frechet distance, log scale (lower is better)"))
    pw, ph, ml, mr, mt, mb = 560, 360, 70, 20, 40, 50
    legend_h = 70
    W, H = pw * len(metrics), ph * len(results) + legend_h + 30
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    f_s, f_m, f_l = _font(12), _font(14), _font(16)
    dr.text((10, 8), "Small model + search (curves, ± 1 SE) vs one sample of the large model (dashed), at matched "
            "FLOPs", fill="black", font=f_l)
    methods: List[str] = []
    for res in results:
        for m in search_methods(res["rows"]):
            if m.replace("euler_ancestral_RF", "stochastic").replace("euler_ancestral", "stochastic") not in methods:
                methods.append(m.replace("euler_ancestral_RF", "stochastic").replace("euler_ancestral", "stochastic"))
    colour = {m: COLOURS[i % len(COLOURS)] for i, m in enumerate(methods)}
    top0 = 30
    for fi, res in enumerate(results):
        meta, rows = res["meta"], res["rows"]
        ref = rows[meta["reference"]["index"]]
        pts = [r for r in rows if r.get("model") == "small" and "multiplier" in r and "compute_x" in r]
        xs = [r["compute_x"] for r in pts] + [min(meta["multipliers"]), max(meta["multipliers"])]
        lx0, lx1 = math.log10(min(xs) / 1.3), math.log10(max(xs) * 1.3)
        for mi, (key, title) in enumerate(metrics):
            ox, oy = mi * pw, top0 + fi * ph
            x0, x1, y0, y1 = ox + ml, ox + pw - mr, oy + mt, oy + ph - mb
            logy = key == "fd"  # FDs span orders of magnitude (samples far from the data)
            tf = (lambda v: math.log10(max(v, 1e-9))) if logy else (lambda v: v)
            vals = [tf(r[key] + sg * r.get(key + "_se", 0.0)) for r in pts + [ref] for sg in (-1, 1)]
            lo, hi = min(vals), max(vals)
            pad = (hi - lo) * 0.08 or 0.05
            lo, hi = lo - pad, hi + pad

            def X(v):
                return x0 + (math.log10(v) - lx0) / (lx1 - lx0) * (x1 - x0)

            def Y(v):
                return y1 - (tf(v) - lo) / (hi - lo) * (y1 - y0)
            dr.rectangle([x0, y0, x1, y1], outline="black")
            dr.text((x0, oy + 12), f"{meta['model']}: {title}", fill="black", font=f_m)
            for t in (0.1, 0.2, 0.5, 1, 2, 4):
                if lx0 <= math.log10(t) <= lx1:
                    dr.line([X(t), y1, X(t), y1 + 4], fill="black")
                    dr.line([X(t), y0, X(t), y1], fill=(235, 235, 235))
                    dr.text((X(t) - 8, y1 + 6), f"{t:g}x", fill="black", font=f_s)
            if logy:
                ticks = [m * 10 ** k for k in range(int(math.floor(lo)) - 1, int(math.ceil(hi)) + 1) for m in (1, 2, 3, 5)
                         if lo <= math.log10(m * 10 ** k) <= hi]
            else:
                ticks = [lo + (hi - lo) * i / 4 for i in range(5)]
            for v in ticks:
                dr.line([x0 - 4, Y(v), x0, Y(v)], fill="black")
                dr.text((ox + 4, Y(v) - 7), f"{v:g}" if logy else f"{v:.3g}", fill="black", font=f_s)
            dr.text((x0 + (x1 - x0) / 2 - 130, y1 + 22), "compute, x one large-model sample (log)", fill="black",
                    font=f_s)
            yr = Y(ref[key])  # the large model's reference sample
            for xx in range(int(x0), int(x1), 12):
                dr.line([xx, yr, min(xx + 7, x1), yr], fill="black", width=2)
            dr.text((x0 + 6, yr + 4 if yr < y1 - 20 else yr - 16), f"large, 1 sample ({meta['reference']['sampler']}, "
                    f"{meta['reference']['steps']} steps)", fill="black", font=f_s)
            for m in search_methods(rows):
                c = colour[m.replace("euler_ancestral_RF", "stochastic").replace("euler_ancestral", "stochastic")]
                line = sorted(((r["compute_x"], r[key], r.get(key + "_se", 0.0)) for r in pts if r["method"] == m))
                xy = [(X(a), Y(b)) for a, b, _ in line]
                if len(xy) > 1:
                    dr.line(xy, fill=c, width=2)
                for (px, py), (_, b, se) in zip(xy, line):
                    dr.ellipse([px - 3, py - 3, px + 3, py + 3], fill=c)
                    dr.line([px, Y(b - se), px, Y(b + se)], fill=c, width=1)  # ± 1 SE
    ly = top0 + len(results) * ph + 5
    for i, m in enumerate(methods + ["large model, 1 sample at its best step count"]):
        lx, yy = 20 + (i % 4) * (W // 4), ly + (i // 4) * 22
        if i < len(methods):
            dr.line([lx, yy + 8, lx + 24, yy + 8], fill=colour[m], width=3)
            label = f"small + {m}" if not m.startswith("random") else f"small + {m} search"
        else:
            for xx in range(lx, lx + 24, 12):
                dr.line([xx, yy + 8, xx + 7, yy + 8], fill="black", width=2)
            label = m
        dr.text((lx + 30, yy), label, fill="black", font=f_s)
    img.save(path)
    return path


# --- command line -------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="digits,shapes", help="comma-separated: " + ", ".join(FAMILIES))
    ap.add_argument("--out-dir", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--smoke", action="store_true", help="tiny run (seconds): the table's structure, not its numbers")
    ap.add_argument("--prompts", type=int, default=0, help="default 300 (smoke 20)")
    ap.add_argument("--multipliers", default="", help="compute budgets in units of one large sample "
                    "(default 0.1,0.25,0.5,1,2,4; smoke 0.1,0.5,2)")
    ap.add_argument("--large-steps", default="", help="step counts tried for the large model (default 5,10,20,40; "
                    "smoke 5,10)")
    ap.add_argument("--train-steps", default="", help="denoiser training steps, both sizes, e.g. digits=2000,shapes=1200")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot-only", action="store_true", help="only redraw the plot from the JSON files in --out-dir")
    ap.add_argument("--rerender", action="store_true", help="only recompute the matches and rewrite the markdown and "
                    "the plot from the JSON files in --out-dir (no model runs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = " ".join(["python bench/quality/sizes.py"] + list(sys.argv[1:] if argv is None else argv))
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    for m in models:
        if m not in FAMILIES:
            raise SystemExit(f"unknown model '{m}'; pick from {', '.join(FAMILIES)}")
    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.join(args.out_dir, "sizes.png")
    if args.plot_only or args.rerender:
        results = []
        for m in models:
            path = os.path.join(args.out_dir, f"sizes_{m}.json")
            if not os.path.exists(path):
                continue
            with open(path) as fh:
                d = json.load(fh)
            if args.rerender:
                d["matches"] = find_matches(d["rows"], d["rows"][d["meta"]["reference"]["index"]])
                d["meta"]["rerendered"] = {"commit": git_state(), "command": cmd}
                with open(path, "w") as fh:
                    json.dump(d, fh, indent=1)
                with open(os.path.splitext(path)[0] + ".md", "w") as fh:
                    fh.write(markdown(d))
                print(f"re-rendered {path}")
            results.append(d)
        print(f"wrote {plot(results, png)}")
        return []
    train = dict(SMOKE_TRAIN_STEPS if args.smoke else TRAIN_STEPS)
    for item in filter(None, args.train_steps.split(",")):
        k, _, v = item.partition("=")
        train[k.strip()] = int(v)
    prompts = args.prompts or (20 if args.smoke else 300)
    mults = ([float(x) for x in args.multipliers.split(",")] if args.multipliers
             else ([0.1, 0.5, 2.0] if args.smoke else list(MULTIPLIERS)))
    lsteps = ([int(x) for x in args.large_steps.split(",")] if args.large_steps
              else ([5, 10] if args.smoke else list(LARGE_STEPS)))
    commit = git_state()  # the code that runs (read before the run: later commits do not change it)
    results, written = [], []
    for name in models:
        d = run_sizes(FAMILIES[name], prompts=prompts, multipliers=mults, large_steps=lsteps, smoke=args.smoke,
                      train_steps=train[name], fd_reps=20 if args.smoke else FD_BOOTSTRAP)
        d["meta"].update({"commit": commit, "machine": machine(), "command": cmd})
        stem = os.path.join(args.out_dir, f"sizes_{name}")
        with open(stem + ".json", "w") as fh:
            json.dump(d, fh, indent=1)
        with open(stem + ".md", "w") as fh:
            fh.write(markdown(d))
        print(f"wrote {stem}.json and .md ({d['meta']['wall_s']} s)")
        results.append(d)
        written.append(stem)
    print(f"wrote {plot(results, png)}")
    return written


if __name__ == "__main__":
    main()
