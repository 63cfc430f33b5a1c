"""Loaded verifiers are bounded and released (issue #18, item 8): the pack keeps only its few most recent
verifiers alive; everything else lives exactly as long as ComfyUI (or a search) holds it, CLIP tokenizers
included; a custom architecture's config stays out of the architecture lists."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_verifier_cache_is_bounded_and_released(comfy_path, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "verifier_cache_check.py"), comfy_path, str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    keep = r["keep"]
    assert r["same_object_for_same_inputs"] and r["one_clip_part_for_two_modes"]
    assert len(r["scores"]) == 2
    # keep_parts + 2 files, plus a second mode on the first: only the pack's own short lists stay alive
    after = r["after_loading_more"]
    assert r["files"] > r["keep_parts"]
    assert after["verifiers"] == keep == after["kept_verifiers"]
    assert after["parts"] <= r["keep_parts"]
    # a CLIP model's tokenizer lives as long as its part: one per live CLIP part, not one per file ever loaded
    assert after["tokenizers"] == after["parts"], after
    # a custom architecture's config (the JSON beside each file) is registered for its build only
    assert r["archs_added"] == {"open_clip": [], "node": []}, r["archs_added"]
    assert r["only_the_held_one"] == {"verifiers": 1, "parts": 1, "kept_verifiers": 0, "kept_parts": 0, "tokenizers": 1}
    assert r["held_still_scores"]
    assert r["after_release"] == {"verifiers": 0, "parts": 0, "kept_verifiers": 0, "kept_parts": 0, "tokenizers": 0}
