"""Composable search: candidates as a NOISE batch for any stock sampler, a
sampler wrapper that gives each candidate its own in-sampler noise stream, a
scorer for any IMAGE batch, and a picker."""
from __future__ import annotations

from ..engine.composable import best_pick, candidate_sampler, score_images
from ..engine.noise import CandidateNoise
from ..engine.types import CATEGORY, NOISE, SCORES, VERIFIER, VIDEO_SCORING
from ..search.noise import SEED_MAX, seeds_for


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
        return (candidate_sampler(sampler, noise),)


class VerifierScore:
    DESCRIPTION = "Scores any IMAGE batch (e.g. a stock sampler's batch) with a verifier."
    CATEGORY = CATEGORY
    FUNCTION = "score"
    RETURN_TYPES = (SCORES,)
    RETURN_NAMES = ("scores",)
    OUTPUT_TOOLTIPS = ("One score per image, with the verifier's name: connect to Best Pick (or Scores To JSON to "
                       "read them).",)

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
        report, shown = score_images(images, verifier, prompt, noise, held_out_verifier, frames_per_video,
                                     video_scoring)
        return {"ui": {"text": ["\n".join(shown)]}, "result": (report,)} if shown else (report,)


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
        return best_pick(images, scores, top_k, latent, noise)


NODES = [
    (NoiseCandidateGenerator, "NoiseCandidateGenerator", "Noise Candidate Generator"),
    (CandidateSampler, "CandidateSampler", "Candidate Sampler (per-candidate noise)"),
    (VerifierScore, "VerifierScore", "Verifier Score"),
    (BestPick, "BestPick", "Best Pick"),
]
