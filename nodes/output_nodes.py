"""Output nodes: the report as JSON, a ranked grid, a score-vs-NFE plot, and
the winner saved with the search's metadata next to ComfyUI's own workflow
metadata (``engine/outputs.py`` draws and saves)."""
from __future__ import annotations

from ..engine.outputs import REPORT_CHUNK, ranked_grid_of, save_search_images, score_plot_of
from ..engine.types import CATEGORY, SCORES



class ScoresToJSON:
    DESCRIPTION = "The search report as JSON text: every candidate's identity, seed, score, rank and NFEs."
    CATEGORY = CATEGORY
    FUNCTION = "convert"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("json",)
    OUTPUT_TOOLTIPS = ("The report as JSON text (also shown on the node).",)
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
        return (ranked_grid_of(images, scores, columns),)

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
        return (score_plot_of(scores, width, height, scores_2, scores_3),)

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
        return {"ui": {"images": save_search_images(images, scores, filename_prefix, prompt, extra_pnginfo)}}

NODES = [
    (ScoresToJSON, "ScoresToJSON", "Scores to JSON"),
    (RankedGrid, "RankedGrid", "Ranked Grid"),
    (ScorePlot, "ScorePlot", "Score vs NFE Plot"),
    (SaveSearchImage, "SaveSearchImage", "Save Image with Search Metadata"),
]
