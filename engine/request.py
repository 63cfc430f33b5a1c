"""What a node asks the engine for, and what it gets back: one :class:`SearchRequest` built by the node from its
inputs, one :class:`SearchResult` returned by ``engine.pipeline.run_search``.  The budget is worked out here,
once (:meth:`SearchRequest.budget`), by the core's one rule (``search.strategies.budget_of``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from .sampling import SamplingPlan
from ..search import Strategy, budget_of
from ..search.report import SearchReport


@dataclass(frozen=True)
class WorkerRequest:
    """Searching with worker servers: the pool's settings and this node's own prompt and id (sent, cut to
    its inputs, to the workers)."""
    config: Any               # engine.workers.WorkerConfig
    graph: Optional[Dict[str, Any]]
    node_id: Optional[str]


@dataclass(frozen=True)
class Budget:
    """The NFE budget of one search: ``generation`` (NFEs of one full generation; None when the sampler picks its
    own steps), ``estimate`` (that, or the schedule's steps), ``nfe`` (the budget) and the candidates it
    stands for."""
    generation: Optional[int]
    estimate: int
    nfe: int
    candidates: int


@dataclass(frozen=True)
class SearchRequest:
    plan: SamplingPlan
    latent: Dict[str, Any]          # the LATENT input (its other keys go to the outputs)
    vae: Any
    verifier: Any
    prompt: str
    seed: int
    candidates: int
    top_k: int
    strategy: Strategy = field(default_factory=lambda: Strategy("random"))
    micro_batch: int = 0            # the widget: 0 = sized from free memory
    exact_winner: bool = True
    settings: Dict[str, Any] = field(default_factory=dict)  # the node's own report settings
    held_out: Any = None
    video: Any = None               # search.video.VideoScoring, None = its default
    workers: Optional[WorkerRequest] = None
    devices: str = "all"

    def budget(self) -> Budget:
        gen = self.plan.nfe_per_generation()
        est = gen if gen is not None else max(1, self.plan.sigmas.numel() - 1)
        return Budget(gen, est, budget_of(self.strategy, self.candidates, est), int(self.candidates))


@dataclass
class SearchResult:
    """Search Loop's outputs, and the lines shown on the node."""
    image: torch.Tensor
    latent: Dict[str, Any]
    top_k_images: torch.Tensor
    report: SearchReport
    winner_noise: Dict[str, Any]
    best_seed: int
    noise: Any
    messages: List[str] = field(default_factory=list)

    def outputs(self) -> Tuple:
        return (self.image, self.latent, self.top_k_images, self.report, self.winner_noise, self.best_seed,
                self.noise)
