"""Does search help through ComfyUI?  Random search and successive halving on the demo model, through a real
ComfyUI server on the CPU, judged by the held-out judge.

    python bench/demo_quality.py [--prompts 50] [--out bench/results/demo_quality.json]
    COMFYUI_PATH=/path/to/ComfyUI python bench/demo_quality.py ...     (default: .test-cache/ComfyUI-0.3.64)

The model, verifier and judge are tools/demo_model/ (an SD1.5-family
checkpoint loaded by the stock CheckpointLoaderSimple, the CLIPScore loader on
its open_clip verifier, a CNN judge trained on other images that the search
never sees).  Prompt p is the caption of ``shapes_data.sample_specs`` on seed
``PROMPT_SEED`` (p-th row) and its search's seed is ``SEED0 + 100 p``.

Each prompt is one graph on the server: two Search Loops at their defaults
(candidates 8, top_k 1, no strategy = random search; the Successive Halving
strategy node with its default parameters), euler / normal, the model's steps
and CFG (tools/demo_model/comfy_graphs.py).  The random search returns all 8
candidates (top_k 8, its own batched samples, not re-rendered), so one graph
gives the one-sample baseline too: the judge's accuracy of one sample is the
mean over the 8 candidates (the expected accuracy of a single sample at a
random seed; also reported: the first candidate alone, the seed a stock
KSampler would get).  Measured per method: the judge's accuracy of the winner,
and the gain over one sample, paired over prompts, with its standard error
(the sample standard deviation of the per-prompt differences over sqrt(n)).

Output: JSON (meta: machine, commit, command, ComfyUI, wall time) and a
Markdown table beside it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for p in (os.path.join(REPO, "tools", "demo_model"), os.path.join(REPO, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import build  # noqa: E402
import comfy_graphs as G  # noqa: E402
import shapes_data as S  # noqa: E402

PROMPT_SEED = 4242
SEED0 = 10_000
CANDIDATES = 8      # Search Loop's default


def prompts(n: int):
    import torch
    return [s.caption for s in S.sample_specs(n, torch.Generator().manual_seed(PROMPT_SEED))]


def graph(prompt: str, seed: int) -> dict:
    g = G.base_nodes(prompt)
    g["6"] = G.search_node(prompt, seed, CANDIDATES, top_k=CANDIDATES)
    g["7"] = {"class_type": "InfScale_SuccessiveHalvingStrategy", "inputs": {}}
    g["8"] = G.search_node(prompt, seed, CANDIDATES, top_k=1, strategy=["7", 0])
    g["9"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 2], "filename_prefix": f"s{seed}_random"}}
    g["10"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 2], "filename_prefix": f"s{seed}_halving"}}
    g["11"] = {"class_type": "InfScale_ScoresToJSON", "inputs": {"scores": ["6", 3]}}
    g["12"] = {"class_type": "InfScale_ScoresToJSON", "inputs": {"scores": ["8", 3]}}
    return g


def _strategy_defaults(client) -> dict:
    """Fill the halving node's widgets with the defaults the server itself declares."""
    info = client.object_info()["InfScale_SuccessiveHalvingStrategy"]["input"]
    out = {}
    for section in ("required", "optional"):
        for name, spec in (info.get(section) or {}).items():
            if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                out[name] = spec[1]["default"]
    return out


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the server process has used: the cost of the searches, whatever else the machine
    runs meanwhile (wall time on a shared machine is not)."""
    try:
        import psutil
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except Exception:
        return float("nan")


def paired(a, b):
    """mean(b - a) and its standard error over prompts."""
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    m = sum(d) / n
    var = sum((v - m) ** 2 for v in d) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


def run(n_prompts: int = 50, comfyui: str = None, cache: str = None, log=print) -> dict:
    import comfy_server
    from judge import load_judge, read_images, verdicts
    t0 = time.time()
    comfyui = comfyui or comfy_server.comfyui_dir()
    files = build.ensure_files(comfyui, cache or os.path.join(comfy_server.CACHE, "demo-model"))
    caps = prompts(n_prompts)
    judge = load_judge()
    rows = []
    with tempfile.TemporaryDirectory(prefix="demo-quality-") as work:
        import pathlib
        models = G.model_folders(os.path.join(work, "models"), files)
        client = comfy_server.launch(comfyui, pathlib.Path(work), models)
        try:
            t_ready = time.time() - t0
            cpu0 = _cpu_seconds(client.proc.pid)
            halving = _strategy_defaults(client)
            ids = []
            for p, cap in enumerate(caps):      # queue everything, then collect (the server runs them in order)
                g = graph(cap, SEED0 + 100 * p)
                g["7"]["inputs"] = dict(halving)
                code, body = client.queue(g)
                assert code == 200, f"prompt refused ({code}): {json.dumps(body)[:2000]}"
                ids.append(body["prompt_id"])
            for p, (cap, pid) in enumerate(zip(caps, ids)):
                entry = client.wait(pid, timeout=1800)
                err = comfy_server.execution_error(entry)
                if err is not None:
                    raise RuntimeError(f"prompt {p} ({cap!r}) failed on the server: {err}")
                out = entry["outputs"]
                reports = {nid: json.loads(out[nid]["text"][0]) for nid in ("11", "12")}
                rand_imgs = [client.output_file(i) for i in out["9"]["images"]]
                halv_imgs = [client.output_file(i) for i in out["10"]["images"]]
                ok_rand = verdicts(judge, read_images(rand_imgs), cap)       # rank order, best first
                ok_halv = verdicts(judge, read_images(halv_imgs), cap)
                ranked = sorted(reports["11"]["candidates"], key=lambda c: c["rank"])
                first = next(i for i, c in enumerate(ranked) if c["seed"] == SEED0 + 100 * p)
                rows.append({"prompt": cap, "seed": SEED0 + 100 * p, "one_sample": sum(ok_rand) / len(ok_rand),
                             "first_candidate": float(ok_rand[first]), "random": float(ok_rand[0]),
                             "halving": float(ok_halv[0]), "any_of_8": float(any(ok_rand)),
                             "nfe": {"random": reports["11"]["nfe_total"], "halving": reports["12"]["nfe_total"]},
                             "halving_starts": len(reports["12"]["candidates"])})
                if (p + 1) % 10 == 0:
                    log(f"  {p + 1}/{len(caps)} prompts ({time.time() - t0:.0f} s)")
            cpu_search = _cpu_seconds(client.proc.pid) - cpu0
        finally:
            comfy_server.shutdown(client)
    n = len(rows)
    mean = lambda k: sum(r[k] for r in rows) / n  # noqa: E731
    base = [r["one_sample"] for r in rows]
    res = {"one_sample": mean("one_sample"), "first_candidate": mean("first_candidate"),
           "any_of_8": mean("any_of_8")}
    for m in ("random", "halving"):
        gain, se = paired(base, [r[m] for r in rows])
        res[m] = {"judge_acc": mean(m), "gain_over_one_sample": gain, "se": se,
                  "gain_in_se": gain / se if se > 0 else float("inf"),
                  "nfe_mean": sum(r["nfe"][m] for r in rows) / n}
    res["one_sample_se"] = math.sqrt(sum((b - res["one_sample"]) ** 2 for b in base) / (n - 1) / n) if n > 1 else 0
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except Exception:
        commit = None
    meta = {"prompts": n, "candidates": CANDIDATES, "steps": G.STEPS, "cfg": G.CFG, "sampler": G.SAMPLER,
            "scheduler": G.SCHEDULER, "halving_params": halving, "prompt_seed": PROMPT_SEED, "seed0": SEED0,
            "comfyui": comfy_server.comfyui_version(comfyui), "server_ready_s": round(t_ready, 1),
            "server_cpu_s_searches": round(cpu_search, 1),
            "wall_s": round(time.time() - t0, 1), "commit": commit,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.system()}",
            "model_parts": build.parts_digest()}
    return {"meta": meta, "results": res, "per_prompt": rows}


def markdown(d: dict) -> str:
    m, r = d["meta"], d["results"]
    lines = [f"# Search through ComfyUI on the demo model ({m['prompts']} prompts)", "",
             f"ComfyUI {m['comfyui']}, CPU ({m['machine']}), commit {m['commit']}, {m['wall_s']:.0f} s "
             f"(the server's CPU time for the searches: {m['server_cpu_s_searches']:.0f} s). "
             f"Search Loop at its defaults (candidates {m['candidates']}), {m['sampler']} / {m['scheduler']}, "
             f"{m['steps']} steps, CFG {m['cfg']:g}; judge = the held-out CNN (tools/demo_model/).", "",
             "| method | judge accuracy | gain over one sample | ± SE | gain / SE | NFEs per prompt |",
             "|---|---|---|---|---|---|",
             f"| one sample (mean of the 8 candidates) | {r['one_sample']:.3f} | | | | {m['steps']} |",
             f"| one sample (first candidate = KSampler's seed) | {r['first_candidate']:.3f} | | | | {m['steps']} |"]
    for k, label in (("random", "random search (best of 8)"), ("halving", "successive halving (defaults)")):
        x = r[k]
        lines.append(f"| {label} | {x['judge_acc']:.3f} | {x['gain_over_one_sample']:+.3f} | {x['se']:.3f} | "
                     f"{x['gain_in_se']:.1f} | {x['nfe_mean']:.0f} |")
    lines += [f"| any of the 8 (hindsight) | {r['any_of_8']:.3f} | | | | |", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "demo_quality.json"))
    a = p.parse_args(argv)
    d = run(a.prompts)
    d["meta"]["command"] = "python bench/demo_quality.py" + (f" --prompts {a.prompts}" if a.prompts != 50 else "")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(d, f, indent=1)
    md = markdown(d)
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
