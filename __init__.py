"""comfyui-inference-scaling: inference-time search for diffusion models in ComfyUI.

ComfyUI imports this folder as a package by its path; everything inside uses
relative imports."""
import importlib.util

if importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported outside ComfyUI (pytest collecting the repo, packaging tools): no nodes to offer
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
