"""Verifier nodes: every loader node, generated from the verifier registry (``engine/loaders``), and the two
combinators written here, Verifier Ensemble and Verifier Pre-filter (they take VERIFIER inputs and load
nothing)."""
from __future__ import annotations

import inspect
from typing import Callable, Optional

from ..engine.loaders import Loader, loaders
from ..engine.types import CATEGORY, VERIFIER
from ..verifiers.ensemble import MODES, EnsembleVerifier
from ..verifiers.prefilter import PrefilterVerifier


def _as_classmethod(fn: Callable) -> classmethod:
    """``fn(**inputs)`` as a classic node's classmethod with ``fn``'s parameter list (ComfyUI reads the names to
    decide which inputs it passes and which checks it leaves to the node)."""
    def method(cls, **kwargs):
        return fn(**kwargs)
    sig = inspect.signature(fn)
    cls_param = inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = sig.replace(parameters=[cls_param] + list(sig.parameters.values()))
    method.__name__ = method.__qualname__ = fn.__name__
    return classmethod(method)


def loader_node(entry: Loader) -> type:
    """The node class of one registered verifier loader."""

    def INPUT_TYPES(cls):
        return entry.inputs()

    def load(self, *args, **widgets):
        if args:  # called in code with the widgets in their order
            types = entry.inputs()
            names = [n for group in ("required", "optional") for n in types.get(group, {})]
            widgets.update(zip(names, args))
        return (entry.load(**widgets),)

    body = {"DESCRIPTION": entry.description, "CATEGORY": CATEGORY, "FUNCTION": "load",
            "RETURN_TYPES": (VERIFIER,), "RETURN_NAMES": ("verifier",), "OUTPUT_TOOLTIPS": (entry.output_tooltip,),
            "INPUT_TYPES": classmethod(INPUT_TYPES), "load": load, "__module__": __name__}
    if entry.validate is not None:
        body["VALIDATE_INPUTS"] = _as_classmethod(entry.validate)
    if entry.changed is not None:
        body["IS_CHANGED"] = _as_classmethod(entry.changed)
    return type(entry.node, (), body)


LOADER_NODES = [(loader_node(e), e.node, e.title) for e in loaders()]
globals().update({cls.__name__: cls for cls, _, _ in LOADER_NODES})  # e.g. verifier_nodes.CLIPScoreVerifierLoader


# --------------------------------------------------------------------------- ensemble
MAX_MEMBERS = 6


class VerifierEnsemble:
    DESCRIPTION = ("Combines verifiers. mean_rank (the paper's ensemble): each verifier ranks the candidates, "
                   "ties share the average rank, and the (weighted) mean rank is the score, range [1, N]. "
                   "zscore: weighted mean of each verifier's standardised scores. Both are relative to the "
                   "candidates of one search (SearchLoop recombines over all of them, whatever the micro-batch). "
                   f"For more than {MAX_MEMBERS} verifiers, feed an ensemble into another of the same mode: it is "
                   "flattened, so the result equals one big ensemble.")
    CATEGORY = CATEGORY
    FUNCTION = "combine"
    RETURN_TYPES = (VERIFIER,)
    RETURN_NAMES = ("verifier",)
    OUTPUT_TOOLTIPS = ("An ensemble verifier for SearchLoop / VerifierScore.",)

    @classmethod
    def INPUT_TYPES(cls):
        opt = {}
        for i in range(2, MAX_MEMBERS + 1):
            opt[f"verifier_{i}"] = (VERIFIER, {"tooltip": "Another verifier to combine (optional): connect a "
                                                           "verifier loader's output."})
            opt[f"weight_{i}"] = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                                            "tooltip": f"How much verifier {i} counts in the mean (0 = not at all)."})
        return {"required": {
            "mode": (list(MODES), {"default": "mean_rank",
                                   "tooltip": "mean_rank: the paper's rule (Ma et al. 2025); zscore: standardised "
                                              "scores, keeps how much better a candidate is, not just its order."}),
            "verifier_1": (VERIFIER, {"tooltip": "The first verifier to combine: connect a verifier loader's output."}),
            "weight_1": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                                   "tooltip": "Weight of verifier 1 (weights are normalised to sum to 1)."}),
        }, "optional": opt}

    def combine(self, mode, verifier_1, weight_1, **kw):
        members, weights = [verifier_1], [weight_1]
        for i in range(2, MAX_MEMBERS + 1):
            v: Optional[object] = kw.get(f"verifier_{i}")
            if v is not None:
                members.append(v)
                weights.append(float(kw.get(f"weight_{i}", 1.0)))
        try:
            return (EnsembleVerifier(members, weights, mode),)
        except ValueError as e:
            raise ValueError(f"Verifier Ensemble: {e}") from e


class VerifierPrefilter:
    DESCRIPTION = ("A pre-filter: a cheap screen (the self-consistency verifier, which needs no reward model, or "
                   "any single verifier) scores every candidate, and the main verifier (ImageReward, a VLM grader, "
                   "an ensemble) scores only those whose screen score is among the best 'keep' fraction of the "
                   "candidates screened so far. Candidates the main verifier skips rank below every scored one. "
                   "Saves main-verifier time, never sampling NFEs; the report's settings.prefilter says how many "
                   "were skipped. Decided one candidate at a time in the search's order, so the micro-batch never "
                   "changes the result.")
    CATEGORY = CATEGORY
    FUNCTION = "combine"
    RETURN_TYPES = (VERIFIER,)
    RETURN_NAMES = ("verifier",)
    OUTPUT_TOOLTIPS = ("A verifier for SearchLoop / VerifierScore (relative: recombined over the whole search).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "screen": (VERIFIER, {"tooltip": "The cheap verifier that sees every candidate (a single verifier, "
                                             "not an ensemble): e.g. Load Self-Consistency Verifier."}),
            "verifier": (VERIFIER, {"tooltip": "The main (expensive) verifier: it scores only the candidates the "
                                               "screen lets through, and its scores rank them."}),
            "keep": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 1.0, "step": 0.05,
                               "tooltip": "A candidate goes to the main verifier when its screen score is among "
                                          "the best 'keep' fraction of all candidates screened so far (itself "
                                          "included). 1.0 = the main verifier scores everything."}),
            "warmup": ("INT", {"default": 8, "min": 0, "max": 4096,
                               "tooltip": "The first this many candidates always go to the main verifier, so the "
                                          "fraction has a population to stand on."}),
        }}

    def combine(self, screen, verifier, keep, warmup):
        try:
            return (PrefilterVerifier(screen, verifier, keep, warmup),)
        except ValueError as e:
            raise ValueError(f"Verifier Pre-filter: {e}") from e


NODES = LOADER_NODES + [
    (VerifierEnsemble, "VerifierEnsemble", "Verifier Ensemble"),
    (VerifierPrefilter, "VerifierPrefilter", "Verifier Pre-filter"),
]
