"""The verifier registry: one :class:`Loader` entry per verifier that a loader node loads, by name, as
``search/registry.py`` lists the algorithms.  ``nodes/verifier_nodes.py`` generates every loader node from these
entries, so a node's ID, display name, description, widgets, checks and loading are written once, here.

Adding a verifier: its module in ``verifiers/`` (no ComfyUI), then one ``Loader(...)`` line in a module listed in
``MODULES`` (its ``LOADERS``); a new module is appended to ``MODULES``.  The order of ``MODULES`` and of each
``LOADERS`` is the order the nodes are registered in."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

OUTPUT_TOOLTIP = "A verifier for SearchLoop / VerifierScore / Verifier Ensemble."
MODULES = ("clip", "folders", "vlm", "remote")


@dataclass(frozen=True)
class Loader:
    """One verifier loader node.

    * ``name``: the registry key.
    * ``node``: the node ID suffix (``InfScale_`` + it), never renamed; ``title``: its display name.
    * ``description``: the node's description (the formula, the range, "higher is better").
    * ``inputs()``: its widgets, as classic ``INPUT_TYPES`` (the files or folders to choose from are listed at
      each call, the options with their defaults and tooltips); saved workflows read them by position.
    * ``load(**widgets)``: the VERIFIER.
    * ``validate(**widgets)``: ``VALIDATE_INPUTS`` (True or the message); its parameter names are the inputs
      ComfyUI leaves it to check.  ``changed(**widgets)``: ``IS_CHANGED``.  Both optional."""

    name: str
    node: str
    title: str
    description: str
    inputs: Callable[[], Dict[str, Dict[str, Any]]]
    load: Callable[..., Any]
    validate: Optional[Callable[..., Any]] = None
    changed: Optional[Callable[..., Any]] = None
    output_tooltip: str = OUTPUT_TOOLTIP


def loaders() -> List[Loader]:
    """Every registered loader, in node order."""
    out: List[Loader] = []
    for module in MODULES:
        out.extend(importlib.import_module(f"{__name__}.{module}").LOADERS)
    return out


def registry() -> Dict[str, Loader]:
    """The loaders by name."""
    table: Dict[str, Loader] = {}
    for entry in loaders():
        if entry.name in table:
            raise ValueError(f"two verifier loaders are named '{entry.name}'")
        table[entry.name] = entry
    return table


__all__ = ["Loader", "MODULES", "OUTPUT_TOOLTIP", "loaders", "registry"]
