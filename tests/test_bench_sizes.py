"""bench/quality/sizes.py (a small model with search against a large model without, at matched FLOPs) in its --smoke
mode: the table's structure and the compute accounting, not its numbers."""
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

# every strategy the harness runs (successive halving and tree search arrived after the committed sizes results were
# measured)
LABELS = {"digits": ["random", "random (euler_ancestral)", "zero-order", "paths", "particles (FK)", "evolution",
                     "successive halving", "tree search"],
          "shapes": ["random", "random (euler_ancestral_RF)", "zero-order", "paths", "particles (FK)", "evolution",
                     "successive halving", "tree search"]}


def test_sizes_smoke(tmp_path):
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(QUALITY / "sizes.py"), "--smoke", "--out-dir", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.time() - t0 < 300
    for model in ("digits", "shapes"):
        d = json.loads((tmp_path / f"sizes_{model}.json").read_text())
        meta, rows, matches = d["meta"], d["rows"], d["matches"]
        assert meta["model"] == model and meta["smoke"] is True
        for k in ("commit", "machine", "command", "wall_s", "prompts", "multipliers", "budgets_nfe", "large_steps",
                  "flops_per_call", "params", "reference", "sizes"):
            assert k in meta, k
        fl, pa, prompts = meta["flops_per_call"], meta["params"], meta["prompts"]
        assert 0 < fl["small"] < fl["large"] and fl["verifier"] > 0 and 0 < pa["small"] < pa["large"]
        ref = rows[meta["reference"]["index"]]
        unit = ref["compute_flops"]
        assert ref["model"] == "large" and ref["compute_x"] == pytest.approx(1.0)
        assert unit == pytest.approx(ref["steps"] * fl["large"])
        large = [r for r in rows if r.get("model") == "large"]
        assert len(large) == 2 * len(meta["large_steps"])
        # the reference is the large sample with the best judge accuracy (ties: the cheapest)
        assert ref["judge_acc"] == max(r["judge_acc"] for r in large)
        assert ref["compute_flops"] == min(r["compute_flops"] for r in large if r["judge_acc"] == ref["judge_acc"])
        assert [r["model"] for r in rows].count("real") == 1
        for mult, budget in zip(meta["multipliers"], meta["budgets_nfe"]):
            assert budget == math.floor(mult * unit / fl["small"] + 1e-9)
            got = [r for r in rows if r.get("model") == "small" and r.get("multiplier") == mult]
            assert [r["method"] for r in got] == LABELS[model], (model, mult)
            for r in got:
                assert r["budget_nfe"] == budget
                if budget < meta["generation_steps"]:
                    assert "judge_acc" not in r and "not run" in r["note"]
        measured = [r for r in rows if "judge_acc" in r and r["model"] != "real"]
        assert any("multiplier" in r for r in measured)  # the smoke budgets do run searches
        for r in measured:
            for k in ("verifier", "judge_acc", "judge_logp", "fd", "diversity", "fd_se", "diversity_se", "compute_x"):
                assert math.isfinite(r[k]), (k, r["method"])
            assert 0.0 <= r["judge_acc"] <= 1.0 and r["fd_se"] >= 0 and r["judge_acc_se"] >= 0
            assert r["nfe_max"] <= r["budget_nfe"] and r["nfe_count_mismatch_prompts"] == 0
            assert len(r["per_prompt"]["judge_correct"]) == prompts
            searched = "multiplier" in r
            model_flops = fl[r["model"]]
            want = r["nfe_mean"] * model_flops + (r["verifier_rows_mean"] * fl["verifier"] if searched else 0.0)
            assert r["compute_flops"] == pytest.approx(want) and r["compute_x"] == pytest.approx(want / unit)
            if searched:
                assert r["verifier_rows_mean"] >= 1  # a search scores its candidates: that compute is counted
        # where the small model with search first matches the large reference, per metric and method
        for key, sign in (("judge_acc", 1), ("fd", -1), ("judge_logp", 1), ("verifier", 1)):
            mk = matches[key]
            assert mk["reference"] == ref[key] and set(mk["methods"]) == set(LABELS[model])
            for mth, v in mk["methods"].items():
                pts = sorted((r for r in measured if r["method"] == mth and "multiplier" in r),
                             key=lambda r: r["compute_x"])
                ok = [r for r in pts if sign * (r[key] - ref[key]) >= 0]
                assert (v is None) == (not ok)
                if v is not None:
                    assert v["compute_x"] == ok[0]["compute_x"]
            hits = [v["compute_x"] for v in mk["methods"].values() if v is not None]
            assert (mk["first"] is None) == (not hits)
            if hits:
                assert mk["first"]["compute_x"] == min(hits)
        md = (tmp_path / f"sizes_{model}.md").read_text()
        assert "| model | method | budget | compute (x large) |" in md
        assert "## Where the small model with search first matches" in md
        assert "held-out judge" in md and "verifier" in md
        for mth in LABELS[model]:
            assert f"| {mth} | " in md
    from PIL import Image
    with Image.open(tmp_path / "sizes.png") as im:
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 500
    # the plot redraws from the JSON alone
    (tmp_path / "sizes.png").unlink()
    subprocess.run([sys.executable, str(QUALITY / "sizes.py"), "--plot-only", "--out-dir", str(tmp_path)], cwd=REPO,
                   check=True, capture_output=True, text=True, timeout=120)
    assert (tmp_path / "sizes.png").exists()


def test_count_flops_sees_matmuls_and_attention():
    from sizes import count_flops
    from shapes import FlowUNet
    lin = torch.nn.Linear(8, 5)
    assert count_flops(lambda: lin(torch.zeros(3, 8))) == 2 * 3 * 8 * 5
    net = FlowUNet(16, 32, 32).eval()
    x, s, y = torch.zeros(1, 3, 16, 16), torch.tensor([0.5]), torch.tensor([1])
    attn = net.attn
    net_flops = count_flops(lambda: net(x, s, y))
    # the attention's projections and its two 16x16 products must be counted (the fused fast path hides them)
    e, n = 32, 16
    assert count_flops(lambda: attn(torch.zeros(1, n, e), torch.zeros(1, n, e), torch.zeros(1, n, e),
                                    need_weights=False)) == 2 * n * e * 3 * e + 2 * n * e * e + 2 * 2 * n * n * e
    assert net_flops > 2 * n * e * 4 * e
    assert torch.backends.mha.get_fastpath_enabled()  # restored
