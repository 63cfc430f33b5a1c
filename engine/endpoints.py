"""The operator's endpoint list: every machine the pack may contact, named by the operator, never by a workflow.

A workflow is untrusted input (people download workflows from anyone and press Queue), so it may *name* an
endpoint the operator configured, never define one, and never name an environment variable.  The list is a
JSON file in ComfyUI's user folder (``infscale_endpoints.json``), or the file named by the environment
variable ``INFSCALE_ENDPOINTS_FILE``; it is read each time a node needs it (no restart needed after an
edit).  Example (``docs/endpoints.example.json``)::

    {
      "worker_pools": {
        "studio": {
          "urls": ["http://192.168.1.20:8188", "http://192.168.1.21:8188"],
          "auth_env": "STUDIO_WORKER_TOKEN",
          "timeout_s": 1800, "request_timeout_s": 30, "max_response_mb": 8, "audit_per_shard": 2
        }
      },
      "graders": {
        "local-qwen": {
          "base_url": "http://127.0.0.1:8000/v1", "model": "Qwen/Qwen2.5-VL-7B-Instruct",
          "api_key_env": "VLLM_API_KEY", "timeout_s": 60, "max_response_mb": 4
        }
      }
    }

``auth_env`` / ``api_key_env`` are the *names* of environment variables that hold the secret (a worker
pool's is ``Header-Name: value`` or a bare token sent as ``Authorization: Bearer``); the secrets themselves
never appear in the file, the workflow, a PNG or a report.  ComfyUI-Distributed's ``gpu_config.json`` (when
that pack is installed) is one more worker pool, named ``ComfyUI-Distributed``, whose auth header comes from
``INFSCALE_WORKER_AUTH``."""
from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..verifiers.net import Limits, shorten

ENDPOINTS_FILE_ENV = "INFSCALE_ENDPOINTS_FILE"
ENDPOINTS_FILE = "infscale_endpoints.json"
DISTRIBUTED_POOL = "ComfyUI-Distributed"
DISTRIBUTED_AUTH_ENV = "INFSCALE_WORKER_AUTH"  # the auth header for ComfyUI-Distributed's workers
NONE_CONFIGURED = "none configured"
FROM_OPERATOR = "set by the operator"  # the only value of the remote grader's api_key_env widget
MAX_FILE_BYTES = 1024 * 1024
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


class EndpointError(ValueError):
    """The endpoint list is malformed, or a workflow asked for something it does not hold."""


@dataclass(frozen=True)
class WorkerPool:
    """A named group of worker ComfyUI servers and what the operator allows them."""
    name: str
    urls: Tuple[str, ...]
    auth_env: str = ""              # the NAME of the variable holding the auth header (or token)
    timeout_s: float = 3600.0       # the most one shard may take (a node's timeout_s is capped to it)
    request_timeout_s: float = 30.0  # one HTTP request, wall clock (connect + send + read)
    max_response_bytes: int = 8 * 1024 * 1024
    max_depth: int = 32
    audit_per_shard: int = 2        # candidates of each worker shard the master samples and scores itself
    audit_tolerance: float = 0.05   # |claimed - own| <= tol * (1 + |own|) for every member score
    source: str = "endpoints file"

    def limits(self) -> Limits:
        return Limits(self.request_timeout_s, self.max_response_bytes, self.max_depth)


@dataclass(frozen=True)
class Grader:
    """A remote grader: an OpenAI-compatible chat-completions server and what the operator allows it."""
    name: str
    base_url: str
    model: str
    models: Tuple[str, ...] = ()    # further model names a workflow may pick on this server
    api_key_env: str = ""
    timeout_s: float = 60.0         # one attempt, wall clock (a node's timeout is capped to it)
    max_response_bytes: int = 4 * 1024 * 1024
    max_depth: int = 32
    max_concurrency: int = 16
    max_retries: int = 4

    def limits(self) -> Limits:
        return Limits(self.timeout_s, self.max_response_bytes, self.max_depth)


@dataclass
class Endpoints:
    pools: Dict[str, WorkerPool] = field(default_factory=dict)
    graders: Dict[str, Grader] = field(default_factory=dict)
    path: str = ""
    problems: List[str] = field(default_factory=list)  # why an entry (or the whole file) was left out


def user_directory() -> str:
    try:
        import folder_paths
        if hasattr(folder_paths, "get_user_directory"):
            return folder_paths.get_user_directory()
        return os.path.join(folder_paths.base_path, "user")
    except Exception:
        return "user"


def endpoints_path() -> str:
    """Where the operator's list is read from (the environment variable, else ComfyUI's user folder)."""
    return os.environ.get(ENDPOINTS_FILE_ENV) or os.path.join(user_directory(), ENDPOINTS_FILE)


def _url(item: Any, where: str) -> str:
    if not isinstance(item, str):
        raise EndpointError(f"{where}: a URL must be a string, got {shorten(item, 40)}")
    p = urllib.parse.urlsplit(item.strip())
    if p.scheme not in ("http", "https") or not p.hostname or p.query or p.fragment or p.username or p.password:
        raise EndpointError(f"{where}: '{shorten(item, 80)}' is not a plain http(s)://host:port URL (no "
                            "credentials, query or fragment)")
    try:
        p.port
    except ValueError:
        raise EndpointError(f"{where}: '{shorten(item, 80)}' has an invalid port") from None
    return item.strip().rstrip("/")


def _number(entry: Dict[str, Any], key: str, default, where: str, lo: float, hi: float, kind=float):
    v = entry.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or \
            (kind is int and v != int(v)):
        raise EndpointError(f"{where}: '{key}' must be a number from {lo:g} to {hi:g}, got {shorten(v, 40)}")
    return kind(v)


def _env_name(entry: Dict[str, Any], key: str, where: str) -> str:
    v = entry.get(key, "")
    if v in ("", None):
        return ""
    if not isinstance(v, str) or not ENV_NAME.match(v):
        raise EndpointError(f"{where}: '{key}' must be the NAME of an environment variable (letters, digits, _), "
                            "never the secret itself")
    return v


def _known(entry: Dict[str, Any], keys, where: str) -> None:
    extra = sorted(set(entry) - set(keys))
    if extra:
        raise EndpointError(f"{where}: unknown key(s) {', '.join(shorten(k, 40) for k in extra)}; known: "
                            f"{', '.join(sorted(keys))}")


POOL_KEYS = ("urls", "auth_env", "timeout_s", "request_timeout_s", "max_response_mb", "max_depth",
             "audit_per_shard", "audit_tolerance")
GRADER_KEYS = ("base_url", "model", "models", "api_key_env", "timeout_s", "max_response_mb", "max_depth",
               "max_concurrency", "max_retries")


def parse_pool(name: str, entry: Any, path: str) -> WorkerPool:
    where = f"{path}: worker pool '{shorten(name, 40)}'"
    if not isinstance(entry, dict):
        raise EndpointError(f"{where} must be an object with 'urls'")
    _known(entry, POOL_KEYS, where)
    urls = entry.get("urls")
    if not isinstance(urls, list) or not urls:
        raise EndpointError(f"{where}: 'urls' must be a non-empty list of http://host:port URLs")
    clean: List[str] = []
    for u in urls:
        u = _url(u, where)
        if u not in clean:
            clean.append(u)
    return WorkerPool(
        name=name, urls=tuple(clean), auth_env=_env_name(entry, "auth_env", where),
        timeout_s=_number(entry, "timeout_s", 3600.0, where, 1, 7 * 86400),
        request_timeout_s=_number(entry, "request_timeout_s", 30.0, where, 0.1, 3600),
        max_response_bytes=int(_number(entry, "max_response_mb", 8, where, 0.001, 1024) * 1024 * 1024),
        max_depth=_number(entry, "max_depth", 32, where, 4, 256, int),
        audit_per_shard=_number(entry, "audit_per_shard", 2, where, 0, 1000, int),
        audit_tolerance=_number(entry, "audit_tolerance", 0.05, where, 0, 1e6))


def parse_grader(name: str, entry: Any, path: str) -> Grader:
    where = f"{path}: grader '{shorten(name, 40)}'"
    if not isinstance(entry, dict):
        raise EndpointError(f"{where} must be an object with 'base_url' and 'model'")
    _known(entry, GRADER_KEYS, where)
    base = entry.get("base_url")
    if not isinstance(base, str) or not base.strip():
        raise EndpointError(f"{where}: 'base_url' must be the server's OpenAI-compatible base URL, e.g. "
                            "http://127.0.0.1:8000/v1")
    model = entry.get("model")
    if not isinstance(model, str) or not model.strip():
        raise EndpointError(f"{where}: 'model' must be the model name the server serves")
    models = entry.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m.strip() for m in models):
        raise EndpointError(f"{where}: 'models' must be a list of model names")
    from ..verifiers.remote import parse_base_url
    try:
        parse_base_url(base)
    except ValueError as e:
        raise EndpointError(f"{where}: {e}") from None
    return Grader(
        name=name, base_url=base.strip(), model=model.strip(), models=tuple(m.strip() for m in models),
        api_key_env=_env_name(entry, "api_key_env", where),
        timeout_s=_number(entry, "timeout_s", 60.0, where, 0.1, 3600),
        max_response_bytes=int(_number(entry, "max_response_mb", 4, where, 0.001, 256) * 1024 * 1024),
        max_depth=_number(entry, "max_depth", 32, where, 4, 256, int),
        max_concurrency=_number(entry, "max_concurrency", 16, where, 1, 256, int),
        max_retries=_number(entry, "max_retries", 4, where, 0, 20, int))


def _section(data: Dict[str, Any], key: str, parse, out: Dict[str, Any], path: str, problems: List[str]) -> None:
    section = data.get(key, {})
    if not isinstance(section, dict):
        problems.append(f"{path}: '{key}' must be an object of named entries")
        return
    for name, entry in section.items():
        if not isinstance(name, str) or not NAME.match(name) or name == NONE_CONFIGURED:
            problems.append(f"{path}: '{shorten(name, 40)}' in '{key}' is not a usable name (letters, digits, "
                            "space, . _ -; at most 64 characters)")
            continue
        try:
            out[name] = parse(name, entry, path)
        except EndpointError as e:
            problems.append(str(e))


def load() -> Endpoints:
    """The operator's endpoint list as it is now (the file read afresh), plus ComfyUI-Distributed's workers.
    A malformed entry is left out and said in ``problems``; a missing file is an empty list."""
    path = endpoints_path()
    out = Endpoints(path=path)
    if os.path.isfile(path):
        try:
            if os.path.getsize(path) > MAX_FILE_BYTES:
                raise EndpointError(f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB")
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise EndpointError(f"{path} must hold a JSON object with 'worker_pools' and/or 'graders'")
            _known(data, ("worker_pools", "graders", "comment"), path)
            _section(data, "worker_pools", parse_pool, out.pools, path, out.problems)
            _section(data, "graders", parse_grader, out.graders, path, out.problems)
        except (OSError, ValueError) as e:  # EndpointError is a ValueError, and so is bad JSON
            out.problems.append(f"{path} could not be read: {e}" if not isinstance(e, EndpointError) else str(e))
    try:
        urls, _ = distributed_config_urls()
    except (OSError, ValueError) as e:
        urls = []
        out.problems.append(f"ComfyUI-Distributed's configuration could not be read: {e}")
    if urls and DISTRIBUTED_POOL not in out.pools:
        out.pools[DISTRIBUTED_POOL] = WorkerPool(name=DISTRIBUTED_POOL, urls=tuple(urls),
                                                 auth_env=DISTRIBUTED_AUTH_ENV, source="ComfyUI-Distributed")
    return out


def distributed_config_urls() -> Tuple[List[str], Optional[str]]:
    """The enabled workers of ComfyUI-Distributed's ``gpu_config.json``, when that pack is installed."""
    try:
        import folder_paths
        roots = folder_paths.get_folder_paths("custom_nodes")
    except Exception:
        return [], None
    for root in roots:
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue
        for name in names:
            path = os.path.join(root, name, "gpu_config.json")
            if "distributed" not in name.lower() or not os.path.isfile(path):
                continue
            if os.path.getsize(path) > MAX_FILE_BYTES:
                raise ValueError(f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB")
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
            urls: List[str] = []
            for w in cfg.get("workers", []) if isinstance(cfg, dict) else []:
                if not isinstance(w, dict) or not w.get("enabled", True):
                    continue
                host = str(w.get("host") or "127.0.0.1").strip()
                port = int(w.get("port") or 8188)
                if host.startswith(("http://", "https://")):
                    url = host.rstrip("/")
                else:
                    https = w.get("type") == "cloud" or port == 443
                    default = 443 if https else 80
                    url = f"{'https' if https else 'http'}://{host}{'' if port == default else f':{port}'}"
                url = _url(url, path)
                if url not in urls:
                    urls.append(url)
            return urls, path
    return [], None


# --------------------------------------------------------------------------- what the nodes offer and accept
def choices(names: List[str]) -> List[str]:
    return list(names) or [NONE_CONFIGURED]


def where_text() -> str:
    return (f"the operator's endpoint list ({ENDPOINTS_FILE} in ComfyUI's user folder, or the file named by "
            f"${ENDPOINTS_FILE_ENV})")


def looks_like_url(value: str) -> bool:
    return "://" in value or value.strip().lower().startswith(("http:", "https:", "www."))


def pool(name: str) -> WorkerPool:
    """The worker pool a workflow names; '' (a workflow saved before pools existed) = the only pool there is."""
    eps = load()
    name = (name or "").strip()
    if looks_like_url(name) or "\n" in name or "," in name:
        raise EndpointError(
            f"this workflow lists worker URLs itself ({shorten(name, 80)}); a workflow may no longer choose the "
            f"machines this server contacts. Ask the operator to add them to {where_text()} as a worker pool, e.g. "
            '{"worker_pools": {"studio": {"urls": ["http://192.168.1.20:8188"]}}}, then pick that pool in '
            "worker_urls (docs/endpoints.md)")
    if not name or name == NONE_CONFIGURED:
        if len(eps.pools) == 1:
            return next(iter(eps.pools.values()))
        if not eps.pools:
            raise EndpointError(f"no worker pool is configured: the operator lists worker servers in {where_text()}"
                                + _problems(eps) + " (docs/endpoints.md)")
        raise EndpointError(f"pick a worker pool in worker_urls: {', '.join(sorted(eps.pools))}")
    if name not in eps.pools:
        raise EndpointError(f"there is no worker pool named '{shorten(name, 64)}' in {where_text()}; configured: "
                            f"{', '.join(sorted(eps.pools)) or 'none'}" + _problems(eps))
    return eps.pools[name]


def grader(name: str) -> Grader:
    """The remote grader a workflow names."""
    eps = load()
    name = (name or "").strip()
    if looks_like_url(name):
        raise EndpointError(
            f"this workflow gives the grader's URL itself ({shorten(name, 80)}); a workflow may no longer choose "
            f"where this server connects. Ask the operator to add the server to {where_text()}, e.g. "
            '{"graders": {"my-grader": {"base_url": "http://127.0.0.1:8000/v1", "model": "..."}}}, then pick '
            "'my-grader' in base_url (docs/endpoints.md)")
    if not name or name == NONE_CONFIGURED:
        raise EndpointError(f"no remote grader is picked: the operator configures them in {where_text()}"
                            + (f"; configured: {', '.join(sorted(eps.graders))}" if eps.graders else "")
                            + _problems(eps) + " (docs/endpoints.md)")
    if name not in eps.graders:
        raise EndpointError(f"there is no remote grader named '{shorten(name, 64)}' in {where_text()}; configured: "
                            f"{', '.join(sorted(eps.graders)) or 'none'}" + _problems(eps))
    return eps.graders[name]


def check_key_env_widget(value: str) -> Optional[str]:
    """The remote grader node's old api_key_env widget: only '' or the fixed value pass.  The answer never
    depends on whether a variable of that name exists."""
    if (value or "").strip() in ("", FROM_OPERATOR):
        return None
    return ("a workflow may no longer name an environment variable (api_key_env): the operator names the key's "
            f"variable for each grader in {where_text()} ('api_key_env' of the grader). Set this widget to "
            f"'{FROM_OPERATOR}'")


def digest(value: Any) -> str:
    """A short digest of an endpoint's settings: changes when they change, reveals none of them."""
    return hashlib.blake2b(repr(value).encode(), digest_size=12).hexdigest()


def change_key(lookup, name: str) -> str:
    """A node's IS_CHANGED for the endpoint ``lookup(name)`` names (``pool`` or ``grader``): the node runs again
    when the operator's entry changed.  A digest, since ComfyUI may keep the value with the prompt (and the PNG)."""
    try:
        return digest(lookup(name))
    except EndpointError as e:
        return digest(str(e))


def _problems(eps: Endpoints) -> str:
    return ("; the list has problems: " + "; ".join(eps.problems[:3])) if eps.problems else ""


def auth_headers(env_name: str) -> Dict[str, str]:
    """The auth header read (at run time) from the operator-named variable ``env_name``: 'Header-Name: value'
    or a bare token (sent as Authorization: Bearer).  Empty name or empty variable: no header."""
    if not env_name:
        return {}
    raw = os.environ.get(env_name, "").strip()
    if not raw:
        return {}
    if ":" in raw:
        name, value = raw.split(":", 1)
        name, value = name.strip(), value.strip()
        if not name or not value or any(c in name for c in " \t\r\n") or any(c in value for c in "\r\n"):
            raise EndpointError(f"${env_name} must be 'Header-Name: value' or a bare token")
        return {name: value}
    if any(c in raw for c in "\r\n"):
        raise EndpointError(f"${env_name} must be 'Header-Name: value' or a bare token")
    return {"Authorization": f"Bearer {raw}"}
