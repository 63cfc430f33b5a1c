"""One table of sampler facts, for every sampler the pack knows by name.

For each sampler function (ComfyUI's k-diffusion names, without ``sample_``):

* ``calls``: model calls per step: 1, 2 (one on a step that ends at sigma 0,
  where second-order samplers fall back to Euler), or ``None`` when the
  sampler picks its own steps (adaptive: dpm_fast, dpm_adaptive);
* ``segmentable``: it keeps no history between steps, so a schedule run in
  segments (stop, act on the state, continue) is the same computation as one
  run: multistep samplers (dpmpp_2m, lms, uni_pc, ipndm, deis, ...) are not;
* ``stochastic``: it adds fresh noise at every step (ancestral / SDE), so copies
  of one state diverge afterwards.

NFE accounting (``search/nfe.py``), the algorithms' sampler requirements
(``search/registry.py``) and the sampler table of docs/strategies.md all read this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class SamplerFacts:
    calls: Optional[int]      # model calls per step; None = adaptive (not known in advance)
    segmentable: bool = False
    stochastic: bool = False


def _table() -> Dict[str, SamplerFacts]:
    t: Dict[str, SamplerFacts] = {}

    def add(names, calls, segmentable=False, stochastic=False):
        for n in names.split():
            t[n] = SamplerFacts(calls, segmentable, stochastic)

    # single-step, deterministic
    add("euler euler_cfg_pp ddim", 1, segmentable=True)
    add("heun dpm_2", 2, segmentable=True)
    # single-step, stochastic
    add("euler_ancestral euler_ancestral_cfg_pp euler_ancestral_RF lcm ddpm", 1, segmentable=True, stochastic=True)
    add("dpm_2_ancestral dpm_2_ancestral_RF dpmpp_2s_ancestral dpmpp_2s_ancestral_cfg_pp dpmpp_2s_ancestral_RF "
        "dpmpp_sde dpmpp_sde_gpu", 2, segmentable=True, stochastic=True)
    # multistep (history between steps): whole-schedule runs only
    add("lms dpmpp_2m dpmpp_2m_cfg_pp ipndm ipndm_v deis uni_pc uni_pc_bh2 res_multistep res_multistep_cfg_pp "
        "gradient_estimation gradient_estimation_cfg_pp", 1)
    add("dpmpp_2m_sde dpmpp_2m_sde_gpu dpmpp_3m_sde dpmpp_3m_sde_gpu res_multistep_ancestral "
        "res_multistep_ancestral_cfg_pp er_sde sa_solver", 1, stochastic=True)
    add("dpmpp_2m_sde_heun dpmpp_2m_sde_heun_gpu seeds_2", 2, stochastic=True)
    # adaptive step size
    add("dpm_fast dpm_adaptive", None)
    # not listed, so refused wherever NFEs or segments matter: heunpp2 (1 to 3 calls per step, and it
    # changes its last step at the end of any segment, so a segmented run is not one run)
    return t


SAMPLERS: Dict[str, SamplerFacts] = _table()


def canonical(name: Optional[str]) -> str:
    return (name or "").removeprefix("sample_")


def facts(name: Optional[str]) -> Optional[SamplerFacts]:
    """The facts of a sampler, or None for a sampler this table does not know."""
    return SAMPLERS.get(canonical(name))


def names_where(**want) -> list:
    """Sampler names whose facts match, e.g. ``names_where(segmentable=True)``."""
    return sorted(n for n, f in SAMPLERS.items() if all(getattr(f, k) == v for k, v in want.items()))
