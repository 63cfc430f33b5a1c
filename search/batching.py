"""Micro-batching with an out-of-memory back-off.

``run_in_micro_batches`` runs ``fn`` over consecutive chunks of ``items``.  When
``fn`` raises an exception that ``is_oom`` recognises, the chunk is retried at
half the size, down to 1; any other exception (ComfyUI's interrupt included)
propagates untouched.  Results never depend on the chunking, because every
candidate's randomness is keyed by its own seed.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def plan_micro_batch(n: int, free_bytes: Optional[int], bytes_per_item: Optional[int],
                     requested: int = 0, cap: int = 64, reserve: float = 0.8) -> int:
    """Micro-batch size: ``requested`` when > 0, else as many candidates as
    fit into ``reserve`` of the free memory, at least 1, at most ``cap`` and n."""
    n = max(1, int(n))
    if requested and requested > 0:
        return max(1, min(int(requested), n))
    if not free_bytes or not bytes_per_item or bytes_per_item <= 0:
        return max(1, min(n, cap))
    fit = int(free_bytes * reserve // bytes_per_item)
    return max(1, min(n, cap, fit))


def run_in_micro_batches(items: Sequence[T], fn: Callable[[Sequence[T]], R], batch_size: int,
                         is_oom: Callable[[BaseException], bool] = lambda e: False,
                         on_oom: Optional[Callable[[int, BaseException], None]] = None) -> List[R]:
    """Returns the list of ``fn(chunk)`` results in order.  ``on_oom(new_size, exc)``
    is called before each retry (the host frees memory there)."""
    out: List[R] = []
    size = max(1, int(batch_size))
    i = 0
    while i < len(items):
        chunk = items[i:i + size]
        try:
            res = fn(chunk)
        except BaseException as e:  # noqa: BLE001 - filtered by is_oom, others re-raised
            if not is_oom(e) or size == 1:
                raise
            size = max(1, size // 2)
            if on_oom is not None:
                on_oom(size, e)
            continue
        out.append(res)
        i += len(chunk)
    return out
