"""SearchLoop: search over starting noises with the model, sampler, VAE and
verifier already in the graph, then re-render the winners exactly as the
stock sampler would.  The node builds one ``SearchRequest`` from its inputs;
the engine (``engine/pipeline.py``) runs it."""
from __future__ import annotations

from ..engine.pipeline import run_search
from ..engine.request import SearchRequest, WorkerRequest
from ..engine.sampling import SamplingPlan, SearchInputError, sampler_names, scheduler_names
from ..engine.types import CATEGORY, NOISE, SCORES, STRATEGY, VERIFIER, VIDEO_SCORING, WORKERS
from ..search import Strategy
from ..search.noise import SEED_MAX

SEED_TOOLTIP = ("Base seed. Random-search candidate i uses seed + i, so candidates are seed ... seed+N-1: "
                "'increment' after each run would re-score N-1 of them, so this defaults to 'randomize'. "
                "The winner's seed (best_seed output) gives the same image in a stock KSampler.")


class SearchLoop:
    DESCRIPTION = ("Inference-time search (Ma et al. 2025): samples N candidate starting noises with your model "
                   "and sampler, scores the decoded images with a verifier, and returns the best. The winners are "
                   "re-rendered at batch 1 exactly as a stock KSampler would, so best_seed reproduces the image.")
    CATEGORY = CATEGORY
    FUNCTION = "search"
    RETURN_TYPES = ("IMAGE", "LATENT", "IMAGE", SCORES, "LATENT", "INT", NOISE)
    RETURN_NAMES = ("image", "latent", "top_k_images", "scores", "winner_noise", "best_seed", "noise")
    OUTPUT_TOOLTIPS = (
        "The winner, re-rendered at batch 1 through the stock sampler call.",
        "The winner's latent (from that re-render).",
        "The top-k candidates, best first (re-rendered).",
        "Every candidate's identity, seed, score, rank and NFEs, plus the search trace; "
        "convert it to JSON with 'Scores to JSON'.",
        "The winner's starting noise as a LATENT.",
        "The winner's seed (meaningful for random search): put it in a KSampler's seed to get the same image.",
        "The winner's starting noise as a NOISE object, for SamplerCustomAdvanced (current ComfyUI).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model (any patches applied by stock nodes are kept)."}),
                "positive": ("CONDITIONING", {"tooltip": "Positive conditioning, as for KSampler."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative conditioning, as for KSampler."}),
                "latent": ("LATENT", {"tooltip": "A batch-1 latent: an empty latent sets the size (text-to-image); "
                                                 "an encoded image with denoise < 1 gives image-to-image; a noise "
                                                 "mask (Set Latent Noise Mask) gives inpainting; LTX-Video "
                                                 "keyframes (LTXV Img To Video, LTXV Add Guide) are kept."}),
                "vae": ("VAE", {"tooltip": "Decodes candidates for the verifier."}),
                "verifier": (VERIFIER, {"tooltip": "What 'better' means: a verifier loader or an ensemble."}),
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "The text the verifier compares images with (usually your prompt)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": "randomize",
                                 "tooltip": SEED_TOOLTIP}),
                "candidates": ("INT", {"default": 8, "min": 1, "max": 4096,
                                       "tooltip": "N: the search budget, N full generations' worth of NFEs. "
                                                  "Random search samples N noises."}),
                "top_k": ("INT", {"default": 1, "min": 1, "max": 4096,
                                  "tooltip": "How many of the best candidates are re-rendered and returned."}),
                "sampler_name": (sampler_names(), {
                    "tooltip": "As in KSampler. Ancestral and SDE samplers get a noise stream per candidate (its own "
                               "seed), so results do not depend on the micro-batch; a sampler whose noise cannot be "
                               "separated runs one candidate at a time."}),
                "scheduler": (scheduler_names(), {"tooltip": "As in KSampler."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "As in KSampler."}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "As in KSampler."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "As in KSampler: below 1 with an encoded image = image-to-image."}),
            },
            "optional": {
                "sampler": ("SAMPLER", {"tooltip": "Overrides sampler_name (any SAMPLER, as SamplerCustom takes)."}),
                "sigmas": ("SIGMAS", {"tooltip": "Overrides steps/scheduler/denoise (as SamplerCustom takes)."}),
                "strategy": (STRATEGY, {"tooltip": "A search strategy node; absent = random search (best of N)."}),
                "guider": ("GUIDER", {"tooltip": "Current ComfyUI: any GUIDER (CFGGuider, BasicGuider for FLUX...). "
                                                 "Replaces model/positive/negative/cfg for sampling."}),
                "micro_batch": ("INT", {"default": 0, "min": 0, "max": 4096,
                                        "tooltip": "Candidates sampled together (on each device). 0 = sized from "
                                                   "free VRAM (on the "
                                                   "CPU: one at a time, so Cancel lands within one step); halved "
                                                   "automatically on out-of-memory."}),
                "exact_winner": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "On: every top-k finalist a stock node can replay is re-rendered at batch 1 through "
                               "that node's call: a seed through KSampler (best_seed gives the output bit for bit), "
                               "a zero-order / evolved noise through SamplerCustomAdvanced with the noise output. "
                               "Costs top_k generations at batch 1. Off: the search's own batched samples are "
                               "returned (the same images up to floating-point round-off), no extra cost. Paths and "
                               "particles are always the search's own samples."}),
                "held_out_verifier": (VERIFIER, {
                    "tooltip": "Optional over-optimisation guard: a second verifier that never chooses. It scores "
                               "the winner and a sample of about 32 finished candidates; the report's held_out "
                               "section compares the winner with the median candidate on both verifiers, and a "
                               "warning appears on the node when the search score rose while the held-out score "
                               "fell below the median."}),
                "video_scoring": (VIDEO_SCORING, {
                    "tooltip": "Video models only: which frames of each candidate the image verifier scores and how "
                               "they combine (a Video Scoring node). Absent: first, middle and last frame, mean. "
                               "A video search returns frames (image, top_k_images: video after video)."}),
                "model_2": ("MODEL", {
                    "tooltip": "Two experts (Wan 2.2 14B): the low-noise model. 'model' samples steps 0 to "
                               "switch_step, model_2 the rest, as ComfyUI's template chains two KSamplerAdvanced "
                               "(the first returns with leftover noise, the second adds none). KSampler widgets "
                               "only, denoise 1; both need the same schedule (the same shift)."}),
                "switch_step": ("INT", {
                    "default": 0, "min": 0, "max": 10000,
                    "tooltip": "With model_2: the step where sampling switches to it (the first KSamplerAdvanced's "
                               "end_at_step, the second's start_at_step). The winner replays in that chain with "
                               "best_seed as the first sampler's noise_seed (and the second's too for ancestral / "
                               "SDE samplers)."}),
                "workers": (WORKERS, {
                    "tooltip": "Optional: a Search Workers node. Other ComfyUI servers sample and score shards of the "
                               "candidates (random search) and send back scores only; this machine picks the "
                               "winners and re-renders them."}),
                "devices": ("STRING", {
                    "default": "all",
                    "tooltip": "The devices of this machine that sample the candidates: 'all' = every GPU ComfyUI "
                               "can use; or GPU numbers such as '0,1' (or 'cuda:0,cuda:1'). Each GPU gets its own "
                               "copy of the model and a share of every round's candidates, sampled at once; the "
                               "results do not depend on the GPU; each GPU decodes its share with its own VAE "
                               "copy, and scoring and the winner's exact re-render run on the model's own GPU. "
                               "A GPU the weights do not fit on is left out "
                               "(said on the node and in the report). The copies are released when the search ends. "
                               "Name each device once; 'cpu' (up to twice) is for testing."}),
            },
            # this node's own prompt and id: sent, cut to its inputs, to worker machines (Search Workers)
            "hidden": {"infscale_graph": "PROMPT", "infscale_node": "UNIQUE_ID"},
        }

    def search(self, model, positive, negative, latent, vae, verifier, prompt, seed, candidates, top_k,
               sampler_name, scheduler, steps, cfg, denoise, sampler=None, sigmas=None, strategy=None,
               guider=None, micro_batch=0, exact_winner=True, held_out_verifier=None, video_scoring=None,
               model_2=None, switch_step=0, workers=None, devices="all", infscale_graph=None, infscale_node=None):
        n = int(candidates)
        if n < 1:
            raise SearchInputError(f"candidates must be at least 1, got {n}")
        if not 1 <= top_k <= n:
            raise SearchInputError(f"top_k ({top_k}) is larger than the number of candidates ({n}): "
                                   "lower top_k or raise candidates")
        plan = SamplingPlan(model, positive, negative, latent, cfg, sampler_name, scheduler, steps, denoise,
                            sampler=sampler, sigmas=sigmas, guider=guider, model_2=model_2,
                            switch_step=int(switch_step))
        settings = {"scheduler": scheduler if plan.mode == "ksampler" else None, "cfg": float(cfg),
                    "denoise": float(denoise) if plan.mode == "ksampler" else None}
        if plan.model_2 is not None:
            settings["switch_step"] = plan.switch
        result = run_search(SearchRequest(
            plan=plan, latent=latent, vae=vae, verifier=verifier, prompt=prompt, seed=int(seed), candidates=n,
            top_k=int(top_k), strategy=strategy if strategy is not None else Strategy("random"),
            micro_batch=int(micro_batch), exact_winner=bool(exact_winner), settings=settings,
            held_out=held_out_verifier, video=video_scoring, devices=devices,
            workers=None if workers is None else WorkerRequest(workers, infscale_graph, infscale_node)))
        if not result.messages:
            return result.outputs()
        return {"ui": {"text": ["\n".join(result.messages)]}, "result": result.outputs()}


NODES = [(SearchLoop, "SearchLoop", "Search Loop (best of N)")]
