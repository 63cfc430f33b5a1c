"""A round of noises rendered and scored, here or on a dispatcher's executors: how the noise strategies
(zero-order, evolution) spread over lanes and worker servers.

Nothing here imports ComfyUI or does I/O.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch

from .common import checked_scores, finalist, generation_nfe, render
from .dispatch import Task
from .host import SearchHost
from .report import Finalist
from .sharded import noises_work


class Evaluator:
    """How a noise strategy (zero-order, evolution) renders and scores a round of noises: on its own host
    (``dispatch`` None: the host micro-batches them, as always), or cut into chunks that a dispatcher's
    executors take on demand (``search.dispatch.Pool``, the worker servers).  Either way the same scores: a
    row's render depends only on its noise and seed, and a relative verifier's member scores are recombined
    over every row scored so far, as the host's own score book does.  Rows rendered elsewhere come back
    without their latent; their finalists carry the noise and seed, and the finalist step re-renders them."""

    def __init__(self, host: SearchHost, verifier: str = "verifier", dispatch: Any = None):
        self.host, self.verifier, self.dispatch = host, verifier, dispatch
        self.relative = bool(getattr(host, "relative", False))
        self.matrix: List[torch.Tensor] = []
        self.rounds = 0
        self.tasks = 0

    def __call__(self, noises: torch.Tensor, seeds: Sequence[int], labels: Sequence[str]
                 ) -> Tuple[List[float], List[Optional[torch.Tensor]], int, List[Any]]:
        """(scores, each row's final latent or None, NFEs spent, each row's micro-batch or None)."""
        n = int(noises.shape[0])
        if self.dispatch is None:
            latents, nfe, batch = render(self.host, noises, list(seeds))
            scores = checked_scores(self.host.score(latents), n, list(labels), self.verifier)
            return scores, [latents[j:j + 1] for j in range(n)], nfe, batch
        self.rounds += 1
        gen = generation_nfe(self.host)
        plan = self.dispatch.plan(n, max(1, int(getattr(self.host, "micro_batch", 0) or 1)))
        tasks = [Task(("noises", self.rounds, s), noises_work(noises[s:s + c], list(seeds[s:s + c]),
                                                             list(labels[s:s + c]), self.verifier),
                      {"kind": "noises", "noises": noises[s:s + c], "seeds": [int(v) for v in seeds[s:s + c]],
                       "count": c}, cost=float(c * gen)) for s, c in plan]
        queue = self.dispatch.run(tasks)
        self.tasks += len(queue.order)
        outs = queue.results()
        m = torch.cat([o["members"] for o in outs]).float()
        if self.relative:
            self.matrix.append(m)
            s = self.dispatch.recombine(torch.cat(self.matrix)).reshape(-1).tolist()[-n:]
        else:
            s = self.dispatch.recombine(m).reshape(-1).tolist()
        scores = checked_scores(torch.tensor(s), n, list(labels), self.verifier)
        latents: List[Optional[torch.Tensor]] = []
        batch: List[Any] = []
        for o in outs:
            k = int(o["members"].shape[0])
            latents += [None] * k if o["latents"] is None else [o["latents"][j:j + 1] for j in range(k)]
            batch += list(o["batch"])
        return scores, latents, int(sum(int(o["nfe"]) for o in outs)), batch


def noise_finalist(latent: Optional[torch.Tensor], noise: torch.Tensor, seed: int, batch: Any = None) -> Finalist:
    """A noise strategy's finalist: with its latent where it was rendered here, else its noise and seed only (the
    finalist step re-renders it)."""
    if latent is not None:
        return finalist(latent, noise, seed, batch=batch)
    return Finalist(latent=None, result=None, noise=noise.detach().clone(), seed=int(seed),  # type: ignore[arg-type]
                    batch=None)
