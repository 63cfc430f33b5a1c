"""The CPU quality benchmarks (bench/quality/run.py and the two-model harness.py) in their --smoke modes, so
they cannot rot, plus the harness's own machinery (lock-step batching, the flow host, --params)."""
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
QUALITY = REPO / "bench" / "quality"

pytest.importorskip("sklearn")
pytest.importorskip("scipy")
if str(QUALITY) not in sys.path:
    sys.path.insert(0, str(QUALITY))


def test_quality_benchmark_smoke(tmp_path):
    out = tmp_path / "q.json"
    t0 = time.time()
    subprocess.run([sys.executable, str(REPO / "bench" / "quality" / "run.py"), "--smoke", "--out", str(out)],
                   check=True, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert time.time() - t0 < 120
    d = json.loads(out.read_text())
    methods = {r["method"] for r in d["rows"]}
    for m in ("baseline 1 sample (euler)", "more steps (1 sample)", "random", "zero-order", "paths", "particles (FK)",
              "evolution", "coarse-to-fine random"):
        assert m in methods, m
    measured = [r for r in d["rows"] if "verifier" in r]
    for r in measured:
        assert r["nfe_max"] <= max(r["budget_nfe"], 10), r  # no method ever spends more than its budget
        assert all(math.isfinite(r[k]) for k in ("verifier", "judge_acc", "judge_logp", "fd", "diversity")), r
    c2f = [r for r in measured if r["method"] == "coarse-to-fine random"]
    assert c2f and all(0.0 <= r["coarse_winner_is_full_winner"] <= 1.0 for r in c2f)
    md = out.with_suffix(".md").read_text()
    assert "| method | budget NFE |" in md and d["meta"]["smoke"] is True


def test_two_model_harness_smoke(tmp_path):
    """Both model families, every method, the comparison with random search: the tables' structure, not numbers."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(QUALITY / "harness.py"), "--smoke", "--out-dir", str(tmp_path),
                           "--tag", "t"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.time() - t0 < 600
    for model, stochastic in (("digits", "euler_ancestral"), ("shapes", "euler_ancestral_RF")):
        d = json.loads((tmp_path / f"quality_{model}_t.json").read_text())
        meta, rows, comparison = d["meta"], d["rows"], d["comparison"]
        assert meta["model"] == model and meta["smoke"] is True and meta["samplers"][1] == stochastic
        for k in ("commit", "machine", "command", "wall_s", "train_cpu_s", "prompts", "budgets"):
            assert k in meta, k
        budgets, prompts = meta["budgets"], meta["prompts"]
        labels = ["random", f"random ({stochastic})", "zero-order", "paths", "particles (FK)", "evolution",
                  "successive halving", "tree search", "random + early stop (patience 4)", "more steps (1 sample)",
                  "coarse-to-fine random"]
        for b in budgets:
            got = [r["method"] for r in rows if r["budget_nfe"] == b]
            assert got == labels, (model, b, got)
        assert {f"baseline 1 sample ({s})" for s in meta["samplers"]} <= {r["method"] for r in rows}
        measured = [r for r in rows if "judge_acc" in r]
        for r in measured:
            assert all(math.isfinite(r[k]) for k in ("verifier", "judge_acc", "judge_logp", "fd", "diversity")), r
            assert 0.0 <= r["judge_acc"] <= 1.0
            if "nfe_mean" in r:
                assert r["nfe_max"] <= max(r["budget_nfe"], 10), r
                assert 0 <= r["under_budget_prompts"] <= prompts
                assert (r["under_budget_prompts"] > 0) == (r["nfe_min"] < r["budget_nfe"])
                assert r["nfe_count_mismatch_prompts"] == 0, r  # reported NFEs = rows through the denoiser
                assert len(r["per_prompt"]["judge_correct"]) == prompts
        md = (tmp_path / f"quality_{model}_t.md").read_text()
        assert "re-rendered" not in md
        for r in measured:  # a run that spent less than its budget is flagged in its table row
            line = next(ln for ln in md.splitlines() if ln.startswith(f"| {r['method']} | {r['budget_nfe']} |"))
            assert ("⚑ under budget" in line) == bool(r.get("under_budget_prompts")), line
        # evolution sizes its population from the budget itself (population 0): nothing for the harness to shrink
        evo20 = next(r for r in rows if r["method"] == "evolution" and r["budget_nfe"] == 20)
        assert evo20["derived_from_budget"] == {} and evo20["settings"]["population"] == 2
        cmp_methods = {(c["method"], c["budget_nfe"]) for c in comparison}
        for b in budgets:
            for m in ("zero-order", "paths", "particles (FK)", "evolution", "successive halving",
                      "random + early stop (patience 4)"):
                assert (m, b) in cmp_methods, (model, m, b)
        stopped = next(r for r in rows if r["method"] == "random + early stop (patience 4)" and r["budget_nfe"] == 80)
        assert stopped["early_stop"] == {"target": None, "patience": 4, "min_improvement": 0.0}
        assert stopped["nfe_mean"] < 80  # a plateau of 4 among 8 candidates stops some prompts early
        for c in comparison:
            assert c["random"] == (f"random ({stochastic})" if c["method"] == "particles (FK)" else "random")
            assert math.isfinite(c["delta_judge_acc"]) and c["delta_judge_acc_se"] >= 0
            assert c["judge_acc_ge_random_minus_1se"] == (c["delta_judge_acc"] >= -c["delta_judge_acc_se"] - 5e-4)
        assert "| method | budget NFE | NFE spent |" in md
        assert "## Judge accuracy minus random search's (same sampler)" in md
    # re-rendering a finished run recomputes the same comparison from the stored per-prompt values
    js = tmp_path / "quality_shapes_t.json"
    before = json.loads(js.read_text())["comparison"]
    subprocess.run([sys.executable, str(QUALITY / "harness.py"), "--rerender", str(js)], cwd=REPO, check=True,
                   capture_output=True, text=True, timeout=120)
    assert json.loads(js.read_text())["comparison"] == before
    assert "re-rendered from the JSON" in js.with_suffix(".md").read_text()


def test_harness_params_overrides():
    from harness import fit_sizes, parse_params
    p = parse_params("zero_order.neighbours=4,zero_order.cosine=0.66,particles.potential=difference,"
                     "evolution.population=4")
    assert p == {"zero_order": {"neighbours": 4, "cosine": 0.66}, "particles": {"potential": "difference"},
                 "evolution": {"population": 4}}
    with pytest.raises(SystemExit):
        parse_params("nonsense.x=1")
    # defaults that do not fit are shrunk, overrides never are
    # (evolution's and paths' defaults, 0, size themselves from the budget: nothing to shrink)
    assert fit_sizes("evolution", {}, 20, 10) == ({}, {}) and fit_sizes("paths", {}, 20, 10) == ({}, {})
    assert fit_sizes("evolution", {}, 80, 10) == ({}, {})
    assert fit_sizes("evolution", {"population": 4}, 20, 10) == ({"population": 4}, {})


def test_lockstep_batching_matches_one_prompt_at_a_time():
    """The harness runs many prompts' searches in lock step with one batched model call per step; every prompt's
    result must be what run_strategy gives that prompt alone."""
    from harness import Lockstep
    from search import Strategy, run_strategy
    from shapes import FlowHost
    from toy_host import GaussianToy, ToyHost

    mus = {c: torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(c)) * 0.3 for c in range(3)}
    toys = {(c, pred): GaussianToy(mus[c], 0.5, pred) for c in range(3) for pred in ("eps", "flow")}

    def make_host(pred, sampler, den, score):
        if pred == "eps":
            return ToyHost(den, score, shape=(1, 3, 16, 16), steps=10, sampler=sampler, prediction="eps")
        return FlowHost(den, score, shape=(1, 3, 16, 16), steps=10, sampler=sampler)

    def score_of(c):
        return lambda z: -((z - mus[c]) ** 2).flatten(1).mean(1) + 0.01 * z.flatten(1)[:, c]

    for pred, sampler, strat in (("eps", "euler", Strategy("zero_order", {}, 50)),
                                 ("flow", "euler", Strategy("paths", {}, 200)),
                                 ("flow", "euler_ancestral_RF", Strategy("particles", {}, 40)),
                                 ("eps", "euler_ancestral", Strategy("evolution", {"population": 3}, 60))):
        classes = [0, 1, 2, 1]

        def den_handler(sigma, x, y):
            return torch.cat([toys[(int(c), pred)](x[i:i + 1], sigma) for i, c in enumerate(y.tolist())])

        def score_handler(_, x, y):
            return torch.cat([score_of(int(c))(x[i:i + 1]) for i, c in enumerate(y.tolist())])

        eng = Lockstep({"den": den_handler, "score": score_handler}, chunk=3)

        def job(p):
            c = classes[p]
            h = make_host(pred, sampler, lambda x, s: eng.call(p, "den", float(s), x, c),
                          lambda z: eng.call(p, "score", None, z, c))
            r, f = run_strategy(strat, h, candidates=1, top_k=1, seed=7 + p)
            return f[0].latent, r.nfe_total
        batched = eng.run([job] * len(classes))
        assert eng.batches > 0
        for p, c in enumerate(classes):
            h = make_host(pred, sampler, toys[(c, pred)], score_of(c))
            r, f = run_strategy(strat, h, candidates=1, top_k=1, seed=7 + p)
            torch.testing.assert_close(batched[p][0], f[0].latent, rtol=1e-5, atol=1e-5)
            assert batched[p][1] == r.nfe_total


def test_flow_host_segments_and_schedule():
    """euler_ancestral_RF on the flow host: stopping and restarting the schedule is the same computation (needed
    by particles and paths), and the shifted schedule's noise level is t, not σ."""
    from shapes import FlowHost, ShiftedFlowSchedule
    from toy_host import GaussianToy

    mu = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(0)) * 0.3
    h = FlowHost(GaussianToy(mu, 0.5, "flow"), lambda z: z.flatten(1).mean(1), steps=10, sampler="euler_ancestral_RF")
    seeds = [3, 4]
    st = h.start(h.initial_noise(seeds))
    whole, _ = h.sample(st, 10, seeds)
    half, _ = h.sample(st, 4, seeds)
    rest, _ = h.sample(half, 10, seeds)
    torch.testing.assert_close(whole.latent, rest.latent, rtol=1e-5, atol=1e-5)
    assert h.nfe_rows == 2 * 10 + 2 * 4 + 2 * 6
    sch = ShiftedFlowSchedule(3.0)
    sig = sch.schedule(10)
    assert float(sig[0]) == 1.0 and float(sig[-1]) == 0.0 and abs(sch.level(float(sig[5])) - 0.5) < 1e-6
    assert float(sig[5]) > 0.5  # shift 3 keeps more steps at high noise
    assert h.index_at_level(0.11) == 9


def test_harness_merges_runs_over_different_budgets(tmp_path):
    """--merge joins parts of one long run (same model, settings, commit) and recomputes the paired comparison and
    the smallest budget matching random search; parts of different runs are refused."""
    import harness

    def part(budgets, acc_tree, model="digits"):
        meta = {"model": model, "prompts": 4, "diffusion_train_steps": 150, "cond_scale": 1.0, "commit": "c",
                "smoke": False, "budgets": budgets, "wall_s": 1.0, "cpu_s": 1.0, "command": f"part {budgets}",
                "description": "d", "generation_steps": 10, "samplers": ["euler", "euler_ancestral"], "data": "x",
                "verifier_acc_on_judge_split": 1.0, "judge_acc_on_verifier_split": 1.0, "machine": "m",
                "threads": 1, "train_wall_s": 1.0, "train_cpu_s": 1.0}
        rows = [{"method": "real images (reference)", "budget_nfe": 0, "sampler": "", "note": "", "verifier": 0.0,
                 "verifier_se": 0.0, "judge_acc": 1.0, "judge_acc_se": 0.0, "judge_logp": 0.0, "judge_logp_se": 0.0,
                 "fd": 0.0, "diversity": 0.0, "per_prompt": {"judge_correct": [1] * 4, "verifier": [0.0] * 4}}]
        for b in budgets:
            for method, alg, acc in (("random", "random", [0, 0, 0, 0] if b < 320 else [1, 1, 1, 0]),
                                     ("tree search", "tree", acc_tree)):
                rows.append({"method": method, "budget_nfe": b, "sampler": "euler", "note": "", "algorithm": alg,
                             "compared_with": "deterministic", "early_stop": None, "verifier": 0.0,
                             "verifier_se": 0.0, "judge_acc": sum(acc) / 4, "judge_acc_se": 0.1, "judge_logp": 0.0,
                             "judge_logp_se": 0.0, "fd": 1.0, "diversity": 1.0, "nfe_mean": float(b),
                             "nfe_min": b, "nfe_max": b, "under_budget_prompts": 0, "nfe_counted_mean": float(b),
                             "nfe_count_mismatch_prompts": 0,
                             "per_prompt": {"judge_correct": acc, "verifier": [0.0] * 4}})
        return {"meta": meta, "rows": rows, "comparison": []}

    paths = []
    for name, d in (("a", part([80], [1, 1, 1, 0])), ("b", part([320], [1, 1, 1, 1]))):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(d))
        paths.append(str(p))
    harness.merge(paths, str(tmp_path / "quality_digits_m"), "merge cmd")
    d = json.loads((tmp_path / "quality_digits_m.json").read_text())
    assert d["meta"]["budgets"] == [80, 320] and d["meta"]["merged"]["command"] == "merge cmd"
    assert [(r["method"], r["budget_nfe"]) for r in d["rows"]] == [
        ("real images (reference)", 0), ("random", 80), ("tree search", 80), ("random", 320), ("tree search", 320)]
    assert [(c["method"], c["budget_nfe"]) for c in d["comparison"]] == [("tree search", 80), ("tree search", 320)]
    m = next(x for x in d["matches"] if x["method"] == "tree search" and x["reference_budget"] == 320)
    assert m["budget"] == 80 and m["fraction"] == 0.25 and m["delta"] == 0.0  # 3 of 4 right, as random at 320
    r = next(x for x in d["matches"] if x["method"] == "random")
    assert r["budget"] == 320  # random at 80 (0 of 4) does not match its own 320 (3 of 4): Δ −0.75 ± 0.25
    md = (tmp_path / "quality_digits_m.md").read_text()
    assert "smallest matching budget" in md and "Run in parts" in md
    other = tmp_path / "c.json"
    other.write_text(json.dumps(part([160], [1, 1, 1, 1], model="shapes")))
    with pytest.raises(SystemExit, match="model"):
        harness.merge([paths[0], str(other)], str(tmp_path / "x"), "cmd")
