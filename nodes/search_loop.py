"""SearchLoop: search over starting noises with the model, sampler, VAE and
verifier already in the graph, then re-render the winners exactly as the
stock sampler would."""
from __future__ import annotations

from typing import List

import torch

from . import compat
from .engine import SamplingPlan, SearchInputError, decode, output_latent
from .host import ComfyHost
from .noise_objects import CandidateNoise, ExplicitNoise
from .verifier_host import combiner, member_matrix
from .types import CATEGORY, NOISE, SCORES, STRATEGY, VERIFIER
from ..search import Candidate, random_search
from ..search.host import UnsupportedSamplerError
from ..search.strategies import run_strategy
from ..search.noise import SEED_MAX, seeds_for

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
                                                 "mask (Set Latent Noise Mask) gives inpainting."}),
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
                "sampler_name": (compat.sampler_names(), {
                    "tooltip": "As in KSampler. Ancestral and SDE samplers get a noise stream per candidate (its own "
                               "seed), so results do not depend on the micro-batch; a sampler whose noise cannot be "
                               "separated runs one candidate at a time."}),
                "scheduler": (compat.scheduler_names(), {"tooltip": "As in KSampler."}),
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
                                        "tooltip": "Candidates sampled together. 0 = sized from free VRAM; halved "
                                                   "automatically on out-of-memory."}),
                "exact_winner": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "On: the top-k of random search are re-rendered at batch 1 through the stock sampler "
                               "call, so best_seed in a stock KSampler gives the output bit for bit (costs top_k "
                               "generations at batch 1). Off: the search's own batched samples are returned "
                               "(the same image up to floating-point round-off of batched kernels), no extra cost."}),
            },
        }

    def search(self, model, positive, negative, latent, vae, verifier, prompt, seed, candidates, top_k,
               sampler_name, scheduler, steps, cfg, denoise, sampler=None, sigmas=None, strategy=None,
               guider=None, micro_batch=0, exact_winner=True):
        n = int(candidates)
        if n < 1:
            raise SearchInputError(f"candidates must be at least 1, got {n}")
        if not 1 <= top_k <= n:
            raise SearchInputError(f"top_k ({top_k}) is larger than the number of candidates ({n}): "
                                   "lower top_k or raise candidates")
        plan = SamplingPlan(model, positive, negative, latent, cfg, sampler_name, scheduler, steps, denoise,
                            sampler=sampler, sigmas=sigmas, guider=guider)
        nfe_gen = plan.nfe_per_generation()
        est = nfe_gen if nfe_gen is not None else max(1, plan.sigmas.numel() - 1)
        if strategy is not None and strategy.budget_nfe and strategy.name == "random" and not strategy.coarse_steps:
            if nfe_gen is None:
                raise SearchInputError(f"an NFE budget needs a sampler whose NFEs are known in advance; "
                                       f"'{plan.sampler_label}' chooses its own step count: pick a fixed-step sampler")
            n = max(1, strategy.budget_nfe // nfe_gen)  # random search: as many full generations as fit
            if top_k > n:
                raise SearchInputError(f"the budget of {strategy.budget_nfe} NFEs buys {n} candidates at {nfe_gen} "
                                       f"NFEs each, fewer than top_k ({top_k}): raise the budget or lower top_k")
        elif strategy is not None and (strategy.name != "random" or strategy.coarse_steps):
            if nfe_gen is None:
                raise SearchInputError(f"strategy '{strategy.name}' counts its budget in NFEs, which sampler "
                                       f"'{plan.sampler_label}' does not know in advance: pick a fixed-step sampler")
            return self._search_strategy(plan, strategy, latent, vae, verifier, prompt, seed, n, top_k, nfe_gen,
                                         micro_batch)
        progress = compat.Progress(total=(n + top_k) * est, model=plan.model)
        batch = plan.micro_batch(n, micro_batch)

        cands = [Candidate(index=i, seed=s) for i, s in enumerate(seeds_for(seed, 0, n))]

        combine = combiner(verifier)

        def evaluate(chunk):
            seeds = [c.seed for c in chunk]
            gen = plan.generate(plan.initial_noises(seeds), seeds, progress)
            images = decode(vae, gen.latents)
            if combine is not None:  # relative verifier: raw member scores, recombined over all candidates
                scores = member_matrix(verifier, images, prompt)
            else:
                scores = verifier.score(images, prompt)
            # a relative search keeps every payload: the latent only (an image per candidate would be O(N) memory)
            payloads = [{"latent": gen.latents[j:j + 1].cpu(), "batch": gen.batch,
                         "image": images[j:j + 1].cpu() if combine is None else None}
                        for j in range(len(chunk))]
            return scores, gen.nfe, payloads

        report, kept = random_search(cands, evaluate, top_k, batch, is_oom=compat.is_oom,
                                     on_oom=lambda size, e: compat.free_memory_after_oom(),
                                     verifier=verifier.name, combine=combine,
                                     member_names=getattr(verifier, "member_names", ()))
        report.prompt = prompt
        report.nfe_per_generation = nfe_gen
        report.cfg_multiplier = plan.cfg_multiplier()
        report.settings = {"seed": int(seed), "candidates": n, "sampler": plan.sampler_label, "mode": plan.mode,
                           "scheduler": scheduler if plan.mode == "ksampler" else None,
                           "steps": int(plan.sigmas.numel() - 1), "cfg": float(cfg),
                           "denoise": float(denoise) if plan.mode == "ksampler" else None,
                           "micro_batch": batch, "per_candidate_noise": plan.separable,
                           "exact_winner": bool(exact_winner)}
        progress.grow_total(report.nfe_total + top_k * est)

        # --- re-render the top-k at batch 1, exactly as the stock node would
        winners = report.ranked()[:top_k]
        by_index = {c.index: c for c in cands}
        images: List[torch.Tensor] = []
        latents: List[torch.Tensor] = []
        for res in winners:
            p = kept[res.index]
            cand = by_index[res.index]
            needs = bool(exact_winner) and (p["batch"] > 1 or not compat.SEEDED_DEFAULT_NOISE)
            if needs:
                lat = plan.render_stock(cand.seed, None, progress, res.nfe)
                img = decode(vae, lat)
                # a relative verifier has no meaning for one image alone: keep its search score
                res.final_score = res.score if combine is not None else float(verifier.score(img, prompt)[0])
                report.rerender_nfe += res.nfe
            else:
                lat = p["latent"]
                img = p["image"] if p["image"] is not None else decode(vae, lat)
                res.final_score = res.score
            latents.append(lat.cpu())
            images.append(img.cpu())
        progress.set(progress.total)

        report.settings["strategy"] = "random"
        best = winners[0]
        best_noise = plan.initial_noises([best.seed])
        noise_obj = CandidateNoise(seeds=[best.seed])
        return (images[0], output_latent(latent, latents[0]), torch.cat(images), report,
                {"samples": best_noise}, int(best.seed), noise_obj)

    def _search_strategy(self, plan, strategy, latent, vae, verifier, prompt, seed, n, top_k, nfe_gen, micro_batch):
        """Any strategy other than plain random search, through the host seam."""
        budget = strategy.budget_nfe or n * nfe_gen
        progress = compat.Progress(total=budget + top_k * nfe_gen, model=plan.model)
        batch = plan.micro_batch(n, micro_batch)
        host = ComfyHost(plan, vae, verifier, prompt, progress, batch, mask_seed=int(seed))
        try:
            report, finalists = run_strategy(strategy, host, candidates=n, top_k=top_k, seed=int(seed))
        except (UnsupportedSamplerError, ValueError) as e:
            if isinstance(e, compat.InterruptProcessingException):
                raise
            raise SearchInputError(str(e)) from e
        progress.set(progress.total)
        report.prompt = prompt
        report.nfe_per_generation = nfe_gen
        report.cfg_multiplier = plan.cfg_multiplier()
        report.settings.update({"seed": int(seed), "candidates": n, "sampler": plan.sampler_label,
                                "mode": plan.mode, "steps": int(plan.sigmas.numel() - 1), "micro_batch": batch,
                                "strategy": strategy.name, "strategy_params": dict(strategy.params),
                                "budget_nfe": int(budget), "coarse_steps": int(strategy.coarse_steps)})
        if not finalists:
            raise SearchInputError(f"strategy '{strategy.name}' produced no candidate within its budget of "
                                   f"{budget} NFEs: raise the budget")
        latents = torch.cat([f["latent"].cpu() for f in finalists])
        images = decode(vae, latents).cpu()
        best = finalists[0]
        noise = best.get("noise")
        best_seed = int(best["seed"]) if best.get("seed") is not None else 0
        if noise is not None:
            winner_noise, noise_obj = noise.cpu(), ExplicitNoise(noise, best_seed)
        else:  # a path or particle: no single starting noise made it
            winner_noise = torch.zeros_like(plan.template)
            noise_obj = ExplicitNoise(winner_noise, best_seed)
        return (images[:1], output_latent(latent, latents[:1]), images, report, {"samples": winner_noise},
                best_seed, noise_obj)
