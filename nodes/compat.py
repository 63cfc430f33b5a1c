"""The one place that knows about ComfyUI versions.

Everything the pack needs from the host goes through here, so a change in
ComfyUI means a change in this file only.  Supported: the 2024 host CI runs
(commit a28a9dc8) and current ComfyUI (2025+, GUIDER / NOISE / flow models)."""
from __future__ import annotations

import contextlib
import math
import inspect
import os
from typing import Callable, Iterator, List, Optional, Sequence

import torch

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import comfy.k_diffusion.sampling as kds
import folder_paths
import latent_preview

VERIFIER_FOLDER = "verifiers"
VERIFIER_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".ckpt"}

# 2024 ComfyUI: ancestral samplers draw their noise from torch's global RNG;
# current ComfyUI: from a generator seeded with extra_args["seed"].
SEEDED_DEFAULT_NOISE = "seed" in inspect.signature(kds.default_noise_sampler).parameters

InterruptProcessingException = mm.InterruptProcessingException


# --------------------------------------------------------------------------- folders
def register_verifier_folder() -> None:
    """models/verifiers, merged with whatever extra_model_paths.yaml already mapped."""
    default = os.path.join(folder_paths.models_dir, VERIFIER_FOLDER)
    entry = folder_paths.folder_names_and_paths.get(VERIFIER_FOLDER)
    paths = list(entry[0]) if entry else []
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[VERIFIER_FOLDER] = (paths, set(VERIFIER_EXTENSIONS))


def verifier_files() -> List[str]:
    return sorted(folder_paths.get_filename_list(VERIFIER_FOLDER))


def verifier_folders() -> List[str]:
    return list(folder_paths.get_folder_paths(VERIFIER_FOLDER))


def verifier_path(name: str) -> Optional[str]:
    return folder_paths.get_full_path(VERIFIER_FOLDER, name)


# --------------------------------------------------------------------------- interrupt / OOM
def throw_if_interrupted() -> None:
    mm.throw_exception_if_processing_interrupted()


def is_oom(e: BaseException) -> bool:
    if isinstance(e, InterruptProcessingException):
        return False
    oom_types = [torch.cuda.OutOfMemoryError]
    if getattr(torch, "OutOfMemoryError", None) is not None:
        oom_types.append(torch.OutOfMemoryError)
    host = getattr(mm, "OOM_EXCEPTION", None)
    if host is not None and host is not Exception:  # the 2024 host sets Exception on CPU
        oom_types.append(host)
    return isinstance(e, tuple(oom_types))


def free_memory_after_oom() -> None:
    mm.soft_empty_cache(True)


# --------------------------------------------------------------------------- model queries
def model_sampling(model):
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    return model.model.model_sampling


def latent_format(model):
    if hasattr(model, "get_model_object"):
        return model.get_model_object("latent_format")
    return model.model.latent_format


def latent_channels(model) -> Optional[int]:
    lf = latent_format(model)
    ch = getattr(lf, "latent_channels", None)
    if ch is None and getattr(lf, "latent_rgb_factors", None) is not None:
        ch = len(lf.latent_rgb_factors)
    return ch


def fix_empty_latent_channels(model, latent: torch.Tensor) -> torch.Tensor:
    """ComfyUI's own fix (current hosts): an all-zero 4-channel latent becomes
    the model's channel count (16 for SD3/FLUX).  Absent on the 2024 host."""
    fix = getattr(comfy.sample, "fix_empty_latent_channels", None)
    return fix(model, latent) if fix is not None else latent


def memory_per_candidate(model, latent_shape: Sequence[int], cfg_passes: int = 2) -> Optional[int]:
    try:
        return int(model.model.memory_required([cfg_passes] + list(latent_shape[1:])))
    except Exception:
        return None


def free_memory(model) -> Optional[int]:
    dev = model.load_device
    if dev.type == "cpu":
        return None
    return int(mm.get_free_memory(dev))


def compute_sigmas(model, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    """The sigmas a stock KSampler uses for these widgets."""
    # the 2024 host's KSampler takes the BaseModel, current ones the ModelPatcher
    target = model if hasattr(model, "get_model_object") else model.model
    ks = comfy.samplers.KSampler(target, steps=steps, device=model.load_device, sampler=sampler_name,
                                 scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    return ks.sigmas.detach().cpu()


def sampler_names() -> List[str]:
    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> List[str]:
    return list(comfy.samplers.KSampler.SCHEDULERS)


def sampler_object(name: str):
    return comfy.samplers.sampler_object(name)


def wrap_sampler(sampler, wrap: Callable[[Callable], Callable]):
    """A KSAMPLER whose sampler function is ``wrap(original)``; options kept."""
    return comfy.samplers.KSAMPLER(wrap(sampler.sampler_function), extra_options=dict(sampler.extra_options),
                                   inpaint_options=dict(sampler.inpaint_options))


def sampler_function_name(sampler) -> str:
    fn = getattr(sampler, "sampler_function", None)
    return getattr(fn, "__name__", "") or ""


def prepare_noise_like_stock(latent: torch.Tensor, seed: int) -> torch.Tensor:
    return comfy.sample.prepare_noise(latent, seed, None)


# --------------------------------------------------------------------------- per-candidate noise
# Samplers whose randomness comes only from k-diffusion's two noise factories
# (or none at all).  For these, every candidate of a micro-batch gets exactly
# the noise stream a stock batch-1 run with its own seed would draw.
_SEPARABLE_MODULES = {kds.__name__, "comfy.extra_samplers.uni_pc"}


def per_candidate_noise_supported(sampler) -> bool:
    fn = getattr(sampler, "sampler_function", None)
    mod = getattr(fn, "__module__", "")
    name = getattr(fn, "__name__", "")
    if mod in _SEPARABLE_MODULES:
        return True
    # ComfyUI wraps dpm_fast / dpm_adaptive in closures defined in samplers.py
    return mod == comfy.samplers.__name__ and name in ("dpm_fast_function", "dpm_adaptive_function")


@contextlib.contextmanager
def per_candidate_noise(seeds: Sequence[int], base_seed: int, initial_shape: Sequence[int]) -> Iterator[None]:
    """While active, k-diffusion's noise factories give each batch row the
    stream that a batch-1 stock run with seed ``seeds[row]`` would get.

    ``base_seed`` is the seed passed in extra_args for this batch; samplers that
    derive extra seeds (seed + k) keep their offset per candidate."""
    orig_default = kds.default_noise_sampler
    orig_tree = kds.BrownianTreeNoiseSampler

    def default_noise_sampler(x, seed=None, *a, **k):
        if SEEDED_DEFAULT_NOISE:
            off = 0 if seed is None else int(seed) - int(base_seed)
            per = [orig_default(x[i:i + 1], seed=int(s) + off, *a, **k) for i, s in enumerate(seeds)]
            return lambda sigma, sigma_next: torch.cat([f(sigma, sigma_next) for f in per])
        # 2024 host: stock batch 1 draws from the global generator that
        # prepare_noise(seed) left behind (CPU) or seeded (CUDA).
        gens = []
        for i, s in enumerate(seeds):
            g = torch.Generator(device=x.device)
            g.manual_seed(int(s))
            if x.device.type == "cpu":
                torch.randn([1] + list(initial_shape[1:]), generator=g)  # the initial noise draw
            gens.append(g)
        return lambda sigma, sigma_next: torch.cat(
            [torch.randn([1] + list(x.shape[1:]), generator=g, device=x.device, dtype=x.dtype, layout=x.layout)
             for g in gens])

    class BrownianTreeNoiseSampler:
        def __init__(self, x, sigma_min, sigma_max, seed=None, *a, **k):
            off = 0 if seed is None else int(seed) - int(base_seed)
            self.per = [orig_tree(x[i:i + 1], sigma_min, sigma_max, seed=int(s) + off, *a, **k)
                        for i, s in enumerate(seeds)]

        def __call__(self, sigma, sigma_next):
            return torch.cat([f(sigma, sigma_next) for f in self.per])

    kds.default_noise_sampler = default_noise_sampler
    kds.BrownianTreeNoiseSampler = BrownianTreeNoiseSampler
    try:
        yield
    finally:
        kds.default_noise_sampler = orig_default
        kds.BrownianTreeNoiseSampler = orig_tree


# --------------------------------------------------------------------------- sampling calls
def sample_with_sampler(model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
                        noise_mask, callback, seed, guider=None):
    """One sampling run with an explicit SAMPLER + SIGMAS: what SamplerCustom
    does, or SamplerCustomAdvanced when a GUIDER is given."""
    if guider is not None:
        return guider.sample(noise, latent_image, sampler, sigmas, denoise_mask=noise_mask,
                             callback=callback, disable_pbar=True, seed=seed).to(mm.intermediate_device())
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
                                      noise_mask=noise_mask, callback=callback, disable_pbar=True, seed=seed)


def sample_like_ksampler(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                         denoise, noise_mask, callback, seed):
    """Exactly the call a stock KSampler node makes (nodes.common_ksampler)."""
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise=denoise, noise_mask=noise_mask, callback=callback, disable_pbar=True,
                               seed=seed)


def latent_out(model, x: torch.Tensor) -> torch.Tensor:
    """A sampler-internal latent (a callback's x0) in LATENT space, as VAE Decode takes it."""
    return model.model.process_latent_out(x.float())


def noise_scaling_coefficients(model, sigma: float, max_denoise: bool) -> tuple:
    """(a, b) with ComfyUI's ``noise_scaling(sigma, noise, latent, max_denoise) = a*noise + b*latent``,
    read off the model's own function (EPS, v-prediction, flow/CONST, EDM alike)."""
    ms = model_sampling(model)
    s = torch.tensor([float(sigma)])
    one, zero = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    a = ms.noise_scaling(s.view(1, 1, 1, 1), one.clone(), zero.clone(), max_denoise=max_denoise)
    b = ms.noise_scaling(s.view(1, 1, 1, 1), zero.clone(), one.clone(), max_denoise=max_denoise)
    return float(a.reshape(-1)[0]), float(b.reshape(-1)[0])


def starts_at_max_denoise(model, sigma0: float) -> bool:
    """KSAMPLER.max_denoise: does a run starting at ``sigma0`` start from pure noise?"""
    max_sigma = float(model_sampling(model).sigma_max)
    return math.isclose(max_sigma, float(sigma0), rel_tol=1e-05) or float(sigma0) > max_sigma


def percent_to_sigma(model, percent: float) -> float:
    return float(model_sampling(model).percent_to_sigma(float(percent)))


def prepare_mask(noise_mask: torch.Tensor, shape, device) -> torch.Tensor:
    """The noise mask at latent resolution, as the samplers use it."""
    try:  # current ComfyUI
        from comfy.sampler_helpers import prepare_mask as fn
    except ImportError:  # the 2024 host
        fn = comfy.sample.prepare_mask
    return fn(noise_mask, shape, device)


def output_directory() -> str:
    return folder_paths.get_output_directory()


def save_image_path(prefix: str, out_dir: str, width: int, height: int):
    return folder_paths.get_save_image_path(prefix, out_dir, width, height)


def metadata_disabled() -> bool:
    try:
        from comfy.cli_args import args
        return bool(getattr(args, "disable_metadata", False))
    except Exception:
        return False


def guider_model(guider):
    return guider.model_patcher


# --------------------------------------------------------------------------- UI feedback
class Progress:
    """One ComfyUI progress bar for the whole search, in NFE units, with a
    grid preview of the current micro-batch's x0-predictions."""

    def __init__(self, total: int, model):
        self.bar = comfy.utils.ProgressBar(max(1, int(total)))
        self.value = 0
        self.total = max(1, int(total))
        try:
            self.previewer = latent_preview.get_previewer(model.load_device, latent_format(model))
        except Exception:
            self.previewer = None

    def grow_total(self, total: int) -> None:
        self.total = max(self.total, int(total))

    def advance(self, nfe: int) -> None:
        self.set(self.value + int(nfe))

    def preview(self, x0: torch.Tensor) -> None:
        self.set(self.value, x0)

    def set(self, value: int, x0: Optional[torch.Tensor] = None) -> None:
        self.value = max(0, min(self.total, int(value)))
        preview = None
        if x0 is not None and self.previewer is not None:
            try:
                preview = self.previewer.decode_latent_to_preview_image("JPEG", latent_grid(x0))
            except Exception:  # a preview must never break a search
                preview = None
        self.bar.update_absolute(self.value, self.total, preview)


def latent_grid(x: torch.Tensor, max_items: int = 16) -> torch.Tensor:
    """B x C x H x W -> 1 x C x (rows*H) x (cols*W): the stock previewer shows
    only item 0, so the micro-batch is tiled into one latent."""
    x = x[:max_items]
    b = x.shape[0]
    cols = int(b ** 0.5 + 0.999)
    rows = (b + cols - 1) // cols
    if rows * cols > b:
        x = torch.cat([x, torch.zeros_like(x[:1]).expand(rows * cols - b, *x.shape[1:])])
    c, h, w = x.shape[1:]
    x = x.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(1, c, rows * h, cols * w)
    return x


# --------------------------------------------------------------------------- verifier models
def verifier_devices():
    return mm.get_torch_device(), mm.unet_offload_device()


def use_fp16_for_verifier(device) -> bool:
    return device.type == "cuda" and mm.should_use_fp16(device)


def make_patcher(module: torch.nn.Module, load_device, offload_device):
    import comfy.model_patcher
    size = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    return comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device, size=size)


def load_for_inference(patchers) -> None:
    """Loads the patchers' models for scoring (ComfyUI may offload others)."""
    mm.load_models_gpu(list(patchers) if isinstance(patchers, (list, tuple)) else [patchers])


def byte_progress():
    """A ComfyUI progress bar for a download: ``update(done, total)``."""
    state = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = comfy.utils.ProgressBar(max(1, int(total)))
        state["bar"].update_absolute(int(done), max(1, int(total)))
    return update
