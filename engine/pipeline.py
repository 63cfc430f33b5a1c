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
from .request import SearchRequest, SearchResult
from .host import ComfyHost
from .noise import CandidateNoise, ExplicitNoise
from .progress import Progress
from .sampling import SamplingPlan, SearchInputError
from .vae import decode, output_latent, scoring_vae
from .video import as_frames, score_videos
from .worker_search import check_workers_allowed, sharded_search
from ..search import UnsupportedSamplerError, get_algorithm, run_strategy
from ..search import guard
from ..search.samplers import canonical, facts, names_where
from ..verifiers import prefilter
from ..verifiers.protocol import name_of
from ..verifiers.remote import failures_of
from ..verifiers.self_consistency import PREVIEW_MESSAGE, needs_preview
from ..search.report import Finalist, SearchReport


HELD_OUT_SAMPLES = 32  # finished candidates the held-out verifier scores (besides the winner), at most about


def run_search(req: SearchRequest) -> SearchResult:
    """The search a node asked for: checks, lanes, host, strategy (or the workers' dispatcher), finalist step,
    report.  For a video search the images are IMAGE batches of frames, video after video."""
    t0 = time.perf_counter()
    plan, strategy, verifier, held_out = req.plan, req.strategy, req.verifier, req.held_out
    n, seed, top_k = int(req.candidates), int(req.seed), int(req.top_k)
    budget = req.budget()
    gen, est = budget.generation, budget.estimate
    if gen is None and (strategy.name != "random" or strategy.budget_nfe or strategy.coarse_steps):
        raise SearchInputError(f"'{get_algorithm(strategy.name).title}' with a budget counts NFEs, which sampler "
                               f"'{plan.sampler_label}' does not know in advance (it picks its own steps): pick a "
                               "fixed-step sampler")
    progress = Progress(total=budget.nfe + top_k * est, model=plan.model)
    batch = plan.micro_batch(n, int(req.micro_batch))
    if held_out is not None and needs_preview(held_out):
        raise SearchInputError(PREVIEW_MESSAGE)
    if needs_preview(verifier):
        f = facts(canonical(plan.sampler_function()))
        if f is None or not f.segmentable:
            raise SearchInputError(
                f"the self-consistency verifier stops each candidate's run at its preview step and continues it, "
                f"which sampler '{plan.sampler_label}' does not allow (a multistep or adaptive sampler would "
                f"change). Pick one of: {', '.join(names_where(segmentable=True))}")
    if req.workers is not None:
        check_workers_allowed(strategy, plan, verifier, held_out)
    if held_out is not None and held_out is verifier:
        raise SearchInputError("the held-out verifier is the search's own verifier, so it cannot tell whether the "
                               "search fooled it: connect a different verifier (another model or an ensemble), or "
                               "leave held_out_verifier empty")
    failed_before = failures_of(verifier)
    vae = scoring_vae(plan, req.vae)  # LTX-Video guide frames (LTXV Add Guide) are not decoded as video
    lanes = device_set(plan, req.devices, vae)
    try:
        host = ComfyHost(plan, vae, verifier, req.prompt, progress, batch, mask_seed=seed, keep_images=top_k,
                         held_out=held_out,
                         held_stride=guard.sample_stride(budget.nfe // max(1, est), HELD_OUT_SAMPLES),
                         video=req.video, devices=lanes)
        try:
            if req.workers is not None:  # the many-machines seam: shards of candidates on worker ComfyUI servers
                w = req.workers
                report, finalists = sharded_search(w.config, w.graph, w.node_id, plan, strategy, host, budget.nfe,
                                                   top_k, seed, verifier, req.prompt, vae, progress)
            else:
                report, finalists = run_strategy(strategy, host, budget_nfe=budget.nfe, candidates=n, top_k=top_k,
                                                 seed=seed, verifier=name_of(verifier))
        except (UnsupportedSamplerError, ValueError) as e:
            raise SearchInputError(str(e)) from e
        if not finalists:
            raise SearchInputError(f"strategy '{strategy.name}' produced no candidate within its budget of "
                                   f"{budget.nfe} NFEs: raise the budget")
        if gen is None:  # an adaptive sampler picks its own steps: report what each candidate really spent
            counted_nfe(host, report)
        images, latents = finish(plan, vae, verifier, req.prompt, report, finalists, progress, est, host,
                                 bool(req.exact_winner))
        progress.set(progress.total)
        report.prompt = req.prompt
        report.nfe_per_generation = gen
        report.cfg_multiplier = plan.cfg_multiplier()
        report.settings.update(req.settings or {})
        report.settings.update({
            "seed": seed, "candidates": n, "sampler": plan.sampler_label, "mode": plan.mode,
            "steps": int(plan.sigmas.numel() - 1), "micro_batch": host.batch, "per_candidate_noise": plan.separable,
            "nfe_known": gen is not None, "exact_winner": bool(req.exact_winner), "strategy": strategy.name,
            "strategy_params": dict(report.settings.get("params", {})), "budget_nfe": int(budget.nfe),
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
        noise_latent, best_seed, noise = winner_noise(plan, best)
        return SearchResult(as_frames(images[:1]), output_latent(req.latent, latents[:1]), as_frames(images),
                            report, noise_latent, best_seed, noise, messages=node_messages(report, held_out))
    finally:
        lanes.release()  # the device copies (model clones, VAE copies) go with the search


def counted_nfe(host: ComfyHost, report: SearchReport) -> None:
    """An adaptive sampler's real NFEs: the model calls counted for each candidate while it was sampled alone
    (random search samples candidate i as row i, one at a time)."""
    counted = host.row_nfe
    if len(counted) != len(report.candidates):
        return
    for c in report.candidates:
        c.nfe = int(counted[c.index])
    report.nfe_total = sum(int(v) for v in counted)
    spent = 0
    for t, v in zip(report.trace, counted):  # the trace's points are candidates, in order
        spent += int(v)
        t["nfe"] = spent
    report.notes.append("the sampler chooses its own steps: each candidate's NFEs are the model calls "
                        "counted while it was sampled alone")


def node_messages(report: SearchReport, held_out) -> List[str]:
    """What the node shows: shards re-assigned from failing workers, devices left out, videos shorter than Video
    Scoring asks for, the held-out guard."""
    lines = list((report.settings.get("workers") or {}).get("faults") or [])
    lines += list((report.settings.get("devices") or {}).get("left_out") or [])
    if (report.settings.get("video") or {}).get("note"):
        lines.append(report.settings["video"]["note"])
    if held_out is not None:
        lines.append(guard.message(report.held_out))
    return lines


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
        res, kind = f.result, f.stock_node
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
    held = host.held
    n = held.book.count
    held.book.add(images[:1])  # the winner as returned (after any exact re-render)
    scores = held.book.all().tolist()
    best = finalists[0].result
    win = best.final_score if best.final_score is not None else best.score
    return held.summary(search_name=name_of(verifier), search_all=host.rescore().tolist(),
                        search_scores=[c.score for c in report.candidates], winner_search=float(win),
                        winner_held_out=float(scores[n]), top_k_images=images, held=scores[:n])


def winner_noise(plan: SamplingPlan, best: Finalist):
    """(winner_noise LATENT, best_seed, NOISE): the winner's starting noise, its KSampler seed (0 if none) and a
    NOISE that makes SamplerCustomAdvanced start from it (zeros for a lineage, which has no single noise)."""
    res = best.result
    if best.stock_node == "ksampler":
        return {"samples": plan.initial_noises([res.seed])}, int(res.seed), CandidateNoise(seeds=[res.seed])
    if best.noise is not None:
        return {"samples": best.noise.cpu()}, 0, ExplicitNoise(best.noise, int(best.seed or 0))
    zeros = torch.zeros_like(plan.template)
    return {"samples": zeros}, 0, ExplicitNoise(zeros, 0)
