"""comfyui-inference-scaling: inference-time search for diffusion models in ComfyUI.

ComfyUI (0.3.64 or newer) imports this folder as a package by its path and
calls ``comfy_entrypoint`` for the nodes (its V3 node schema, ``nodes/v3.py``);
everything inside uses relative imports."""
import importlib.util

if importlib.util.find_spec("comfy") is not None:
    from .nodes import comfy_entrypoint
    __all__ = ["comfy_entrypoint"]
else:  # imported outside ComfyUI (pytest collecting the repo, packaging tools): no nodes to offer
    __all__ = []
