"""The algorithm registry: one entry per search algorithm, as ComfyUI's
``comfy/samplers.py`` keeps its samplers by name.

An entry (:class:`Algorithm`) says everything the rest of the pack needs:
the function, its parameters (default, range, tooltip: the strategy nodes'
widgets are generated from them, so a default lives here and nowhere else),
which samplers it needs (``any``, ``segmentable``, ``stochastic``: read off
``search/samplers.py``), and what its finalists carry (a noise or a recipe).

Every algorithm function has the same signature::

    fn(host, *, seed, budget_nfe, top_k=1, verifier="verifier", stop=None, **params)
        -> (SearchReport, List[Finalist])

(``stop``: an optional :class:`~.stopping.StopRule`; each algorithm feeds its
scores to a :class:`~.stopping.Stopper` and says in its docstring what one
observation is)

and starts with ``p = ALGORITHM.resolve(params)`` (defaults filled in, every
value checked).  Adding an algorithm = one module that defines ``ALGORITHM``
and one name in :data:`MODULES` (CONTRIBUTING.md has the recipe).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .samplers import canonical, facts, names_where

# the registry entries: modules of this package that define ALGORITHM, in node order
MODULES = ("random_search", "zero_order", "paths", "particles", "evolution", "halving", "tree")


class UnsupportedSamplerError(ValueError):
    """The sampler cannot do what the algorithm needs; the message says why and what to pick."""


@dataclass(frozen=True)
class Param:
    """One parameter of an algorithm (one widget of its strategy node)."""
    name: str
    default: Any
    tooltip: str
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    choices: Tuple[str, ...] = ()
    optional: bool = False   # an input added after a release: optional and trailing on the node

    @property
    def kind(self) -> type:
        return type(self.default)

    def check(self, value: Any, algorithm: str) -> Any:
        what = f"{algorithm}: '{self.name}'"
        if self.choices:
            if value not in self.choices:
                raise ValueError(f"{what} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.kind is bool:
            return bool(value)
        try:
            v = self.kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a {self.kind.__name__}, got {value!r}") from None
        if self.kind is int and float(value) != v:
            raise ValueError(f"{what} must be a whole number, got {value!r}")
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            raise ValueError(f"{what} must lie in [{self.min}, {self.max}], got {v}")
        return v


@dataclass(frozen=True)
class Algorithm:
    name: str                 # registry key, e.g. "zero_order"
    run: Callable             # the algorithm function (uniform signature above)
    params: Tuple[Param, ...]
    title: str                # the strategy node's display name after "Strategy: "
    node: str                 # the strategy node's ID suffix (never renamed)
    description: str
    samplers: str = "any"     # "any" | "segmentable" | "stochastic"
    finalists: str = "noise"  # what its finalists carry: "noise" (a starting noise, maybe a seed) | "recipe" (a lineage)
    check: Optional[Callable[[Dict[str, Any]], None]] = None   # cross-parameter rules, raise ValueError
    # coarse-to-fine of a "recipe" algorithm, from (params, candidates): (finalists it can offer, how many are
    # replayed by default, cost of one replay in full generations)
    coarse: Optional[Callable[[Dict[str, Any], int], Tuple[int, int, float]]] = None
    notes: Dict[str, str] = field(default_factory=dict)
    # "chunks": its candidates go to a dispatcher's executors in chunks (random search); "rounds": each row's
    # state stays on the executor that made it, round after round (successive halving); "": this host only
    dispatch: str = ""

    def defaults(self) -> Dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def resolve(self, params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """The full parameter set: defaults, overridden by ``params``, each checked."""
        params = dict(params or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"unknown parameter(s) for {self.name}: {', '.join(unknown)}; "
                             f"known: {', '.join(known) or 'none'}")
        out = {p.name: p.check(params.get(p.name, p.default), self.name) for p in self.params}
        if self.check is not None:
            self.check(out)
        return out

    def sampler_names(self) -> List[str]:
        if self.samplers == "stochastic":
            return names_where(segmentable=True, stochastic=True)
        if self.samplers == "segmentable":
            return names_where(segmentable=True)
        return []

    def check_sampler(self, sampler: str) -> None:
        """Refuses a sampler the algorithm cannot run with, naming the ones it can."""
        if self.samplers == "any":
            return
        name = canonical(sampler)
        f = facts(name)
        if f is None or not f.segmentable:
            raise UnsupportedSamplerError(
                f"{self.title} stops and restarts the sampler part-way through the schedule, which sampler "
                f"'{name}' does not allow (a multistep or adaptive sampler loses its history at each restart, so "
                f"the result would silently change). Pick one of: {', '.join(self.sampler_names())}")
        if self.samplers == "stochastic" and not f.stochastic:
            raise UnsupportedSamplerError(
                f"{self.title} copies particles and needs them to diverge afterwards, so it needs a stochastic "
                f"sampler; '{name}' is deterministic. Pick one of: {', '.join(self.sampler_names())}")


_REGISTRY: Dict[str, Algorithm] = {}


def algorithms() -> Dict[str, Algorithm]:
    """Every registered algorithm by name, in :data:`MODULES` order."""
    if not _REGISTRY:
        for m in MODULES:
            alg = importlib.import_module(f".{m}", __package__).ALGORITHM
            _REGISTRY[alg.name] = alg
    return _REGISTRY


def get(name: str) -> Algorithm:
    algs = algorithms()
    if name not in algs:
        raise ValueError(f"unknown search algorithm '{name}'; pick one of {', '.join(algs)}")
    return algs[name]


def names() -> Sequence[str]:
    return tuple(algorithms())
