"""VQAScore (Lin et al. 2024, "Evaluating Text-to-Visual Generation with Image-to-Text Generation";
t2v-metrics) on a local Qwen-VL model (``verifiers/vlm.py``).

Score = P(answer | image, question): the question is the template with the prompt put in
(default ``Does this figure show "{prompt}"? Please answer yes or no.``), asked in the model's chat
template with the image first; the probability is the softmax over the whole vocabulary of the logits
at the assistant's first answer position, read at the answer's first token ("Yes"), as t2v-metrics'
Qwen2-VL model computes it (its ``generate(max_new_tokens=1, output_scores=True)`` scores are those
logits).  No sampling, no parsing: one batched forward pass per chunk of images.  Range [0, 1],
higher is better.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .base import Verifier
from .vlm import DEFAULT_MAX_PIXELS, QwenVL

DEFAULT_TEMPLATE = 'Does this figure show "{prompt}"? Please answer yes or no.'
DEFAULT_ANSWER = "Yes"
PLACEHOLDER = "{prompt}"


def fill(template: str, prompt: str) -> str:
    """The template with the prompt put in at ``{prompt}`` (or t2v-metrics' ``{}``)."""
    if PLACEHOLDER in template:
        return template.replace(PLACEHOLDER, prompt)
    if "{}" in template:
        return template.replace("{}", prompt)
    raise ValueError(f"the question template must contain {PLACEHOLDER} where the prompt goes, got {template!r}")


class VQAScoreVerifier(Verifier):
    name = "vqascore"
    score_range = "[0, 1] (P(answer | image, question))"

    def __init__(self, vlm: QwenVL, template: str = DEFAULT_TEMPLATE, answer: str = DEFAULT_ANSWER,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, batch_size: int = 8):
        super().__init__(batch_size)
        fill(template, "")  # validates
        self.vlm = vlm
        self.template = template
        self.answer = answer
        self.answer_id = vlm.answer_token(answer)
        self.max_pixels = int(max_pixels) if max_pixels else None

    def _score(self, images: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        logits = self.vlm.last_logits(images, [fill(self.template, p) for p in prompts], self.max_pixels)
        return torch.softmax(logits[:, -1], dim=-1)[:, self.answer_id]


__all__ = ["VQAScoreVerifier", "DEFAULT_TEMPLATE", "DEFAULT_ANSWER", "fill"]
