"""Server tier: a workflow is untrusted input.  On a real ComfyUI server, a workflow written by a hostile author
tries to make the server contact an address of its choosing and send it a secret: through Search Workers
(worker URLs typed into the workflow, as workflows saved before worker pools did) and through the remote grader
(a base URL and an environment variable's name).  A header-logging listener on loopback stands for the
attacker's server: it receives nothing unless the operator's endpoint list names it, and then only the pack's
own paths with the secret the operator gave that endpoint.  Whether a variable exists is never revealed."""
from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from comfy_server import TEST_API_KEY, execution_error, set_endpoints
from graphs import PREFIX, search_graph
from loopback import serve, stop


class Listener:
    """Logs every request (method, path, headers) and answers 503."""

    def __init__(self):
        self.requests, self.lock = [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _log(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(min(n, 1 << 20))
                with outer.lock:
                    outer.requests.append((self.command, self.path, dict(self.headers)))
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _log

        self.server, self.url = serve(Handler)

    def close(self):
        stop(self.server)


@pytest.fixture
def listener():
    s = Listener()
    yield s
    s.close()


def workers_graph(worker_urls, prefix, local=True):
    g = search_graph(seed=5, candidates=2, top_k=1, prefix=prefix)
    g["11"] = {"class_type": PREFIX + "SearchWorkers",
               "inputs": {"worker_urls": worker_urls, "timeout_s": 60, "local_shards": local}}
    g["6"]["inputs"]["workers"] = ["11", 0]
    return g


def grader_graph(base_url, api_key_env, prefix):
    g = search_graph(seed=5, candidates=2, top_k=1, prefix=prefix)
    g["5"] = {"class_type": PREFIX + "RemoteVLMVerifier", "inputs": {
        "base_url": base_url, "model": "", "mode": "rubric", "question": "", "api_key_env": api_key_env,
        "concurrency": 1, "timeout": 5.0, "retries": 0, "on_failure": "error"}}
    return g


def worker_urls_info(comfy):
    return comfy.get("/object_info/" + PREFIX + "SearchWorkers")[PREFIX + "SearchWorkers"]["input"]["required"][
        "worker_urls"]


def refusal(comfy, g) -> str:
    """The refusal of a prompt: at validation (ComfyUI validates the nodes behind optional inputs too)."""
    code, body = comfy.queue(g)
    assert code == 400, body
    return json.dumps(body.get("node_errors"))


def test_a_workflow_cannot_choose_where_the_server_connects_or_which_variable_it_reads(comfy, listener):
    set_endpoints(comfy, worker_pools={}, graders={"operators-grader": {"base_url": "http://127.0.0.1:9/v1",
                                                                        "model": "m"}})
    # worker URLs written into the workflow (as saved before pools existed): refused, saying how to configure
    msg = refusal(comfy, workers_graph(listener.url, "tb_w1"))
    assert "may no longer choose the machines" in msg and "worker_pools" in msg, msg
    msg = refusal(comfy, workers_graph(f"{listener.url}/internal/admin/api\nhttp://127.0.0.1:1", "tb_w2"))
    assert "may no longer choose the machines" in msg, msg
    # the grader's URL and an environment variable of the workflow's choosing: refused
    msg = refusal(comfy, grader_graph(listener.url + "/v1", "AWS_SECRET_ACCESS_KEY", "tb_g1"))
    assert "may no longer choose where this server connects" in msg or "may no longer name an environment" in msg
    # naming a variable is refused the same way whether it is set in the server (INFSCALE_TEST_API_KEY is) or not
    set_msg = refusal(comfy, grader_graph("operators-grader", "INFSCALE_TEST_API_KEY", "tb_g2"))
    unset_msg = refusal(comfy, grader_graph("operators-grader", "INFSCALE_SURELY_UNSET_VARIABLE", "tb_g3"))
    assert "may no longer name an environment variable" in set_msg
    assert set_msg == unset_msg
    assert listener.requests == []  # nothing reached the listener
    assert TEST_API_KEY not in set_msg + unset_msg


def test_only_the_operators_endpoints_get_requests_and_only_their_own_secret(comfy, listener, models_dir):
    """The operator lists the listener as a worker pool with a secret variable: now the search contacts it, with
    that secret, at the pack's own paths only; it answers 503, so its shard runs here and the node says so.  The
    saved report names the pool, never the endpoint file's path."""
    set_endpoints(comfy, worker_pools={"lab": {"urls": [listener.url], "auth_env": "INFSCALE_TEST_API_KEY"}})
    info = worker_urls_info(comfy)
    assert info[0] == ["lab"] and "infscale_endpoints.json" in info[1]["tooltip"]
    g = workers_graph("lab", "tb_ok", local=False)
    g["12"] = {"class_type": PREFIX + "SaveSearchImage", "inputs": {"images": ["6", 0], "scores": ["6", 3],
                                                                     "filename_prefix": "tb_meta"}}
    entry = comfy.run_ok(g)
    assert execution_error(entry) is None
    assert listener.requests, "the operator's endpoint is used"
    assert {(m, p) for m, p, _ in listener.requests} <= {("POST", "/prompt"), ("POST", "/queue"),
                                                        ("POST", "/interrupt")}
    assert all(h.get("Authorization") == "Bearer " + TEST_API_KEY for _, _, h in listener.requests)
    rep = json.loads(entry["outputs"]["8"]["text"][0])
    (fault,) = rep["settings"]["workers"]["faults"]
    assert fault.startswith(f"worker {listener.url} ") and "HTTP 503" in fault and "re-assigned" in fault
    assert rep["settings"]["workers"]["pool"] == "worker pool 'lab' (endpoints file)"
    with open(comfy.output_file(entry["outputs"]["12"]["images"][0]), "rb") as f:
        png = f.read().decode("latin-1")
    server_paths = (comfy.endpoints_file, os.path.dirname(comfy.output_dir), models_dir["root"],
                    os.path.realpath(models_dir["root"]))
    for text in (png, json.dumps(rep)):
        for secret in server_paths + (TEST_API_KEY, "INFSCALE_TEST_API_KEY"):
            assert secret not in text, (secret, text[text.find(secret) - 200:text.find(secret) + 100])


def test_a_malformed_endpoint_list_is_named_and_nothing_is_contacted(comfy, listener):
    with open(comfy.endpoints_file, "w") as f:
        f.write('{"worker_pools": {"lab": {"urls": ["' + listener.url + '"], "auth_env": "sk-live-123/abc"}}}')
    info = worker_urls_info(comfy)
    assert info[0] == ["none configured"]
    msg = refusal(comfy, workers_graph("lab", "tb_bad"))
    assert "no worker pool named 'lab'" in msg and "never the secret itself" in msg, msg
    assert "sk-live-123" not in msg
    assert listener.requests == []
