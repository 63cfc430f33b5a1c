"""NFE accounting, defined once for the whole pack.

One NFE is one evaluation of the *guided* denoiser, i.e. one model call made
by the sampler: Euler makes one per step, Heun two (one on its last step,
where it falls back to Euler).  The classifier-free-guidance passes inside one
NFE (cond + uncond = 2 model forward passes when cfg != 1) are reported
separately as ``cfg_multiplier``.  NFEs are counted per candidate; the total of
a search is the sum over candidates.  Calls per step come from the sampler
table (``search/samplers.py``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from .samplers import canonical, facts


class UnknownNFEError(ValueError):
    pass


def nfe_per_generation(sampler_name: Optional[str], sigmas: Sequence[float]) -> int:
    """Model calls one sampler run over ``sigmas`` makes, known in advance.

    Raises :class:`UnknownNFEError` for samplers whose count is not known
    (adaptive step size, or a custom sampler the table does not know)."""
    sig = [float(s) for s in sigmas]
    steps = len(sig) - 1
    if steps <= 0:
        return 0
    name = canonical(sampler_name)
    f = facts(name)
    if f is None:
        raise UnknownNFEError(f"the NFE count of sampler '{name}' is not known in advance")
    if f.calls is None:
        raise UnknownNFEError(
            f"sampler '{name}' chooses its own step count, so its NFEs are not known in advance; "
            "pick a fixed-step sampler (euler, heun, dpmpp_2m, ...) when a budget is set")
    if f.calls == 1:
        return steps
    final = sum(1 for i in range(steps) if sig[i + 1] == 0.0)
    return f.calls * steps - (f.calls - 1) * final


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
