"""The remote grader's loader: a VLM on an OpenAI-compatible server (verifiers/remote.py).  No model is loaded
here and no request is made until something scores.  The server, its model and the name of its API key's
environment variable come from the operator's endpoint list (engine/endpoints.py): a workflow picks a grader by
name, never a URL or a variable."""
from __future__ import annotations

from . import Loader
from .. import endpoints
from ..progress import throw_if_interrupted
from ...verifiers import remote
from ...verifiers.net import shorten


def _grader_and_model(base_url: str, model: str):
    """(the operator's grader, the model to ask for); EndpointError when the workflow asks for more."""
    g = endpoints.grader(base_url)
    model = (model or "").strip()
    if model and model != g.model and model not in g.models:
        raise endpoints.EndpointError(
            f"grader '{g.name}' serves model '{g.model}'" + (f" (or {', '.join(g.models)})" if g.models else "")
            + f", not '{shorten(model, 80)}': leave model empty for the grader's own, or ask the operator to add it "
            f"to the grader's 'models' in {endpoints.where_text()}")
    return g, model or g.model


def _check(base_url, model, question, api_key_env):
    """The settings' error, or None."""
    try:
        err = endpoints.check_key_env_widget(api_key_env)
        if err:
            return err
        g, model = _grader_and_model(base_url, model)
        remote.RemoteVLMVerifier(g.base_url, model, question=question, api_key_env=g.api_key_env)
    except ValueError as e:  # EndpointError too
        return str(e)
    return None


def inputs():
    eps = endpoints.load()
    return {"required": {
        # widget names kept (saved workflows reference them): base_url now picks a grader by name
        "base_url": (endpoints.choices(sorted(eps.graders)), {"tooltip": (
            "The remote grader: one the server's operator configured in "
            f"{endpoints.ENDPOINTS_FILE} in ComfyUI's user folder (or the file named by "
            f"${endpoints.ENDPOINTS_FILE_ENV}), with its base URL, model and API key variable. Requests go to "
            "<its base URL>/chat/completions and nowhere else. 'none configured': the operator has listed none "
            "yet (docs/endpoints.md).")}),
        "model": ("STRING", {"default": "", "tooltip": (
            "Empty: the grader's own model. Otherwise one of the further models the operator allows for this "
            "grader.")}),
        "mode": (list(remote.MODES), {"default": "vqascore", "tooltip": (
            "vqascore: P(Yes) from the logprobs of a one-token answer (range [0, 1]; the server must return "
            "logprobs). rubric: a 1-10 score as JSON {\"score\": N} under a JSON-schema response_format. yes_no: "
            "JSON {\"answer\": \"yes\"|\"no\"} -> 1 or 0.")}),
        "question": ("STRING", {"default": "", "multiline": True, "tooltip": (
            "The question asked with each image; {prompt} is replaced by the prompt (write literal braces as {{ "
            "and }}). Empty: the mode's own question, for vqascore 'Does this figure show \"{prompt}\"? Please "
            "answer yes or no.'")}),
        "api_key_env": ([endpoints.FROM_OPERATOR], {"tooltip": (
            "The API key's environment variable is named by the operator for each grader, never by a "
            "workflow; this widget stays for workflows saved before.")}),
        "concurrency": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip":
                                "How many requests are in flight at once (at most the operator's limit)."}),
        "timeout": ("FLOAT", {"default": 60.0, "min": 1.0, "max": 3600.0, "step": 1.0, "tooltip": (
            "Seconds one attempt may take, wall clock: connect, send and read together (at most the operator's "
            "limit); a batch waits at most (retries + 1) x timeout plus the backoffs per image.")}),
        "retries": ("INT", {"default": 2, "min": 0, "max": 10, "tooltip": (
            "Further attempts after a connection error, a timeout or HTTP 408/429/5xx (with backoff; at most "
            "the operator's limit). A malformed answer is not retried.")}),
        "on_failure": (list(remote.ON_FAILURE), {"default": "error", "tooltip": (
            "error: a missing, malformed or oversized answer stops the run with a message naming the image. "
            "-inf: that image scores -inf (ranks last) and the search report's verifier_failures counts it; a "
            "batch in which every image failed is still an error.")}),
    }}


def validate(base_url, model, question, api_key_env):
    return _check(base_url, model, question, api_key_env) or True


def changed(base_url, **_):
    """Loads again when the operator's grader changed (the endpoint list is read at run time)."""
    return endpoints.change_key(endpoints.grader, base_url)


def load(base_url, model, mode, question, api_key_env, concurrency, timeout, retries, on_failure):
    err = _check(base_url, model, question, api_key_env)
    if err:
        raise ValueError(f"Remote VLM Verifier: {err}")
    g, model = _grader_and_model(base_url, model)
    return remote.RemoteVLMVerifier(g.base_url, model, mode=mode, question=question, api_key_env=g.api_key_env,
                                    concurrency=min(int(concurrency), g.max_concurrency),
                                    timeout=min(float(timeout), g.timeout_s),
                                    retries=min(int(retries), g.max_retries), on_failure=on_failure,
                                    cancel=throw_if_interrupted, limits=g.limits(), label=g.name)


DESCRIPTION = (
    "Remote grader: a vision-language model served elsewhere (vLLM, SGLang, llama.cpp's server, Ollama, a hosted "
    "API) through its OpenAI-compatible chat-completions endpoint, one request per image. The server's operator "
    f"lists the graders this server may use in {endpoints.ENDPOINTS_FILE} (ComfyUI's user folder): base URL, "
    "model, the environment variable holding the API key, and limits. A workflow picks one by name. Modes: "
    "vqascore = P(\"Yes\") from the first answer token's logprobs for 'Does this figure show \"{prompt}\"? Please "
    "answer yes or no.' (VQAScore, range [0, 1]; needs a server that returns logprobs); rubric = a 1-10 rating "
    "as JSON (JSON-schema output); yes_no = 1 for a JSON yes, 0 for no; higher is better. The API key is never "
    "saved in the workflow, the PNG or the report.")

LOADERS = [
    Loader("remote_vlm", "RemoteVLMVerifier", "Load Remote VLM Verifier (OpenAI-compatible)", DESCRIPTION, inputs,
           load, validate, changed),
]
