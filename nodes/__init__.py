"""ComfyUI node adapters, cut by concept.  Node IDs carry the ``InfScale_``
prefix and never change; every module lists its nodes in ``NODES`` as
(class, ID suffix, display name), and this is the one registration list.
ComfyUI gets them in its V3 node schema (``nodes/v3.py``) through
``comfy_entrypoint`` (the package's ``__init__.py``)."""
from . import composable_nodes, output_nodes, search_loop, strategy_nodes, verifier_nodes
from . import video_nodes
from ..engine import files
from . import worker_nodes
from ..engine.types import PREFIX
from .v3 import Extension, v3_nodes

files.register_verifier_folder()

_NODES = (search_loop.NODES + verifier_nodes.NODES + composable_nodes.NODES + strategy_nodes.NODES
          + output_nodes.NODES + video_nodes.NODES
          + worker_nodes.NODES)

V3_NODES = v3_nodes(_NODES)
# the node classes as written (by node ID): what the V3 nodes wrap, for code that drives nodes in-process (the
# benchmarks); not exported to ComfyUI, which would then take them instead of comfy_entrypoint
CLASSES = {PREFIX + key: cls for cls, key, _ in _NODES}


async def comfy_entrypoint() -> Extension:
    return Extension(V3_NODES)
