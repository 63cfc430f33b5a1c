"""Install hygiene (issue #5).

The pack's documented installs, beside current ComfyUI's requirements, must
change no version of a package ComfyUI already had, every requirement line must
install, and `pip check` must be clean afterwards. Never list torch.

Two kinds of test:

- static checks of requirements.txt / pyproject.toml (always on, instant);
- the install test itself, on when INFSCALE_INSTALL_TEST=1 (.ci/run sets it).
  It builds a fresh virtual environment with torch and current ComfyUI's
  requirements (the list is written below, not read from ComfyUI), then installs
  the pack's requirements the way ComfyUI-Manager does, line by line. It needs the
  package index and ~1 GB of disk for a few minutes (deleted afterwards): torch
  is hard-linked from the environment running the test when that holds exactly
  the same torch (CI's .venv-current), else pip installs it (~6 GB, its CUDA
  build); measured ~1.5-2 min on 2 cores, which fits CI's budget. Runs are
  recorded in CONTRIBUTING.md ("Install hygiene").
  INFSCALE_INSTALL_TEST_PEER=1 adds the same procedure for a peer pack, as a
  comparison (expected to fail; never in CI).

Documented install paths (README "Install"): ComfyUI-Manager and the Comfy
Registry (`comfy node install` goes through the Manager's cm-cli, same code
path), and git clone + `pip install -r requirements.txt`. `pip install .` of the
repo is not one: the pack is a ComfyUI custom-node folder loaded by path, its
pyproject.toml is registry metadata (its top-level packages `nodes`, `search`,
... would clash with ComfyUI's own `nodes` module in site-packages), and
setuptools refuses the flat layout anyway. So pyproject's dependencies are only
checked to equal requirements.txt.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------
# The ComfyUI environment the pack is installed beside.
#
# ComfyUI v0.3.64 (a125cd84, 2025-10-12), requirements.txt, copied verbatim.
# Its README installs torch/torchvision/torchaudio first, then `pip install -r
# requirements.txt`; the test does the same, with the torch pair that installs
# on this project's machines (CUDA build, what a user's ComfyUI venv has).
# torchaudio stays in: the newest one the index has here (2.11.0) declares no
# torch requirement, so it installs beside torch 2.14.1 without changing it
# (whether it would import against 2.14.1 does not matter: nothing imports it).
COMFYUI_VERSION = "0.3.64 (a125cd84, 2025-10-12)"
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
COMFYUI_REQUIREMENTS = """\
comfyui-frontend-package==1.27.10
comfyui-workflow-templates==0.1.95
comfyui-embedded-docs==0.2.6
torch
torchsde
torchvision
torchaudio
numpy>=1.25.0
einops
transformers>=4.37.2
tokenizers>=0.13.3
sentencepiece
safetensors>=0.4.2
aiohttp>=3.11.8
yarl>=1.18.0
pyyaml
Pillow
scipy
tqdm
psutil
alembic
SQLAlchemy
av>=14.2.0

#non essential dependencies:
kornia>=0.7.1
spandrel
pydantic~=2.0
pydantic-settings~=2.0
"""

# The peer pack, for comparison only: YRIKKA/ComfyUI-InferenceTimeScaling,
# requirements.txt at e368962c (2025-02-27), copied verbatim.
PEER_REQUIREMENTS = """\
torch>=2.5.1
torchvision>=0.20.1
transformers==4.49.0
pillow==11.1.0
numpy>=1.24.0
huggingface_hub==0.27.1
timm==0.6.13
fairscale>=0.4.0
image_reward==1.5
pydantic==2.10.6
outlines==0.2.0
open-clip-torch>=2.20.0
clip @ git+https://github.com/openai/CLIP.git
"""

# ---------------------------------------------------------------------------
# ComfyUI-Manager's install of a pack's requirements, mirrored from
# Comfy-Org/ComfyUI-Manager at f39cbd56 (2026-08-19):
# - glob/manager_core.py, UnifiedManager.execute_install_script: for each line of
#   requirements.txt (manager_util.robust_readlines): strip, remap through the
#   user's pip_overrides.json (empty unless the user wrote one), skip empty lines,
#   lines starting with '#' and lines already processed, cut a trailing '# ...',
#   then try_install_script([python, "-m", "pip", "install", <line>]); after the
#   lines PIPFixer.fix_broken() (restores torch/opencv/frontend if a pack broke
#   them: this test looks at the state before any such repair, a pack must need
#   none), then `python install.py` if the pack has one.
# - glob/manager_core.py, try_install_script / is_blacklisted: a line is skipped
#   (counted as success) if its name is in pip_blacklist, or in
#   pip_downgrade_blacklist and either unversioned and installed, or pinned with
#   <=, ==, <, ~= to a version not above the installed one.
# - prestartup_script.py (and cm-cli.py): the two lists below.
# The Comfy Registry path (cnr install) and cm-cli call the same
# execute_install_script with instant_execution=True.
MANAGER_PIP_BLACKLIST = {"torch", "torchaudio", "torchsde", "torchvision"}
MANAGER_PIP_DOWNGRADE_BLACKLIST = ["torch", "torchaudio", "torchsde", "torchvision", "transformers", "safetensors", "kornia"]


def manager_lines(text):
    """The pip arguments ComfyUI-Manager runs for a requirements.txt, in order."""
    processed, out = set(), []
    for line in text.splitlines():
        package_name = line.strip()
        if package_name and not package_name.startswith("#") and package_name not in processed:
            processed.add(package_name)
            clean = package_name.split("#")[0].strip()
            if clean != "" and not clean.startswith("#"):
                out.append(clean)
    return out


def _strict_version(v):
    # manager_util.StrictVersion compares major.minor.patch as ints
    parts = v.split(".")
    nums = []
    for p in parts[:3]:
        m = re.match(r"\d+", p)
        nums.append(int(m.group(0)) if m else 0)
    return tuple(nums + [0] * (3 - len(nums)))


def manager_is_blacklisted(name, installed):
    """manager_core.is_blacklisted; installed maps the Manager's normalised name
    (lower case, '-' -> '_') to the version."""
    name = name.strip()
    match = re.search(r"([^<>!~=]+)([<>!~=]=?)([^ ]*)", name)
    if match:
        name = match.group(1)
    if name in MANAGER_PIP_BLACKLIST:
        return True
    if name in MANAGER_PIP_DOWNGRADE_BLACKLIST:
        if match is None:
            if name in installed:
                return True
        elif match.group(2) in ["<=", "==", "<", "~="]:
            if name in installed and _strict_version(installed[name]) >= _strict_version(match.group(3)):
                return True
    return False


# ---------------------------------------------------------------------------
# static checks (always on)

NO_TORCH = {"torch", "torchvision", "torchaudio", "torchsde"}


def _canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(line):
    return _canon(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line).group(1))


def _our_lines():
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
        return manager_lines(f.read())


def test_requirements_never_list_torch_nor_pin_an_upper_version():
    lines = _our_lines()
    assert lines, "requirements.txt lists nothing"
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?(>=[0-9][0-9A-Za-z.]*)?", line), (
            f"{line!r}: only 'name' or 'name>=version' (no upper pin, no URL, no option)"
        )
        assert _req_name(line) not in NO_TORCH, f"{line!r}: ComfyUI brings torch; never list it"


def test_pyproject_dependencies_equal_requirements():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomli = pytest.importorskip("tomli")
        tomllib = tomli
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    assert sorted(deps) == sorted(_our_lines())


def test_manager_mirror_parses_like_the_manager():
    assert manager_lines("# c\n\na>=1  # why\na>=1  # why\nb\n") == ["a>=1", "b"]
    installed = {"transformers": "5.0.0", "kornia": "0.8.1"}
    assert manager_is_blacklisted("torch>=2.5.1", installed)
    assert manager_is_blacklisted("transformers==4.49.0", installed)  # would downgrade: skipped
    assert not manager_is_blacklisted("transformers>=4.49.0", installed)
    assert manager_is_blacklisted("kornia", installed)
    assert not manager_is_blacklisted("pillow==11.1.0", installed)


# ---------------------------------------------------------------------------
# the install test (opt-in)

ENABLED = os.environ.get("INFSCALE_INSTALL_TEST") == "1"
SKIP_REASON = (
    "set INFSCALE_INSTALL_TEST=1 to run (CI's .ci/run does): it builds a throw-away venv with torch and "
    "current ComfyUI's requirements from the package index (~1-6 GB of disk, ~2 min), too heavy for every "
    "local test run"
)
PEER = os.environ.get("INFSCALE_INSTALL_TEST_PEER") == "1"


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_USER")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(cmd, log, timeout=3600, cwd=None):
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    dt = time.monotonic() - t0
    log.append({"cmd": " ".join(cmd[1:]) if cmd[0].endswith("python") else " ".join(cmd), "rc": p.returncode,
                "seconds": round(dt, 1), "tail": p.stdout[-3000:] if p.returncode else ""})
    return p


def _pip_list(py, log):
    p = _run([py, "-m", "pip", "list", "--format=json"], log)
    assert p.returncode == 0, p.stdout
    return {_canon(d["name"]): d["version"] for d in json.loads(p.stdout)}


# The closure of torch + torchvision in the environment the test runs in, when
# it holds exactly TORCH: its distributions' files (RECORD) as absolute paths.
_CLOSURE = r"""
import importlib.metadata as md, json, re, sys, sysconfig
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
dists = {}
for d in md.distributions():
    dists.setdefault(canon(d.metadata["Name"]), d)
# (name, extra) pairs: torch asks for cuda-toolkit[cufile,...], whose extras pull the CUDA libraries
todo, seen, out = [(canon(r.split("==")[0]), "") for r in sys.argv[1:]], set(), {}
while todo:
    n, extra = todo.pop()
    if (n, extra) in seen or n not in dists:
        continue
    seen.add((n, extra))
    d = dists[n]
    for r in d.requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({"extra": extra}):
            todo.append((canon(req.name), ""))
            todo.extend((canon(req.name), e) for e in req.extras)
    out.setdefault(n, {"name": n, "version": d.version, "files": [str(d.locate_file(f)) for f in d.files or []]})
out = list(out.values())
paths = sysconfig.get_paths()
print(json.dumps({"purelib": paths["purelib"], "platlib": paths["platlib"], "scripts": paths["scripts"], "dists": out}))
"""


def _torch_into(py, log):
    """Put TORCH (and what it requires) into the fresh venv at ``py``.

    When the interpreter running this test already has exactly TORCH installed
    by pip (CI's .venv-current does), its distributions are hard-linked into the
    fresh venv file by file from their RECORDs: the same installed files and
    metadata as `pip install` of the same wheels, without a second ~5.5 GB copy
    of torch's CUDA build on the disk. Otherwise (other versions, another
    filesystem) pip installs TORCH. Returns which of the two happened."""
    want = dict(t.split("==") for t in TORCH)
    p = _run([sys.executable, "-c", _CLOSURE, *TORCH], log)
    src = json.loads(p.stdout) if p.returncode == 0 else None
    have = {d["name"]: d["version"] for d in src["dists"]} if src else {}
    if src and all(have.get(n) == v for n, v in want.items()):
        q = _run([py, "-c", "import json, sysconfig; p = sysconfig.get_paths(); "
                            "print(json.dumps([p['purelib'], p['platlib'], p['scripts']]))"], log)
        dst_pure, dst_plat, dst_scripts = json.loads(q.stdout)
        roots = [(os.path.realpath(src["purelib"]), dst_pure), (os.path.realpath(src["platlib"]), dst_plat)]
        scripts = os.path.realpath(src["scripts"])
        made = []
        try:
            for d in src["dists"]:
                for f in d["files"]:
                    f = os.path.realpath(f)
                    if not os.path.isfile(f):
                        continue
                    if os.path.dirname(f) == scripts:  # console scripts: their shebang names the venv's python
                        with open(f, "rb") as fh:
                            data = fh.read()
                        if data.startswith(b"#!"):
                            first, _, rest = data.partition(b"\n")
                            data = b"#!" + py.encode() + b"\n" + rest
                        target = os.path.join(dst_scripts, os.path.basename(f))
                        with open(target, "wb") as fh:
                            fh.write(data)
                        os.chmod(target, 0o755)
                        made.append(target)
                        continue
                    for s_root, d_root in roots:
                        if f.startswith(s_root + os.sep):
                            target = os.path.join(d_root, os.path.relpath(f, s_root))
                            os.makedirs(os.path.dirname(target), exist_ok=True)
                            if not os.path.exists(target):
                                os.link(f, target)
                                made.append(target)
                            break
        except OSError as e:  # another filesystem, no hard links: undo, then pip
            for t in made:
                os.remove(t)
            log.append({"cmd": "hard-link torch", "rc": 1, "seconds": 0, "tail": str(e)})
        else:
            got = _pip_list(py, log)
            assert all(got.get(n) == v for n, v in want.items()), f"linked torch, but pip sees {got}"
            r = _run([py, "-c", "import torch; print(torch.__version__)"], log)
            assert r.returncode == 0, f"linked torch does not import: {log[-1]}"
            return "hard-linked from " + os.path.basename(sys.prefix)
    p = _run([py, "-m", "pip", "install", "-q", *TORCH], log)
    assert p.returncode == 0, log[-1]
    return "pip install " + " ".join(TORCH)


def _install(requirements_text, pack_dir, workdir):
    """Fresh venv + torch + ComfyUI's requirements, then the pack the Manager's
    way. Returns a dict with everything the assertions need."""
    log = []
    res = {"log": log}
    venv = os.path.join(workdir, "venv")
    py = os.path.join(venv, "bin", "python")
    t0 = time.monotonic()
    assert _run([sys.executable, "-m", "venv", venv], log).returncode == 0
    assert _run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], log).returncode == 0, log[-1]
    res["torch_from"] = _torch_into(py, log)
    comfy_req = os.path.join(workdir, "comfyui-requirements.txt")
    with open(comfy_req, "w") as f:
        f.write(COMFYUI_REQUIREMENTS)
    p = _run([py, "-m", "pip", "install", "-q", "-r", comfy_req], log)
    assert p.returncode == 0, log[-1]
    res["comfyui_env_seconds"] = round(time.monotonic() - t0, 1)
    before = _pip_list(py, log)
    res["before"] = before
    p = _run([py, "-m", "pip", "check"], log)
    res["baseline_pip_check"] = (p.returncode, p.stdout.strip())

    pack_req = os.path.join(workdir, "pack-requirements.txt")
    with open(pack_req, "w") as f:
        f.write(requirements_text)

    # git clone + `pip install -r requirements.txt` (README): what it would do,
    # resolved on the untouched ComfyUI environment without changing it.
    report = os.path.join(workdir, "dry-run.json")
    p = _run([py, "-m", "pip", "install", "--dry-run", "--report", report, "-r", pack_req], log)
    would = {}
    if p.returncode == 0:
        with open(report) as f:
            would = {_canon(i["metadata"]["name"]): i["metadata"]["version"] for i in json.load(f)["install"]}
    res["pip_r_rc"] = p.returncode
    res["pip_r_changes"] = {n: (before[n], v) for n, v in would.items() if n in before and before[n] != v}
    res["pip_r_tail"] = p.stdout[-2000:] if p.returncode else ""
    url_lines = [x for x in manager_lines(requirements_text) if "://" in x]
    if p.returncode and url_lines:
        # for the record only: the same without direct-URL lines (this machine reaches no VCS host)
        with open(pack_req + ".nourl", "w") as f:
            f.write("\n".join(x for x in manager_lines(requirements_text) if x not in url_lines) + "\n")
        q = _run([py, "-m", "pip", "install", "--dry-run", "--report", report, "-r", pack_req + ".nourl"], log)
        if q.returncode == 0:
            with open(report) as f:
                would = {_canon(i["metadata"]["name"]): i["metadata"]["version"] for i in json.load(f)["install"]}
            res["pip_r_without_url_lines"] = {n: (before[n], v) for n, v in would.items() if n in before and before[n] != v}
        else:
            res["pip_r_without_url_lines"] = f"rc {q.returncode}: {q.stdout[-1500:]}"

    # ComfyUI-Manager: line by line, its skip rules, then install.py if present.
    t1 = time.monotonic()
    res["lines"] = []
    current = dict(before)
    for line in manager_lines(requirements_text):
        if manager_is_blacklisted(line, {k.replace("-", "_"): v for k, v in current.items()}):
            res["lines"].append((line, "skipped by the Manager's blacklist", 0))
            continue
        p = _run([py, "-m", "pip", "install", line], log, cwd=workdir)
        now = _pip_list(py, [])
        # what this line did to packages ComfyUI had (a later line may undo it)
        moved = {n: (current[n], now.get(n, "REMOVED")) for n in before if now.get(n) != current.get(n)}
        res["lines"].append((line, ("installed" if p.returncode == 0 else "FAILED") + (f", changed {moved}" if moved else ""),
                             p.returncode))
        current = now
    if pack_dir and os.path.exists(os.path.join(pack_dir, "install.py")):
        p = _run([py, "install.py"], log, cwd=pack_dir)
        res["lines"].append(("install.py", "ran", p.returncode))
    res["manager_seconds"] = round(time.monotonic() - t1, 1)

    after = _pip_list(py, log)
    res["changed"] = {n: (v, after.get(n, "REMOVED")) for n, v in before.items() if after.get(n) != v}
    res["added"] = {n: v for n, v in after.items() if n not in before}
    p = _run([py, "-m", "pip", "check"], log)
    res["pip_check"] = (p.returncode, p.stdout.strip())
    res["total_seconds"] = round(time.monotonic() - t0, 1)
    return res


def _read_ours():
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
        return f.read()


def _summary(name, res):
    lines = [f"== install test: {name} beside ComfyUI {COMFYUI_VERSION} =="]
    lines.append(f"torch: {res.get('torch_from')}")
    lines.append(f"ComfyUI env built in {res.get('comfyui_env_seconds')} s; baseline pip check: {res.get('baseline_pip_check')}")
    lines.append(f"pip install -r (dry run): rc {res.get('pip_r_rc')}, would change {res.get('pip_r_changes')}")
    if "pip_r_without_url_lines" in res:
        lines.append(f"  without its direct-URL lines it would change: {res['pip_r_without_url_lines']}")
    for line, what, rc in res.get("lines", []):
        lines.append(f"  {line!r}: {what} (rc {rc})")
    lines.append(f"Manager path {res.get('manager_seconds')} s; changed: {res.get('changed')}")
    lines.append(f"added: {res.get('added')}")
    lines.append(f"pip check: {res.get('pip_check')}")
    lines.append(f"total {res.get('total_seconds')} s")
    return "\n".join(lines)


CASES = [pytest.param("this pack", id="ours")]
if PEER:
    CASES.append(pytest.param("peer", id="peer", marks=pytest.mark.xfail(
        strict=False, reason="comparison: the peer pack (YRIKKA/ComfyUI-InferenceTimeScaling) pins old versions")))


@pytest.mark.skipif(not ENABLED, reason=SKIP_REASON)
@pytest.mark.parametrize("which", CASES)
def test_install_beside_current_comfyui(which):
    text, pack_dir = (_read_ours(), REPO) if which == "this pack" else (PEER_REQUIREMENTS, None)
    workdir = tempfile.mkdtemp(prefix="infscale-install-")
    try:
        res = _install(text, pack_dir, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = _summary(which, res)
    print(summary)
    out = os.environ.get("INFSCALE_INSTALL_REPORT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"install-{which.replace(' ', '-')}.json"), "w") as f:
            json.dump({k: v for k, v in res.items() if k != "before"}, f, indent=1, default=str)
    if res["baseline_pip_check"][0] != 0:
        # upstream's problem, not the pack's: today's releases of ComfyUI's own unpinned requirements conflict,
        # so "pip check stays clean" cannot be measured against them
        pytest.skip(f"ComfyUI's own requirements are not pip-check clean today, before the pack is installed:\n"
                    f"{res['baseline_pip_check'][1][:2000]}")
    failed = [(line, rc) for line, what, rc in res["lines"] if rc != 0]
    assert not failed, f"requirement lines that did not install: {failed}\n{summary}"
    assert not res["changed"], f"pre-existing packages changed: {res['changed']}\n{summary}"
    assert res["pip_check"][0] == 0, f"pip check:\n{res['pip_check'][1]}\n{summary}"
    assert res["pip_r_rc"] == 0 and not res["pip_r_changes"], f"pip install -r requirements.txt:\n{summary}"
