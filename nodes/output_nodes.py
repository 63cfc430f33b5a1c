"""Output nodes: the report as JSON, a ranked grid, a score-vs-NFE plot, and
the winner saved with the search's metadata next to ComfyUI's own workflow
metadata."""
from __future__ import annotations

import json
import os

import torch

from ..engine import files
from ..engine.drawing import caption, ranked_grid, score_plot
from ..engine.types import CATEGORY, SCORES

# the PNG text chunk holding the search report (JSON), beside ComfyUI's "prompt" and "workflow"
REPORT_CHUNK = "infscale_search"


def _ordered(images: torch.Tensor, scores):
    """(images, results) in rank order.  A VerifierScore report ("external")
    scores a batch in index order; a search's report comes with its top-k
    images, already best first."""
    ranked = scores.ranked()
    if scores.algorithm == "external" and len(scores.candidates) == images.shape[0]:
        by_index = sorted(scores.candidates, key=lambda c: c.index)
        pos = {c.index: i for i, c in enumerate(by_index)}
        idx = torch.tensor([pos[c.index] for c in ranked], dtype=torch.long)
        return images[idx], ranked
    n = min(images.shape[0], len(ranked))
    return images[:n], ranked[:n]


class ScoresToJSON:
    DESCRIPTION = "The search report as JSON text: every candidate's identity, seed, score, rank and NFEs."
    CATEGORY = CATEGORY
    FUNCTION = "convert"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("json",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"scores": (SCORES, {"tooltip": "A SearchLoop's (or VerifierScore's) scores."})}}

    def convert(self, scores):
        text = scores.to_json()
        return {"ui": {"text": [text]}, "result": (text,)}


class RankedGrid:
    DESCRIPTION = ("A grid of candidates in rank order, each captioned with its rank, score and seed. Give it "
                   "SearchLoop's top_k_images with its scores, or a scored batch with VerifierScore's scores.")
    CATEGORY = CATEGORY
    FUNCTION = "grid"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)
    OUTPUT_TOOLTIPS = ("One image: the ranked grid (goes into Save Image / Preview Image).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "SearchLoop's top_k_images, or the batch VerifierScore scored."}),
            "scores": (SCORES, {"tooltip": "The scores that go with these images."}),
            "columns": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Tiles per row."}),
        }}

    def grid(self, images, scores, columns):
        if images.shape[0] == 0 or not scores.candidates:
            raise ValueError("Ranked Grid got an empty batch (0 images or 0 scores): connect the scored candidates; "
                             "no placeholder image is made")
        if (scores.settings or {}).get("video"):
            raise ValueError("Ranked Grid got the scores of videos (their images are frames, video after video): "
                             "use Video Contact Sheet, which draws one row per video")
        imgs, results = _ordered(images, scores)
        labels = [caption(r.rank, r.score, r.seed, r.noise_id if r.seed is None else "") for r in results]
        return (ranked_grid(imgs, labels, columns),)


class ScorePlot:
    DESCRIPTION = ("The search's trace as a picture: best score so far against NFEs spent. Several SCORES can "
                   "be compared on one plot (e.g. random vs zero-order at the same budget).")
    CATEGORY = CATEGORY
    FUNCTION = "plot"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("plot",)
    OUTPUT_TOOLTIPS = ("One image: the plot (goes into Save Image / Preview Image).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scores": (SCORES, {"tooltip": "A search's scores (SearchLoop output)."}),
            "width": ("INT", {"default": 640, "min": 200, "max": 4096, "tooltip": "Plot width in pixels."}),
            "height": ("INT", {"default": 400, "min": 150, "max": 4096, "tooltip": "Plot height in pixels."}),
        }, "optional": {
            "scores_2": (SCORES, {"tooltip": "Another search to compare (optional)."}),
            "scores_3": (SCORES, {"tooltip": "A third search to compare (optional)."}),
        }}

    def plot(self, scores, width, height, scores_2=None, scores_3=None):
        series, held = {}, {}
        for i, rep in enumerate(r for r in (scores, scores_2, scores_3) if r is not None):
            name = f"{i + 1}: {rep.algorithm}"
            series[name] = [(float(t["nfe"]), float(t["best"])) for t in rep.trace]
            h = getattr(rep, "held_out", None) or {}
            if h.get("trace"):  # the guard's curve: the held-out score of what the search would pick
                held[f"{i + 1}: held-out"] = [(float(t["nfe"]), float(t["held_out"])) for t in h["trace"]]
        label = next((f"held-out: {r.held_out['verifier'][:40]}" for r in (scores, scores_2, scores_3)
                      if r is not None and getattr(r, "held_out", None)), "held-out")
        return (score_plot(series, title=f"verifier: {scores.verifier[:80]}", width=width, height=height,
                           right_series=held, right_label=label),)


class SaveSearchImage:
    DESCRIPTION = ("Saves images like Save Image (ComfyUI's workflow metadata included, so dropping the PNG on "
                   "the editor restores the workflow) plus the search report in a PNG text chunk "
                   f"'{REPORT_CHUNK}': seeds, scores, algorithm, NFEs, verifiers.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The images to save (e.g. SearchLoop's winner)."}),
            "scores": (SCORES, {"tooltip": "The search report stored in the PNG."}),
            "filename_prefix": ("STRING", {"default": "search", "tooltip": "As in Save Image."}),
        }, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, images, scores, filename_prefix="search", prompt=None, extra_pnginfo=None):
        if images.shape[0] == 0:
            raise ValueError("Save Image with Search Metadata got an empty IMAGE batch (0 images): nothing to save")
        from PIL.PngImagePlugin import PngInfo
        from ..engine.drawing import to_pil
        out_dir = files.output_directory()
        folder, filename, counter, subfolder, _ = files.save_image_path(filename_prefix, out_dir,
                                                                          images.shape[2], images.shape[1])
        report = scores.to_json(indent=None)
        results = []
        for b, image in enumerate(images):
            meta = PngInfo()
            if not files.metadata_disabled():
                if prompt is not None:
                    meta.add_text("prompt", json.dumps(prompt))
                for k, v in (extra_pnginfo or {}).items():
                    meta.add_text(k, json.dumps(v))
            meta.add_text(REPORT_CHUNK, report)  # the search's own record, even with --disable-metadata
            name = f"{filename.replace('%batch_num%', str(b))}_{counter:05}_.png"
            to_pil(image).save(os.path.join(folder, name), pnginfo=meta, compress_level=4)
            results.append({"filename": name, "subfolder": subfolder, "type": "output"})
            counter += 1
        return {"ui": {"images": results}}


NODES = [
    (ScoresToJSON, "ScoresToJSON", "Scores to JSON"),
    (RankedGrid, "RankedGrid", "Ranked Grid"),
    (ScorePlot, "ScorePlot", "Score vs NFE Plot"),
    (SaveSearchImage, "SaveSearchImage", "Save Image with Search Metadata"),
]
