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



def test_published_the_way_comfyui_packs_are():
    """GitHub Actions: CI runs .ci/run; the registry's own action publishes when a push to main changes the version
    in pyproject.toml. The registry's archive leaves out what ComfyUI does not load, and nothing it does load."""
    import yaml
    ci = yaml.safe_load(open(os.path.join(REPO, ".github", "workflows", "ci.yml")))
    steps = ci["jobs"]["test"]["steps"]
    assert any(s.get("run", "").strip() == "bash .ci/run" for s in steps)
    assert ci["jobs"]["test"]["timeout-minutes"] <= 90
    pub = yaml.safe_load(open(os.path.join(REPO, ".github", "workflows", "publish.yml")))
    on = pub[True] if True in pub else pub["on"]          # YAML 1.1 reads the key `on` as True
    assert on["push"]["paths"] == ["pyproject.toml"] and on["push"]["branches"] == ["main"]
    job = pub["jobs"]["publish"]
    assert "needs.version.outputs.bumped == 'true'" in job["if"]
    uses = [s["uses"] for s in job["steps"] if "uses" in s]
    assert any(u.startswith("Comfy-Org/publish-node-action@") for u in uses)
    assert "secrets.REGISTRY_ACCESS_TOKEN" in job["steps"][-1]["with"]["personal_access_token"]
    ignored = [ln.strip().rstrip("/") for ln in open(os.path.join(REPO, ".comfyignore")) if ln.strip()
               and not ln.startswith("#")]
    assert {"tests", "bench"} <= set(ignored)
    for loaded in ("__init__.py", "nodes", "engine", "search", "verifiers", "workflows", "requirements.txt",
                   "pyproject.toml", "README.md", "LICENSE"):
        assert loaded not in ignored and os.path.exists(os.path.join(REPO, loaded)), loaded
