"""Fixtures for the real-server tier: a real ComfyUI with this pack in its
custom_nodes, on a free loopback port, driven over HTTP and websocket.

Which ComfyUI: $COMFYUI_PATH if set (any install of 0.3.64 or newer, used in
place, read-only), else the ComfyUI 0.3.64 that .ci/setup unpacks into
.test-cache/ComfyUI-0.3.64."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("INFSCALE_TEST_CACHE", os.path.join(REPO, ".test-cache"))
PACK_NAME = "comfyui-inference-scaling"


def comfyui_dir() -> str:
    path = os.environ.get("COMFYUI_PATH")
    if path:
        if not os.path.isfile(os.path.join(path, "main.py")):
            raise RuntimeError(f"COMFYUI_PATH={path} has no main.py")
        return os.path.abspath(path)
    path = os.path.join(CACHE, "ComfyUI-0.3.64")  # where .ci/setup unpacks it
    if not os.path.isfile(os.path.join(path, "main.py")):
        pytest.skip("no ComfyUI: set COMFYUI_PATH=/path/to/ComfyUI (0.3.64 or newer), or run .ci/setup "
                    "(see CONTRIBUTING.md)")
    return path


def comfyui_version(path: str) -> str:
    vf = os.path.join(path, "comfyui_version.py")
    if os.path.isfile(vf):
        ns: dict = {}
        exec(open(vf).read(), ns)
        return ns.get("__version__", "unknown")
    return "unknown"


TEST_API_KEY = "sk-infscale-test-7d1c9e"  # in the test server's environment as INFSCALE_TEST_API_KEY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyClient:
    def __init__(self, base: str, output_dir: str, input_dir: str):
        self.base = base
        self.output_dir = output_dir
        self.input_dir = input_dir
        self.client_id = uuid.uuid4().hex
        self._object_info = None

    # -- plain HTTP
    def get(self, path: str):
        with urllib.request.urlopen(self.base + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, data) -> tuple[int, dict]:
        req = urllib.request.Request(self.base + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else {})
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, {"raw": body.decode(errors="replace")}

    def object_info(self) -> dict:
        if self._object_info is None:
            self._object_info = self.get("/object_info")
        return self._object_info

    def has_node(self, name: str) -> bool:
        return name in self.object_info()

    # -- prompts
    def queue(self, prompt: dict, extra_data: dict | None = None) -> tuple[int, dict]:
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        return self.post("/prompt", body)

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h:
                entry = h[prompt_id]
                st = entry.get("status", {})
                if st.get("completed") or st.get("status_str") in ("success", "error") or entry.get("outputs"):
                    return entry
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")

    def run(self, prompt: dict, timeout: float = 600, extra_data: dict | None = None) -> dict:
        code, body = self.queue(prompt, extra_data)
        assert code == 200, f"prompt refused ({code}): {json.dumps(body)[:2000]}"
        return self.wait(body["prompt_id"], timeout)

    def run_ok(self, prompt: dict, timeout: float = 600, extra_data: dict | None = None) -> dict:
        entry = self.run(prompt, timeout, extra_data)
        err = execution_error(entry)
        assert err is None, f"execution failed: {err}"
        return entry

    def websocket(self):
        import websocket  # websocket-client
        ws = websocket.WebSocket()
        ws.connect(self.base.replace("http://", "ws://") + f"/ws?clientId={self.client_id}", timeout=60)
        return ws

    def output_file(self, item: dict) -> str:
        return os.path.join(self.output_dir, item.get("subfolder", ""), item["filename"])


def execution_error(entry: dict):
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def need(comfy, *nodes):
    """Fails (the pack needs them) when this ComfyUI lacks one of ``nodes``."""
    missing = [n for n in nodes if not comfy.has_node(n)]
    if missing:
        pytest.fail(f"this ComfyUI ({comfy.version}) lacks {', '.join(missing)}: the pack needs ComfyUI 0.3.64 "
                    "or newer")


def interrupt_run(comfy, graph, after: int, timeout: float = 300):
    """Queues ``graph``, posts /interrupt at its ``after``-th progress message, follows it to the end.
    Returns (interrupted, progress messages after the interrupt, seconds from the interrupt to the end)."""
    ws = comfy.websocket()
    try:
        code, body = comfy.queue(graph)
        assert code == 200
        pid = body["prompt_id"]
        seen, later, interrupted, t_int = 0, 0, False, None
        ws.settimeout(timeout)
        while True:
            msg = ws.recv()
            if not isinstance(msg, str):
                continue
            m = json.loads(msg)
            data = m.get("data", {})
            if data.get("prompt_id") not in (None, pid):
                continue
            if m["type"] == "progress":
                seen += 1
                if seen == after:
                    t_int = time.time()
                    comfy.post("/interrupt", {})
                elif seen > after:
                    later += 1
            elif m["type"] == "execution_interrupted":
                interrupted = True
                break
            elif m["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == pid:
                break
        return interrupted, later, (time.time() - t_int) if t_int is not None else None
    finally:
        ws.close()


@pytest.fixture(scope="session")
def comfy_path() -> str:
    return comfyui_dir()


@pytest.fixture(scope="session")
def models_dir(comfy_path, tmp_path_factory) -> dict:
    """checkpoints/ (tiny SD1.5 of ComfyUI's own classes, cached) and
    verifiers/ (tiny open_clip files) for the server."""
    from tiny_models import ensure_checkpoint
    from tiny_verifiers import build_aesthetic_mlp, build_tiny_clip, build_tiny_clip_768, build_tiny_verifiers_ii
    root = tmp_path_factory.mktemp("models")
    ckpt_dir = root / "checkpoints"
    ckpt_dir.mkdir()
    cached = ensure_checkpoint(comfy_path, "sd15", os.path.join(CACHE, "checkpoints"))
    os.symlink(cached, ckpt_dir / "tiny-sd15.safetensors")
    (root / "loras").mkdir()
    for d in ("diffusion_models", "vae", "text_encoders"):  # split model files (video models): add_wan21
        (root / d).mkdir()
    ver = root / "verifiers"
    build_tiny_clip(str(ver), "tiny-clip", seed=0)
    build_tiny_clip(str(ver), "nan-clip", seed=0, poison_nan=True)
    # a truncated copy: unreadable
    data = open(ver / "tiny-clip.safetensors", "rb").read()
    (ver / "broken-clip.safetensors").write_bytes(data[: len(data) // 3])
    shutil.copy(ver / "tiny-clip.json", ver / "broken-clip.json")
    build_tiny_clip_768(str(ver), "tiny-clip-768", seed=1)
    build_aesthetic_mlp(str(ver), "tiny-aesthetic.pth", seed=2)
    # held-out verifiers for the over-optimisation guard: exactly anti-correlated / correlated with it
    build_aesthetic_mlp(str(ver), "tiny-aesthetic-negated.pth", seed=2, gain=-1.0)
    build_aesthetic_mlp(str(ver), "tiny-aesthetic-doubled.pth", seed=2, gain=2.0)
    build_tiny_verifiers_ii(str(ver))  # tiny-imagereward/, tiny-pickscore/, tiny-hps.pt, tiny-hpsv3/
    return {"root": str(root), "checkpoints": str(ckpt_dir), "verifiers": str(ver)}


WAN21_FILES = [("diffusion_models", "wan21", 0, "tiny-wan21.safetensors"),
               ("diffusion_models", "wan21", 1, "tiny-wan21-low.safetensors"),  # a second expert (other weights)
               ("diffusion_models", "wan21_i2v", 0, "tiny-wan21-i2v.safetensors"),
               ("vae", "wan21_vae", 0, "tiny-wan21-vae.safetensors"),
               ("text_encoders", "clip_l", 0, "tiny-clip-l.safetensors")]


# LTX-Video: one checkpoint (diffusion model + VAE, as the published ltx-video-2b files) and the CLIP-L that
# stands in for T5-XXL (CLIPLoader type "sd3"; tests/tiny_models.py)
LTXV_FILES = [("checkpoints", "ltxv", 0, "tiny-ltxv.safetensors"),
              ("text_encoders", "clip_l", 0, "tiny-clip-l.safetensors")]


# HunyuanVideo: the diffusion model, its (full-size) causal 3-D VAE; CLIP-L (tiny-clip-l) as its text encoder
HUNYUAN_VIDEO_FILES = [("diffusion_models", "hunyuan_video", 0, "tiny-hunyuan-video.safetensors"),
                       ("vae", "hunyuan_video_vae", 0, "tiny-hunyuan-video-vae.safetensors"),
                       ("text_encoders", "clip_l", 0, "tiny-clip-l.safetensors")]
# Wan 2.2 5B: the diffusion model (48 channels) and the Wan 2.2 VAE (full size: 705 M params, 1.41 GB)
WAN22_FILES = [("diffusion_models", "wan22", 0, "tiny-wan22.safetensors"),
               ("vae", "wan22_vae", 0, "tiny-wan22-vae.safetensors"),
               ("text_encoders", "clip_l", 0, "tiny-clip-l.safetensors")]


def add_model_files(comfy_path: str, models_dir: dict, files) -> None:
    """Tiny files (tests/tiny_models.py) in the server's model folders, built once into the cache;
    ``files``: (folder, kind, seed, name) rows such as WAN21_FILES."""
    from tiny_models import ensure_checkpoint
    for folder, kind, seed, name in files:
        link = os.path.join(models_dir["root"], folder, name)
        if not os.path.exists(link):
            os.symlink(ensure_checkpoint(comfy_path, kind, os.path.join(CACHE, "checkpoints"), seed=seed), link)


def add_wan21(comfy_path: str, models_dir: dict) -> None:
    """The tiny Wan 2.1 files in the server's model folders; current ComfyUI only (the caller skips on a
    ComfyUI without Wan)."""
    add_model_files(comfy_path, models_dir, WAN21_FILES)


def add_ltxv(comfy_path: str, models_dir: dict) -> None:
    """The tiny LTX-Video checkpoint and text encoder, as add_wan21 (current ComfyUI only)."""
    add_model_files(comfy_path, models_dir, LTXV_FILES)


def launch(comfy_path: str, work, models: dict) -> ComfyClient:
    """A ComfyUI server in ``work`` (its own output/input/temp/user folders, this pack in its custom_nodes)
    on a free loopback port, reading models from ``models`` ({"base_path": ..., "checkpoints": ..., ...} as
    extra_model_paths.yaml takes them).  ``shutdown(client)`` stops it; ``client.proc`` is the process."""
    custom = work / "custom_nodes"
    custom.mkdir()
    os.symlink(REPO, custom / PACK_NAME)
    # test-only nodes (tests/fixtures/test_nodes): inputs no stock node makes, such as an empty IMAGE batch
    os.symlink(os.path.join(REPO, "tests", "fixtures", "test_nodes"), custom / "infscale_test_nodes")
    for d in ("output", "input", "temp", "user"):
        (work / d).mkdir()
    cfg = work / "extra_model_paths.yaml"
    cfg.write_text("infscale_tests:\n" + "".join(f"    {k}: {v}\n" for k, v in models.items())
                   + f"    custom_nodes: {custom}\n")
    port = free_port()
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--extra-model-paths-config", str(cfg), "--output-directory", str(work / "output"),
           "--input-directory", str(work / "input"), "--temp-directory", str(work / "temp"),
           "--preview-method", "latent2rgb"]
    help_text = subprocess.run([sys.executable, "main.py", "--help"], cwd=comfy_path, capture_output=True,
                               text=True, timeout=120).stdout
    if "--user-directory" in help_text:
        cmd += ["--user-directory", str(work / "user")]
    if "--disable-auto-launch" in help_text:
        cmd += ["--disable-auto-launch"]
    log = open(work / "server.log", "w")
    # TEST_API_KEY: a stand-in key for the remote grader's test, which checks it never lands in a PNG or report
    # the operator's endpoint list (worker pools, remote graders) of this server: tests write it with
    # set_endpoints(client, ...); the server reads it at run time
    endpoints_file = work / "user" / "infscale_endpoints.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1", INFSCALE_TEST_API_KEY=TEST_API_KEY,
               INFSCALE_ENDPOINTS_FILE=str(endpoints_file))
    proc = subprocess.Popen(cmd, cwd=comfy_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    client = ComfyClient(f"http://127.0.0.1:{port}", str(work / "output"), str(work / "input"))
    t0 = time.time()
    while True:
        if proc.poll() is not None:
            raise RuntimeError("ComfyUI exited during start-up:\n" + open(work / "server.log").read()[-5000:])
        try:
            client.get("/object_info/KSampler")
            break
        except Exception:
            if time.time() - t0 > 180:
                proc.kill()
                raise RuntimeError("ComfyUI did not start in 180 s:\n" + open(work / "server.log").read()[-5000:])
            time.sleep(0.5)
    client.log_path = str(work / "server.log")
    client.endpoints_file = str(endpoints_file)
    client.version = comfyui_version(comfy_path)
    client.proc, client.log = proc, log
    return client


def set_endpoints(client: ComfyClient, worker_pools: dict | None = None, graders: dict | None = None) -> None:
    """Writes the server's endpoint list (what its operator configures): {"worker_pools": ..., "graders": ...}."""
    with open(client.endpoints_file, "w", encoding="utf-8") as f:
        json.dump({"worker_pools": worker_pools or {}, "graders": graders or {}}, f)


def shutdown(client: ComfyClient) -> None:
    client.proc.terminate()
    try:
        client.proc.wait(20)
    except subprocess.TimeoutExpired:
        client.proc.kill()
    client.log.close()


@pytest.fixture(scope="session")
def comfy(comfy_path, models_dir, tmp_path_factory):
    client = launch(comfy_path, tmp_path_factory.mktemp("comfy"), {
        "base_path": models_dir["root"], "checkpoints": "checkpoints", "verifiers": "verifiers", "loras": "loras",
        "diffusion_models": "diffusion_models", "vae": "vae", "text_encoders": "text_encoders"})
    yield client
    shutdown(client)


def pytest_report_header(config):
    try:
        p = os.environ.get("COMFYUI_PATH") or ".test-cache/ComfyUI-0.3.64"
    except Exception:
        p = "?"
    return f"ComfyUI under test: {p}"


@pytest.fixture(scope="module")
def sd3(comfy, comfy_path, models_dir):
    """The tiny SD3 checkpoint in the server's checkpoints: its file name."""
    need(comfy, "EmptySD3LatentImage")
    from tiny_models import ensure_checkpoint
    path = ensure_checkpoint(comfy_path, "sd3", os.path.join(CACHE, "checkpoints"))
    link = os.path.join(models_dir["checkpoints"], "tiny-sd3.safetensors")
    if not os.path.exists(link):
        os.symlink(path, link)
    return "tiny-sd3.safetensors"
