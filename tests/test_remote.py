"""The remote grader (verifiers/remote.py) against servers started here on 127.0.0.1: small http.server
stand-ins that answer right, out of order, with garbage, with errors or not at all (core tier: a few seconds),
and ``transformers serve`` with a tiny random Qwen2-VL (test_real_openai_compatible_server, verifiers tier:
needs transformers' serving extras, fastapi and uvicorn). A socket guard checks that nothing but the
configured server is ever contacted."""
from __future__ import annotations

import base64
import io
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler

import pytest
import torch

from loopback import serve, stop
from search.common import NonFiniteScoreError, checked_scores
from verifiers.ensemble import EnsembleVerifier
from verifiers.protocol import ScoreBook
from verifiers.remote import QUESTIONS, RemoteGraderError, RemoteVLMVerifier, failures_of, parse_base_url

HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- stand-in servers
def image_mean(body: dict) -> float:
    """The mean pixel value (0-255) of the request's image: what the stand-in grades."""
    from PIL import Image
    content = body["messages"][0]["content"]
    url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
    assert url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    px = img.convert("L").tobytes()
    return sum(px) / len(px)


def completion(text=None, logprobs=None):
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
    if logprobs is not None:
        choice["logprobs"] = {"content": [logprobs]}
    return {"id": "x", "object": "chat.completion", "choices": [choice]}


class StandIn:
    """A local OpenAI-compatible stand-in; ``behave(handler, body) -> (status, bytes)``."""

    def __init__(self, behave):
        self.requests = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                try:
                    status, data, *extra = behave(self, body)
                except _Sent:
                    return
                try:
                    self.send_response(status)
                    for k, v in (extra[0] if extra else {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server, base = serve(Handler)
        self.port = self.server.server_address[1]
        self.url = base + "/v1"

    def close(self):
        stop(self.server)


@pytest.fixture
def stand_in():
    made = []

    def start(behave):
        s = StandIn(behave)
        made.append(s)
        return s
    yield start
    for s in made:
        s.close()


@pytest.fixture
def guard(monkeypatch):
    """Records every outgoing connection of this process; refuses (and records) any not allowed."""
    allowed, seen = set(), []
    real = socket.socket.connect

    def connect(sock, address):
        seen.append(address[:2] if isinstance(address, tuple) else address)
        if isinstance(address, tuple) and address[:2] not in allowed:
            raise ConnectionRefusedError(f"test guard: connection to {address} refused")
        return real(sock, address)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return allowed, seen


def rubric_from_image(handler, body):
    """A 1-10 score from the image's brightness, answered after a delay that reverses the arrival order."""
    m = image_mean(body)
    time.sleep(0.05 + 0.3 * (1 - m / 255.0))
    return 200, json.dumps(completion(json.dumps({"score": 1 + round(9 * m / 255.0)}))).encode()


def grey_batch(levels):
    return torch.stack([torch.full((16, 16, 3), float(v)) for v in levels])


# --------------------------------------------------------------------------- tests
def test_scores_come_back_per_candidate_and_only_the_configured_host_is_contacted(stand_in, guard):
    allowed, seen = guard
    active, most, lock = [0], [0], threading.Lock()

    def counted(handler, body):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            return rubric_from_image(handler, body)
        finally:
            with lock:
                active[0] -= 1
    srv = stand_in(counted)
    allowed.add(("127.0.0.1", srv.port))
    levels = [0.9, 0.1, 0.5, 1.0, 0.0, 0.3]
    v = RemoteVLMVerifier(srv.url, "tiny", mode="rubric", concurrency=3, timeout=10, retries=0)
    s = v.score(grey_batch(levels), "a grey square")
    expected = [1 + round(9 * round(x * 255) / 255.0) for x in levels]
    assert s.tolist() == expected  # each answer on its own candidate, though they arrived darkest last
    assert 2 <= most[0] <= 3  # concurrent, within the limit
    assert len(srv.requests) == 6 and {r["path"] for r in srv.requests} == {"/v1/chat/completions"}
    body = srv.requests[0]["body"]
    assert body["model"] == "tiny" and body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["score"] == {
        "type": "integer", "minimum": 1, "maximum": 10}
    text = next(c["text"] for c in body["messages"][0]["content"] if c["type"] == "text")
    assert '"a grey square"' in text and "Authorization" not in srv.requests[0]["headers"]
    assert set(seen) == {("127.0.0.1", srv.port)}


def test_vqascore_reads_p_yes_from_logprobs(stand_in, guard):
    allowed, _ = guard

    def behave(handler, body):
        assert body["logprobs"] is True and body["max_tokens"] == 1 and body["top_logprobs"] == 20
        p = image_mean(body) / 255.0 * 0.8
        tops = [{"token": "Yes", "logprob": math.log(p * 0.75)}, {"token": " yes", "logprob": math.log(p * 0.25)},
                {"token": "No", "logprob": math.log(1 - p)}]
        return 200, json.dumps(completion("Yes", dict(tops[0], top_logprobs=tops))).encode()
    srv = stand_in(behave)
    allowed.add(("127.0.0.1", srv.port))
    v = RemoteVLMVerifier(srv.url, "tiny", concurrency=3, timeout=10, retries=0)
    s = v.score(grey_batch([0.2, 1.0, 0.6]), "a cat")
    want = torch.tensor([round(x * 255) / 255.0 * 0.8 for x in (0.2, 1.0, 0.6)])
    assert torch.allclose(s, want, atol=1e-5)
    text = next(c["text"] for c in srv.requests[0]["body"]["messages"][0]["content"] if c["type"] == "text")
    assert text == QUESTIONS["vqascore"].format(prompt="a cat") == \
        'Does this figure show "a cat"? Please answer yes or no.'


def test_garbage_answers_are_a_clear_error_or_counted_minus_inf(stand_in, guard):
    allowed, _ = guard

    def behave(handler, body):
        if image_mean(body) < 128:  # dark images get garbage
            return 200, b'{"choices": [{"message": {"content": "I think it is a 7!"}}]'
        return 200, json.dumps(completion('{"score": 9}')).encode()
    srv = stand_in(behave)
    allowed.add(("127.0.0.1", srv.port))
    batch = grey_batch([0.9, 0.1, 0.8, 0.2])
    with pytest.raises(RemoteGraderError, match=r"candidate [13] of this batch: .*is not JSON"):
        RemoteVLMVerifier(srv.url, "tiny", mode="rubric", timeout=5).score(batch, "p")
    v = RemoteVLMVerifier(srv.url, "tiny", mode="rubric", timeout=5, on_failure="-inf")
    s = v.score(batch, "p")
    assert s.tolist() == [9.0, -math.inf, 9.0, -math.inf] and v.failures == 2 and failures_of(v) == 2
    # the search core keeps -inf (ranks last) but still refuses NaN and +inf
    assert checked_scores(s, 4, list("abcd")) == s.tolist()
    for bad in (float("nan"), math.inf):
        with pytest.raises(NonFiniteScoreError):
            checked_scores(torch.tensor([1.0, bad]), 2, ["a", "b"])
    # every candidate failed: nothing can be ranked, an error even with -inf
    with pytest.raises(RemoteGraderError, match="every candidate of this batch"):
        v.score(grey_batch([0.1, 0.0]), "p")
    # malformed JSON shapes: wrong schema, out of range, a missing choice
    for answer in ('{"score": 11}', '{"score": "7"}', '{"answer": "maybe"}', "[]"):
        r = json.dumps(completion(answer)).encode()
        srv2 = stand_in(lambda h, b, r=r: (200, r))
        allowed.add(("127.0.0.1", srv2.port))
        for mode in ("rubric", "yes_no"):
            with pytest.raises(RemoteGraderError, match="the answer is not"):
                RemoteVLMVerifier(srv2.url, "tiny", mode=mode, timeout=5).score(grey_batch([0.5]), "p")
    srv3 = stand_in(lambda h, b: (200, b'{"choices": []}'))
    allowed.add(("127.0.0.1", srv3.port))
    with pytest.raises(RemoteGraderError, match="no choices"):
        RemoteVLMVerifier(srv3.url, "tiny", mode="yes_no", timeout=5).score(grey_batch([0.5]), "p")
    with pytest.raises(RemoteGraderError, match="returned no logprobs"):  # vqascore from a server without them
        RemoteVLMVerifier(srv.url, "tiny", timeout=5).score(grey_batch([0.9]), "p")


def test_a_hanging_server_fails_within_the_timeout(stand_in, guard):
    allowed, _ = guard
    release = threading.Event()

    def hang(handler, body):
        release.wait(20)  # bounded: the test sets it when done
        return 200, json.dumps(completion('{"score": 5}')).encode()
    srv = stand_in(hang)
    allowed.add(("127.0.0.1", srv.port))
    v = RemoteVLMVerifier(srv.url, "tiny", mode="rubric", timeout=1.0, retries=1, concurrency=2)
    assert v.deadline() == pytest.approx(2.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(RemoteGraderError, match=r"no answer after 2 attempt\(s\): .*deadline of 1 s"):
            v.score(grey_batch([0.5, 0.5, 0.5]), "p")
        elapsed = time.monotonic() - t0
    finally:
        release.set()
    assert 2.0 <= elapsed < v.deadline() + 3.0, elapsed  # the stated deadline, plus scheduling slack
    sent = len(srv.requests)
    assert sent >= 2  # retried
    time.sleep(1.6)  # past the in-flight attempts' timeout and a backoff: the failed batch sends nothing more
    assert len(srv.requests) == sent


def _dripping(handler, body):
    """Headers at once, then one byte every 0.25 s (an answer of 200 bytes: 50 s)."""
    raw = json.dumps(completion('{"score": 5}')).encode().ljust(200)
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    try:
        for i in range(len(raw)):
            handler.wfile.write(raw[i:i + 1])
            handler.wfile.flush()
            time.sleep(0.25)
    except OSError:
        pass
    raise _Sent()


class _Sent(Exception):
    """The behaviour wrote its own answer (StandIn sends none)."""


def _huge(handler, body):
    """300 MB of answer, streamed without a Content-Length (never held in memory here)."""
    handler.send_response(200)
    handler.end_headers()
    chunk = b" " * (1024 * 1024)
    try:
        for _ in range(300):
            handler.wfile.write(chunk)
    except OSError:
        pass
    raise _Sent()


def test_a_dripping_or_huge_or_deep_answer_costs_at_most_its_limits(stand_in, guard):
    """Bounded in time (a wall-clock deadline, not one per read), size (4 x 300 MB answers hold at most the cap)
    and depth; on_failure=-inf is honoured for each."""
    from verifiers import net
    allowed, _ = guard
    drip, huge = stand_in(_dripping), stand_in(_huge)
    deep = stand_in(lambda h, b: (200, b'{"choices": ' + b"[" * 100000 + b"]" * 100000 + b"}"))
    for srv in (drip, huge, deep):
        allowed.add(("127.0.0.1", srv.port))
    limits = net.Limits(deadline_s=1.0, max_bytes=1024 * 1024, max_depth=32)
    t0 = time.monotonic()
    v = RemoteVLMVerifier(drip.url, "tiny", mode="rubric", timeout=1.0, retries=0, limits=limits)
    with pytest.raises(RemoteGraderError, match="deadline of 1 s"):
        v.score(grey_batch([0.5]), "p")
    assert time.monotonic() - t0 < 4.0  # the drip would take 50 s
    tracemalloc.start()
    try:
        v = RemoteVLMVerifier(huge.url, "tiny", mode="rubric", timeout=30.0, retries=0, concurrency=4,
                              limits=limits, on_failure="-inf")
        with pytest.raises(RemoteGraderError, match="every candidate.*larger than the limit of 1.0 MiB"):
            v.score(grey_batch([0.5, 0.4, 0.3, 0.2]), "p")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 4 * (1024 * 1024 + net.CHUNK), peak  # 4 answers at once, each cut at the cap
    v = RemoteVLMVerifier(deep.url, "tiny", mode="rubric", timeout=5.0, retries=0, limits=limits)
    with pytest.raises(RemoteGraderError, match="nested deeper than the limit of 32"):
        v.score(grey_batch([0.5]), "p")
    # with on_failure=-inf a hostile answer scores -inf (counted) while the others are used
    mixed = stand_in(lambda h, b: (200, b"[" * 5000 + b"]" * 5000) if image_mean(b) < 100
                     else (200, json.dumps(completion('{"score": 6}')).encode()))
    allowed.add(("127.0.0.1", mixed.port))
    v = RemoteVLMVerifier(mixed.url, "tiny", mode="rubric", timeout=5.0, retries=0, limits=limits,
                          on_failure="-inf")
    assert v.score(grey_batch([0.9, 0.1]), "p").tolist() == [6.0, -math.inf] and v.failures == 1


def test_numbers_out_of_range_are_refused(stand_in, guard):
    """A positive logprob, probabilities of 'yes' over 1, and non-finite numbers are refused, never clamped."""
    allowed, _ = guard
    answers = [
        completion(None, {"token": "Yes", "logprob": 0.7, "top_logprobs": [{"token": "Yes", "logprob": 0.7}]}),
        completion(None, {"token": "Yes", "logprob": -0.1, "top_logprobs": [{"token": "Yes", "logprob": -0.1},
                                                                            {"token": "yes", "logprob": -0.2}]}),
    ]
    for ans, why in zip(answers, ("a logprob above 0", "add up to")):
        srv = stand_in(lambda h, b, ans=ans: (200, json.dumps(ans).encode()))
        allowed.add(("127.0.0.1", srv.port))
        with pytest.raises(RemoteGraderError, match=why):
            RemoteVLMVerifier(srv.url, "tiny", timeout=5).score(grey_batch([0.5]), "p")
    for raw in (b'{"choices": [{"logprobs": {"content": [{"token": "Yes", "logprob": -Infinity}]}}]}',
                b'{"choices": [{"logprobs": {"content": [{"token": "Yes", "logprob": 1e999}]}}]}',
                b'{"choices": [{"logprobs": {"content": [{"token": "Yes", "logprob": NaN}]}}]}'):
        srv = stand_in(lambda h, b, raw=raw: (200, raw))
        allowed.add(("127.0.0.1", srv.port))
        with pytest.raises(RemoteGraderError, match="refused"):
            RemoteVLMVerifier(srv.url, "tiny", timeout=5).score(grey_batch([0.5]), "p")
    ok = completion(None, {"token": "Yes", "logprob": -0.5, "top_logprobs": [{"token": "Yes", "logprob": -0.5}]})
    srv = stand_in(lambda h, b: (200, json.dumps(ok).encode()))
    allowed.add(("127.0.0.1", srv.port))
    assert RemoteVLMVerifier(srv.url, "tiny", timeout=5).score(grey_batch([0.5]), "p").tolist() == \
        pytest.approx([math.exp(-0.5)])


def test_retries_on_5xx_and_429_then_succeeds(stand_in, guard):
    allowed, _ = guard
    calls = []

    def flaky(handler, body):
        calls.append(1)
        if len(calls) == 1:
            return 503, b'{"error": "loading"}'
        if len(calls) == 2:
            return 429, b'{"error": "slow down"}'
        return 200, json.dumps(completion('{"answer": "yes"}')).encode()
    srv = stand_in(flaky)
    allowed.add(("127.0.0.1", srv.port))
    v = RemoteVLMVerifier(srv.url, "tiny", mode="yes_no", timeout=5, retries=2, concurrency=1)
    assert v.score(grey_batch([0.5]), "p").tolist() == [1.0] and len(calls) == 3
    calls.clear()
    with pytest.raises(RemoteGraderError, match="no answer after 2 attempt.*HTTP 429"):
        RemoteVLMVerifier(srv.url, "tiny", mode="yes_no", timeout=5, retries=1).score(grey_batch([0.5]), "p")


def test_no_request_reaches_an_unconfigured_host(stand_in, guard, monkeypatch):
    allowed, seen = guard
    for bad in ("", "   ", "ftp://127.0.0.1/v1", "127.0.0.1:8000", "http://user:pw@127.0.0.1/v1",
                "http://127.0.0.1/v1?x=1"):
        with pytest.raises(ValueError):
            RemoteVLMVerifier(bad, "tiny")
    assert parse_base_url("https://api.example.org/v1/") == ("https", "api.example.org", 443, "/v1")
    # a redirect to another host is not followed
    other = stand_in(lambda h, b: (200, json.dumps(completion('{"score": 3}')).encode()))
    srv = stand_in(lambda h, b: (307, b"", {"Location": f"http://127.0.0.1:{other.port}/v1/chat/completions"}))
    allowed.add(("127.0.0.1", srv.port))
    with pytest.raises(RemoteGraderError, match="HTTP 307.*not followed"):
        RemoteVLMVerifier(srv.url, "tiny", mode="rubric", timeout=5).score(grey_batch([0.5]), "p")
    assert other.requests == [] and set(seen) == {("127.0.0.1", srv.port)}
    # proxies from the environment are not used: the request still goes straight to the configured host
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{other.port}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{other.port}")
    with pytest.raises(RemoteGraderError):
        RemoteVLMVerifier(srv.url, "tiny", mode="rubric", timeout=5).score(grey_batch([0.5]), "p")
    assert other.requests == [] and set(seen) == {("127.0.0.1", srv.port)}


def test_api_key_comes_from_the_named_env_var_at_call_time_and_is_never_kept(stand_in, guard, monkeypatch):
    allowed, seen = guard
    secret = "sk-test-" + "4f3b2a"

    def needs_key(handler, body):
        if handler.headers.get("Authorization") != "Bearer " + secret:
            return 401, b'{"error": "invalid key"}'
        return 200, json.dumps(completion('{"score": 8}')).encode()
    srv = stand_in(needs_key)
    allowed.add(("127.0.0.1", srv.port))
    monkeypatch.delenv("INFSCALE_TEST_KEY", raising=False)
    v = RemoteVLMVerifier(srv.url, "tiny", mode="rubric", api_key_env="INFSCALE_TEST_KEY", timeout=5,
                          on_failure="-inf")
    with pytest.raises(RemoteGraderError, match="INFSCALE_TEST_KEY .* is not set"):
        v.score(grey_batch([0.5]), "p")
    assert seen == []  # refused before any request
    monkeypatch.setenv("INFSCALE_TEST_KEY", "wrong")
    with pytest.raises(RemoteGraderError, match="HTTP 401 .*variable the operator named"):
        v.score(grey_batch([0.5, 0.4]), "p")
    monkeypatch.setenv("INFSCALE_TEST_KEY", secret)  # read at call time, not at construction
    assert v.score(grey_batch([0.5, 0.4]), "p").tolist() == [8.0, 8.0]
    kept = repr(vars(v)) + v.name + repr(v.request_body(torch.zeros(8, 8, 3), "p"))
    assert secret not in kept and "INFSCALE_TEST_KEY" in kept
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        RemoteVLMVerifier(srv.url, "tiny", api_key_env=secret)


def test_remote_scores_compose_with_ensembles(stand_in, guard):
    """-inf from a failed answer ranks last in both ensemble modes and leaves the other scores finite."""
    allowed, _ = guard

    def behave(handler, body):
        m = image_mean(body)
        if m < 30:
            return 200, b"garbage"
        return 200, json.dumps(completion(json.dumps({"score": 1 + round(9 * m / 255.0)}))).encode()
    srv = stand_in(behave)
    allowed.add(("127.0.0.1", srv.port))
    remote = RemoteVLMVerifier(srv.url, "tiny", mode="rubric", timeout=5, on_failure="-inf", concurrency=4)

    class Brightness:
        name, relative = "brightness", False

        def score(self, images, prompt):
            return images.mean(dim=(1, 2, 3))
    batch = grey_batch([0.6, 0.05, 0.9, 0.3])
    for mode in ("mean_rank", "zscore"):
        ens = EnsembleVerifier([remote, Brightness()], [1.0, 1.0], mode)
        book = ScoreBook(ens, "p")
        s = book.add(batch)
        assert s[1] == s.min() and torch.isfinite(s[[0, 2, 3]]).all(), (mode, s)
        assert s[2] == s.max()
        assert checked_scores(s, 4, list("abcd"))
    assert failures_of(ens) == remote.failures == 2  # one dark image, scored by two ensembles
    # a zero-weight remote member does not poison the ensemble
    z = EnsembleVerifier([remote, Brightness()], [0.0, 1.0], "zscore")
    assert torch.isfinite(z.score(batch, "p")).all()
    # as a pre-filter's main verifier: the failed answer ranks below the candidates the screen skipped
    from verifiers.prefilter import PrefilterVerifier
    pre = PrefilterVerifier(Brightness(), remote, keep=0.5, warmup=2)
    before = failures_of(pre)
    s = ScoreBook(pre, "p").add(grey_batch([0.6, 0.05, 0.9, 0.3, 0.2]))
    assert failures_of(pre) - before == 1 and s[1] == -math.inf  # scored (warm-up), failed
    assert torch.isfinite(s[[0, 2, 3, 4]]).all() and s[2] == s.max() and s[3] > s[4] > s[1]


def test_remote_failures_compose_with_every_strategy():
    """Each strategy (and coarse-to-fine) on the toy host with a scorer that scores the first image of every
    scoring call -inf, as a remote grader with on_failure = -inf does for a failed answer: every strategy
    finishes within its budget, and no -inf candidate wins."""
    from search import Strategy, run_strategy
    from toy_host import STRATEGIES, gaussian_host

    cases = STRATEGIES + [("halving", {}, "euler")]
    for name, params, sampler in cases:
        for coarse in (0, 6):
            host = gaussian_host(sampler=sampler, steps=12)
            real = host.scorer

            def failing(latents, real=real):
                s = real(latents).clone()
                if s.numel() > 1:
                    s[0] = -math.inf
                return s
            host.scorer = failing
            report, finalists = run_strategy(Strategy(name, params, coarse_steps=coarse), host, candidates=10,
                                             top_k=1, seed=3)
            assert any(c.score == -math.inf for c in report.candidates), (name, coarse)  # failures did reach it
            assert finalists and math.isfinite(report.best.score), (name, coarse, report.best.score)
            assert report.nfe_total <= 10 * 12, (name, coarse)


# --------------------------------------------------------------------------- a real OpenAI-compatible server
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_openai_compatible_server(tmp_path, guard):
    """``transformers serve`` (the server that ships with transformers) serving a tiny random Qwen2-VL whose
    language model is set to answer {"score": 7}: the images go through the real processor and vision tower.
    transformers serve 5.24 accepts but ignores logprobs and response_format, so there vqascore must say that
    the server returned no logprobs, and yes_no must reject the rubric-shaped answer."""
    pytest.importorskip("transformers")
    for mod in ("fastapi", "uvicorn", "openai"):
        try:
            __import__(mod)
        except ImportError:
            pytest.skip(f"transformers serve needs transformers' serving extras ({mod} is missing here); CI "
                        "installs them in the current-ComfyUI venv only (.ci/requirements-current.txt)")
    allowed, seen = guard
    model_dir = str(tmp_path / "tiny-qwen2-vl")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    subprocess.run([sys.executable, os.path.join(HERE, "tiny_vlm.py"), model_dir, '{"score": 7}'], check=True,
                   capture_output=True, timeout=300, env=env)
    port = _free_port()
    allowed.add(("127.0.0.1", port))
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", "from transformers.cli.transformers import main; main()",
                             "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
    try:
        url = f"http://127.0.0.1:{port}/v1"
        v = RemoteVLMVerifier(url, model_dir, mode="rubric", concurrency=2, timeout=60, retries=0)
        t_end = time.monotonic() + 180
        while True:  # wait for the server to listen
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.monotonic() < t_end, "transformers serve did not start in 180 s"
                time.sleep(0.5)
        g = torch.Generator().manual_seed(0)
        batch = torch.rand(3, 48, 40, 3, generator=g)
        assert v.score(batch, "a red cube").tolist() == [7.0, 7.0, 7.0]
        # a later transformers serve may honour logprobs and response_format: then these must be valid scores
        try:
            p = RemoteVLMVerifier(url, model_dir, mode="vqascore", timeout=60, retries=0).score(batch[:2], "a cube")
            assert ((p >= 0) & (p <= 1)).all(), p
        except RemoteGraderError as e:
            assert "returned no logprobs" in str(e)
        try:
            yn = RemoteVLMVerifier(url, model_dir, mode="yes_no", timeout=60, retries=0).score(batch[:2], "a cube")
            assert set(yn.tolist()) <= {0.0, 1.0}, yn
        except RemoteGraderError as e:
            assert 'the answer is not {"answer": "yes" | "no"}' in str(e)
        assert {a for a in seen if isinstance(a, tuple)} == {("127.0.0.1", port)}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# --------------------------------------------------------------------------- the loader node on ComfyUI
def test_server_remote_grader_in_a_search(comfy, stand_in, tmp_path):
    """Search Loop on the real ComfyUI server with the remote grader the operator configured: the stand-in grades
    brightness and gets the key from the environment variable the operator named, one answer is garbage and
    scores -inf (on_failure = -inf), and the report counts it; neither the key nor its variable's name is in the
    report, the PNG or the history, and the report names the grader, not its URL."""
    from comfy_server import TEST_API_KEY, set_endpoints
    from graphs import PREFIX, search_graph
    seen, lock = [], threading.Lock()

    def behave(handler, body):
        with lock:
            seen.append(handler.headers.get("Authorization"))
            first = len(seen) == 1
        if first:
            return 200, b"{not json"
        return rubric_from_image(handler, body)
    srv = stand_in(behave)
    set_endpoints(comfy, graders={"stand-in": {"base_url": srv.url, "model": "tiny",
                                               "api_key_env": "INFSCALE_TEST_API_KEY"}})
    info = comfy.get("/object_info/" + PREFIX + "RemoteVLMVerifier")[PREFIX + "RemoteVLMVerifier"]
    assert info["category"] == "inference scaling" and "higher is better" in info["description"]
    for name, spec in info["input"]["required"].items():
        assert spec[1].get("tooltip"), name
    assert info["input"]["required"]["base_url"][0] == ["stand-in"]  # the operator's graders, by name
    assert info["input"]["required"]["api_key_env"][0] == ["set by the operator"]
    loader = {"class_type": PREFIX + "RemoteVLMVerifier", "inputs": {
        "base_url": "stand-in", "model": "", "mode": "rubric", "question": "", "api_key_env": "set by the operator",
        "concurrency": 3, "timeout": 20.0, "retries": 0, "on_failure": "-inf"}}
    g = search_graph(seed=11, candidates=3, top_k=1, micro_batch=3, prefix="remote")
    g["5"] = loader
    g["11"] = {"class_type": PREFIX + "SaveSearchImage", "inputs": {"images": ["6", 0], "scores": ["6", 3],
                                                                     "filename_prefix": "remote_meta"}}
    entry = comfy.run_ok(g, timeout=300)
    rep = json.loads(entry["outputs"]["8"]["text"][0])
    scores = sorted(c["score"] for c in rep["candidates"])
    assert rep["verifier_failures"] == 1 and scores[0] == -math.inf and all(1 <= s <= 10 for s in scores[1:])
    assert any("-inf" in n for n in rep["notes"])
    assert rep["verifier"] == "remote[rubric](tiny @ stand-in)"
    assert len(seen) == 4 and set(seen) == {"Bearer " + TEST_API_KEY}  # 3 candidates + the winner's re-render
    png = comfy.output_file(entry["outputs"]["11"]["images"][0])
    with open(png, "rb") as f:
        data = f.read()
    history = json.dumps(comfy.get("/history"))
    for text in (data.decode("latin-1"), history, json.dumps(rep)):
        assert TEST_API_KEY not in text and "INFSCALE_TEST_API_KEY" not in text and srv.url not in text
    # settings errors are refused before the run: a URL, an unknown grader, a model the operator did not allow
    for bad, msg in (({"base_url": srv.url}, "a workflow may no longer choose where this server connects"),
                     ({"base_url": "elsewhere"}, "no remote grader named 'elsewhere'"),
                     ({"model": "big-model"}, "serves model 'tiny', not 'big-model'")):
        g["5"] = dict(loader, inputs=dict(loader["inputs"], **bad))
        code, body = comfy.queue(g)
        assert code == 400 and msg in json.dumps(body), (bad, body)
    assert len(seen) == 4  # nothing was sent


def test_server_remote_grader_with_verifier_score_and_best_pick(comfy, stand_in):
    """Verifier Score + Best Pick over a stock KSampler batch, graded remotely: the failed answer scores -inf,
    ranks last, is counted, and Best Pick returns the finite ones, best first."""
    from graphs import PREFIX, base_graph
    n, lock = [0], threading.Lock()

    def behave(handler, body):
        with lock:
            n[0] += 1
            first = n[0] == 1
        return (200, b"[]") if first else rubric_from_image(handler, body)
    srv = stand_in(behave)
    from comfy_server import set_endpoints
    set_endpoints(comfy, graders={"stand-in": {"base_url": srv.url, "model": "tiny"}})
    g = base_graph("a grey square")
    g["4"]["inputs"]["batch_size"] = 3
    g["5"] = {"class_type": PREFIX + "RemoteVLMVerifier", "inputs": {  # as saved before graders had names: the
        "base_url": "stand-in", "model": "tiny", "mode": "rubric", "question": "Rate {prompt}: JSON score 1-10",
        "api_key_env": "", "concurrency": 2, "timeout": 20.0, "retries": 1, "on_failure": "-inf"}}  # '' is fine
    g["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 8,
        "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    g["12"] = {"class_type": PREFIX + "VerifierScore", "inputs": {"images": ["7", 0], "verifier": ["5", 0],
                                                                 "prompt": "a grey square"}}
    g["13"] = {"class_type": PREFIX + "BestPick", "inputs": {"images": ["7", 0], "scores": ["12", 0], "top_k": 2}}
    g["14"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 2], "filename_prefix": "remote_pick"}}
    g["8"] = {"class_type": PREFIX + "ScoresToJSON", "inputs": {"scores": ["12", 0]}}
    entry = comfy.run_ok(g, timeout=300)
    rep = json.loads(entry["outputs"]["8"]["text"][0])
    ranked = [c["score"] for c in rep["candidates"]]
    assert rep["verifier_failures"] == 1 and ranked[-1] == -math.inf and all(1 <= s <= 10 for s in ranked[:2])
    assert math.isfinite(rep["best"]["score"]) and len(entry["outputs"]["14"]["images"]) == 2
    assert n[0] == 3 and srv.requests[0]["body"]["messages"][0]["content"][1]["text"] == "Rate a grey square: " \
                                                                                          "JSON score 1-10"


def test_failures_of_reads_lists_of_members_only():
    """An object whose ``members`` is a method (the VLM rubric's) is not an ensemble: it has no remote failures."""
    from verifiers.remote import failures_of

    class Rubric:
        def members(self):
            return []

    class Host:
        def __init__(self, inner):
            self.verifier = inner

    assert failures_of(Host(Rubric())) == 0
