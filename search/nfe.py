"""NFE accounting, defined once for the whole pack.

One NFE is one evaluation of the *guided* denoiser, i.e. one model call made
by the sampler: Euler makes one per step, Heun two (one on its last step,
where it falls back to Euler).  The classifier-free-guidance passes inside one
NFE (cond + uncond = 2 model forward passes when cfg != 1) are reported
separately as ``cfg_multiplier``.  NFEs are counted per candidate; the total of
a search is the sum over candidates.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence


class UnknownNFEError(ValueError):
    pass


# Samplers that evaluate the denoiser once per step.
_ONE_PER_STEP = {
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "lms",
    "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "ddim", "uni_pc",
    "uni_pc_bh2", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
    "er_sde", "euler_ancestral_RF", "sa_solver",
}
# Samplers that evaluate twice per step, and once on a step that ends at sigma 0.
_TWO_PER_STEP = {
    "heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpm_2_ancestral_RF", "dpmpp_2s_ancestral_RF",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "seeds_2",
}
# Call count not known in advance: refused when a budget is set.
_ADAPTIVE = {"dpm_fast", "dpm_adaptive"}


def nfe_per_generation(sampler_name: Optional[str], sigmas: Sequence[float]) -> int:
    """Model calls one sampler run over ``sigmas`` makes, known in advance.

    Raises :class:`UnknownNFEError` for samplers whose count is not known
    (adaptive step size, or a custom sampler this table does not know)."""
    sig = [float(s) for s in sigmas]
    steps = len(sig) - 1
    if steps <= 0:
        return 0
    name = (sampler_name or "").removeprefix("sample_")
    if name in _ONE_PER_STEP:
        return steps
    if name in _TWO_PER_STEP:
        final = sum(1 for i in range(steps) if sig[i + 1] == 0.0)
        return 2 * steps - final
    if name in _ADAPTIVE:
        raise UnknownNFEError(
            f"sampler '{name}' chooses its own step count, so its NFEs are not known in advance; "
            "pick a fixed-step sampler (euler, heun, dpmpp_2m, ...) when a budget is set")
    raise UnknownNFEError(f"the NFE count of sampler '{name}' is not known in advance")


class NFECounter:
    """Wraps a denoiser ``f(x, sigma, **kw)``; every call is one NFE for each
    of the ``x.shape[0]`` candidates in the batch."""

    def __init__(self, denoiser: Callable, on_call: Optional[Callable[["NFECounter"], None]] = None):
        self.inner = denoiser
        self.calls = 0
        self.on_call = on_call

    def __call__(self, x, sigma, *args, **kwargs):
        if self.on_call is not None:
            self.on_call(self)
        self.calls += 1
        return self.inner(x, sigma, *args, **kwargs)

    def __getattr__(self, name):
        # samplers reach through the denoiser (model.inner_model...): delegate
        return getattr(self.inner, name)
