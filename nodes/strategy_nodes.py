"""Strategy nodes, generated from the algorithm registry (``search/registry.py``):
one node per algorithm, its widgets the algorithm's parameters (default,
range and tooltip from the registry, never written here), then ``budget_nfe``.
Each makes a :class:`~search.strategies.Strategy` (plain data) for SearchLoop's
``strategy`` input, so SearchLoop's own widgets never change.

Every strategy spends one budget in NFEs (denoiser evaluations per candidate,
summed): by default SearchLoop's ``candidates`` x the NFEs of one full
generation, or ``budget_nfe`` when it is above 0."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

from ..engine.types import CATEGORY, STRATEGY
from ..search import StopRule, Strategy, algorithms
from ..search.registry import Algorithm, Param

BUDGET = ("INT", {"default": 0, "min": 0, "max": 10_000_000,
                  "tooltip": "Search budget in NFEs (model evaluations, summed over candidates). 0 = SearchLoop's "
                             "candidates x the NFEs of one full generation, i.e. the same cost as random search "
                             "over that many candidates."})


def widget(p: Param) -> Tuple[Any, Dict[str, Any]]:
    """A registry parameter as a ComfyUI input definition."""
    if p.choices:
        return (list(p.choices), {"default": p.default, "tooltip": p.tooltip})
    opts: Dict[str, Any] = {"default": p.default, "tooltip": f"{p.tooltip} Default {p.default}."}
    for k in ("min", "max", "step"):
        v = getattr(p, k)
        if v is not None:
            opts[k] = p.kind(v)
    return ({bool: "BOOLEAN", int: "INT", float: "FLOAT"}[p.kind], opts)


def strategy_node(alg: Algorithm) -> type:
    """The node class for one registered algorithm."""

    def INPUT_TYPES(cls):
        required = {p.name: widget(p) for p in alg.params if not p.optional}
        required["budget_nfe"] = BUDGET
        return {"required": required, "optional": {p.name: widget(p) for p in alg.params if p.optional}}

    def make(self, budget_nfe, **params):
        try:
            strategy = Strategy(alg.name, alg.resolve(params), budget_nfe=int(budget_nfe))
        except ValueError as e:
            raise ValueError(f"{alg.title}: {e}") from e
        return (strategy,)

    return type(alg.node, (), {
        "DESCRIPTION": alg.description, "CATEGORY": CATEGORY, "FUNCTION": "make", "RETURN_TYPES": (STRATEGY,),
        "RETURN_NAMES": ("strategy",), "OUTPUT_TOOLTIPS": ("Plug into SearchLoop's strategy input.",),
        "INPUT_TYPES": classmethod(INPUT_TYPES), "make": make})


class CoarseToFine:
    DESCRIPTION = ("Coarse-to-fine for any strategy: search with fewer steps, then re-render the best finalists at "
                   "the full step count, score them again and pick. Random, zero-order and evolution finalists are "
                   "re-rendered from their starting noise; paths and particles replay their lineage (the same seed, "
                   "re-noisings and sampler seeds at the same noise levels) on the full schedule. Fewer NFEs per "
                   "candidate is the main lever where batching buys nothing (FLUX-size models).")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = (STRATEGY,)
    RETURN_NAMES = ("strategy",)
    OUTPUT_TOOLTIPS = ("Plug into SearchLoop's strategy input.",)

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
        inner = strategy if strategy is not None else Strategy("random")
        return (dataclasses.replace(inner, params=dict(inner.params), coarse_steps=int(coarse_steps),
                                    rerender=int(finalists)),)


STOP_MODES = ("target score", "plateau", "target score or plateau")


class EarlyStop:
    DESCRIPTION = ("Stops a strategy once it has its answer: when the best score reaches a target, or when it has "
                   "not risen by more than min_improvement over the last 'patience' candidates (random, zero-order, "
                   "evolution) or scoring rounds (paths, particles, successive halving, which then finish only their "
                   "best). The NFEs saved are in the report. Where a search stops depends only on the seed and the "
                   "scores, never on "
                   "the micro-batch. Needs a verifier with absolute scores (not a rank ensemble).")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = (STRATEGY,)
    RETURN_NAMES = ("strategy",)
    OUTPUT_TOOLTIPS = ("Plug into SearchLoop's strategy input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mode": (list(STOP_MODES), {"default": "plateau",
                                        "tooltip": "What stops the search: the target score, a plateau, or either."}),
            "target_score": ("FLOAT", {"default": 0.0, "min": -1e6, "max": 1e6, "step": 0.001,
                                       "tooltip": "Stop once the best score is at least this (in the verifier's own "
                                                  "units: e.g. CLIPScore ~0.2-0.4, ImageReward ~-2..2). Used by "
                                                  "the 'target score' modes."}),
            "patience": ("INT", {"default": 8, "min": 1, "max": 100000,
                                 "tooltip": "Plateau: stop after this many candidates (or scoring rounds for paths, "
                                            "particles and successive halving) without a rise of more than "
                                            "min_improvement."}),
            "min_improvement": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1e6, "step": 0.0001,
                                          "tooltip": "Plateau: a rise of the best score counts only when it is "
                                                     "larger than this."}),
        }, "optional": {
            "strategy": (STRATEGY, {"tooltip": "The strategy to stop early; absent = random search."}),
        }}

    def make(self, mode, target_score, patience, min_improvement, strategy=None):
        if mode not in STOP_MODES:
            raise ValueError(f"Early Stop: mode must be one of {', '.join(STOP_MODES)}, got {mode!r}")
        rule = StopRule(target=float(target_score) if "target" in mode else None,
                        patience=int(patience) if "plateau" in mode else 0,
                        min_improvement=float(min_improvement))
        inner = strategy if strategy is not None else Strategy("random")
        return (dataclasses.replace(inner, params=dict(inner.params), stop=rule),)


NODES = [(strategy_node(a), a.node, f"Strategy: {a.title}") for a in algorithms().values()]
NODES.append((CoarseToFine, "CoarseToFine", "Strategy: Coarse to Fine"))
NODES.append((EarlyStop, "EarlyStop", "Strategy: Early Stop"))
