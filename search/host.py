"""The seam between the search algorithms and whatever runs the model.

Every algorithm in ``search/`` talks to the model only through a
:class:`SearchHost`.  ComfyUI's host lives in ``engine/host.py``; the tests and
the CPU quality benchmark have their own small hosts.  Nothing here imports
ComfyUI.

Vocabulary
----------
* The **schedule** is the host's ``sigmas`` (T+1 decreasing values, the last
  usually 0).  Positions in it are integer *indices*: 0 is the start, T the end.
* A :class:`State` is a batch of samples at one schedule index, in the form the
  host's sampler starts from: ``x = a(sigma) * noise + b(sigma) * latent``
  (ComfyUI: ``model_sampling.noise_scaling``).  A fresh start is
  ``(unit noise, template latent)``; a sample that stopped at sigma > 0 is
  ``(0, sampler output)``.  Algorithms never look inside except to mutate a
  fresh start's noise (evolution) or to pick rows.
* The **noise level** of an index is the host model's own timeline in [0, 1]
  (1 = pure noise, 0 = clean): for ComfyUI, 1 - the "percent" of
  ``model_sampling.percent_to_sigma``.  Paper settings such as paths' sigma
  0.11 / Δf 0.78 / Δb 0.81 are noise levels, mapped onto the user's schedule by
  :meth:`SearchHost.index_at_level`.
* **NFEs** are counted per row, as defined in ``search/nfe.py``.

Every host method takes any batch size; a row's result never depends on the
other rows or on how the host micro-batches (each row's randomness is keyed by
its own seed).  The host checks for interruption inside model calls and
advances the progress bar itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, Tuple

import torch



@dataclass
class State:
    noise: torch.Tensor    # B x C x H x W
    latent: torch.Tensor   # B x C x H x W
    index: int             # schedule position the batch is at
    # per row, the micro-batch size of the host call that made it (None: unknown or not host-sampled)
    batch: Optional[List[int]] = None

    def __len__(self) -> int:
        return int(self.noise.shape[0])

    def select(self, rows: Sequence[int]) -> "State":
        rows = list(rows)
        idx = torch.as_tensor(rows, dtype=torch.long)
        batch = None if self.batch is None else [self.batch[i] for i in rows]
        return State(self.noise[idx], self.latent[idx], self.index, batch)

    @staticmethod
    def cat(states: Sequence["State"]) -> "State":
        if len({s.index for s in states}) != 1:
            raise ValueError("cannot concatenate states at different schedule positions")
        batch = None if any(s.batch is None for s in states) else [b for s in states for b in s.batch]
        return State(torch.cat([s.noise for s in states]), torch.cat([s.latent for s in states]), states[0].index,
                     batch)


class SearchHost(Protocol):
    sigmas: torch.Tensor          # CPU float, T+1 values
    sampler_name: str             # for the registry's sampler check (search/samplers.py)
    micro_batch: int              # rows the host runs at once (0 = all); algorithms that can pipeline
                                  # (random search) hand it that many rows per call
    relative: bool                # scores are relative to the rows scored so far (ensembles)
    nfe_predict: int              # NFEs per row of predict_x0

    @property
    def steps(self) -> int: ...   # T

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Unit Gaussian starting noise per seed (``search.noise.candidate_noises``)."""

    def start(self, noise: torch.Tensor) -> State:
        """The state at index 0 for these unit noises (img2img/inpainting handled by the host)."""

    def sample(self, state: State, end: int, seeds: Sequence[int]) -> Tuple[State, torch.Tensor]:
        """Runs schedule steps ``state.index .. end``; returns the state at ``end``
        and the x0-prediction (clean-latent estimate) of the last step.  At
        ``end == steps`` the state's latent is the final sample.  ``seeds[j]``
        keys row j's in-sampler randomness."""

    def nfe(self, start: int, end: int) -> int:
        """NFEs per row of :meth:`sample` from ``start`` to ``end``."""

    def renoise(self, state: State, index: int, noise: torch.Tensor) -> State:
        """Forward-noises ``state`` (at ``state.index``) back to the earlier,
        noisier schedule position ``index`` with unit ``noise``, exactly as the
        model's forward process would (EPS/v-prediction and flow models)."""

    def score(self, latents: torch.Tensor) -> torch.Tensor:
        """Verifier scores (B,) of clean latents: final samples or x0-predictions.
        Rows are numbered in the order they are scored (``scored_rows`` before the call
        is the first new row's number).  With a relative verifier the scores are
        relative to every row scored so far; :meth:`rescore` recombines them all."""

    @property
    def scored_rows(self) -> int: ...  # rows scored so far

    # optional: ``score_preview(latents)``, the same as ``score`` for x0-predictions part-way through the
    # schedule (algorithms reach it through ``search.common.score_x0``); a host that treats finished
    # candidates specially (the held-out verifier's sample) tells them apart by it

    def rescore(self) -> torch.Tensor:
        """Every row scored so far, recombined over all of them (equal to the
        scores already returned for an absolute verifier)."""

    def predict_x0(self, state: State, seeds: Sequence[int]) -> torch.Tensor:
        """The model's x0-prediction at the state itself (``nfe_predict`` NFEs
        per row); the state is not advanced."""

    def level(self, index: int) -> float:
        """Noise level of a schedule position, in [0, 1] (1 = pure noise)."""

    def index_at_level(self, level: float) -> int:
        """The schedule position whose noise level is closest to ``level``."""

    def with_steps(self, steps: int) -> "SearchHost":
        """The same host over a coarser schedule of ``steps`` steps (coarse-to-fine):
        the same scheduler at fewer steps, or a user's SIGMAS resampled in noise level."""


def final_latents(state: State) -> torch.Tensor:
    """The clean samples of a state that reached the end of the schedule."""
    return state.latent


_MASK64 = 0xFFFFFFFFFFFFFFFF


def derive_seed(*parts: int) -> int:
    """A 64-bit seed from integers (base seed, round, lineage...): splitmix64
    over the parts, so derived streams are deterministic and well separated."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h


def unit_noise(shape: Sequence[int], seeds: Sequence[int], dtype=torch.float32) -> torch.Tensor:
    """Unit Gaussian noise, one row per seed (row j depends only on seeds[j])."""
    from .noise import candidate_noises
    return candidate_noises(shape, seeds, dtype=dtype)

