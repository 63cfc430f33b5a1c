"""The one search pipeline: plan -> host -> strategy -> finalist step -> outputs.

SearchLoop (with or without a strategy node) runs through here; so does every
strategy, random search included.  The finalist step re-renders each finalist
that a stock node can replay, at batch 1 through exactly that node's call, so
``exact_winner`` means the same thing for every strategy:

* a finalist whose starting noise is the candidate noise of a seed (random
  search, coarse-to-fine finalists, a zero-order pivot, evolution's first
  generation): the stock KSampler / SamplerCustom call with that seed;
* a finalist made from another starting noise (zero-order neighbours, evolved
  noises): the stock SamplerCustomAdvanced call with the ``noise`` output;
* paths and particles: no stock node replays a lineage, so the search's own
  sample is returned.

A finalist already sampled alone over the whole schedule was made by that same
call (current ComfyUI) and is not sampled again.  Each finalist's ``replay``
in the report says which it is."""
from __future__ import annotations

import time
from typing import Any, Dict, List

import torch

from . import compat
from .devices import build as device_set
from .host import ComfyHost
from .noise import CandidateNoise, ExplicitNoise
from .progress import Progress
from .sampling import SamplingPlan, SearchInputError, decode, output_latent, scoring_vae
from .video import as_frames, score_videos
from ..search import Strategy, UnsupportedSamplerError, get_algorithm, run_strategy
from ..search import guard
from ..search.samplers import canonical, facts, names_where
from ..verifiers import prefilter
from ..verifiers.remote import failures_of
from ..verifiers.self_consistency import PREVIEW_MESSAGE, needs_preview
from ..search.report import Finalist, SearchReport


HELD_OUT_SAMPLES = 32  # finished candidates the held-out verifier scores (besides the winner), at most about


def run_search(plan: SamplingPlan, strategy, latent: Dict[str, Any], vae, verifier, prompt: str, seed: int,
               candidates: int, top_k: int, micro_batch: int = 0, exact_winner: bool = True,
               settings: Dict[str, Any] = None, held_out=None, video=None, workers=None, devices: str = "all"):
    """SearchLoop's outputs: (image, latent, top_k_images, report, winner_noise, best_seed, noise).
    ``video``: how video candidates are scored (a ``search.video.VideoScoring``; None = its default); for a video
    search the images are IMAGE batches of frames, video after video.
    ``workers``: (WorkerConfig, prompt, node id) to shard a random search over worker machines.
    ``devices``: the devices of this machine that sample candidates (``search.devices.parse_devices``)."""
    t0 = time.perf_counter()
    strategy = strategy if strategy is not None else Strategy("random")
    n, seed = int(candidates), int(seed)
    gen = plan.nfe_per_generation()
    if gen is None and (strategy.name != "random" or strategy.budget_nfe or strategy.coarse_steps):
        raise SearchInputError(f"'{get_algorithm(strategy.name).title}' with a budget counts NFEs, which sampler "
                               f"'{plan.sampler_label}' does not know in advance (it picks its own steps): pick a "
                               "fixed-step sampler")
    est = gen if gen is not None else max(1, plan.sigmas.numel() - 1)
    budget = int(strategy.budget_nfe) or n * est
    progress = Progress(total=budget + top_k * est, model=plan.model)
    batch = plan.micro_batch(n, micro_batch)
    if held_out is not None and needs_preview(held_out):
        raise SearchInputError(PREVIEW_MESSAGE)
    if needs_preview(verifier):
        f = facts(canonical(plan.sampler_function()))
        if f is None or not f.segmentable:
            raise SearchInputError(
                f"the self-consistency verifier stops each candidate's run at its preview step and continues it, "
                f"which sampler '{plan.sampler_label}' does not allow (a multistep or adaptive sampler would "
                f"change). Pick one of: {', '.join(names_where(segmentable=True))}")
    if workers is not None:
        from .worker_search import check_workers_allowed
        check_workers_allowed(strategy, plan, verifier, held_out)
    if held_out is not None and held_out is verifier:
        raise SearchInputError("the held-out verifier is the search's own verifier, so it cannot tell whether the "
                               "search fooled it: connect a different verifier (another model or an ensemble), or "
                               "leave held_out_verifier empty")
    failed_before = failures_of(verifier)
    vae = scoring_vae(plan, vae)  # LTX-Video guide frames (LTXV Add Guide) are not decoded as video
    lanes = device_set(plan, devices, vae)
    try:
        host = ComfyHost(plan, vae, verifier, prompt, progress, batch, mask_seed=seed, keep_images=top_k,
                         held_out=held_out, held_stride=guard.sample_stride(budget // max(1, est), HELD_OUT_SAMPLES),
                         video=video, devices=lanes)
        try:
            if workers is not None:  # the many-machines seam: shards of candidates on worker ComfyUI servers
                from .worker_search import sharded_search
                report, finalists = sharded_search(workers[0], workers[1], workers[2], plan, strategy, host, n, top_k,
                                                   seed, verifier, prompt, vae, progress)
            else:
                report, finalists = run_strategy(strategy, host, candidates=n, top_k=top_k, seed=seed,
                                                 verifier=getattr(verifier, "name", "verifier"))
        except (UnsupportedSamplerError, ValueError) as e:
            if isinstance(e, compat.InterruptProcessingException):
                raise
            raise SearchInputError(str(e)) from e
        if not finalists:
            raise SearchInputError(f"strategy '{strategy.name}' produced no candidate within its budget of "
                                   f"{budget} NFEs: raise the budget")
        if gen is None:  # an adaptive sampler picks its own steps: report what each candidate really spent
            counted = host.watch["row_nfe"]
            if len(counted) == len(report.candidates):
                for c in report.candidates:  # random search samples candidate i as row i, one at a time
                    c.nfe = int(counted[c.index])
                report.nfe_total = sum(int(v) for v in counted)
                spent = 0
                for t, v in zip(report.trace, counted):  # the trace's points are candidates, in order
                    spent += int(v)
                    t["nfe"] = spent
                report.notes.append("the sampler chooses its own steps: each candidate's NFEs are the model calls "
                                    "counted while it was sampled alone")
        images, latents = finish(plan, vae, verifier, prompt, report, finalists, progress, est, host,
                                 bool(exact_winner))
        progress.set(progress.total)
        report.prompt = prompt
        report.nfe_per_generation = gen
        report.cfg_multiplier = plan.cfg_multiplier()
        report.settings.update(settings or {})
        report.settings.update({
            "seed": seed, "candidates": n, "sampler": plan.sampler_label, "mode": plan.mode,
            "steps": int(plan.sigmas.numel() - 1), "micro_batch": host.batch, "per_candidate_noise": plan.separable,
            "nfe_known": gen is not None, "exact_winner": bool(exact_winner), "strategy": strategy.name,
            "strategy_params": dict(report.settings.get("params", {})), "budget_nfe": int(budget),
            "coarse_steps": int(strategy.coarse_steps)})
        if host.video is not None:
            report.settings["video"] = host.video_info()
            if report.settings["video"].get("note"):  # fewer frames than Video Scoring asks for
                report.notes.append(report.settings["video"]["note"])
        report.settings["devices"] = lanes.info()
        report.notes.extend(lanes.notes)
        note_verifier(report, verifier, host.book.matrix(), unit="videos" if host.video is not None else "images")
        if held_out is not None:
            with plan.clock.phase("verify"):
                report.held_out = held_out_report(host, report, finalists, images, verifier)
            if report.held_out["warning"]:
                report.notes.append(report.held_out["warning"])
        note_verifier(report, verifier, failed=failures_of(verifier) - failed_before)
        report.phases = plan.clock.to_dict(time.perf_counter() - t0)
        best = finalists[0]
        return (as_frames(images[:1]), output_latent(latent, latents[:1]), as_frames(images), report) + \
            winner_noise(plan, best)
    finally:
        lanes.release()  # the device copies (model clones, VAE copies) go with the search


def note_verifier(report: SearchReport, verifier, matrix: torch.Tensor = None, failed: int = None,
                  unit: str = "images") -> None:
    """What the verifier itself says in a report (Search Loop's and Verifier Score's): a pre-filter's savings
    (from the search's member ``matrix``) and a remote grader's failed answers (``failed``, scored -inf)."""
    if matrix is not None:
        pre = prefilter.summary(verifier, matrix)
        if pre is not None:
            report.settings["prefilter"] = pre
            report.notes.append(prefilter.note(pre, unit))
    if failed is not None:
        report.verifier_failures = int(failed)
        if failed:
            report.notes.append(f"the remote grader gave no valid answer for {failed} image(s), scored -inf "
                                "(on_failure = -inf): they rank last")


def finish(plan: SamplingPlan, vae, verifier, prompt: str, report: SearchReport, finalists: List[Finalist],
           progress: Progress, nfe_gen: int, host: ComfyHost, exact: bool):
    """The finalist step: each finalist's output latent and image, re-rendered through the stock call
    where that is what replays it (the search's own decoded image is reused otherwise)."""
    relative = host.relative
    images: List[torch.Tensor] = []
    latents: List[torch.Tensor] = []
    for f in finalists:
        res, kind = f.result, f.replay
        alone = f.batch == 1 and compat.SEEDED_DEFAULT_NOISE  # the stock call already made it
        if (exact or f.latent is None) and kind and not alone:  # no latent: scored on a worker machine
            with plan.clock.phase("rerender"):
                if kind == "ksampler":
                    lat = plan.render_stock(res.seed, None, progress, nfe_gen)
                else:
                    lat = plan.render_stock(f.seed, f.noise, progress, nfe_gen)
                img = decode(vae, lat)
                # a relative verifier has no meaning for one image alone, and a self-consistency one has no
                # preview of a stock re-render: they keep their search score
                if relative or needs_preview(verifier):
                    res.final_score = res.score
                elif host.video is not None:
                    res.final_score = float(score_videos(verifier, prompt, img, host.video)[0])
                else:
                    res.final_score = float(verifier.score(img, prompt)[0])
            report.rerender_nfe += nfe_gen
            res.replay = kind
        else:
            lat = f.latent
            img = host.image_of(lat)
            if img is None:
                with plan.clock.phase("decode"):
                    img = decode(vae, lat)
            res.final_score = res.score
            res.replay = kind if (kind and alone) else ("batched" if kind else "lineage")
        latents.append(lat.cpu())
        images.append(img.cpu())
    return torch.cat(images), torch.cat(latents)


def held_out_report(host: ComfyHost, report: SearchReport, finalists: List[Finalist], images: torch.Tensor,
                    verifier) -> Dict[str, Any]:
    """The guard's summary: the held-out verifier's scores of its sample and of the winner's output image."""
    w = host.watch
    book = w["book"]
    n = book.count
    book.add(images[:1])  # the winner as returned (after any exact re-render)
    held = book.all().tolist()
    search_all = host.rescore().tolist()
    rows = [{"nfe": r["nfe"], "search": float(search_all[r["row"]]), "held_out": float(held[i])}
            for i, r in enumerate(w["rows"])]
    best = finalists[0].result
    win = best.final_score if best.final_score is not None else best.score
    return guard.summary(search_name=getattr(verifier, "name", "verifier"),
                         held_out_name=getattr(w["held_out"], "name", "held-out verifier"),
                         search_scores=[c.score for c in report.candidates], winner_search=float(win),
                         sampled_search=[r["search"] for r in rows], sampled_held_out=held[:n],
                         winner_held_out=float(held[n]), top_k_images=images,
                         trace=guard.running_best_trace(rows), stride=w["stride"])


def winner_noise(plan: SamplingPlan, best: Finalist):
    """(winner_noise LATENT, best_seed, NOISE): the winner's starting noise, its KSampler seed (0 if none) and a
    NOISE that makes SamplerCustomAdvanced start from it (zeros for a lineage, which has no single noise)."""
    res = best.result
    if best.replay == "ksampler":
        return {"samples": plan.initial_noises([res.seed])}, int(res.seed), CandidateNoise(seeds=[res.seed])
    if best.noise is not None:
        return {"samples": best.noise.cpu()}, 0, ExplicitNoise(best.noise, int(best.seed or 0))
    zeros = torch.zeros_like(plan.template)
    return {"samples": zeros}, 0, ExplicitNoise(zeros, 0)
