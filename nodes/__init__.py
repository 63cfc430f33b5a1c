"""ComfyUI node adapters, cut by concept.  Node IDs carry the ``InfScale_``
prefix and never change; every module lists its nodes in ``NODES`` as
(class, ID suffix, display name), and this is the one registration list."""
from . import composable_nodes, files, output_nodes, search_loop, strategy_nodes, verifier_nodes, video
from . import remote_verifier_nodes, vlm_verifier_nodes, worker_nodes
from .types import PREFIX

files.register_verifier_folder()

_NODES = (search_loop.NODES + verifier_nodes.NODES + composable_nodes.NODES + strategy_nodes.NODES
          + output_nodes.NODES + vlm_verifier_nodes.NODES + remote_verifier_nodes.NODES + video.NODES
          + worker_nodes.NODES)

NODE_CLASS_MAPPINGS = {PREFIX + key: cls for cls, key, _ in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {PREFIX + key: name for _, key, name in _NODES}
