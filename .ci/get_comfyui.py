"""Puts ComfyUI's published source for the pinned version into a folder, checked file by file.

    python .ci/get_comfyui.py DEST [--version 0.3.64] [--tarball FILE] [--url URL]

Where the source comes from, in this order:

1. ``--tarball FILE`` (``.ci/setup`` passes ``$COMFYUI_TARBALL``): a local copy of the release's source tarball;
2. ``../shared/comfyui/ComfyUI-<version>.tar.gz`` beside the checkout, when it exists;
3. the official release archive, ``https://github.com/comfyanonymous/ComfyUI/archive/refs/tags/v<version>.tar.gz``
   (``--url`` replaces it, e.g. with a mirror), downloaded with a time limit and a size cap.

Whatever the source, every file listed in ``.ci/comfyui-<version>.sha256`` (the release's files with their
SHA-256, ``sha256sum`` format, paths inside the release folder) must be present with that digest, or nothing is
installed and the script says which file differs. Files the list does not name (the release's tests, a tokenizer
that only some models need) are allowed and kept. The archive is unpacked with no absolute paths, no ``..``
and no links, into DEST's sibling ``DEST.tmp`` first, and moved to DEST only once checked.

Standard library only (it runs before any venv exists).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OFFICIAL = "https://github.com/comfyanonymous/ComfyUI/archive/refs/tags/v{version}.tar.gz"
MAX_BYTES = 200 * 1024 * 1024      # the 0.3.64 source tarball is about 5 MB
TIMEOUT_S = 60                      # per network read
MAX_MEMBERS = 20_000


class SetupError(Exception):
    pass


def manifest(version: str, path: str = None) -> dict:
    path = path or os.path.join(HERE, f"comfyui-{version}.sha256")
    if not os.path.isfile(path):
        raise SetupError(f"no checksum list {os.path.relpath(path, REPO)} for ComfyUI {version}")
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                digest, name = line.rstrip("\n").split("  ", 1)
                out[name] = digest
    return out


def download(url: str, dest: str) -> None:
    """``url`` to ``dest``: at most MAX_BYTES, TIMEOUT_S per read; a failure is named."""
    if not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        raise SetupError(f"refusing to download from {url!r}: https only (or a loopback test server)")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r, open(dest, "wb") as f:
            total = 0
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > MAX_BYTES:
                    raise SetupError(f"{url} is larger than {MAX_BYTES >> 20} MB: not a ComfyUI source tarball")
                f.write(chunk)
    except SetupError:
        raise
    except Exception as e:   # URLError, HTTPError, timeouts, resets: all named
        raise SetupError(f"downloading {url} failed: {type(e).__name__}: {e}") from e


def unpack(tarball: str, into: str) -> str:
    """The archive's single top folder, unpacked safely into ``into``; returns its path."""
    try:
        tf = tarfile.open(tarball, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise SetupError(f"{tarball} is not a readable tar archive: {e}") from e
    with tf:
        members = tf.getmembers()
        if len(members) > MAX_MEMBERS:
            raise SetupError(f"{tarball} has {len(members)} entries: not a ComfyUI source tarball")
        tops = set()
        for m in members:
            name = m.name
            parts = name.split("/")
            if name.startswith("/") or ".." in parts:
                raise SetupError(f"{tarball}: unsafe path {name!r}")
            if not (m.isfile() or m.isdir()):
                if m.issym() or m.islnk():
                    continue   # links are skipped (none is listed in the checksums)
                raise SetupError(f"{tarball}: unexpected entry {name!r}")
            tops.add(parts[0])
        if len(tops) != 1:
            raise SetupError(f"{tarball}: expected one top folder, found {sorted(tops)[:5]}")
        safe = [m for m in members if m.isfile() or m.isdir()]
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}   # Python's own guard, where it has one
        tf.extractall(into, members=safe, **extra)
    return os.path.join(into, tops.pop())


def check(tree: str, expected: dict) -> None:
    bad = []
    for name, digest in expected.items():
        path = os.path.join(tree, name)
        if not os.path.isfile(path):
            bad.append(f"missing {name}")
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != digest:
            bad.append(f"differs: {name}")
    if bad:
        raise SetupError(f"{len(bad)} of {len(expected)} files do not match the checksum list: "
                         + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))


def get(dest: str, version: str, tarball: str = None, url: str = None, log=print, checksums: str = None) -> str:
    expected = manifest(version, checksums)
    shared = os.path.join(REPO, "..", "shared", "comfyui", f"ComfyUI-{version}.tar.gz")
    with tempfile.TemporaryDirectory(prefix="comfyui-src-") as work:
        if tarball:
            if not os.path.isfile(tarball):
                raise SetupError(f"COMFYUI_TARBALL names {tarball}, which is not a file")
            source = tarball
        elif os.path.isfile(shared) and not url:
            source = shared
        else:
            url = url or OFFICIAL.format(version=version)
            log(f"setup: downloading ComfyUI {version} from {url}")
            source = os.path.join(work, "comfyui.tar.gz")
            download(url, source)
        tmp = dest.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            top = unpack(source, tmp)
            check(top, expected)
            if os.path.exists(dest):
                shutil.rmtree(dest)
            os.replace(top, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"setup: ComfyUI {version} in {dest} ({len(expected)} files checked)")
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dest")
    p.add_argument("--version", default="0.3.64")
    p.add_argument("--tarball", default=None, help="a local copy of the release's source tarball")
    p.add_argument("--url", default=None, help="download from here instead of the official release archive")
    p.add_argument("--write-checksums", action="store_true",
                   help="maintainers: write .ci/comfyui-<version>.sha256 from --tarball (every regular file)")
    a = p.parse_args(argv)
    try:
        if a.write_checksums:
            return write_checksums(a.tarball, a.version)
        get(a.dest, a.version, a.tarball or None, a.url)
    except SetupError as e:
        print(f"setup: ComfyUI {a.version} not set up: {e}", file=sys.stderr)
        return 1
    return 0


def write_checksums(tarball: str, version: str) -> int:
    if not tarball:
        raise SetupError("--write-checksums needs --tarball")
    with tempfile.TemporaryDirectory() as work:
        top = unpack(tarball, work)
        lines = []
        for root, dirs, files in os.walk(top):
            dirs.sort()
            for fn in sorted(files):
                path = os.path.join(root, fn)
                with open(path, "rb") as f:
                    lines.append(f"{hashlib.sha256(f.read()).hexdigest()}  {os.path.relpath(path, top)}")
    with open(os.path.join(HERE, f"comfyui-{version}.sha256"), "w") as f:
        f.write("\n".join(sorted(lines, key=lambda s: s.split("  ", 1)[1])) + "\n")
    print(f"wrote .ci/comfyui-{version}.sha256: {len(lines)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
