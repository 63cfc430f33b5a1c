""".ci/get_comfyui.py, which puts the pinned ComfyUI release into the test host: from a local tarball or a download
(here a loopback server), every listed file checked against its SHA-256, nothing installed when one differs, an
unsafe archive or a failed download refused with its reason."""
import hashlib
import http.server
import importlib.util
import io
import os
import tarfile
from pathlib import Path

import pytest

from loopback import serve, stop

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("get_comfyui", REPO / ".ci" / "get_comfyui.py")
G = importlib.util.module_from_spec(spec)
spec.loader.exec_module(G)

FILES = {"main.py": b"print('comfy')\n", "comfy/sd.py": b"x = 1\n", "requirements.txt": b"numpy\n"}


def _tarball(path: Path, files=FILES, top="ComfyUI-9.9.9", extra=()):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _checksums(path: Path, files=FILES):
    path.write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(files.items())))
    return str(path)


def test_local_tarball_is_checked_and_installed(tmp_path):
    sums = _checksums(tmp_path / "sums")
    tb = _tarball(tmp_path / "c.tar.gz", {**FILES, "tests/test_x.py": b"unlisted files are kept\n"})
    dest = tmp_path / "cache" / "ComfyUI-9.9.9"
    G.get(str(dest), "9.9.9", tarball=str(tb), log=lambda *a: None, checksums=sums)
    assert (dest / "comfy" / "sd.py").read_bytes() == FILES["comfy/sd.py"]
    assert (dest / "tests" / "test_x.py").is_file()
    assert not (tmp_path / "cache" / "ComfyUI-9.9.9.tmp").exists()


def test_a_changed_or_missing_file_installs_nothing(tmp_path):
    sums = _checksums(tmp_path / "sums")
    dest = tmp_path / "ComfyUI-9.9.9"
    tb = _tarball(tmp_path / "c.tar.gz", {**FILES, "comfy/sd.py": b"x = 2\n"})
    with pytest.raises(G.SetupError, match="differs: comfy/sd.py"):
        G.get(str(dest), "9.9.9", tarball=str(tb), log=lambda *a: None, checksums=sums)
    tb = _tarball(tmp_path / "d.tar.gz", {k: v for k, v in FILES.items() if k != "main.py"})
    with pytest.raises(G.SetupError, match="missing main.py"):
        G.get(str(dest), "9.9.9", tarball=str(tb), log=lambda *a: None, checksums=sums)
    assert not dest.exists() and not (tmp_path / "ComfyUI-9.9.9.tmp").exists()


def test_unsafe_archives_are_refused(tmp_path):
    sums = _checksums(tmp_path / "sums")
    evil = tarfile.TarInfo("ComfyUI-9.9.9/../../evil.py")
    evil.size = 1
    tb = _tarball(tmp_path / "e.tar.gz", extra=[(evil, b"x")])
    with pytest.raises(G.SetupError, match="unsafe path"):
        G.get(str(tmp_path / "d"), "9.9.9", tarball=str(tb), log=lambda *a: None, checksums=sums)
    assert not (tmp_path.parent / "evil.py").exists()
    dev = tarfile.TarInfo("ComfyUI-9.9.9/dev")
    dev.type = tarfile.CHRTYPE
    tb = _tarball(tmp_path / "f.tar.gz", extra=[(dev, None)])
    with pytest.raises(G.SetupError, match="unexpected entry"):
        G.get(str(tmp_path / "d"), "9.9.9", tarball=str(tb), log=lambda *a: None, checksums=sums)
    (tmp_path / "not.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(G.SetupError, match="not a readable tar archive"):
        G.get(str(tmp_path / "d"), "9.9.9", tarball=str(tmp_path / "not.tar.gz"), log=lambda *a: None,
              checksums=sums)
    with pytest.raises(G.SetupError, match="not a file"):
        G.get(str(tmp_path / "d"), "9.9.9", tarball=str(tmp_path / "absent.tar.gz"), log=lambda *a: None,
              checksums=sums)


@pytest.fixture
def loopback(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

    server, base = serve(Files)
    yield root, base
    stop(server)


def test_download_is_checked_and_failures_are_named(tmp_path, loopback):
    root, base = loopback
    sums = _checksums(tmp_path / "sums")
    _tarball(root / "v9.9.9.tar.gz")
    dest = tmp_path / "ComfyUI-9.9.9"
    G.get(str(dest), "9.9.9", url=f"{base}/v9.9.9.tar.gz", log=lambda *a: None, checksums=sums)
    assert (dest / "main.py").read_bytes() == FILES["main.py"]
    with pytest.raises(G.SetupError, match="downloading .* failed: HTTPError"):
        G.get(str(tmp_path / "x"), "9.9.9", url=f"{base}/absent.tar.gz", log=lambda *a: None, checksums=sums)
    with pytest.raises(G.SetupError, match="https only"):
        G.get(str(tmp_path / "x"), "9.9.9", url="http://example.org/c.tar.gz", log=lambda *a: None,
              checksums=sums)


def test_the_pinned_list_matches_the_test_host():
    """The committed checksums of ComfyUI 0.3.64 are those of the copy the tests run on (when one is set up)."""
    expected = G.manifest("0.3.64")
    assert len(expected) > 400 and "main.py" in expected and "comfy_api/latest/__init__.py" in expected
    path = os.environ.get("COMFYUI_PATH") or ""
    version = Path(path, "comfyui_version.py")
    if not version.is_file() or '"0.3.64"' not in version.read_text():
        pytest.skip("no ComfyUI 0.3.64 at COMFYUI_PATH")
    G.check(path, expected)
