"""Verifiers: images + prompt -> one score per image, higher is better.

No ComfyUI import here; the node layer wraps each verifier's modules for
ComfyUI's model management (``Verifier.modules``)."""
from .protocol import VerifierProtocol, SingleVerifier, ScoreBook, recombine
from .base import Verifier, as_prompt_list
from .loading import (VerifierFileError, MissingWeightsError, UnsafeCheckpointError,
                      CorruptWeightsError, MismatchedWeightsError, load_state_dict)
from .clip_score import CLIPScoreVerifier, load_open_clip

__all__ = ["VerifierProtocol", "SingleVerifier", "ScoreBook", "recombine", "Verifier", "as_prompt_list", "VerifierFileError", "MissingWeightsError",
           "UnsafeCheckpointError", "CorruptWeightsError", "MismatchedWeightsError",
           "load_state_dict", "CLIPScoreVerifier", "load_open_clip"]
