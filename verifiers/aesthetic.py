"""LAION improved aesthetic predictor (Schuhmann et al., 2022).

An MLP 768 -> 1024 -> 128 -> 64 -> 16 -> 1 (no activations; dropout only in
training) on the L2-normalised CLIP ViT-L/14 image embedding, trained on
SAC + LOGOS + AVA ratings: ``sac+logos+ava1-l14-linearMSE.pth``.  Scores are
roughly on the 1..10 rating scale (most generated images land between 4 and 7);
the prompt is not used.  The CLIP model is open_clip's ViT-L-14 with the
OpenAI weights, the same object a CLIPScore verifier on the same file uses.
"""
from __future__ import annotations

from typing import List

import torch

from .base import Verifier
from .protocol import Capabilities
from .loading import MismatchedWeightsError, check_keys, load_state_dict

PUBLISHED = ("https://huggingface.co/camenduru/improved-aesthetic-predictor "
             "(sac+logos+ava1-l14-linearMSE.pth; original: github.com/christophschuhmann/improved-aesthetic-predictor)")
DEFAULT_FILE = "sac+logos+ava1-l14-linearMSE.pth"


class AestheticMLP(torch.nn.Module):
    """The predictor's head, with the published file's key names (layers.0 ... layers.7)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024), torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_aesthetic_mlp(path: str) -> AestheticMLP:
    sd = load_state_dict(path, PUBLISHED)
    w0 = sd.get("layers.0.weight")
    if w0 is None or w0.ndim != 2:
        check_keys(AestheticMLP().state_dict(), sd, path, "the LAION aesthetic MLP")
    mlp = AestheticMLP(int(w0.shape[1]))
    check_keys(mlp.state_dict(), sd, path, "the LAION aesthetic MLP")
    mlp.load_state_dict(sd, strict=True)
    return mlp.eval().requires_grad_(False)


class AestheticVerifier(Verifier):
    """score = MLP(normalise(E_img)); prompt ignored."""

    name = "aesthetic"
    score_range = "about 1..10 (LAION rating scale)"
    CAPABILITIES = Capabilities(needs_prompt=False)

    def __init__(self, clip_scorer, mlp: AestheticMLP, batch_size: int = 32):
        """``clip_scorer``: a CLIPScoreVerifier whose image embeddings are used
        (sharing its CLIP model and preprocessing)."""
        super().__init__(batch_size)
        dim = int(clip_scorer.clip.visual.output_dim) if hasattr(clip_scorer.clip.visual, "output_dim") else None
        if dim is not None and dim != mlp.input_size:
            raise MismatchedWeightsError(
                f"the aesthetic MLP takes {mlp.input_size}-d CLIP embeddings but the CLIP model gives {dim}-d ones: "
                "sac+logos+ava1-l14-linearMSE.pth needs CLIP ViT-L-14 (OpenAI) weights")
        self.clip_scorer = clip_scorer
        self.mlp = mlp

    def _score(self, images: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        emb = self.clip_scorer.image_embeddings(images)  # L2-normalised, float32
        return self.mlp(emb.to(self.mlp.layers[0].weight.dtype)).float().reshape(-1)
