"""Strategy nodes: each makes a search strategy (plain data from ``search/``)
for SearchLoop's ``strategy`` input, so SearchLoop's own widgets never change.

Every strategy spends one budget in NFEs (denoiser evaluations per candidate,
summed): by default SearchLoop's ``candidates`` x the NFEs of one full
generation, or ``budget_nfe`` when it is above 0."""
from __future__ import annotations

from .types import CATEGORY, STRATEGY
from ..search.strategies import Strategy

BUDGET = ("INT", {"default": 0, "min": 0, "max": 10_000_000,
                  "tooltip": "Search budget in NFEs (model evaluations, summed over candidates). 0 = SearchLoop's "
                             "candidates x the NFEs of one full generation, i.e. the same cost as random search "
                             "over that many candidates."})


class _StrategyNode:
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = (STRATEGY,)
    RETURN_NAMES = ("strategy",)
    OUTPUT_TOOLTIPS = ("Plug into SearchLoop's strategy input.",)


class RandomSearchStrategy(_StrategyNode):
    DESCRIPTION = ("Random search (best of N), the paper's strongest algorithm on FLUX: N independent noises, "
                   "full generations, keep the best. The same as SearchLoop without a strategy, plus an explicit "
                   "NFE budget.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"budget_nfe": BUDGET}}

    def make(self, budget_nfe):
        return (Strategy("random", {}, budget_nfe=int(budget_nfe)),)


class ZeroOrderStrategy(_StrategyNode):
    DESCRIPTION = ("Zero-order search (ZO-N, Ma et al. 2025): a pivot noise and N neighbours on the sphere around "
                   "it; the best neighbour becomes the pivot if it beats it, otherwise the pivot stays and fresh "
                   "neighbours are drawn; rounds until the budget is spent.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "neighbours": ("INT", {"default": 2, "min": 1, "max": 256,
                                  "tooltip": "N neighbours per round (the paper: 2 for text-to-image)."}),
            "cosine": ("FLOAT", {"default": 0.95, "min": 0.0, "max": 0.9999, "step": 0.005,
                                 "tooltip": "Cosine similarity of each neighbour to the pivot (norm kept). "
                                            "LARGER = a SMALLER step (1.0 would be the pivot itself); smaller = "
                                            "bigger jumps, closer to random search. 0.95 as in tt-scale-flux."}),
            "budget_nfe": BUDGET,
        }}

    def make(self, neighbours, cosine, budget_nfe):
        return (Strategy("zero_order", {"neighbours": int(neighbours), "cosine": float(cosine)},
                         budget_nfe=int(budget_nfe)),)


class PathsStrategy(_StrategyNode):
    DESCRIPTION = ("Search over paths (Paths-N, Ma et al. 2025): N noises denoised to the search start; then "
                   "repeatedly each is re-noised M times forward by delta_f and denoised back by delta_b, the "
                   "x0-predictions are scored and the best N kept, until the schedule ends. Levels are fractions "
                   "of the model's own noise timeline (1 = pure noise, 0 = clean), mapped onto your schedule. "
                   "Needs a single-step sampler (see the README's sampler table).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "paths": ("INT", {"default": 2, "min": 1, "max": 256, "tooltip": "N paths kept each round."}),
            "noises_per_path": ("INT", {"default": 2, "min": 1, "max": 64,
                                        "tooltip": "M re-noisings of each path per round."}),
            "start_level": ("FLOAT", {"default": 0.11, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "Noise level where the search starts (paper: 0.11)."}),
            "forward": ("FLOAT", {"default": 0.78, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Forward re-noising interval in noise level (paper: 0.78)."}),
            "backward": ("FLOAT", {"default": 0.81, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "Backward denoising interval (paper: 0.81); must exceed forward so "
                                             "each round makes progress."}),
            "budget_nfe": BUDGET,
        }}

    def make(self, paths, noises_per_path, start_level, forward, backward, budget_nfe):
        if backward <= forward:
            raise ValueError(f"Paths: backward ({backward}) must be larger than forward ({forward}), or the search "
                             "never reaches the end of the schedule")
        return (Strategy("paths", {"paths": int(paths), "noises_per_path": int(noises_per_path),
                                   "start_level": float(start_level), "forward": float(forward),
                                   "backward": float(backward)}, budget_nfe=int(budget_nfe)),)


class ParticleStrategy(_StrategyNode):
    DESCRIPTION = ("Particle resampling (FK steering, Singhal et al. 2025): k particles sampled together with a "
                   "stochastic sampler; every few steps their x0-predictions are scored and the particles resampled "
                   "by potentials, so compute goes to promising ones. Needs an ancestral/SDE sampler.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "particles": ("INT", {"default": 0, "min": 0, "max": 4096,
                                  "tooltip": "k particles; 0 = as many as the budget holds (SearchLoop's "
                                             "candidates by default)."}),
            "potential": (["max", "difference", "sum", "current"], {
                "default": "max",
                "tooltip": "max: exp(lambda * best reward so far); difference: exp(lambda * (r_t - r_prev)); "
                           "sum: exp(lambda * sum of rewards); current: exp(lambda * r_t)."}),
            "lam": ("FLOAT", {"default": 10.0, "min": 0.0, "max": 1000.0, "step": 0.5,
                                      "tooltip": "lambda: 0 = no selection, larger = greedier."}),
            "interval": ("INT", {"default": 5, "min": 1, "max": 1000,
                                 "tooltip": "Score and resample every this many steps."}),
            "ess_threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                        "tooltip": "0 = resample at every scoring step; otherwise only when the "
                                                   "effective sample size falls below this fraction of k (FK "
                                                   "steering uses 0.5)."}),
            "budget_nfe": BUDGET,
        }}

    def make(self, particles, potential, lam, interval, ess_threshold, budget_nfe):
        return (Strategy("particles", {"particles": int(particles), "potential": potential,
                                       "lam": float(lam), "interval": int(interval),
                                       "ess_threshold": float(ess_threshold)}, budget_nfe=int(budget_nfe)),)


class EvolutionStrategy(_StrategyNode):
    DESCRIPTION = ("Evolutionary search (EvoSearch, He et al. 2025): a population of noises; each generation keeps "
                   "the elites, picks parents by tournament and mutates them: child = sqrt(1 - beta^2) * parent + "
                   "beta * fresh noise.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "population": ("INT", {"default": 8, "min": 2, "max": 1024, "tooltip": "Candidates per generation."}),
            "elites": ("INT", {"default": 2, "min": 0, "max": 1024, "tooltip": "Best kept unchanged."}),
            "tournament": ("INT", {"default": 3, "min": 1, "max": 64, "tooltip": "Tournament size for parents."}),
            "mutation": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01,
                                   "tooltip": "beta: 0 = copy the parent, 1 = a fresh random noise."}),
            "budget_nfe": BUDGET,
        }}

    def make(self, population, elites, tournament, mutation, budget_nfe):
        if elites >= population:
            raise ValueError(f"Evolution: elites ({elites}) must be fewer than the population ({population})")
        return (Strategy("evolution", {"population": int(population), "elites": int(elites),
                                       "tournament": int(tournament), "mutation": float(mutation)},
                         budget_nfe=int(budget_nfe)),)


class CoarseToFine(_StrategyNode):
    DESCRIPTION = ("Coarse-to-fine for any strategy: search with fewer steps, then re-render the best finalists at "
                   "the full step count, score them again and pick. Random, zero-order and evolution finalists are "
                   "re-rendered from their starting noise; paths and particles replay their lineage (the same seed, "
                   "re-noisings and sampler seeds at the same noise levels) on the full schedule. Fewer NFEs per "
                   "candidate is the main lever where batching buys nothing (FLUX-size models).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "coarse_steps": ("INT", {"default": 8, "min": 1, "max": 1000,
                                     "tooltip": "Steps per candidate during the search (the full count comes from "
                                                "SearchLoop's steps / SIGMAS)."}),
            "finalists": ("INT", {"default": 4, "min": 1, "max": 256,
                                  "tooltip": "How many coarse winners are re-rendered at full steps."}),
        }, "optional": {
            "strategy": (STRATEGY, {"tooltip": "The strategy to run coarsely; absent = random search."}),
        }}

    def make(self, coarse_steps, finalists, strategy=None):
        inner = strategy if strategy is not None else Strategy("random", {})
        params = dict(inner.params)
        params["rerender"] = int(finalists)
        return (Strategy(inner.name, params, budget_nfe=inner.budget_nfe, coarse_steps=int(coarse_steps)),)


NODES = [
    (RandomSearchStrategy, "RandomSearchStrategy", "Strategy: Random Search"),
    (ZeroOrderStrategy, "ZeroOrderStrategy", "Strategy: Zero-Order Search"),
    (PathsStrategy, "PathsStrategy", "Strategy: Search over Paths"),
    (ParticleStrategy, "ParticleStrategy", "Strategy: Particle Resampling (FK)"),
    (EvolutionStrategy, "EvolutionStrategy", "Strategy: Evolutionary Search"),
    (CoarseToFine, "CoarseToFine", "Strategy: Coarse to Fine"),
]
