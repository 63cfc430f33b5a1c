"""Nodes that read the SCORES object."""
from __future__ import annotations

from .types import CATEGORY, SCORES


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
