"""The pack's nodes in ComfyUI's V3 node schema (``comfy_api.v0_0_2``, ComfyUI >= 0.3.64).

Each node class in ``nodes/*.py`` declares its node the classic way (``INPUT_TYPES``, ``RETURN_TYPES``,
``FUNCTION``, ``VALIDATE_INPUTS``, ``IS_CHANGED``, ``OUTPUT_NODE``, hidden inputs); :func:`v3_node` turns those
declarations into an ``io.ComfyNode`` class, so one declaration gives the node ID, widget names and order, types,
defaults, tooltips and outputs, and saved workflows keep mapping their widget values by position.
:class:`Extension` offers them to ComfyUI through ``comfy_entrypoint`` (the package's ``__init__.py``).

What the translation keeps exactly as ComfyUI treated the classic nodes:

* ``define_schema`` calls ``INPUT_TYPES`` again on every call, and ComfyUI calls it for every ``/object_info``
  request and every prompt it validates, so dynamic combos (verifier files, the operator's worker pools and
  graders) show the state of the moment;
* a combo input keeps its options as its type (:class:`_Combo`): ComfyUI 0.3.64 checks a value against the
  options only in that form (a ``"COMBO"`` type with ``"options"`` lets any value through to the node);
* ``validate_inputs`` has the parameters of the class's ``VALIDATE_INPUTS``: ComfyUI passes it those inputs and
  skips its own range and combo checks for exactly those (so a stale pool name gets the pack's message);
* hidden inputs (``PROMPT``, ``UNIQUE_ID``, ``EXTRA_PNGINFO``) reach the node under the names it declared;
* a ``{"ui": ..., "result": ...}`` return becomes ``io.NodeOutput(*result, ui=...)``."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Tuple

try:
    from comfy_api.v0_0_2 import ComfyExtension, io
except ImportError as e:  # a ComfyUI from before the V3 node schema
    raise ImportError("comfyui-inference-scaling needs ComfyUI 0.3.64 or newer (its V3 node schema, "
                      "comfy_api.v0_0_2); this ComfyUI has none: update ComfyUI") from e

from ..engine.types import PREFIX

WIDGETS = {"INT": io.Int, "FLOAT": io.Float, "STRING": io.String, "BOOLEAN": io.Boolean}
# a classic input option -> the V3 Input's keyword; an option not listed here is refused (TypeError),
# so the node's /object_info can never drop one silently
KEYWORDS = {"default": "default", "tooltip": "tooltip", "lazy": "lazy", "min": "min", "max": "max",
            "step": "step", "round": "round", "multiline": "multiline", "placeholder": "placeholder",
            "dynamicPrompts": "dynamic_prompts", "forceInput": "force_input", "label_on": "label_on",
            "label_off": "label_off", "control_after_generate": "control_after_generate",
            "display": "display_mode"}
_CUSTOM: Dict[str, type] = {}


class _Combo(io.Combo.Input):
    """A combo whose type is its option list, as ComfyUI's executor validates it (see the module text)."""

    def get_io_type(self):
        return list(self.options)

    def as_dict(self):
        d = super().as_dict()
        d.pop("options", None)
        d.pop("multiselect", None)
        return d


def _io_type(name: str):
    """The V3 type of a classic type name: ComfyUI's own widget types, or a custom socket type."""
    if name in WIDGETS:
        return WIDGETS[name]
    if name not in _CUSTOM:
        _CUSTOM[name] = io.Custom(name)
    return _CUSTOM[name]


def _input(node: str, name: str, spec: tuple, optional: bool) -> io.Input:
    kind = spec[0]
    options = dict(spec[1]) if len(spec) > 1 and spec[1] else {}
    unknown = sorted(set(options) - set(KEYWORDS))
    if unknown:
        raise TypeError(f"{node}: input {name!r} has options the V3 translation does not know: {unknown}")
    kw = {KEYWORDS[k]: v for k, v in options.items()}
    if "display_mode" in kw:
        kw["display_mode"] = io.NumberDisplay(kw["display_mode"])
    if isinstance(kind, (list, tuple)):
        return _Combo(name, options=list(kind), optional=optional, **kw)
    if kind == "STRING":
        kw.setdefault("multiline", None)  # io.String.Input's own default (False) would add a key the node never set
    return _io_type(kind).Input(name, optional=optional, **kw)


def _hidden(v1: type) -> Dict[str, io.Hidden]:
    """The classic hidden inputs: {the name the node takes it by: what ComfyUI fills in}."""
    return {name: io.Hidden(kind) for name, kind in v1.INPUT_TYPES().get("hidden", {}).items()}


def _schema(v1: type, node_id: str, display_name: str) -> io.Schema:
    declared = v1.INPUT_TYPES()
    inputs: List[io.Input] = [_input(node_id, name, spec, group == "optional")
                              for group in ("required", "optional")
                              for name, spec in declared.get(group, {}).items()]
    n = len(v1.RETURN_TYPES)
    names = getattr(v1, "RETURN_NAMES", None) or (None,) * n
    tips = getattr(v1, "OUTPUT_TOOLTIPS", None) or (None,) * n
    is_list = getattr(v1, "OUTPUT_IS_LIST", None) or (False,) * n
    outputs = [_io_type(t).Output(display_name=name, tooltip=tip, is_output_list=bool(lst))
               for t, name, tip, lst in zip(v1.RETURN_TYPES, names, tips, is_list)]
    return io.Schema(
        node_id=node_id, display_name=display_name, category=getattr(v1, "CATEGORY", "sd"),
        description=getattr(v1, "DESCRIPTION", ""), inputs=inputs, outputs=outputs,
        hidden=list(dict.fromkeys(_hidden(v1).values())) or None,
        is_output_node=bool(getattr(v1, "OUTPUT_NODE", False)),
        is_input_list=bool(getattr(v1, "INPUT_IS_LIST", False)),
        not_idempotent=bool(getattr(v1, "NOT_IDEMPOTENT", False)),
        is_deprecated=bool(getattr(v1, "DEPRECATED", False)),
        is_experimental=bool(getattr(v1, "EXPERIMENTAL", False)))


def _with_hidden(v1: type, cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The node's inputs plus its hidden ones under its own names (ComfyUI hands V3 nodes these as
    ``cls.hidden``; ``None`` where it has none, as for the classic nodes)."""
    hidden = getattr(cls, "hidden", None)
    for name, kind in _hidden(v1).items():
        kwargs[name] = getattr(hidden, kind.name, None) if hidden is not None else None
    return kwargs


def _output(result) -> Any:
    """A classic return as V3 takes it (a tuple passes as it is)."""
    if isinstance(result, dict):
        unknown = sorted(set(result) - {"ui", "result"})
        if unknown:
            raise TypeError(f"node returned keys the V3 translation does not know: {unknown}")
        return io.NodeOutput(*(result.get("result") or ()), ui=result.get("ui"))
    return result


def _same_parameters(fn: Callable, method: Callable) -> Callable:
    """``method`` (taking ``cls, **kwargs``) with the parameter list of the classic ``fn`` (a classmethod):
    ComfyUI reads the parameter names to decide which inputs it passes and which checks it leaves to the node."""
    method.__signature__ = inspect.signature(getattr(fn, "__func__", fn))
    return method


def v3_node(v1: type, node_id: str, display_name: str) -> type:
    """The ``io.ComfyNode`` class of the classic node class ``v1``."""
    function = getattr(v1, v1.FUNCTION)
    body: Dict[str, Any] = {"__doc__": v1.__doc__, "__module__": v1.__module__, "__qualname__": v1.__qualname__}

    def define_schema(cls):
        return _schema(v1, node_id, display_name)

    if inspect.iscoroutinefunction(function):
        async def execute(cls, **kwargs):
            return _output(await getattr(v1(), v1.FUNCTION)(**_with_hidden(v1, cls, kwargs)))
    else:
        def execute(cls, **kwargs):
            return _output(getattr(v1(), v1.FUNCTION)(**_with_hidden(v1, cls, kwargs)))
    body["define_schema"] = classmethod(define_schema)
    body["execute"] = classmethod(execute)

    if hasattr(v1, "VALIDATE_INPUTS"):
        def validate_inputs(cls, **kwargs):
            return v1.VALIDATE_INPUTS(**kwargs)
        body["validate_inputs"] = classmethod(_same_parameters(v1.VALIDATE_INPUTS, validate_inputs))
    if hasattr(v1, "IS_CHANGED"):
        def fingerprint_inputs(cls, **kwargs):
            return v1.IS_CHANGED(**kwargs)
        body["fingerprint_inputs"] = classmethod(_same_parameters(v1.IS_CHANGED, fingerprint_inputs))
    return type(v1.__name__, (io.ComfyNode,), body)


def v3_nodes(nodes: List[Tuple[type, str, str]]) -> List[type]:
    """The V3 classes of ``NODES`` rows (class, ID suffix, display name); node IDs get the pack's prefix."""
    return [v3_node(cls, PREFIX + key, name) for cls, key, name in nodes]


class Extension(ComfyExtension):
    """What ``comfy_entrypoint`` returns: the pack's node list."""

    def __init__(self, nodes: List[type]):
        self.nodes = nodes

    async def get_node_list(self) -> List[type]:
        return list(self.nodes)
