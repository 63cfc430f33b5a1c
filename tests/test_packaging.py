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

