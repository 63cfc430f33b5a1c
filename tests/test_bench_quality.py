"""The CPU quality benchmark (bench/quality/run.py) in its --smoke mode, so it cannot rot."""
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("sklearn")


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
