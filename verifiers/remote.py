"""A remote grader: a vision-language model served elsewhere (vLLM, SGLang, llama.cpp's server, Ollama, a
hosted API) behind an OpenAI-compatible ``/chat/completions`` endpoint.

Each candidate is one request (its image as a base64 PNG data URL, then the question), so an answer is tied to
its candidate by the request it answers, never by the order answers arrive in.  Three modes:

* ``vqascore``: VQAScore (Lin et al. 2024), ``P("Yes")`` for the question 'Does this figure show "{prompt}"?
  Please answer yes or no.', read from the first answer token's ``top_logprobs`` (``logprobs: true``,
  ``max_tokens: 1``); the probabilities of every listed spelling of "yes" (Yes, " yes", YES, ...) are summed.
  Range [0, 1].  A server that returns no logprobs is an error naming the other modes.
* ``rubric``: the model rates the image 1-10, answering ``{"score": N}`` under a JSON-schema
  ``response_format``.  Range [1, 10].
* ``yes_no``: the model answers ``{"answer": "yes" | "no"}`` under a JSON schema: 1 or 0.

Network: only the configured base URL is contacted, only at ``<base>/chat/completions`` (``verifiers/net.py``:
no proxy from the environment, no redirect followed).  In ComfyUI the base URL, the model and the name of the
API key's environment variable come from the operator's endpoint list (``engine/endpoints.py``), never from a
workflow.  The API key is read from that variable at each request and is never stored here.  ``concurrency``
requests at a time; each attempt is bounded by ``limits`` (``timeout`` seconds of wall clock for connect, send
and read together, a body-size cap and a JSON depth cap; non-finite numbers are refused), a call as a whole
takes at most ``deadline()`` seconds; connection errors, timeouts and HTTP 408/429/5xx are retried ``retries``
times with backoff.  A missing, malformed, oversized or out-of-range answer (after the retries) raises
:class:`RemoteGraderError`, or with ``on_failure="-inf"`` scores that candidate ``-inf`` and counts it in
``failures`` (the search report's ``verifier_failures``); a batch in which every candidate failed is an error
either way (nothing could be ranked), and so is a missing API key.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, List, Optional, Sequence, Union
from urllib.parse import urlsplit

import numpy as np
import torch

from . import net
from .base import as_prompt_list
from .protocol import Capabilities, SingleVerifier, inner_verifiers

MODES = ("vqascore", "rubric", "yes_no")
ON_FAILURE = ("error", "-inf")

QUESTIONS = {
    "vqascore": 'Does this figure show "{prompt}"? Please answer yes or no.',
    "rubric": ('How well does this image show "{prompt}"? Rate it from 1 (not at all) to 10 (perfectly), '
               'judging faithfulness to the prompt and image quality. Answer with JSON {{"score": N}}.'),
    "yes_no": 'Does this figure show "{prompt}"? Answer with JSON {{"answer": "yes"}} or {{"answer": "no"}}.',
}
RANGES = {"vqascore": "[0, 1] (P(Yes))", "rubric": "[1, 10]", "yes_no": "{0, 1}"}

SCHEMAS = {
    "rubric": {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
               "required": ["score"], "additionalProperties": False},
    "yes_no": {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
               "required": ["answer"], "additionalProperties": False},
}

TOP_LOGPROBS = 20      # the most the OpenAI API accepts
MAX_ANSWER_TOKENS = 64  # JSON modes: {"score": 10} is a handful of tokens
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOGPROB_SLACK = 1e-4   # a logprob above this is not a log-probability: the answer is refused


class RemoteGraderError(RuntimeError):
    """The remote grader could not score: what went wrong, for which candidate, and what to do."""


class _Retryable(Exception):
    pass


class _BadAnswer(Exception):
    pass


class _NotSent(Exception):
    """A request not made because another one had already failed the batch (that one's error is reported)."""


def parse_base_url(url: str):
    """(scheme, host, port, path prefix) of an OpenAI-compatible base URL such as http://127.0.0.1:8000/v1."""
    url = (url or "").strip()
    if not url:
        raise ValueError("no base URL is set: give the server's OpenAI-compatible base URL, e.g. "
                         "http://127.0.0.1:8000/v1 (the pack contacts no server unless you set one)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base URL '{url}' is not an http(s) URL with a host: give e.g. http://127.0.0.1:8000/v1")
    if parts.username or parts.password:
        raise ValueError("the base URL must not carry credentials: put the API key in an environment variable "
                         "and name that variable in api_key_env")
    if parts.query or parts.fragment:
        raise ValueError(f"base URL '{url}' has a query or fragment: give only scheme, host, port and path")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


def png_data_url(image: torch.Tensor) -> str:
    """An H×W×3 image in [0, 1] as a base64 PNG data URL."""
    from PIL import Image
    arr = (image.detach().float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _is_yes(token: str) -> bool:
    return token.strip().strip(".,!").lower() == "yes"


class RemoteVLMVerifier(SingleVerifier):
    """A VLM grader behind an OpenAI-compatible chat-completions endpoint (see the module docstring)."""

    CAPABILITIES = Capabilities(batched=False)  # one request per image, on another machine

    def __init__(self, base_url: str, model: str, mode: str = "vqascore", question: str = "",
                 api_key_env: str = "", concurrency: int = 4, timeout: float = 60.0, retries: int = 2,
                 on_failure: str = "error", cancel: Optional[Callable[[], None]] = None,
                 limits: Optional[net.Limits] = None, label: str = ""):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be one of {', '.join(ON_FAILURE)}, got '{on_failure}'")
        self.scheme, self.host, self.port, self.path = parse_base_url(base_url)
        self.base_url = base_url.strip()
        self.label = label.strip()  # the endpoint's name in reports (its URL when unnamed)
        self.model = (model or "").strip()
        if not self.model:
            raise ValueError("no model name is set: give the name the server serves the model under")
        self.mode = mode
        self.question = question.strip() or QUESTIONS[mode]
        if "{prompt}" not in self.question:
            raise ValueError("the question template must contain {prompt}, where the prompt goes")
        try:
            self.question.format(prompt="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"the question template is not a valid template ({e}): write literal braces "
                             "as {{ and }}") from e
        self.api_key_env = (api_key_env or "").strip()
        if self.api_key_env and not ENV_NAME.match(self.api_key_env):
            raise ValueError(f"api_key_env must be the NAME of an environment variable (letters, digits, _), "
                             f"got '{self.api_key_env[:3]}...'; never paste the key itself into the workflow")
        if int(concurrency) < 1 or float(timeout) <= 0 or int(retries) < 0:
            raise ValueError("concurrency must be >= 1, timeout > 0 and retries >= 0")
        self.concurrency, self.timeout, self.retries = int(concurrency), float(timeout), int(retries)
        self.limits = (limits or net.Limits(max_bytes=4 * 1024 * 1024)).sooner(self.timeout)
        self.timeout = self.limits.deadline_s
        self.on_failure = on_failure
        self.cancel = cancel
        self.failures = 0  # candidates scored -inf (on_failure="-inf"), over this verifier's life
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        where = self.label or f"{self.scheme}://{self.host}:{self.port}{self.path}"
        return f"remote[{self.mode}]({self.model} @ {where})"

    @property
    def score_range(self) -> str:
        return RANGES[self.mode]

    def deadline(self) -> float:
        """The longest one candidate can take: every attempt's timeout plus the backoffs (seconds)."""
        return (self.retries + 1) * self.timeout + sum(self._backoff(k) for k in range(self.retries))

    @staticmethod
    def _backoff(attempt: int) -> float:
        return min(0.5 * 2 ** attempt, 8.0)

    # ------------------------------------------------------------------ requests
    def request_body(self, image: torch.Tensor, prompt: str) -> dict:
        content = [{"type": "image_url", "image_url": {"url": png_data_url(image)}},
                   {"type": "text", "text": self.question.format(prompt=prompt)}]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0.0,
                "stream": False}
        if self.mode == "vqascore":
            body.update(max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
        else:
            body.update(max_tokens=MAX_ANSWER_TOKENS, response_format={
                "type": "json_schema",
                "json_schema": {"name": f"grade_{self.mode}", "strict": True, "schema": SCHEMAS[self.mode]}})
        return body

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise RemoteGraderError(
                    f"the environment variable {self.api_key_env} (api_key_env) is not set or empty: set it to "
                    "the API key in the environment ComfyUI runs in, or clear api_key_env for a server without one")
            headers["Authorization"] = "Bearer " + key
        return headers

    def _post(self, body: bytes) -> dict:
        """One attempt: POST to the configured host only (no proxy, no redirect), bounded by ``limits``."""
        where = f"the server {self.scheme}://{self.host}:{self.port}"
        try:
            status, headers, data = net.request(self.scheme, self.host, self.port, "POST",
                                                self.path + "/chat/completions", body, self._headers(), self.limits,
                                                where)
        except net.NetError as e:
            if e.kind in ("unreachable", "deadline"):
                raise _Retryable(str(e)) from None
            raise _BadAnswer(str(e)) from None
        if status in RETRY_STATUS:
            raise _Retryable(f"HTTP {status}: {data[:300].decode('utf-8', 'replace')}")
        if status != 200:
            hint = " (check the key in the environment variable the operator named for this grader)" \
                if status in (401, 403) else ""
            if 300 <= status < 400:
                hint = f" (a redirect to {net.shorten(headers.get('location'), 80)!r}; it is not followed: the " \
                       "operator must configure the final URL)"
            raise RemoteGraderError(f"the server answered HTTP {status}{hint}: "
                                    f"{data[:300].decode('utf-8', 'replace')}")
        try:
            return net.loads(data, self.limits.max_depth, where)
        except net.NetError as e:
            raise _BadAnswer(str(e)) from None

    def parse(self, response: dict) -> float:
        """The score in one chat-completions response; _BadAnswer when it is missing or malformed."""
        try:
            choice = response["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise _BadAnswer(f"no choices in the response: {str(response)[:200]}") from None
        if not isinstance(choice, dict):
            raise _BadAnswer(f"a choice that is not an object: {str(choice)[:200]}")
        if self.mode == "vqascore":
            content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) \
                else None
            if not content or not isinstance(content, list) or not isinstance(content[0], dict):
                raise _BadAnswer("the server returned no logprobs, so VQAScore (P(Yes)) cannot be read: use a "
                                 "server that returns logprobs (vLLM, SGLang, llama.cpp's server), or the mode "
                                 "rubric or yes_no")
            first = content[0]
            tops = first.get("top_logprobs") or [{"token": first.get("token"), "logprob": first.get("logprob")}]
            p = 0.0
            for t in tops:
                if not isinstance(t, dict) or not isinstance(t.get("token"), str) or \
                        not isinstance(t.get("logprob"), (int, float)) or isinstance(t.get("logprob"), bool):
                    raise _BadAnswer(f"a malformed top_logprobs entry: {str(t)[:200]}")
                if float(t["logprob"]) > LOGPROB_SLACK:
                    raise _BadAnswer(f"a logprob above 0 ({float(t['logprob']):.4g}) is not a log-probability: "
                                     "the server's answer is broken")
                if _is_yes(t["token"]):
                    p += math.exp(min(float(t["logprob"]), 0.0))
            if p > 1.0 + LOGPROB_SLACK:
                raise _BadAnswer(f"the probabilities of 'yes' add up to {p:.4g}, more than 1: the server's answer "
                                 "is broken")
            return min(p, 1.0)  # "yes" not among the top tokens: P(Yes) is below the least listed, taken as 0
        text = (choice.get("message") or {}).get("content") if isinstance(choice.get("message"), dict) else None
        if not isinstance(text, str):
            raise _BadAnswer(f"no message content in the response: {str(choice)[:200]}")
        stripped = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
        try:
            answer = net.loads(stripped, self.limits.max_depth, "the answer")
        except net.NetError:
            raise _BadAnswer(f"the answer is not JSON of a finite score: {text[:200]!r}") from None
        if self.mode == "rubric":
            s = answer.get("score") if isinstance(answer, dict) else None
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not (1 <= s <= 10) or s != int(s):
                raise _BadAnswer(f'the answer is not {{"score": an integer 1-10}}: {text[:200]!r}')
            return float(s)
        a = answer.get("answer") if isinstance(answer, dict) else None
        if not isinstance(a, str) or a.strip().lower() not in ("yes", "no"):
            raise _BadAnswer(f'the answer is not {{"answer": "yes" | "no"}}: {text[:200]!r}')
        return 1.0 if a.strip().lower() == "yes" else 0.0

    def score_one(self, image: torch.Tensor, prompt: str, stop: Optional[threading.Event] = None) -> float:
        """One candidate's score, with the retries; raises RemoteGraderError / _BadAnswer.  ``stop``: set when
        the batch has failed or was cancelled, so no further attempt is made."""
        stop = stop or threading.Event()
        body = json.dumps(self.request_body(image, prompt)).encode("utf-8")
        for attempt in range(self.retries + 1):
            if stop.is_set():
                raise _NotSent()
            try:
                return self.parse(self._post(body))
            except _Retryable as e:
                if attempt == self.retries:
                    raise RemoteGraderError(f"no answer after {self.retries + 1} attempt(s): {e}") from None
                stop.wait(self._backoff(attempt))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the protocol
    def score(self, images: torch.Tensor, prompt: Union[str, Sequence[str]] = "") -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape B x H x W x 3, got {tuple(images.shape)}")
        n = images.shape[0]
        prompts = as_prompt_list(prompt, n)
        scores: List[Optional[float]] = [None] * n
        errors = {}
        where = f"remote grader {self.name}"
        self._headers()  # a missing API key is a setting error, raised before any request
        futures, stop = {}, threading.Event()

        def one(i: int) -> float:
            try:
                return self.score_one(images[i], prompts[i], stop)
            except (_BadAnswer, RemoteGraderError):
                if self.on_failure == "error":
                    stop.set()  # the batch fails: the workers start no further request
                raise
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, max(n, 1)), thread_name_prefix="remote-grader")
        try:
            futures = {pool.submit(one, i): i for i in range(n)}
            end = time.monotonic() + self.deadline() + 5.0
            pending = set(futures)
            while pending:
                if self.cancel is not None:
                    self.cancel()
                left = end - time.monotonic()
                if left <= 0:
                    raise RemoteGraderError(f"{where}: {len(pending)} of {n} candidate(s) got no answer within "
                                            f"{self.deadline():g} s (timeout {self.timeout:g} s x "
                                            f"{self.retries + 1} attempts): check the server, or raise timeout")
                done, pending = wait(pending, timeout=min(left, 0.25), return_when=FIRST_COMPLETED)
                for f in done:
                    i = futures[f]  # the candidate this request was for
                    try:
                        scores[i] = float(f.result())
                    except _NotSent:
                        continue  # the candidate whose failure stopped the batch raises below
                    except (_BadAnswer, RemoteGraderError) as e:
                        errors[i] = str(e)
                        if self.on_failure == "error":
                            raise RemoteGraderError(
                                f"{where}: candidate {i} of this batch: {e}. Nothing was scored: fix the server or "
                                "its model, or set on_failure to -inf to score such candidates -inf (the search "
                                "report counts them)") from None
        finally:  # on an error or Cancel: requests in flight end at their timeout, no new one is made
            stop.set()
            for f in futures:
                f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
        if errors and len(errors) == n:
            first = min(errors)
            raise RemoteGraderError(f"{where}: every candidate of this batch ({n}) failed, so none can be ranked; "
                                    f"candidate {first}: {errors[first]}")
        if errors:
            with self._lock:
                self.failures += len(errors)
        return torch.tensor([(-math.inf if i in errors else scores[i]) for i in range(n)], dtype=torch.float32)


def failures_of(verifier) -> int:
    """Candidates scored -inf so far by the remote graders in a verifier (an ensemble's members and a
    pre-filter's screen and main verifier included)."""
    if isinstance(verifier, RemoteVLMVerifier):
        return verifier.failures
    return sum(failures_of(v) for v in inner_verifiers(verifier) if v is not verifier)


__all__ = ["RemoteVLMVerifier", "RemoteGraderError", "MODES", "ON_FAILURE", "QUESTIONS", "failures_of",
           "parse_base_url", "png_data_url"]
