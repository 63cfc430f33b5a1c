"""For the scripts the tests run in a subprocess (renoise_check.py, verifier_cache_check.py): ComfyUI imported
as its main.py would (``--cpu``), then this pack loaded as a custom-node package named ``infscale_pack``."""
from __future__ import annotations

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_comfy_and_pack(comfy_dir: str):
    # ComfyUI first on sys.path; the repo must not shadow ComfyUI's own top-level `nodes`
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") not in (REPO, os.path.join(REPO, "tests"))]
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    spec = importlib.util.spec_from_file_location("infscale_pack", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["infscale_pack"] = pack
    spec.loader.exec_module(pack)
    return pack
