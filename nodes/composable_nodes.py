"""Composable search: candidates as a NOISE batch for any stock sampler, a
sampler wrapper that gives each candidate its own in-sampler noise stream, a
scorer for any IMAGE batch, and a picker."""
from __future__ import annotations

import comfy.samplers
import torch

from ..engine.noise import CandidateNoise, per_candidate_noise, per_candidate_noise_supported
from ..engine.pipeline import note_verifier
from ..engine.sampling import SearchInputError
from ..engine.types import CATEGORY, NOISE, SCORES, VERIFIER, VIDEO_SCORING
from ..engine.video import DEFAULT as DEFAULT_VIDEO_SCORING, FrameBook, as_frames
from ..search import guard
from ..search.common import checked_scores, top_k_indices
from ..search.noise import SEED_MAX, Candidate, seeds_for
from ..search.report import CandidateResult, SearchReport
from ..search.video import VideoInputError, split_videos
from ..verifiers.protocol import ScoreBook
from ..verifiers.remote import failures_of


class NoiseCandidateGenerator:
    DESCRIPTION = ("N search candidates as one NOISE batch for SamplerCustomAdvanced: candidate i has seed "
                   "seed + offset + i, the same noise SearchLoop gives that candidate. The sampler runs the whole "
                   "batch at once (VRAM grows with count): split a large search with offset/count over several "
                   "samplers.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = (NOISE,)
    RETURN_NAMES = ("noise",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustomAdvanced's noise; give it a batch-1 (or batch-count) latent.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": "randomize",
                             "tooltip": "Base seed: candidates are seed+offset ... seed+offset+count-1."}),
            "count": ("INT", {"default": 4, "min": 1, "max": 4096,
                              "tooltip": "Candidates in this batch (the sampler holds them all in VRAM at once)."}),
            "offset": ("INT", {"default": 0, "min": 0, "max": 1 << 30,
                               "tooltip": "First candidate index, to split one search over several samplers "
                                          "(0..15 with offset 0 and 16..31 with offset 16, ...)."}),
        }}

    def make(self, seed, count, offset):
        return (CandidateNoise(seeds_for(seed, offset, count), index_offset=offset),)


class CandidateSampler:
    DESCRIPTION = ("Wraps a SAMPLER so that, in SamplerCustomAdvanced with a Noise Candidate Generator's NOISE, "
                   "every candidate of the batch gets the in-sampler noise stream a batch-1 run with its own seed "
                   "would get (ancestral and SDE samplers draw their step noise for the whole batch from one stream "
                   "otherwise). With it, the composable search samples each candidate exactly as Search Loop does, "
                   "for every sampler.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustomAdvanced's sampler, next to the same NOISE.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sampler": ("SAMPLER", {"tooltip": "Any SAMPLER (KSamplerSelect, ...)."}),
            "noise": (NOISE, {"tooltip": "The Noise Candidate Generator whose NOISE goes into the same "
                                         "SamplerCustomAdvanced: its seeds key the candidates' streams."}),
        }}

    def make(self, sampler, noise):
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
        return (comfy.samplers.KSAMPLER(wrap(sampler.sampler_function), extra_options=dict(sampler.extra_options),
                                        inpaint_options=dict(sampler.inpaint_options)),)


def identities(n: int, noise=None):
    seeds = getattr(noise, "seeds", None)
    if seeds is not None and len(seeds) != n:
        raise SearchInputError(f"the NOISE names {len(seeds)} candidates but the image batch has {n}: connect "
                               "the NOISE that made this batch")
    off = getattr(noise, "index_offset", 0)
    return [Candidate(index=off + i, seed=(seeds[i] if seeds else None),
                      noise_id="" if seeds else f"image {i}") for i in range(n)]


class VerifierScore:
    DESCRIPTION = "Scores any IMAGE batch (e.g. a stock sampler's batch) with a verifier."
    CATEGORY = CATEGORY
    FUNCTION = "score"
    RETURN_TYPES = (SCORES,)
    RETURN_NAMES = ("scores",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The candidates' decoded images."}),
            "verifier": (VERIFIER, {"tooltip": "A verifier loader or ensemble."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "The text the verifier compares with."}),
        }, "optional": {
            "noise": (NOISE, {"tooltip": "The NoiseCandidateGenerator that made the batch: scores then carry seeds."}),
            "held_out_verifier": (VERIFIER, {
                "tooltip": "Optional over-optimisation guard: a second verifier that never chooses. It scores every "
                           "image; the report's held_out section compares the best image (by the verifier above) "
                           "with the median one on both, and a warning appears on the node when the best is below "
                           "the median on the held-out verifier."}),
            "frames_per_video": ("INT", {
                "default": 0, "min": 0, "max": 100000,
                "tooltip": "0: every image is a candidate. Above 0: the images are videos' frames, video after "
                           "video (VAE Decode of a video latent batch), this many per video; each video is one "
                           "candidate, scored on some of its frames (video_scoring)."}),
            "video_scoring": (VIDEO_SCORING, {
                "tooltip": "With frames_per_video: which frames of each video are scored and how they combine (a "
                           "Video Scoring node). Absent: first, middle and last frame, mean."}),
        }}

    def score(self, images, verifier, prompt, noise=None, held_out_verifier=None, frames_per_video=0,
              video_scoring=None):
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
            return {"ui": {"text": shown}, "result": (report,)} if shown else (report,)
        if held_out_verifier is verifier:
            raise SearchInputError("Verifier Score: the held-out verifier is the verifier that ranks, so it cannot "
                                   "tell whether the ranking fooled it: connect a different verifier")
        held = checked_scores(new_book(held_out_verifier).add(images), len(cands), labels,
                              held_out_verifier.name)
        order = sorted(range(len(cands)), key=lambda i: (-scores[i], i))
        best = order[0]
        top = images[torch.as_tensor(order[:max(2, report.top_k)], dtype=torch.long)] if len(cands) > 1 else None
        report.held_out = guard.summary(search_name=verifier.name, held_out_name=held_out_verifier.name,
                                        search_scores=scores, winner_search=scores[best], sampled_search=scores,
                                        sampled_held_out=held, winner_held_out=held[best], top_k_images=top)
        if report.held_out["warning"]:
            report.notes.append(report.held_out["warning"])
        return {"ui": {"text": ["\n".join(shown + [guard.message(report.held_out)])]}, "result": (report,)}


class BestPick:
    DESCRIPTION = ("Picks the best of a scored IMAGE batch (and its LATENT), ranks the top k, and names the winner. "
                   "The images are the batch's own samples: the same candidates Search Loop makes (ancestral/SDE "
                   "samplers through a Candidate Sampler) up to the floating-point round-off of batched kernels. "
                   "best_seed in a RandomNoise (or a KSampler) at batch 1 replays the winner exactly as a stock run, "
                   "which is what Search Loop's exact_winner outputs.")
    CATEGORY = CATEGORY
    FUNCTION = "pick"
    RETURN_TYPES = ("IMAGE", "LATENT", "IMAGE", "INT", "INT")
    RETURN_NAMES = ("best_image", "best_latent", "top_k_images", "best_index", "best_seed")
    OUTPUT_TOOLTIPS = ("The best image.", "Its latent (only when a LATENT batch is connected).",
                       "The top k, best first.", "The winner's position in the batch.",
                       "The winner's seed when the scores carry seeds (NoiseCandidateGenerator), else 0.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The scored batch."}),
            "scores": (SCORES, {"tooltip": "VerifierScore's output for this batch."}),
            "top_k": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "How many to return, best first."}),
        }, "optional": {
            "latent": ("LATENT", {"tooltip": "The batch's latents, to output the winner's."}),
            "noise": (NOISE, {"tooltip": "The NOISE that made the batch, to name the winner's seed."}),
        }}

    def pick(self, images, scores, top_k, latent=None, noise=None):
        cands = sorted(scores.candidates, key=lambda c: c.index)
        t = int(((scores.settings or {}).get("video") or {}).get("frames_per_video") or 0)
        if t and images.ndim == 4 and images.shape[0] == t * len(cands):  # scored videos: pick whole videos, return their frames
            picked = self.pick(split_videos(images, t), scores, top_k, latent, noise)
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


NODES = [
    (NoiseCandidateGenerator, "NoiseCandidateGenerator", "Noise Candidate Generator"),
    (CandidateSampler, "CandidateSampler", "Candidate Sampler (per-candidate noise)"),
    (VerifierScore, "VerifierScore", "Verifier Score"),
    (BestPick, "BestPick", "Best Pick"),
]
