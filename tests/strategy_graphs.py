"""The strategy nodes in API-format prompts: each strategy node with small settings for the tiny checkpoint,
plugged into a Search Loop graph (tests/graphs.py) alone or under Coarse To Fine."""
from __future__ import annotations

from graphs import PREFIX

# registry name -> (node class without the prefix, its inputs)
STRATEGIES = {
    "random": ("RandomSearchStrategy", {"budget_nfe": 12}),
    "zero_order": ("ZeroOrderStrategy", {"neighbours": 2, "cosine": 0.9, "budget_nfe": 0}),
    "paths": ("PathsStrategy", {"paths": 2, "noises_per_path": 2, "start_level": 0.3, "forward": 0.5,
                                "backward": 0.7, "budget_nfe": 0}),
    "particles": ("ParticleStrategy", {"particles": 3, "potential": "max", "lam": 10.0, "interval": 2,
                                       "ess_threshold": 0.0, "budget_nfe": 0}),
    "evolution": ("EvolutionStrategy", {"population": 3, "elites": 1, "tournament": 2, "mutation": 0.3,
                                        "budget_nfe": 0}),
    "halving": ("SuccessiveHalvingStrategy", {"starts": 0, "keep": 0.5, "rounds": 2, "first_level": 0.7,
                                              "last_level": 0.4, "budget_nfe": 0}),
    "tree": ("TreeSearchStrategy", {"levels": 1, "first_level": 0.5, "last_level": 0.3, "screen": 2,
                                    "exploration": 1.0, "widening": 0.5, "root_widening": 0.7, "renoise": 0.3,
                                    "parallel": 2, "budget_nfe": 0}),
}


def with_strategy(g, name, inputs=None, coarse=None):
    cls, defaults = STRATEGIES[name]
    g["40"] = {"class_type": PREFIX + cls, "inputs": dict(defaults, **(inputs or {}))}
    ref = ["40", 0]
    if coarse is not None:
        g["41"] = {"class_type": PREFIX + "CoarseToFine",
                   "inputs": {"coarse_steps": coarse[0], "finalists": coarse[1], "strategy": ref}}
        ref = ["41", 0]
    g["6"]["inputs"]["strategy"] = ref
    return g
