"""Random search (best-of-N): N independent starting noises, denoise fully,
score, keep the best k.  Cost: N generations' worth of NFEs."""
from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from .batching import run_in_micro_batches
from .noise import Candidate
from .report import CandidateResult, SearchReport

# evaluate(candidates) -> (scores [B], nfe per candidate, payloads: one per candidate)
Evaluate = Callable[[Sequence[Candidate]], Tuple[torch.Tensor, int, List[Any]]]


class NonFiniteScoreError(ValueError):
    pass


def top_k_indices(scores: Sequence[float], k: int) -> List[int]:
    """Indices of the k highest scores, best first; ties go to the lower index."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order[:max(0, k)]


def check_scores(scores: torch.Tensor, candidates: Sequence[Candidate], verifier: str = "verifier") -> None:
    bad = [c for c, s in zip(candidates, scores.tolist()) if not math.isfinite(s)]
    if bad:
        raise NonFiniteScoreError(
            f"the {verifier} returned a non-finite score (NaN or inf) for {len(bad)} candidate(s), "
            f"first: {bad[0].label()}. The verifier's weights or the decoded images are broken "
            "(e.g. a VAE overflowing in fp16): check the verifier file, or run the VAE in fp32 (--fp32-vae).")


def random_search(candidates: Sequence[Candidate], evaluate: Evaluate, top_k: int, micro_batch: int,
                  is_oom: Callable[[BaseException], bool] = lambda e: False,
                  on_oom: Optional[Callable[[int, BaseException], None]] = None,
                  verifier: str = "verifier",
                  combine: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                  member_names: Sequence[str] = ()) -> Tuple[SearchReport, dict]:
    """Runs the search; returns the report and ``{index: payload}`` for the top-k.

    With ``combine`` (a relative verifier such as a mean-rank ensemble),
    ``evaluate`` returns B x M member scores and the candidates' scores are
    ``combine`` of the matrix of *all* candidates so far, recomputed after each
    micro-batch (so they never depend on the micro-batch); every payload is
    kept, because a relative score can still change rank later."""
    if len(candidates) < 1:
        raise ValueError("random search needs at least one candidate")
    if not 1 <= top_k <= len(candidates):
        raise ValueError(f"top_k must be between 1 and the number of candidates ({len(candidates)}), got {top_k}")
    report = SearchReport(algorithm="random", top_k=top_k, verifier=verifier)
    kept: dict = {}
    state = {"nfe": 0, "best": -math.inf}

    raw: List[torch.Tensor] = []

    def step(chunk: Sequence[Candidate]):
        scores, nfe, payloads = evaluate(chunk)
        scores = scores.detach().float().cpu()
        scores = scores.reshape(len(chunk), -1) if combine is not None else scores.reshape(-1)
        if scores.shape[0] != len(chunk) or (combine is None and scores.numel() != len(chunk)):
            raise ValueError(f"the {verifier} returned {scores.numel()} scores for {len(chunk)} images")
        for col in (scores.T if combine is not None else scores.reshape(1, -1)):
            check_scores(col, chunk, verifier)
        if combine is not None:
            raw.append(scores)
        for j, (c, p) in enumerate(zip(chunk, payloads)):
            res = CandidateResult(index=c.index, seed=c.seed, noise_id=c.noise_id,
                                  score=float(scores[j]) if combine is None else 0.0, nfe=int(nfe))
            if combine is not None:
                names = list(member_names) or [f"verifier_{m + 1}" for m in range(scores.shape[1])]
                res.verifier_scores = {n: float(v) for n, v in zip(names, scores[j].tolist())}
            report.candidates.append(res)
            kept[c.index] = p
        state["nfe"] += int(nfe) * len(chunk)
        if combine is not None:
            combined = combine(torch.cat(raw)).float().reshape(-1)
            for res, v in zip(report.candidates, combined.tolist()):
                res.score = float(v)
            state["best"] = float(combined.max())
        else:
            state["best"] = max(state["best"], float(scores.max()))
        report.trace.append({"nfe": state["nfe"], "best": state["best"]})
        if combine is not None:
            return
        # keep only the current top-k payloads: memory stays O(k)
        keep = {report.candidates[i].index for i in
                top_k_indices([c.score for c in report.candidates], top_k)}
        for idx in list(kept):
            if idx not in keep:
                del kept[idx]

    run_in_micro_batches(list(candidates), step, micro_batch, is_oom=is_oom, on_oom=on_oom)
    report.nfe_total = state["nfe"]
    report.finalize()
    return report, kept
