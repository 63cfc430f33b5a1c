import os
import re
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


def tiers_of_module(module: str) -> set:
    """Every tier a test of ``module`` can get (``tier_of``)."""
    if module in WHOLE_MODULE:
        return {WHOLE_MODULE[module]}
    return ({NO_COMFYUI.get(module, "core"), "server"}
            | {tier for key, tier in ONE_TEST.items() if key.split("::")[0] == module})


def pytest_ignore_collect(collection_path, config):
    """With ``-m`` naming tiers only (``-m core``, ``-m "core or network"``), a test module none of whose tests can
    be in a selected tier is not imported: it would only be deselected, after its imports (transformers,
    playwright, scikit-learn) took seconds."""
    name = collection_path.name
    if not (name.startswith("test_") and name.endswith(".py")):
        return None
    expr = config.getoption("markexpr", "")
    if not expr or not set(re.findall(r"\w+", expr)) - {"and", "or", "not"} <= set(TIERS):
        return None
    try:
        from _pytest.mark.expression import Expression
        selected = Expression.compile(expr)
        if not any(selected.evaluate(lambda marker, tier=tier, **_: marker == tier) for tier in tiers_of_module(name)):
            return True
    except Exception:  # pytest's expression API moved: import the module, as without this hook
        return None
    return None
