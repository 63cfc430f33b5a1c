"""ComfyUI node adapters. Node IDs carry the ``InfScale_`` prefix and never change."""
from . import compat, output_nodes, strategy_nodes
from .types import PREFIX
from .search_loop import SearchLoop
from .verifier_nodes import AestheticVerifierLoader, CLIPScoreVerifierLoader, VerifierEnsemble
from .verifier_nodes_ii import HPSVerifierLoader, ImageRewardVerifierLoader, PickScoreVerifierLoader
from .scores_nodes import ScoresToJSON
from .composable_nodes import BestPick, NoiseCandidateGenerator, VerifierScore

compat.register_verifier_folder()

_NODES = [
    # (class, id suffix, display name)
    (SearchLoop, "SearchLoop", "Search Loop (best of N)"),
    (CLIPScoreVerifierLoader, "CLIPScoreVerifierLoader", "Load CLIPScore Verifier"),
    (AestheticVerifierLoader, "AestheticVerifierLoader", "Load LAION Aesthetic Verifier"),
    (VerifierEnsemble, "VerifierEnsemble", "Verifier Ensemble"),
    (ScoresToJSON, "ScoresToJSON", "Scores to JSON"),
    (NoiseCandidateGenerator, "NoiseCandidateGenerator", "Noise Candidate Generator"),
    (VerifierScore, "VerifierScore", "Verifier Score"),
    (BestPick, "BestPick", "Best Pick"),
    (ImageRewardVerifierLoader, "ImageRewardVerifierLoader", "Load ImageReward Verifier"),
    (PickScoreVerifierLoader, "PickScoreVerifierLoader", "Load PickScore Verifier"),
    (HPSVerifierLoader, "HPSVerifierLoader", "Load HPS v2 Verifier"),
]

_NODES += strategy_nodes.NODES + output_nodes.NODES

NODE_CLASS_MAPPINGS = {PREFIX + key: cls for cls, key, _ in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {PREFIX + key: name for _, key, name in _NODES}
