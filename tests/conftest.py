import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # search/ and verifiers/ import as top-level packages in tests

pytest_plugins = ["comfy_server"]

# ---------------------------------------------------------------------------
# Test tiers. Every test gets exactly one tier marker, here and nowhere else
# (registered in pyproject.toml; CONTRIBUTING.md "Test tiers"):
#   core       no ComfyUI, no model builds: a few seconds; run it on every edit
#   network    no ComfyUI: the worker dispatcher and the remote grader against loopback stand-ins
#              (deadlines and drips that wait on purpose: tens of seconds)
#   verifiers  the real verifier classes with random weights (open_clip, transformers)
#   server     needs a ComfyUI: a real server over HTTP/websocket, or its classes
#   browser    headless Chromium in the server's own editor
#   install    install hygiene in a throw-away venv (needs INFSCALE_INSTALL_TEST=1)
#   bench      the benchmarks' smoke modes
# A test that uses the ComfyUI fixtures is `server`, unless its module is
# listed in WHOLE_MODULE; otherwise its module's entry in NO_COMFYUI decides,
# and an unlisted module is `core`.
TIERS = ("core", "network", "verifiers", "server", "browser", "install", "bench")
WHOLE_MODULE = {
    "test_browser.py": "browser",
    "test_bench_smoke.py": "bench",
    "test_bench_quality.py": "bench",
    "test_bench_sizes.py": "bench",
    "test_bench_guard.py": "bench",
    "test_demo_quality.py": "bench",
}
NO_COMFYUI = {
    "test_workers.py": "network",
    "test_remote.py": "network",
    "test_verifiers.py": "verifiers",
    "test_aesthetic_ensemble.py": "verifiers",
    "test_verifiers_ii.py": "verifiers",
    "test_vlm_verifiers.py": "verifiers",
    "test_hpsv3.py": "verifiers",
}
ONE_TEST = {
    "test_install.py::test_install_beside_current_comfyui": "install",
    "test_remote.py::test_real_openai_compatible_server": "verifiers",
}
COMFYUI_FIXTURES = {"comfy", "comfy_path", "models_dir"}


def tier_of(item) -> str:
    module = os.path.basename(str(item.fspath))
    name = getattr(item, "originalname", item.name)
    if f"{module}::{name}" in ONE_TEST:
        return ONE_TEST[f"{module}::{name}"]
    if module in WHOLE_MODULE:
        return WHOLE_MODULE[module]
    if COMFYUI_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "server"
    return NO_COMFYUI.get(module, "core")


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(item)))
