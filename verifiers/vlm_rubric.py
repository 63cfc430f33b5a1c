"""A rubric grader on a local Qwen-VL model (``verifiers/vlm.py``): the VLM-as-a-judge aspects of Ma et al.
2025 (accuracy to prompt, originality, visual quality, internal consistency, emotional resonance), each
asked as its own question and scored as the **expected value over the answers "1" ... "10"**, from the
answer-token probabilities (no sampled string, no parsing).

One forward pass per chunk: every (image, aspect) pair is one row of the batch.  With the assistant's
answer header followed by the token "1" (teacher forcing), the logits at the answer's first position
give P(first token) and those one position later P(next token | "1"), so two-token answers are read
from the same pass: Qwen's tokenizers spell "10" as "1", "0", hence

    P("10") = P("1") * P("0" | "1"),   P("1") = P("1") * (1 - P("0" | "1")),   P("d") = P("d") for d = 2..9,

renormalised over the ten answers; the aspect's score is sum(s * P(s)), in [1, 10].  (A tokenizer with
"10" as one token gives P("10") directly.)

The aspects combine through the ensemble machinery: ``members`` are one verifier per aspect (they share
one forward pass: the first member to score a batch computes every aspect, the others read it), so
``EnsembleVerifier(members, weights, "mean_rank")`` is the paper's mean-rank rule over the aspects, and
it nests into a larger ensemble.  The rubric verifier itself scores the weighted mean of the aspects'
expected scores (absolute, [1, 10]).  Higher is better.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .base import Verifier, as_prompt_list
from .ensemble import EnsembleVerifier
from .vlm import DEFAULT_MAX_PIXELS, QwenVL
from .vqascore import fill

SCALE = " Rate it on a scale from 1 (worst) to 10 (best). Answer with a single number."
ASPECTS = (
    ("accuracy_to_prompt", 'How accurately does this image depict the prompt "{prompt}", with every object, '
                           'attribute, count and relation it asks for?' + SCALE),
    ("originality", 'How original and creative is this image as an interpretation of the prompt "{prompt}"?'
                    + SCALE),
    ("visual_quality", "How high is the visual quality of this image: sharpness, detail, lighting, colour and "
                       "composition, free of artifacts?" + SCALE),
    ("internal_consistency", "How internally consistent is this image: coherent objects, anatomy, perspective, "
                             "lighting and physics, with no contradictory or malformed parts?" + SCALE),
    ("emotional_resonance", 'How strongly does this image convey the mood and emotion that the prompt "{prompt}" '
                            'calls for?' + SCALE),
)
ASPECT_NAMES = tuple(a for a, _ in ASPECTS)
LABELS = tuple(str(s) for s in range(1, 11))


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place version counter; inference tensors (ComfyUI decodes under inference mode) have
    none, and cannot be changed in place outside inference mode."""
    try:
        return int(t._version)
    except RuntimeError:
        return -1


def _question(template: str, prompt: str) -> str:
    return fill(template, prompt) if "{prompt}" in template else template


class VLMRubricVerifier(Verifier):
    name = "vlm_rubric"
    score_range = "[1, 10] (weighted mean of the aspects' expected scores)"

    def __init__(self, vlm: QwenVL, weights: Optional[Sequence[float]] = None,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, batch_size: int = 4,
                 aspects: Sequence[tuple] = ASPECTS):
        super().__init__(batch_size)
        weights = [1.0] * len(aspects) if weights is None else [float(w) for w in weights]
        if len(weights) != len(aspects):
            raise ValueError(f"{len(weights)} weights for {len(aspects)} rubric aspects")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("the rubric's aspect weights must be >= 0 and not all 0")
        self.vlm = vlm
        self.max_pixels = int(max_pixels) if max_pixels else None
        active = [(a, q, w) for (a, q), w in zip(aspects, weights) if w > 0]  # weight 0: not asked at all
        self.aspects = [a for a, _, _ in active]
        self.questions = [q for _, q, _ in active]
        self.weights = [w for _, _, w in active]
        self._labels()
        self._memo = None

    def _labels(self) -> None:
        """Token ids of the answers "1".."9" and how "10" is read (one token, or "1" then "0")."""
        tok = self.vlm.tokenizer
        ids = [tok.encode(s, add_special_tokens=False) for s in LABELS]
        if any(len(i) != 1 for i in ids[:9]):
            raise ValueError(f"{self.vlm.description}: the answers 1..9 are not single tokens ({ids[:9]}); "
                             "this grader reads them as single tokens")
        self.digit_ids = [i[0] for i in ids[:9]]
        ten = ids[9]
        if len(ten) == 1:
            self.ten = ("token", ten[0])
        elif len(ten) == 2 and ten[0] == self.digit_ids[0]:
            self.ten = ("one_then", ten[1])
        else:
            raise ValueError(f"{self.vlm.description}: the answer '10' tokenises as {ten}, neither one token nor "
                             "'1' followed by '0'")

    def label_probabilities(self, images: torch.Tensor, questions: List[str]) -> torch.Tensor:
        """N x 10 probabilities of the answers "1".."10" (renormalised over them) for N (image, question) rows."""
        if self.ten[0] == "token":
            logits = self.vlm.last_logits(images, questions, self.max_pixels)
            p = torch.softmax(logits[:, -1], dim=-1)
            probs = torch.cat([p[:, self.digit_ids], p[:, [self.ten[1]]]], dim=1)
        else:
            logits = self.vlm.last_logits(images, questions, self.max_pixels, continuation=[self.digit_ids[0]],
                                          keep=2)
            first = torch.softmax(logits[:, 0], dim=-1)
            zero_after_one = torch.softmax(logits[:, 1], dim=-1)[:, self.ten[1]]
            p_one = first[:, self.digit_ids[0]]
            probs = torch.cat([(p_one * (1 - zero_after_one))[:, None], first[:, self.digit_ids[1:]],
                               (p_one * zero_after_one)[:, None]], dim=1)
        return probs / probs.sum(1, keepdim=True).clamp_min(1e-30)

    @torch.no_grad()
    def matrix(self, images: torch.Tensor, prompts="") -> torch.Tensor:
        """B x A expected scores in [1, 10], one column per aspect (with weight > 0), float32 CPU."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape B x H x W x 3, got {tuple(images.shape)}")
        plist = as_prompt_list(prompts, images.shape[0])
        a = len(self.aspects)
        values = torch.arange(1, 11, dtype=torch.float32)
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            chunk = images[i:i + self.batch_size].to(self.param_device(), non_blocking=True)
            b = chunk.shape[0]
            rows = chunk.repeat_interleave(a, dim=0)  # image-major: rows of image k are k*a .. k*a + a - 1
            questions = [_question(q, p) for p in plist[i:i + b] for q in self.questions]
            probs = self.label_probabilities(rows, questions).float().cpu()
            out.append((probs @ values).reshape(b, a))
        return torch.cat(out) if out else torch.zeros(0, a)

    def _score(self, images: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        m = self.matrix(images, prompts)
        w = torch.tensor(self.weights, dtype=torch.float32)
        return (m * w).sum(1) / w.sum()

    def column(self, images: torch.Tensor, prompts, index: int) -> torch.Tensor:
        """Aspect ``index``'s scores; the members scoring one batch share one forward pass (the matrix is kept
        until every aspect has read it, keyed by the very tensor, its version and the prompts)."""
        plist = as_prompt_list(prompts, images.shape[0])
        memo = self._memo
        if memo is None or memo["images"] is not images or memo["version"] != _version(images) \
                or memo["prompts"] != plist or index in memo["read"]:
            memo = {"images": images, "version": _version(images), "prompts": plist,
                    "matrix": self.matrix(images, plist), "read": set()}
            self._memo = memo
        memo["read"].add(index)
        col = memo["matrix"][:, index].clone()
        if len(memo["read"]) == len(self.aspects):
            self._memo = None
        return col

    def members(self) -> List["RubricAspect"]:
        return [RubricAspect(self, j) for j in range(len(self.aspects))]

    def ensemble(self, mode: str = "mean_rank", members: Optional[Sequence] = None) -> EnsembleVerifier:
        """The aspects as ensemble members (``members``: the same, e.g. wrapped for a host), weighted."""
        return EnsembleVerifier(list(members) if members is not None else self.members(), self.weights, mode)


class RubricAspect(Verifier):
    """One aspect of a rubric: an ensemble member."""

    def __init__(self, rubric: VLMRubricVerifier, index: int):
        super().__init__(rubric.batch_size)
        self.rubric = rubric
        self.index = int(index)
        self.name = f"vlm_rubric:{rubric.aspects[self.index]}"
        self.score_range = "[1, 10] (expected score)"

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts="") -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape B x H x W x 3, got {tuple(images.shape)}")
        return self.rubric.column(images, prompts, self.index)


__all__ = ["VLMRubricVerifier", "RubricAspect", "ASPECTS", "ASPECT_NAMES", "LABELS"]
