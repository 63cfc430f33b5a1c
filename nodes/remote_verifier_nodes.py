"""The remote grader's loader node: a VLM on an OpenAI-compatible server (verifiers/remote.py).  No model is
loaded here and no request is made until something scores; the API key stays in the environment."""
from __future__ import annotations

import os

from .progress import throw_if_interrupted
from .types import CATEGORY, VERIFIER
from ..verifiers import remote


def _check(base_url, model, question, api_key_env):
    """The settings' error, or None."""
    try:
        remote.RemoteVLMVerifier(base_url, model, question=question, api_key_env=api_key_env)
    except ValueError as e:
        return str(e)
    env = (api_key_env or "").strip()
    if env and not os.environ.get(env):
        return (f"the environment variable {env} (api_key_env) is not set or empty in the environment ComfyUI runs "
                "in: set it to the API key and restart ComfyUI, or clear api_key_env for a server without a key")
    return None


class RemoteVLMVerifierLoader:
    DESCRIPTION = (
        "Remote grader: a vision-language model served elsewhere (vLLM, SGLang, llama.cpp's server, Ollama, a hosted "
        "API) through its OpenAI-compatible chat-completions endpoint, one request per image. Modes: vqascore = "
        "P(\"Yes\") from the first answer token's logprobs for 'Does this figure show \"{prompt}\"? Please answer yes "
        "or no.' (VQAScore, range [0, 1]; needs a server that returns logprobs); rubric = a 1-10 rating as JSON "
        "(JSON-schema output); yes_no = 1 for a JSON yes, 0 for no; higher is better. Only the base URL you set is "
        "contacted (no proxy, no redirect); the API key is read from the environment variable you name and is never "
        "saved in the workflow, the PNG or the report.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VERIFIER,)
    RETURN_NAMES = ("verifier",)
    OUTPUT_TOOLTIPS = ("A verifier for SearchLoop / VerifierScore / Verifier Ensemble.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "base_url": ("STRING", {"default": "", "tooltip": (
                "The server's OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, "
                "transformers serve), http://127.0.0.1:8080/v1 (llama.cpp), http://127.0.0.1:11434/v1 (Ollama). "
                "Requests go to <base_url>/chat/completions and nowhere else. Empty: the node refuses to run.")}),
            "model": ("STRING", {"default": "", "tooltip": "The model name the server serves the VLM under "
                                                           "(the 'model' field of the request)."}),
            "mode": (list(remote.MODES), {"default": "vqascore", "tooltip": (
                "vqascore: P(Yes) from the logprobs of a one-token answer (range [0, 1]; the server must return "
                "logprobs). rubric: a 1-10 score as JSON {\"score\": N} under a JSON-schema response_format. yes_no: "
                "JSON {\"answer\": \"yes\"|\"no\"} -> 1 or 0.")}),
            "question": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "The question asked with each image; {prompt} is replaced by the prompt (write literal braces as {{ "
                "and }}). Empty: the mode's own question, for vqascore 'Does this figure show \"{prompt}\"? Please "
                "answer yes or no.'")}),
            "api_key_env": ("STRING", {"default": "", "tooltip": (
                "The NAME of an environment variable holding the API key (e.g. OPENAI_API_KEY), read at each "
                "request and sent as a Bearer token. Never the key itself: only this name is saved in the workflow. "
                "Empty: no key is sent.")}),
            "concurrency": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip":
                                    "How many requests are in flight at once."}),
            "timeout": ("FLOAT", {"default": 60.0, "min": 1.0, "max": 3600.0, "step": 1.0, "tooltip": (
                "Seconds one attempt may wait for the connection and for each read; a batch waits at most "
                "(retries + 1) x timeout plus the backoffs per image.")}),
            "retries": ("INT", {"default": 2, "min": 0, "max": 10, "tooltip": (
                "Further attempts after a connection error, a timeout or HTTP 408/429/5xx (with backoff). A "
                "malformed answer is not retried.")}),
            "on_failure": (list(remote.ON_FAILURE), {"default": "error", "tooltip": (
                "error: a missing or malformed answer stops the run with a message naming the image. -inf: that "
                "image scores -inf (ranks last) and the search report's verifier_failures counts it; a batch in "
                "which every image failed is still an error.")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, base_url, model, question, api_key_env, **_):
        return _check(base_url, model, question, api_key_env) or True

    def load(self, base_url, model, mode, question, api_key_env, concurrency, timeout, retries, on_failure):
        err = _check(base_url, model, question, api_key_env)
        if err:
            raise ValueError(f"Remote VLM Verifier: {err}")
        return (remote.RemoteVLMVerifier(base_url, model, mode=mode, question=question, api_key_env=api_key_env,
                                         concurrency=concurrency, timeout=timeout, retries=retries,
                                         on_failure=on_failure, cancel=throw_if_interrupted),)


NODES = [
    (RemoteVLMVerifierLoader, "RemoteVLMVerifier", "Load Remote VLM Verifier (OpenAI-compatible)"),
]
