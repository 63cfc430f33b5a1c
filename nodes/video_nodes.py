"""The video nodes: Video Scoring (which frames of each candidate an image verifier scores) and the ranked
Video Contact Sheet.  How videos are scored is ``engine/video.py``."""
from __future__ import annotations

from ..engine.outputs import contact_sheet
from ..engine.types import CATEGORY, SCORES, VIDEO_SCORING
from ..search.video import AGGREGATES, PICKS, VideoInputError, VideoScoring


class VideoScoringNode:
    DESCRIPTION = ("How Search Loop and Verifier Score score video candidates with an image verifier: which frames "
                   "of each candidate are decoded-and-scored (first / middle / last, or k evenly spaced) and how "
                   "their scores combine into the candidate's score (mean, or min: a video is as good as its worst "
                   "frame). Without this node a video is scored on its first, middle and last frames, mean. With a "
                   "causal video VAE (Wan 2.1, 2.2) only the leading latent frames the scored frames need are "
                   "decoded; preview_keep below 1 prunes candidates on their latent preview before any decode.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = (VIDEO_SCORING,)
    RETURN_NAMES = ("video_scoring",)
    OUTPUT_TOOLTIPS = ("Connect to Search Loop's (or Verifier Score's) video_scoring input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pick": (list(PICKS), {"default": PICKS[0],
                                   "tooltip": "first/middle/last: three frames (frames is not used); evenly spaced: "
                                              "'frames' frames from the first to the last; first: the first "
                                              "frame alone (cheapest: with Wan's VAE only the first latent "
                                              "frame is decoded)."}),
            "frames": ("INT", {"default": 3, "min": 1, "max": 1024,
                               "tooltip": "k, the frames scored per candidate when pick is 'evenly spaced'."}),
            "aggregate": (list(AGGREGATES), {"default": "mean",
                                             "tooltip": "How the frames' scores make the candidate's score: their "
                                                        "mean, or their min (the worst frame)."}),
        }, "optional": {
            "preview_keep": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 1.0, "step": 0.05,
                                       "tooltip": "Search Loop: prune before decoding. 1 = off. Below 1, each "
                                                  "candidate's scored frames are first made from its latent with "
                                                  "ComfyUI's latent preview (no VAE) and scored by the verifier; "
                                                  "the candidate is decoded and scored for real only when its "
                                                  "preview score is among the best preview_keep fraction seen so "
                                                  "far. Pruned candidates rank below every decoded one. Needs a "
                                                  "model whose latent format has preview factors (Wan 2.1, 2.2) "
                                                  "and a single verifier (not an ensemble)."}),
            "preview_warmup": ("INT", {"default": 2, "min": 0, "max": 1024,
                                       "tooltip": "With preview_keep below 1: the first candidates, always decoded "
                                                  "(the fraction needs some previews to stand on)."}),
        }}

    def make(self, pick, frames, aggregate, preview_keep=1.0, preview_warmup=2):
        try:
            return (VideoScoring(pick=pick, frames=int(frames), aggregate=aggregate,
                                 preview_keep=float(preview_keep), preview_warmup=int(preview_warmup)),)
        except VideoInputError as e:
            raise ValueError(str(e)) from e


class VideoContactSheet:
    DESCRIPTION = ("A ranked contact sheet of video candidates: one row per candidate, best first, showing the "
                   "frames its score came from, captioned rank · score · seed. Give it Search Loop's top_k_images "
                   "and scores (a video search), or Verifier Score's frames and scores.")
    CATEGORY = CATEGORY
    FUNCTION = "sheet"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("contact_sheet",)
    OUTPUT_TOOLTIPS = ("One image: the contact sheet (goes into Save Image / Preview Image).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames, video after video: Search Loop's top_k_images of a video "
                                            "search, or the batch Verifier Score scored."}),
            "scores": (SCORES, {"tooltip": "The scores that go with these videos (they say how many frames each "
                                           "video has and which frames were scored)."}),
        }}

    def sheet(self, images, scores):
        return (contact_sheet(images, scores),)

NODES = [(VideoScoringNode, "VideoScoring", "Video Scoring"),
         (VideoContactSheet, "VideoContactSheet", "Video Contact Sheet")]
