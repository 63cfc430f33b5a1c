"""Shared helpers for the GPU benchmarks: ComfyUI set-up as main.py does it,
the pack imported as a custom-node package, random weights, timing, JSON.

No ComfyUI code lives here: ComfyUI is imported at run time from the folder
given with --comfyui (or $COMFYUI_PATH)."""
from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_MODULE = "comfyui_inference_scaling"  # the name ComfyUI would give the folder (any name works)


# --------------------------------------------------------------------------- ComfyUI set-up
def find_comfyui(arg: Optional[str]) -> str:
    for cand in (arg, os.environ.get("COMFYUI_PATH"), os.path.join(REPO, "comfyui")):
        if cand and os.path.isfile(os.path.join(cand, "main.py")):
            return os.path.abspath(cand)
    raise SystemExit("no ComfyUI: pass --comfyui DIR, set COMFYUI_PATH, or put ComfyUI's source in ./comfyui "
                     "(see bench/README.md)")


def setup_comfyui(comfyui_dir: str, cpu: bool, workdir: str, extra_args=()) -> None:
    """What main.py does before it loads custom nodes, minus the server:
    ComfyUI first on sys.path, its argument parser enabled (it parses [] otherwise),
    comfy.model_management imported with those arguments, output/temp folders
    set to a scratch folder.  The cudaMallocAsync switch of main.py
    (cuda_malloc.py) is NOT applied: PyTorch's native caching allocator keeps
    torch.cuda.max_memory_allocated and set_per_process_memory_fraction exact."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") not in (here, REPO)]
    sys.path.insert(0, comfyui_dir)
    sys.argv = [sys.argv[0]] + (["--cpu"] if cpu else []) + list(extra_args)
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.model_management  # noqa: F401  (reads the arguments)
    import folder_paths
    os.makedirs(workdir, exist_ok=True)
    folder_paths.set_output_directory(os.path.join(workdir, "output"))
    folder_paths.set_temp_directory(os.path.join(workdir, "temp"))


def import_pack():
    """The pack as ComfyUI imports a custom node folder: a package loaded by path
    (relative imports inside), after ComfyUI is importable."""
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = mod
    spec.loader.exec_module(mod)
    nodes = sys.modules.get(PACK_MODULE + ".nodes")
    if nodes is None or not getattr(nodes, "CLASSES", None):
        raise RuntimeError("the pack made no nodes: ComfyUI is not importable")
    mod.NODE_CLASS_MAPPINGS = nodes.CLASSES  # the node classes by ID, in this process only (ComfyUI gets V3 nodes)
    return mod


def comfyui_version(comfyui_dir: str) -> str:
    vf = os.path.join(comfyui_dir, "comfyui_version.py")
    if os.path.isfile(vf):
        ns: Dict[str, Any] = {}
        exec(open(vf).read(), ns)
        return ns.get("__version__", "unknown")
    return "pre-2024-08 (no comfyui_version.py)"


def git_commit(path: str) -> Optional[str]:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:
        return None


def environment(device) -> Dict[str, Any]:
    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           # a copied working tree may carry no .git, or a stale one: the caller passes PACK_COMMIT
           "device": str(device), "pack_commit": os.environ.get("PACK_COMMIT") or git_commit(REPO)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 2), sm_count=p.multi_processor_count,
                   cuda=torch.version.cuda)
    for name in ("transformers", "open_clip", "torchsde", "numpy"):
        try:
            m = __import__(name)
            env[name] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            env[name] = f"missing ({type(e).__name__})"
    return env


# --------------------------------------------------------------------------- random weights
def fill_random_(module, seed: int = 0, gains: Optional[Dict[str, float]] = None) -> int:
    """Fills every parameter of ``module`` in place (on whatever device it is),
    returns the parameter count.  Norm layers: weight 1, bias 0; embeddings and
    positional tables: N(0, 0.02); matrices/convolutions: N(0, 1/fan_in) times
    the gain of their module (``gains``: module-name suffix -> factor, used to
    shrink a diffusion model's output layer so 20 CFG steps stay finite in fp16);
    other vectors: N(0, 0.01).  Layers built with ComfyUI's
    disable_weight_init ops hold uninitialised memory, so nothing may be skipped."""
    import torch
    gains = gains or {}
    n = 0
    gens = {}
    with torch.no_grad():
        for mname, mod in module.named_modules():
            cls = type(mod).__name__
            gain = 1.0
            for suffix, g in gains.items():
                if mname == suffix or mname.endswith("." + suffix):
                    gain = g
            for pname, p in mod.named_parameters(recurse=False):
                dev = p.device
                if dev not in gens:
                    gens[dev] = torch.Generator(device=dev).manual_seed(seed)
                gen = gens[dev]
                n += p.numel()
                if not p.is_floating_point():
                    p.zero_()
                elif "Norm" in cls:
                    p.fill_(1.0 if pname in ("weight", "scale", "gamma") else 0.0)
                elif "Embedding" in cls or "embed" in pname or "positional" in pname:
                    p.normal_(0.0, 0.02, generator=gen)
                elif p.ndim >= 2:
                    fan_in = p[0].numel()
                    p.normal_(0.0, gain / math.sqrt(max(1, fan_in)), generator=gen)
                else:
                    p.normal_(0.0, 0.01 * gain, generator=gen)
    return n


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- timing
class Clock:
    """Wall-clock timing with device synchronisation on CUDA."""

    def __init__(self, device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


class Memory:
    def __init__(self, device):
        self.device = device

    def reset(self) -> Dict[str, float]:
        if self.device.type != "cuda":
            return {}
        import torch
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return {"resident_gib": round(torch.cuda.memory_allocated(self.device) / 2 ** 30, 3)}

    def num_ooms(self) -> Optional[int]:
        """The caching allocator's count of out-of-memory errors so far (CUDA only): every OOM it raised,
        whoever caught it (the pack's micro-batch back-off, ComfyUI's tiled-decode fallback...)."""
        if self.device.type != "cuda":
            return None
        import torch
        return int(torch.cuda.memory_stats(self.device).get("num_ooms", 0))

    def peak(self) -> Dict[str, float]:
        if self.device.type != "cuda":
            return {}
        import torch
        torch.cuda.synchronize(self.device)
        return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(self.device) / 2 ** 30, 3),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved(self.device) / 2 ** 30, 3)}


@contextlib.contextmanager
def patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


class Deadline:
    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget = float(budget_s)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


# --------------------------------------------------------------------------- output
class Results:
    """One JSON document, rewritten (atomically) after every case, so a run cut
    short still leaves what it measured."""

    def __init__(self, path: str, meta: Dict[str, Any]):
        self.path = path
        self.doc: Dict[str, Any] = {"meta": meta, "models": {}, "cases": [], "summary": {}}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.write()

    def add(self, case: Dict[str, Any]) -> Dict[str, Any]:
        self.doc["cases"].append(case)
        self.write()
        return case

    def write(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f, indent=1, default=_json_default)
        os.replace(tmp, self.path)


def _json_default(o):
    try:
        import torch
        if isinstance(o, torch.Tensor):
            return o.tolist()
        if isinstance(o, (torch.device, torch.dtype)):
            return str(o)
    except Exception:
        pass
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return repr(o)


_T0 = time.perf_counter()


def log(*a) -> None:
    print(f"[bench {time.perf_counter() - _T0:6.1f}s]", *a, flush=True)
