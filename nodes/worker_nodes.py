"""The worker nodes: Search Workers (which ComfyUI servers help, a pool the operator configured) and Search
Shard (what a worker runs).  The search over workers is ``engine/worker_search.py``."""
from __future__ import annotations

import json

from .search_loop import SearchLoop
from ..engine import endpoints
from ..engine.sampling import SamplingPlan, SearchInputError
from ..engine.types import CATEGORY, WORKERS
from ..engine.worker_search import NOT_SENT, SHARD_NODE, answer_shard
from ..engine.workers import WorkerConfig


class SearchWorkers:
    DESCRIPTION = ("Other ComfyUI servers that help Search Loop: each runs a shard of the candidates (this pack and "
                   "the same model, VAE and verifier files under the same names must be installed there) and sends "
                   "back scores only; this machine checks a sample of their scores itself, picks the winners and "
                   "re-renders them. Every strategy. The workers are a pool the server's operator lists in "
                   f"{endpoints.ENDPOINTS_FILE} (ComfyUI's user folder), or ComfyUI-Distributed's workers: a "
                   "workflow picks a pool by name and can never add an address. A worker that fails, answers "
                   "nonsense or disappears has its shard re-run elsewhere; one whose scores fail the check is "
                   "dropped; one whose files differ is refused.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = (WORKERS,)
    RETURN_NAMES = ("workers",)
    OUTPUT_TOOLTIPS = ("Connect to Search Loop's workers input.",)

    @classmethod
    def INPUT_TYPES(cls):
        eps = endpoints.load()
        return {"required": {
            # the widget keeps its name (saved workflows reference it); it now picks a pool by name
            "worker_urls": (endpoints.choices(sorted(eps.pools)), {
                "tooltip": "The worker pool: a named group of worker ComfyUI servers that the server's operator "
                           f"configured in {endpoints.ENDPOINTS_FILE} in ComfyUI's user folder (or the file named "
                           f"by ${endpoints.ENDPOINTS_FILE_ENV}), plus ComfyUI-Distributed's workers when that "
                           "pack is installed. 'none configured': the operator has listed none yet "
                           "(docs/endpoints.md). Only the pool's servers are ever contacted."}),
            "timeout_s": ("INT", {"default": 600, "min": 5, "max": 86400,
                                  "tooltip": "Seconds one shard may take on a worker (wall clock) before it is "
                                             "interrupted and its candidates re-run elsewhere; the operator's "
                                             "limit for the pool caps it."}),
            "local_shards": ("BOOLEAN", {"default": True,
                                         "tooltip": "On: this machine samples shards too. Off: only the workers do "
                                                    "(this machine still checks their scores, re-renders the "
                                                    "winners, and takes over the shards when every worker has "
                                                    "failed)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, worker_urls):
        try:
            endpoints.pool(worker_urls)
        except endpoints.EndpointError as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, worker_urls, **_):
        """Runs again when the operator's pool changed (the endpoint list is read at run time)."""
        return endpoints.change_key(endpoints.pool, worker_urls)

    def make(self, worker_urls, timeout_s, local_shards):
        try:
            pool = endpoints.pool(worker_urls)
        except endpoints.EndpointError as e:
            raise SearchInputError(f"Search Workers: {e}") from None
        return (WorkerConfig.from_pool(pool, float(timeout_s), bool(local_shards)),)


class SearchShard:
    DESCRIPTION = ("What a worker machine runs for Search Loop (sent there by Search Workers; not placed by hand): "
                   "samples and scores a range of a random search's candidates exactly as Search Loop does, and "
                   "returns their ids, seeds, scores, NFEs and a fingerprint of the model, verifier and settings as "
                   "JSON text, never images.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("json",)
    OUTPUT_TOOLTIPS = ("The shard's answer (JSON).",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        spec = SearchLoop.INPUT_TYPES()
        required = dict(spec["required"])
        required["shard"] = ("STRING", {"default": "", "tooltip": "The shard, written by Search Loop: candidate "
                                                                   "range, base seed, token and a digest of the "
                                                                   "master's fingerprint (JSON)."})
        optional = {k: v for k, v in spec["optional"].items() if k not in NOT_SENT}
        return {"required": required, "optional": optional}

    def run(self, model, positive, negative, latent, vae, verifier, prompt, seed, candidates, top_k, sampler_name,
            scheduler, steps, cfg, denoise, shard, sampler=None, sigmas=None, guider=None, micro_batch=0, **_):
        plan = SamplingPlan(model, positive, negative, latent, cfg, sampler_name, scheduler, steps, denoise,
                            sampler=sampler, sigmas=sigmas, guider=guider)
        out = answer_shard(plan, vae, verifier, prompt, int(seed), int(micro_batch), shard)
        text = json.dumps(out)
        return {"ui": {"text": [text]}, "result": (text,)}


NODES = [
    (SearchWorkers, "SearchWorkers", "Search Workers"),
    (SearchShard, SHARD_NODE, "Search Shard (worker)"),
]
