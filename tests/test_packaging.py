"""Registry / Manager metadata: what ComfyUI-Manager and the Comfy Registry read."""
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


def test_requirements_never_list_torch_nor_upper_pins():
    lines = [line.split("#")[0].strip() for line in open(os.path.join(REPO, "requirements.txt"))]
    reqs = [line for line in lines if line]
    names = [re.split(r"[<>=!~\[ ;]", r)[0].lower().replace("_", "-") for r in reqs]
    assert not {"torch", "torchvision", "torchaudio"} & set(names)
    assert not any("<" in r or "==" in r for r in reqs), "no upper or exact pins: they fight other packs"
    data = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))
    deps = [re.split(r"[<>=!~\[ ;]", d)[0].lower().replace("_", "-") for d in data["project"]["dependencies"]]
    assert sorted(deps) == sorted(names), "pyproject dependencies and requirements.txt list the same packages"
