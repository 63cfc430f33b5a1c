"""A search on several devices of one machine, in one ComfyUI process.

One lane per device: the main device samples with the graph's own model; every
other device with a deep clone of it made through ComfyUI's model management
(``gpus.device_clone``), loaded before any thread starts.  ``DeviceSet.run``
cuts the rows of one sampling call into contiguous per-device chunks
(``search.devices.split_rows``), runs each chunk in its own thread, and returns
the chunks' results in row order; ``ComfyHost`` calls it for every sampling
call, so every strategy runs on every device.  With the VAE on the main device,
each other device gets a copy of it and decodes its share of the rows too;
scoring (one ScoreBook over every candidate) and the exact re-render of the
winners stay on the main device."""
from __future__ import annotations

import contextlib
import contextvars
import gc
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from . import compat, gpus, memory
from .progress import Stopped
from .sampling import SamplingPlan, SearchInputError
from ..search.devices import DevicesError, parse_devices, split_rows

GIB = 1024 ** 3
# A sampling call is cut over GPUs only when every GPU gets at least this many rows.  With threads, the Python
# side of sampling is shared: two lanes on one H200 ran a zero-order search (rounds of 4 neighbours, 2 rows per
# lane) at 0.45x one lane, while a random search at 8 rows per lane ran at 0.95x (bench/README.md, "Every GPU
# of one machine").  Smaller calls stay on the main device.  CPU lanes (tests) split any call.
GPU_MIN_ROWS = 4


@dataclass
class Lane:
    device: str
    plan: Optional[SamplingPlan]  # None once the set is released (a device clone's plan)
    rows: int = 0             # rows this device sampled (a row = one candidate in one sampling call)
    micro_batch: int = 0      # 0: the host's; lowered on this device's out-of-memory
    vae: Any = None           # this device's VAE copy (None: decoding stays on the main device)
    copy: bool = False        # the lane's models (and VAE) are copies made for it, released with the set


@dataclass
class DeviceSet:
    lanes: List[Lane]
    requested: str = "all"
    notes: List[str] = field(default_factory=list)  # devices left out, and why
    stop: threading.Event = field(default_factory=threading.Event)
    min_rows: int = 1  # the fewest rows a device is given when a call is cut (GPU_MIN_ROWS on GPUs)
    released: bool = False
    _decoded: bool = False  # decoders, as it was before release

    @property
    def parallel(self) -> bool:
        return len(self.lanes) > 1

    @property
    def decoders(self) -> bool:
        """Every device has a VAE of its own: decoding is cut over the devices too."""
        if self.released:
            return self._decoded
        return self.parallel and all(ln.vae is not None for ln in self.lanes)

    def copies(self) -> List[Any]:
        """The model clones and VAE copies this set made (never the graph's own model or VAE)."""
        out: List[Any] = []
        for ln in self.lanes:
            if ln.copy and ln.plan is not None:
                out += [m for m in (ln.plan.model, ln.plan.model_2, ln.vae) if m is not None]
        return out

    def release(self) -> None:
        """Lets go of every copy this set made (model clones, VAE copies), at the end of its search: they leave
        ComfyUI's loaded models and their weights are freed, so a later search, ``/free`` or the next graph
        never finds them held.  The report's facts (devices, rows) stay; sampling with this set is over."""
        if self.released:
            return
        self._decoded = self.decoders
        copies = self.copies()
        self.released = True
        for ln in self.lanes:
            if ln.copy:
                ln.plan = None
            ln.vae = None
        _release(copies)

    def info(self) -> Dict[str, Any]:
        """The report's ``settings["devices"]``: which devices ran how many rows."""
        return {"requested": self.requested, "used": [ln.device for ln in self.lanes],
                "rows": {f"{i}:{ln.device}" if self._repeated(ln.device) else ln.device: ln.rows
                         for i, ln in enumerate(self.lanes)},
                "left_out": list(self.notes), "decode_on_every_device": self.decoders}

    def _repeated(self, name: str) -> bool:
        return sum(1 for ln in self.lanes if ln.device == name) > 1

    def run(self, rows: Sequence[int], work: Callable[[Lane, Sequence[int]], Any], count: bool = True) -> List[Any]:
        """``[work(lane, chunk), ...]`` over contiguous chunks of ``rows``, in row order; the chunks run at once,
        one thread per device.  The first failure (Cancel included) stops the other devices at their next model
        call and is raised.  ``count``: the rows are sampled ones (the report's rows per device)."""
        rows = list(rows)
        chunks = split_rows(len(rows), [1.0] * len(self.lanes), self.min_rows) if rows else []
        if len(chunks) <= 1:
            lane = self.lanes[chunks[0][0]] if chunks else self.lanes[0]
            lane.rows += len(rows) if count else 0
            return [work(lane, rows)]
        self.stop.clear()
        results: List[Any] = [None] * len(chunks)
        errors: List[Optional[BaseException]] = [None] * len(chunks)
        # torch's grad and inference modes are per thread: the workers take the caller's (ComfyUI runs nodes
        # under inference_mode)
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def target(k: int, lane: Lane, part: List[int]) -> None:
            try:
                with torch.inference_mode(inference), torch.set_grad_enabled(grad), _on(lane.device):
                    results[k] = work(lane, part)
            except BaseException as e:  # noqa: BLE001 - handed to the calling thread below
                errors[k] = e
                self.stop.set()

        threads = []
        with gpus.serialized_model_loading():
            for k, (i, a, b) in enumerate(chunks):
                lane = self.lanes[i]
                lane.rows += (b - a) if count else 0
                ctx = contextvars.copy_context()  # ComfyUI's executing-node context, for the progress bar
                t = threading.Thread(target=ctx.run, args=(target, k, lane, rows[a:b]),
                                     name=f"infscale-{lane.device}", daemon=True)
                threads.append(t)
                t.start()
            for t in threads:
                t.join()
        self.stop.clear()
        real = [e for e in errors if e is not None and not isinstance(e, Stopped)]
        if real:
            cancel = [e for e in real if isinstance(e, compat.InterruptProcessingException)]
            raise (cancel or real)[0]
        if any(e is not None for e in errors):
            raise next(e for e in errors if e is not None)
        return results


@contextlib.contextmanager
def _on(device: str):
    dev = torch.device(device)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            yield
    else:
        yield


def _controls(plan: SamplingPlan) -> bool:
    """Conditioning that carries its own models (ControlNet, GLIGEN): ComfyUI loads them on the main device."""
    conds = []
    for c in (plan.positive, plan.negative):
        if isinstance(c, list):
            conds += [x[1] for x in c if isinstance(x, (list, tuple)) and len(x) > 1 and isinstance(x[1], dict)]
    for v in (getattr(plan.guider, "original_conds", None) or {}).values():
        conds += [x for x in (v or []) if isinstance(x, dict)]
    return any(d.get("control") is not None or d.get("gligen") is not None for d in conds)


def _fits(plan: SamplingPlan, device: torch.device) -> Optional[str]:
    """Why the model's weights do not fit on ``device`` (with one candidate's working memory), or None."""
    total = gpus.total_memory(device)
    if total is None:
        return None
    need = gpus.model_size(plan.model) + (gpus.model_size(plan.model_2) if plan.model_2 is not None else 0)
    need += memory.memory_per_candidate(plan.model, plan.template.shape, plan.cfg_multiplier()) or 0
    if need > total * 0.95:
        return (f"{device} left out: the model needs about {need / GIB:.1f} GiB with one candidate, the device has "
                f"{total / GIB:.1f} GiB")
    return None


def _release(copies: List[Any]) -> None:
    """Takes model clones and VAE copies out of ComfyUI's loaded models and frees their memory.  Empties
    ``copies``: with the caller's other references dropped, nothing holds them any more."""
    copies[:] = [c for c in copies if c is not None]
    if not copies:
        return
    gpus.forget_models(copies)
    copies.clear()
    gc.collect()  # a ModelPatcher's references go round in cycles: free the weights now, not at some later gc
    gpus.empty_cache()


def _add_lanes(out: DeviceSet, plan: SamplingPlan, names: Sequence[str], main: str) -> None:
    """One lane per device named: the graph's own model on the main device, a clone loaded on every other one
    (a device the weights do not fit on, or that runs out of memory loading them, is left out with a note)."""
    for name in names:
        if name == main and not any(ln.device == main for ln in out.lanes):
            out.lanes.append(Lane(main, plan.on_device(plan.model, plan.model_2, plan.guider, out.stop)))
            continue
        dev = torch.device(name)
        why = _fits(plan, dev)
        if why is not None:
            out.notes.append(why)
            continue
        made: List[Any] = []  # this device's clones, released if it is left out
        try:
            made.append(gpus.device_clone(plan.model, dev))
            if plan.model_2 is not None:
                made.append(gpus.device_clone(plan.model_2, dev))
            for m in made:
                gpus.load_on_device(m)
        except BaseException as e:  # noqa: BLE001 - out-of-memory leaves the device out; the rest is raised
            _release(made)
            if not memory.is_oom(e):
                raise
            memory.free_memory_after_oom()
            out.notes.append(f"{name} left out: out of memory while loading the model's weights there")
            continue
        model, model_2 = made[0], (made[1] if len(made) > 1 else None)
        guider = gpus.device_guider(plan.guider, model) if plan.guider is not None else None
        out.lanes.append(Lane(name, plan.on_device(model, model_2, guider, out.stop), copy=True))


def build(plan: SamplingPlan, text: Optional[str], vae=None) -> DeviceSet:
    """The devices a search samples on, one lane each (the main device's lane uses the graph's own model).
    With ``vae`` on the main device, each other device gets a copy of it and decodes its share too."""
    main = str(plan.model.load_device)
    try:
        names = parse_devices(text, [str(d) for d in gpus.torch_devices()], main)
    except DevicesError as e:
        raise SearchInputError(str(e)) from e
    requested = (text or "").strip() or "all"
    if len(names) == 1 and names[0] == main:
        return DeviceSet([Lane(main, plan)], requested)
    notes: List[str] = []
    if not plan.separable or plan.nfe_per_generation() is None:
        notes.append(f"only {main}: sampler '{plan.sampler_label}' cannot keep a noise stream per candidate (or "
                     "picks its own steps), so candidates run one at a time on the main device")
        return DeviceSet([Lane(main, plan)], requested, notes)
    if _controls(plan):
        notes.append(f"only {main}: the conditioning carries a ControlNet or GLIGEN model, which ComfyUI loads on "
                     "the main device only")
        return DeviceSet([Lane(main, plan)], requested, notes)
    out = DeviceSet([], requested, notes, threading.Event())
    try:
        _add_lanes(out, plan, names, main)
        if not out.lanes:
            notes.append(f"every device named was left out: sampling on {main}")
            return DeviceSet([Lane(main, plan)], requested, notes)
        if vae is not None and out.parallel and str(getattr(vae, "device", "")) == main:
            for lane in out.lanes:  # a VAE copy per device (the main device's is the graph's own)
                lane.vae = gpus.device_vae(vae, torch.device(lane.device)) if lane.copy else vae
    except BaseException:
        out.release()  # the copies made so far
        raise
    out.min_rows = GPU_MIN_ROWS if any(torch.device(ln.device).type != "cpu" for ln in out.lanes) else 1
    return out
