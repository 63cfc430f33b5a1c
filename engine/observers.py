"""What watches a search's scoring without choosing anything, as typed objects the host hands out:

* :class:`Tally`: the NFEs spent and each sampled row's counted model calls (shared with a coarse host);
* :class:`HeldOutSample`: the over-optimisation guard's sample (``search/guard.py``): every ``stride``-th
  finished candidate is scored by the held-out verifier too, never to choose;
* :class:`ImageCache`: the decoded images of the best rows scored, so the finalist step does not decode its
  finalists again."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..search import guard


@dataclass
class Tally:
    nfe: int = 0                                      # NFEs spent by the search's sampling calls
    row_nfe: List[int] = field(default_factory=list)  # model calls counted for each row sampled, in order


class HeldOutSample:
    def __init__(self, verifier, book, stride: int, tally: Tally):
        self.verifier, self.book, self.tally = verifier, book, tally
        self.stride = max(1, int(stride))
        self.finished = 0                  # finished candidates seen
        self.rows: List[Dict[str, int]] = []  # the sampled candidates: their search score row and the NFEs then

    def observe(self, images: Optional[torch.Tensor], positions: Sequence[int], batch: int, first: int,
                clock, **book_kwargs) -> None:
        """A batch of ``batch`` finished candidates was scored from search row ``first`` on; ``images[p]`` is the
        decoded image of its row ``positions[p]`` (a pruned video has none)."""
        pick = [(p, j) for p, j in enumerate(positions) if (self.finished + j) % self.stride == 0]
        self.finished += int(batch)
        if not pick:
            return
        with clock.phase("verify") if clock is not None else contextlib.nullcontext():
            self.book.add(images[torch.as_tensor([p for p, _ in pick], dtype=torch.long)], **book_kwargs)
        self.rows.extend({"row": first + j, "nfe": self.tally.nfe} for _, j in pick)


    def summary(self, *, search_name: str, search_all: Sequence[float], search_scores: Sequence[float],
                winner_search: float, winner_held_out: float, top_k_images: Optional[torch.Tensor],
                held: Sequence[float], with_trace: bool = True) -> Dict:
        """The report's ``held_out`` section (``search.guard.summary``) over this sample: ``held`` are the
        held-out scores of the sampled rows (in the order sampled), ``search_all`` the search's score of every
        row by row number; ``with_trace``: the running-best curve against NFEs (a search's, not a batch's)."""
        rows = [{"nfe": r["nfe"], "search": float(search_all[r["row"]]), "held_out": float(held[i])}
                for i, r in enumerate(self.rows)]
        return guard.summary(search_name=search_name,
                             held_out_name=getattr(self.verifier, "name", "held-out verifier"),
                             search_scores=list(search_scores), winner_search=float(winner_search),
                             sampled_search=[r["search"] for r in rows], sampled_held_out=list(held),
                             winner_held_out=float(winner_held_out), top_k_images=top_k_images,
                             trace=guard.running_best_trace(rows) if with_trace else None,
                             stride=self.stride if with_trace else 1)


class ImageCache:
    def __init__(self, keep: int):
        self.keep = int(keep)
        self._items: List[Tuple[float, int, torch.Tensor, torch.Tensor]] = []  # (score, row, latent, image)

    def offer(self, scores: torch.Tensor, first: int, latents: torch.Tensor, images: torch.Tensor) -> None:
        """Keeps the decoded images of the best rows scored so far (rows ``first`` on are these)."""
        if not self.keep:
            return
        for j, sc in enumerate(scores.tolist()):
            if math.isfinite(sc):
                self._items.append((float(sc), first + j, latents[j:j + 1].detach().cpu(), images[j:j + 1]))
        self._items.sort(key=lambda t: (-t[0], t[1]))
        del self._items[self.keep:]

    def image_of(self, latent: torch.Tensor) -> Optional[torch.Tensor]:
        """The decoded image of a latent among the best rows, or None."""
        for _, _, lat, img in self._items:
            if lat.shape == latent.shape and torch.equal(lat, latent.detach().cpu()):
                return img
        return None

