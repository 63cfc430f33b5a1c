"""bench/quality/guard.py (the over-optimisation guard's true and false alarms on the quality benchmark) in its
--smoke mode: the report's structure and its bookkeeping, not its numbers."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUALITY = REPO / "bench" / "quality"

pytest.importorskip("sklearn")
pytest.importorskip("scipy")
if str(QUALITY) not in sys.path:
    sys.path.insert(0, str(QUALITY))

LABELS = ["random", "zero-order", "evolution"]


def test_guard_sample_size_is_the_packs():
    import guard as bench_guard
    text = (REPO / "engine" / "pipeline.py").read_text()
    assert int(re.search(r"^HELD_OUT_SAMPLES = (\d+)", text, re.M).group(1)) == bench_guard.HELD_OUT_SAMPLES


def test_guard_smoke(tmp_path):
    from search import guard
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(QUALITY / "guard.py"), "--smoke", "--out-dir", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.time() - t0 < 300
    for model in ("digits", "shapes"):
        d = json.loads((tmp_path / f"guard_{model}.json").read_text())
        md = (tmp_path / f"guard_{model}.md").read_text()
        meta, results = d["meta"], d["results"]
        assert meta["model"] == model and meta["smoke"] is True
        for k in ("commit", "machine", "command", "wall_s", "prompts", "budgets", "held_out_samples", "guard_verifier"):
            assert k in meta, k
        assert meta["guard_verifier"]["seed"] not in (11, 23)  # neither the search verifier's nor the judge's
        assert meta["command"].startswith("python bench/quality/guard.py") and meta["commit"] in md
        prompts = meta["prompts"]
        assert [(e["budget_nfe"], e["method"]) for e in results] == [(b, m) for b in meta["budgets"] for m in LABELS]
        assert any(e.get("stride", 1) > 1 for e in results)  # the smoke sample is small enough to stride
        for e in results:
            assert "confusion" in e, e.get("note")
            per = e["per_prompt"]
            assert e["stride"] == guard.sample_stride(e["budget_nfe"] // meta["generation_steps"],
                                                      meta["held_out_samples"])
            for n, s in zip(per["candidates"], per["sampled"]):
                assert n == e["budget_nfe"] // meta["generation_steps"]  # every finished candidate was kept
                assert s == len(range(0, n, e["stride"]))
            assert e["report_candidates_match"] == prompts  # the kept rows are the report's candidates
            assert e["context"]["nfe_mean"] <= e["budget_nfe"] and e["context"]["nfe_count_mismatch_prompts"] == 0
            assert set(e["winner_percentile_mean"]) == {"guard_verifier", "judge"}
            assert all(0.0 <= v <= 1.0 for v in e["winner_percentile_mean"].values())
            for k in ("judge_acc", "fd", "verifier"):
                assert isinstance(e["context"][k], float)
            for key in ("degraded_sampled", "degraded_all", "search_above_median", "fired_guard_verifier",
                        "fired_judge"):
                assert len(per[key]) == prompts and set(per[key]) <= {0, 1}, key
            for who in ("guard_verifier", "judge"):
                fired = per[f"fired_{who}"]
                # the guard fires only where the winner is above the median search score
                assert all(a >= f for a, f in zip(per["search_above_median"], fired))
                for truth in ("sampled", "all"):
                    c = e["confusion"][who][truth]
                    deg = per[f"degraded_{truth}"]
                    assert c["prompts"] == prompts and c["fired"] == sum(fired) and c["degraded"] == sum(deg)
                    assert c["true_alarms"] + c["false_alarms"] == c["fired"]
                    assert c["true_alarms"] + c["misses"] == c["degraded"]
                    assert c["true_alarms"] + c["false_alarms"] + c["misses"] + c["true_negatives"] == prompts
                    assert (c["precision"] is None) == (c["fired"] == 0)
                    assert (c["recall"] is None) == (c["degraded"] == 0)
            # the judge as its own held-out verifier on the sampled ground truth never raises a false alarm
            assert e["confusion"]["judge"]["sampled"]["false_alarms"] == 0
        assert "## Guard verifier as the held-out verifier" in md and md.count("| random |") >= len(meta["budgets"])
