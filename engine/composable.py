"""The composable search's engine calls (the nodes are ``nodes/composable_nodes.py``): the per-candidate
noise sampler wrapper, scoring any IMAGE batch with a verifier (and the held-out guard, through the same
:class:`~.observers.HeldOutSample` as Search Loop), and picking the best of a scored batch."""
from __future__ import annotations

import comfy.samplers
import torch

from .noise import per_candidate_noise, per_candidate_noise_supported
from .observers import HeldOutSample, Tally
from .pipeline import note_verifier
from .sampling import SearchInputError
from .video import DEFAULT as DEFAULT_VIDEO_SCORING, FrameBook, as_frames
from ..search import guard
from ..search.common import checked_scores, top_k_indices
from ..search.noise import Candidate
from ..search.report import CandidateResult, SearchReport
from ..search.video import VideoInputError, split_videos
from ..verifiers.protocol import ScoreBook
from ..verifiers.remote import failures_of


def candidate_sampler(sampler, noise):
    """Candidate Sampler: ``sampler`` wrapped so every candidate of the NOISE's batch gets its own in-sampler
    noise stream."""
    seeds = getattr(noise, "seeds", None)
    if not seeds:
        raise SearchInputError("Candidate Sampler needs the NOISE of a Noise Candidate Generator (it names one "
                               "seed per candidate); this NOISE carries no candidate seeds")
    seeds = list(seeds)
    if not per_candidate_noise_supported(sampler):
        raise SearchInputError("Candidate Sampler cannot give this sampler's candidates separate noise streams "
                               "(its noise does not come from ComfyUI's k-diffusion noise samplers): run its "
                               "candidates through Search Loop, which samples such samplers one at a time")

    def wrap(fn):
        def wrapped(model, x, sigmas, *args, **kwargs):
            if x.shape[0] != len(seeds):
                raise SearchInputError(f"Candidate Sampler: the batch has {x.shape[0]} candidates but the NOISE "
                                       f"names {len(seeds)}: use the same NOISE in SamplerCustomAdvanced")
            with per_candidate_noise(seeds, seeds[0], x.shape):
                return fn(model, x, sigmas, *args, **kwargs)
        wrapped.__name__ = getattr(fn, "__name__", "sampler")
        return wrapped
    return comfy.samplers.KSAMPLER(wrap(sampler.sampler_function), extra_options=dict(sampler.extra_options),
                                    inpaint_options=dict(sampler.inpaint_options))


def identities(n: int, noise=None):
    seeds = getattr(noise, "seeds", None)
    if seeds is not None and len(seeds) != n:
        raise SearchInputError(f"the NOISE names {len(seeds)} candidates but the image batch has {n}: connect "
                               "the NOISE that made this batch")
    off = getattr(noise, "index_offset", 0)
    return [Candidate(index=off + i, seed=(seeds[i] if seeds else None),
                      noise_id="" if seeds else f"image {i}") for i in range(n)]


def score_images(images, verifier, prompt, noise=None, held_out_verifier=None, frames_per_video=0,
                 video_scoring=None):
    """Verifier Score: the report of a scored IMAGE batch (videos' frames with ``frames_per_video``), and the
    lines shown on the node."""
    if images.shape[0] == 0:
        raise SearchInputError("Verifier Score got an empty IMAGE batch (0 images): connect the decoded "
                               "candidates (VAE Decode of the sampler's output)")
    scoring = None
    if int(frames_per_video) > 0:
        try:
            images = split_videos(images, int(frames_per_video))  # N x T x H x W x 3
        except VideoInputError as e:
            raise SearchInputError(f"Verifier Score: {e}") from e
        scoring = video_scoring or DEFAULT_VIDEO_SCORING
    elif video_scoring is not None:
        raise SearchInputError("Verifier Score got a video_scoring but frames_per_video is 0: set "
                               "frames_per_video to the frame count of one video")

    def new_book(v):  # an ensemble ranks / standardises over this batch
        if scoring is None:
            return ScoreBook(v, prompt)
        try:
            return FrameBook(v, prompt, scoring)
        except VideoInputError as e:
            raise SearchInputError(f"Verifier Score: {e}") from e
    cands = identities(images.shape[0], noise)
    book = new_book(verifier)
    labels = [c.label() for c in cands]
    failed_before = failures_of(verifier)
    scores = checked_scores(book.add(images), len(cands), labels, verifier.name)
    failed = failures_of(verifier) - failed_before
    for name, col, rows in book.columns():
        checked_scores(col, len(rows), [labels[r] for r in rows], name)
    report = SearchReport(algorithm="external", verifier=verifier.name, prompt=prompt, top_k=1)
    report.candidates = [CandidateResult(index=c.index, seed=c.seed, noise_id=c.noise_id, score=s, nfe=0,
                                         verifier_scores=book.members(i))
                         for i, (c, s) in enumerate(zip(cands, scores))]
    note_verifier(report, verifier, failed=failed)
    if scoring is not None:
        report.settings["video"] = book.info()
        if report.settings["video"].get("note"):  # fewer frames than Video Scoring asks for
            report.notes.append(report.settings["video"]["note"])
        if scoring.pruning:
            report.notes.append("preview_keep prunes Search Loop's candidates before decoding; Verifier Score "
                                "gets frames already decoded and scores them all")
    report.finalize()
    note_verifier(report, verifier, book.matrix(), unit="videos" if scoring is not None else "images")
    shown = [report.settings["video"]["note"]] if (report.settings.get("video") or {}).get("note") else []
    if held_out_verifier is None:
        return report, shown
    if held_out_verifier is verifier:
        raise SearchInputError("Verifier Score: the held-out verifier is the verifier that ranks, so it cannot "
                               "tell whether the ranking fooled it: connect a different verifier")
    sample = HeldOutSample(held_out_verifier, new_book(held_out_verifier), stride=1, tally=Tally())
    sample.observe(images, range(len(cands)), len(cands), 0, None)  # every image, never to choose
    held = checked_scores(sample.book.all(), len(cands), labels, held_out_verifier.name)
    order = sorted(range(len(cands)), key=lambda i: (-scores[i], i))
    best = order[0]
    top = images[torch.as_tensor(order[:max(2, report.top_k)], dtype=torch.long)] if len(cands) > 1 else None
    report.held_out = sample.summary(search_name=verifier.name, search_all=scores, search_scores=scores,
                                     winner_search=scores[best], winner_held_out=held[best], top_k_images=top,
                                     held=held, with_trace=False)
    if report.held_out["warning"]:
        report.notes.append(report.held_out["warning"])
    return report, shown + [guard.message(report.held_out)]


def best_pick(images, scores, top_k, latent=None, noise=None):
    """Best Pick: (best image, its latent, the top k, the winner's position, its seed or 0)."""
    cands = sorted(scores.candidates, key=lambda c: c.index)
    t = int(((scores.settings or {}).get("video") or {}).get("frames_per_video") or 0)
    if t and images.ndim == 4 and images.shape[0] == t * len(cands):  # scored videos: pick whole videos, return their frames
        picked = best_pick(split_videos(images, t), scores, top_k, latent, noise)
        return (as_frames(picked[0]), picked[1], as_frames(picked[2])) + picked[3:]
    n = images.shape[0]
    if n == 0:
        raise SearchInputError("Best Pick got an empty IMAGE batch (0 images): connect the scored candidates")
    if len(cands) != n:
        raise SearchInputError(f"{len(cands)} scores for {n} images: score this same batch")
    if top_k > n:
        raise SearchInputError(f"top_k ({top_k}) is larger than the batch ({n})")
    order = top_k_indices([c.score for c in cands], top_k)
    best = order[0]
    seed = cands[best].seed
    if seed is None and noise is not None and getattr(noise, "seeds", None):
        seed = identities(n, noise)[best].seed
    out_latent = None  # nothing to pick from: a node using it fails there, no placeholder is made up
    if latent is not None:
        s = latent["samples"]
        if s.shape[0] != n:
            raise SearchInputError(f"the LATENT batch has {s.shape[0]} items but the images {n}")
        out_latent = {k: v for k, v in latent.items() if k not in ("samples", "batch_index", "noise_mask")}
        out_latent["samples"] = s[best:best + 1]
    return (images[best:best + 1], out_latent, images[order], int(best), int(seed) if seed is not None else 0)
