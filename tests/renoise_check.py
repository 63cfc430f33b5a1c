"""Run in a subprocess by tests/test_flow_strategies.py: the sampling lanes' renoise (engine/lanes.py) and
its coefficients against ComfyUI's own ``noise_scaling``, for every model
sampling type the given ComfyUI has (EPS, v-prediction, flow/CONST).

usage: python tests/renoise_check.py COMFYUI_DIR  -> prints one JSON line."""
from __future__ import annotations

import json
import math
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(comfy_dir: str) -> dict:
    from pack_in_process import import_comfy_and_pack
    import_comfy_and_pack(comfy_dir)
    import torch
    import comfy.model_sampling as cms
    from infscale_pack.engine.lanes import Lanes
    from infscale_pack.search.host import State

    kinds = {"eps": (cms.ModelSamplingDiscrete, cms.EPS), "v_prediction": (cms.ModelSamplingDiscrete, cms.V_PREDICTION)}
    if hasattr(cms, "CONST") and hasattr(cms, "ModelSamplingDiscreteFlow"):
        kinds["flow_const"] = (cms.ModelSamplingDiscreteFlow, cms.CONST)
    out = {"kinds": {}}
    for name, (base, pred) in kinds.items():
        class MS(base, pred):
            pass
        ms = MS(None) if name == "flow_const" else MS()
        fake_model = types.SimpleNamespace(get_model_object=lambda n, ms=ms: ms, model=types.SimpleNamespace(
            model_sampling=ms), load_device=torch.device("cpu"))
        sig = torch.tensor([float(ms.sigma_max), float(ms.percent_to_sigma(0.3)), float(ms.percent_to_sigma(0.6)),
                            float(ms.percent_to_sigma(0.9)), 0.0])
        plan = types.SimpleNamespace(sigmas=sig, model=fake_model, template=torch.zeros(1, 4, 8, 8), noise_mask=None, clock=None,
                                     sampler_function=lambda: "euler")
        host = Lanes(plan, progress=None, micro_batch=1, sigmas=sig)
        g = torch.Generator().manual_seed(0)
        latent = torch.randn(3, 4, 8, 8, generator=g)
        eps = torch.randn(3, 4, 8, 8, generator=g)
        worst = 0.0
        for a, b in ((3, 1), (2, 0), (3, 0), (2, 1)):
            sa, sb = float(sig[a]), float(sig[b])
            state = State(torch.zeros_like(latent), latent, a)
            new = host.renoise(state, b, eps)
            md = math.isclose(float(ms.sigma_max), sb, rel_tol=1e-5) or sb > float(ms.sigma_max)
            # what ComfyUI's sampler starts from at sigma_b, and what it was at sigma_a
            x_b = ms.noise_scaling(torch.tensor(sb).view(1, 1, 1, 1), new.noise, new.latent, max_denoise=md)
            x_a = ms.noise_scaling(torch.tensor(sa).view(1, 1, 1, 1), state.noise, state.latent, max_denoise=False)
            if name == "flow_const":
                c_a, c_b, n_a, n_b = 1 - sa, 1 - sb, sa, sb
            else:
                c_a, c_b, n_a, n_b = 1.0, 1.0, sa, sb
            expected = (c_b / c_a) * x_a + math.sqrt(max(n_b ** 2 - (c_b * n_a / c_a) ** 2, 0.0)) * eps
            worst = max(worst, float((x_b - expected).abs().max() / expected.abs().max()))
        # the marginal: forward-noising a clean sample to sigma_b gives c_b * x0 + n_b * N(0, 1)
        big = torch.randn(4000, 1, 1, 1, generator=g)
        state = State(torch.zeros(4000, 1, 1, 1), torch.zeros(4000, 1, 1, 1), 4)
        new = host.renoise(state, 1, big)
        sb = float(sig[1])
        x_b = ms.noise_scaling(torch.tensor(sb).view(1, 1, 1, 1), new.noise, new.latent, max_denoise=False)
        out["kinds"][name] = {"max_rel_err": worst, "std_at_b": float(x_b.std()), "expected_std": sb}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1])
