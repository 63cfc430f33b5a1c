"""Registry metadata: what the Comfy Registry reads (requirements: tests/test_install.py)."""
import os
import re
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pyproject_tool_comfy_is_complete_and_versioned():
    data = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))
    proj, comfy = data["project"], data["tool"]["comfy"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", proj["version"]), "semver MAJOR.MINOR.PATCH"
    assert proj["name"] and proj["description"] and proj["license"]
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert comfy.get(key), f"[tool.comfy] {key} is empty"
    assert comfy["Icon"].endswith("docs/icon.png") and os.path.isfile(os.path.join(REPO, "docs", "icon.png"))
    assert "includes" in comfy


def test_the_minimum_comfyui_is_declared_where_the_registry_and_the_readme_say_it():
    """The nodes use ComfyUI's V3 schema (comfy_api.v0_0_2, nodes/v3.py): ComfyUI 0.3.64 or newer."""
    data = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))
    assert data["tool"]["comfy"]["requires-comfyui"] == ">=0.3.64"
    assert "comfy_api.v0_0_2" in open(os.path.join(REPO, "nodes", "v3.py")).read()
    assert "ComfyUI 0.3.64 or newer" in open(os.path.join(REPO, "README.md")).read()

