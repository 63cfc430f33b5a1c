"""Schedule helpers (plain torch)."""
from __future__ import annotations

import torch


def resample_sigmas(sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """A user's SIGMAS at another step count: log-sigma interpolated over the
    step index, same first and last value (a final 0 stays 0)."""
    s = sigmas.double()
    last_zero = float(s[-1]) == 0.0
    body = s[:-1] if last_zero else s
    n_body = steps if last_zero else steps + 1
    pos = torch.linspace(0, body.numel() - 1, n_body, dtype=torch.float64)
    logs = body.clamp(min=1e-12).log()
    lo = pos.floor().long().clamp(max=body.numel() - 1)
    hi = (lo + 1).clamp(max=body.numel() - 1)
    w = pos - lo.double()
    out = ((1 - w) * logs[lo] + w * logs[hi]).exp()
    if last_zero:
        out = torch.cat([out, torch.zeros(1, dtype=torch.float64)])
    return out.float()
