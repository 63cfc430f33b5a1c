"""Shards of a random search's candidates, which can run anywhere.

Random search is embarrassingly parallel: candidate ``i`` has seed
``base + i``, its noise and its score depend on nothing else (the micro-batch
included), so a shard ``(start, count)`` of candidates gives the same scores
wherever it runs.  :func:`run_shard` samples and scores one on a host;
``search/random_search.py`` (the one random search) hands shards to this host
in order, or to a *dispatcher* that decides where each runs (a worker ComfyUI
over HTTP, ``engine/workers.py``), and puts the rows back in candidate order,
with a relative verifier's member scores recombined over all N at once, so
the winner and the ranking equal the unsharded search's whoever ran which
shard.

A shard that ran elsewhere comes back as scores only (raw member scores and
NFEs per candidate); its finalists carry no latent, and the finalist step
re-renders them from their seed.  :func:`check_answer` is the one validation
of a shard that came from outside this process.

Nothing here imports ComfyUI or does I/O.
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .common import TopK, checked_scores, finalist, generation_nfe, render
from .host import SearchHost
from .noise import seeds_for, wrap_seed
from .report import Finalist

# the shard's format: 2 sends a digest of the master's fingerprint, never the fingerprint; 3 adds rows tasks
# (``kind`` "rows": rows whose state stays on the worker between a search's rounds)
PROTOCOL = 3
MAX_SCORE = 1e9  # no verifier scores beyond this: a claimed score past it is refused as out of range


class ShardAnswerError(ValueError):
    """A shard answer that cannot be trusted: wrong counts, ids, seeds or non-finite scores."""


@dataclass
class ShardRows:
    """What one shard gives back: ``rows`` (count × M raw member scores, M = 1 for a single verifier), in
    candidate order, the NFEs of each candidate, where it ran, and (local shards only) the best candidates'
    latents, so the finalist step can reuse them."""
    start: int
    count: int
    rows: torch.Tensor
    nfe: List[int]
    where: str = "local"
    kept: Dict[int, Finalist] = field(default_factory=dict)
    local_scores: Optional[List[float]] = None  # sampled here: the scores the host gave (relative: so far)
    host_first: int = 0                          # sampled here: the host's row number of the first candidate

    def scores(self) -> List[float]:
        """The candidates' scores as far as this shard knows them: the host's, or the first member's (a
        relative verifier's are recombined over every shard by the search)."""
        if self.local_scores is not None:
            return list(self.local_scores)
        return self.rows[:, 0].tolist()


def member_rows(host: SearchHost, first: int, count: int, scores: Sequence[float]) -> torch.Tensor:
    """The raw member scores of the ``count`` rows the host scored from row ``first`` on: its score book's rows
    for a relative verifier (``host.member_matrix``), else the scores themselves as one column."""
    if bool(getattr(host, "relative", False)):
        get = getattr(host, "member_matrix", None)
        if get is None:
            raise ValueError("this host cannot give raw member scores, which a relative verifier needs to be "
                             "split over shards")
        return get(first, count).detach().float().cpu().reshape(count, -1)
    return torch.tensor([float(s) for s in scores], dtype=torch.float32).reshape(-1, 1)


def run_shard(host: SearchHost, base_seed: int, start: int, count: int, keep: int = 0,
              verifier: str = "verifier", matrix: bool = True, keep_relative: bool = False) -> ShardRows:
    """Candidates ``start .. start+count-1`` of a random search with base seed ``base_seed``, sampled and
    scored on ``host`` exactly as :func:`~.random_search.random_search` samples them (same seeds, same
    noise, ``host.micro_batch`` at a time); the ``keep`` best are kept with their latents (absolute verifiers;
    relative ones too with ``keep_relative``).  ``matrix``: the rows are the raw member scores (what another
    machine can recombine); else the scores as one column."""
    gen = generation_nfe(host)
    seeds = seeds_for(wrap_seed(base_seed), int(start), int(count))
    relative = bool(getattr(host, "relative", False))
    keeping = bool(keep) and (keep_relative or not relative)
    topk = TopK(max(1, keep))
    parts: List[torch.Tensor] = []
    scored: List[float] = []
    host_first = None
    i = 0
    while i < count:
        size = int(getattr(host, "micro_batch", 0) or count)
        chunk = list(range(i, min(count, i + max(1, size))))
        cs = [seeds[j] for j in chunk]
        noise = host.initial_noise(cs)
        latents, _, batch = render(host, noise, cs)
        first = int(getattr(host, "scored_rows", 0))
        host_first = first if host_first is None else host_first
        scores = checked_scores(host.score(latents), len(chunk), [f"seed {s}" for s in cs], verifier)
        scored.extend(scores)
        parts.append(member_rows(host, first, len(chunk), scores) if matrix
                     else torch.tensor(scores, dtype=torch.float32).reshape(-1, 1))
        if keeping:
            for r, j in enumerate(chunk):
                topk.offer(scores[r], start + j, finalist(latents[r:r + 1], noise[r:r + 1], cs[r], batch=batch[r]))
        i += len(chunk)
    kept = {idx: f for _, idx, f in topk.items} if keeping else {}
    return ShardRows(int(start), int(count), torch.cat(parts) if parts else torch.zeros(0, 1), [gen] * int(count),
                     kept=kept, local_scores=scored, host_first=int(host_first or 0))


def envelope(answer: Any, token: str, bad) -> None:
    """What every answer from outside must be first: a JSON object of this protocol, answering this request."""
    if not isinstance(answer, dict):
        raise bad(f"expected a JSON object, got {type(answer).__name__}")
    if answer.get("protocol") != PROTOCOL:
        raise bad(f"protocol {answer.get('protocol')!r}, expected {PROTOCOL} (update the pack on both machines)")
    if answer.get("token") != token:
        raise bad("it answers another request (its token differs)")


def _members(m: Any, members: int, what: str, bad) -> List[float]:
    """One candidate's member scores from outside: ``members`` numbers, finite or -inf, within range."""
    if not isinstance(m, list) or len(m) != members or not all(type(v) in (int, float) for v in m):
        raise bad(f"{what} has member scores {net_short(m)}, expected {members} number(s)")
    if any(type(v) is int and abs(v) > MAX_SCORE for v in m):  # before float(): 10**400 overflows it
        raise bad(f"{what} has a score out of range (no verifier scores beyond {MAX_SCORE:g})")
    if not all(math.isfinite(v) or v == -math.inf for v in m):  # -inf: a remote grader's failed answer
        raise bad(f"{what} has a non-finite score {net_short(m)}")
    if any(math.isfinite(v) and abs(v) > MAX_SCORE for v in m):
        raise bad(f"{what} has a score out of range {net_short(m)} (no verifier scores beyond {MAX_SCORE:g})")
    return [float(x) for x in m]


def net_short(v: Any, most: int = 120) -> str:
    t = repr(v)
    return t if len(t) <= most else t[:most] + "..."


MAX_ROWS = 65536  # the most rows one task may name


def rows_spec(spec: Any) -> Dict[str, Any]:
    """A rows task's instruction as plain data, checked (what a worker is sent and acts on): ``rows``
    (distinct candidate indices), ``begin`` < ``end`` (schedule indices), ``drop`` (indices whose state goes),
    ``fresh`` and ``replay``.  ValueError when it is not one."""
    if not isinstance(spec, dict):
        raise ValueError("a rows task is a JSON object")
    rows, drop = spec.get("rows"), spec.get("drop") or []
    for name, v in (("rows", rows), ("drop", drop)):
        if not isinstance(v, list) or len(v) > MAX_ROWS or not all(type(i) is int and 0 <= i < 2 ** 31 for i in v):
            raise ValueError(f"a rows task's {name} must be a list of at most {MAX_ROWS} candidate indices")
    if not rows or len(set(rows)) != len(rows):
        raise ValueError("a rows task names each of its rows once, and at least one")
    begin, end = spec.get("begin"), spec.get("end")
    if type(begin) is not int or type(end) is not int or not 0 <= begin < end <= 100000:
        raise ValueError(f"a rows task goes from one schedule step to a later one, got {begin!r} to {end!r}")
    fresh = spec.get("fresh", False)
    if type(fresh) is not bool or type(spec.get("replay", False)) is not bool or (fresh and begin != 0):
        raise ValueError("a rows task's fresh and replay are true or false; fresh rows begin at step 0")
    return {"rows": list(rows), "begin": begin, "end": end, "drop": list(drop), "fresh": fresh,
            "replay": bool(spec.get("replay", False))}


def check_rows_answer(answer: Any, *, spec: Dict[str, Any], members: int, nfe: int, token: str,
                      source: str) -> Dict[str, Any]:
    """A rows task's answer from outside this process, validated before any of it is used: the protocol and
    token, exactly the task's rows in order, ``members`` member scores each (finite or -inf), ``nfe`` NFEs in
    all, and its replay flag.  What the task's work gives in this process (no finalist latents: the master
    re-renders its finalists)."""
    def bad(why: str) -> ShardAnswerError:
        return ShardAnswerError(f"the answer of {source} for {len(spec['rows'])} row(s) to step {spec['end']} is "
                                f"malformed: {why}. Its scores were not used")

    envelope(answer, token, bad)
    if answer.get("kind") != "rows" or answer.get("rows") != list(spec["rows"]):
        raise bad("it names other rows than the task's, or not in order")
    ms = answer.get("members")
    if not isinstance(ms, list) or len(ms) != len(spec["rows"]):
        raise bad(f"expected member scores of {len(spec['rows'])} rows")
    rows = [_members(m, members, f"candidate {i}", bad) for i, m in zip(spec["rows"], ms)]
    if type(answer.get("nfe")) is not int or answer["nfe"] != int(nfe):
        raise bad(f"it spent {answer.get('nfe')!r} NFEs, expected {int(nfe)}")
    if answer.get("replay") is not bool(spec.get("replay", False)):
        raise bad("its replay flag is not the task's")
    return {"rows": list(spec["rows"]), "members": torch.tensor(rows, dtype=torch.float32).reshape(len(rows), members),
            "nfe": int(nfe), "replay": bool(spec.get("replay", False)), "finalists": {}}


def rows_answer(out: Dict[str, Any], *, token: str, fingerprint: Dict[str, str]) -> Dict[str, Any]:
    """A rows task's answer as plain data (the worker side of :func:`check_rows_answer`): rows, raw member
    scores, NFEs; never a latent."""
    return {"protocol": PROTOCOL, "kind": "rows", "token": token, "fingerprint": dict(fingerprint), "refused": None,
            "rows": [int(i) for i in out["rows"]], "members": [[float(v) for v in r] for r in out["members"]],
            "nfe": int(out["nfe"]), "replay": bool(out["replay"])}


def check_answer(answer: Any, *, start: int, count: int, base_seed: int, members: int, nfe: Optional[int],
                 token: str, source: str) -> ShardRows:
    """A shard answer from outside this process (a worker's JSON), validated before any of it is used:
    the protocol and token, exactly the candidates of the shard in order, their seeds, ``members`` member
    scores each, finite or -inf (as ``checked_scores`` allows: a remote grader's failed answer), and positive
    NFEs (``nfe`` each when the sampler's NFEs are known)."""
    def bad(why: str) -> ShardAnswerError:
        return ShardAnswerError(f"the answer of {source} for candidates {start}..{start + count - 1} is malformed: "
                                f"{why}. Its scores were not used")

    envelope(answer, token, bad)
    cands = answer.get("candidates")
    if not isinstance(cands, list) or len(cands) != count:
        raise bad(f"expected {count} candidates, got {len(cands) if isinstance(cands, list) else cands!r}")
    seeds = seeds_for(wrap_seed(base_seed), start, count)
    rows, nfes = [], []
    for j, c in enumerate(cands):
        if not isinstance(c, dict):
            raise bad(f"candidate entry {j} is not an object")
        idx = c.get("index")
        if type(idx) is not int or idx != start + j:
            raise bad(f"entry {j} names another candidate than {start + j} (ids must be the shard's, in order)")
        if type(c.get("seed")) is not int or c.get("seed") != seeds[j]:
            raise bad(f"candidate {idx} has another seed than {seeds[j]}")
        m = _members(c.get("members"), members, f"candidate {idx}", bad)
        v = c.get("nfe")
        if type(v) is not int or v < 1 or (nfe is not None and v != nfe):
            raise bad(f"candidate {idx} spent {v!r} NFEs, expected {nfe if nfe is not None else 'a positive count'}")
        rows.append(m)
        nfes.append(v)
    return ShardRows(start, count, torch.tensor(rows, dtype=torch.float32).reshape(count, members), nfes,
                     where=source)


def answer(rows: ShardRows, *, base_seed: int, token: str, fingerprint: Dict[str, str]) -> Dict[str, Any]:
    """A shard's answer as plain data (the worker side of :func:`check_answer`): ids, seeds, raw member scores,
    NFEs and the fingerprint of what made them; never an image."""
    seeds = seeds_for(wrap_seed(base_seed), rows.start, rows.count)
    return {"protocol": PROTOCOL, "token": token, "start": rows.start, "count": rows.count,
            "fingerprint": dict(fingerprint), "refused": None,
            "candidates": [{"index": rows.start + j, "seed": seeds[j], "members": [float(v) for v in rows.rows[j]],
                            "nfe": int(rows.nfe[j])} for j in range(rows.count)]}


# --------------------------------------------------------------------------- noises: rows given by their noise
MAX_NOISE_VALUE = 1e4  # no unit noise has a value beyond this: a noise past it is refused


def encode_noise(noise: torch.Tensor) -> Dict[str, Any]:
    """Noise rows as plain data: float32, little-endian, base64, with their shape (exact: what the master made)."""
    t = noise.detach().to("cpu", torch.float32).contiguous()
    return {"shape": [int(d) for d in t.shape], "float32": base64.b64encode(t.numpy().astype("<f4").tobytes()).decode()}


def decode_noise(data: Any, rows: int, like: Optional[Sequence[int]] = None) -> torch.Tensor:
    """:func:`encode_noise`'s data back as a tensor, checked: ``rows`` rows, each of shape ``like`` (the
    latent's, when known), finite values within range.  ValueError otherwise."""
    import numpy as np
    if not isinstance(data, dict) or not isinstance(data.get("shape"), list) or not isinstance(data.get("float32"), str):
        raise ValueError("noise rows are an object with a shape and float32 data")
    shape = data["shape"]
    if not (2 <= len(shape) <= 6 and all(type(d) is int and 1 <= d <= 1 << 20 for d in shape)) or shape[0] != rows:
        raise ValueError(f"noise rows of shape {shape!r}, expected {rows} row(s)")
    if like is not None and list(shape[1:]) != [int(d) for d in like]:
        raise ValueError(f"noise rows of shape {shape[1:]!r} each, this latent's is {list(like)!r}")
    n = math.prod(shape)
    if n > 1 << 28 or len(data["float32"]) != 4 * ((4 * n + 2) // 3):
        raise ValueError("the noise rows' data does not match their shape")
    try:
        raw = base64.b64decode(data["float32"], validate=True)
    except (ValueError, TypeError):
        raise ValueError("the noise rows' data is not base64") from None
    t = torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype("float32")).reshape(shape)
    if not bool(torch.isfinite(t).all()) or float(t.abs().max()) > MAX_NOISE_VALUE:
        raise ValueError("the noise rows hold a non-finite or out-of-range value")
    return t


def noises_spec(spec: Any, like: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, List[int]]:
    """A noises task's instruction, checked: (noise rows, the seed of each row's in-sampler randomness)."""
    if not isinstance(spec, dict):
        raise ValueError("a noises task is a JSON object")
    seeds = spec.get("seeds")
    if not isinstance(seeds, list) or not 1 <= len(seeds) <= MAX_ROWS or \
            not all(type(v) is int and 0 <= v < 2 ** 64 for v in seeds):
        raise ValueError(f"a noises task's seeds are a list of 1 to {MAX_ROWS} seeds")
    return decode_noise(spec.get("noise"), len(seeds), like), list(seeds)


def noises_work(noises: torch.Tensor, seeds: Sequence[int], labels: Sequence[str], verifier: str = "verifier"):
    """What an executor does with noise rows: render each from its noise (``seeds``: its in-sampler randomness)
    and score it.  The answer: the raw member scores, the NFEs, and (in this process) the latents, the host's
    own scores and each row's micro-batch."""
    def work(host: SearchHost, held: Dict[Any, Any]) -> Dict[str, Any]:
        latents, nfe, batch = render(host, noises, list(seeds))
        first = int(getattr(host, "scored_rows", 0))
        scores = checked_scores(host.score(latents), len(seeds), list(labels), verifier)
        return {"members": member_rows(host, first, len(seeds), scores), "nfe": int(nfe), "latents": latents,
                "batch": list(batch), "scores": scores}
    return work


def check_noises_answer(answer: Any, *, rows: int, members: int, nfe: int, token: str, source: str) -> Dict[str, Any]:
    """A noises task's answer from outside this process, validated: the protocol and token, ``rows`` rows of
    ``members`` member scores (finite or -inf), ``nfe`` NFEs in all; no latents."""
    def bad(why: str) -> ShardAnswerError:
        return ShardAnswerError(f"the answer of {source} for {rows} noise row(s) is malformed: {why}. Its scores "
                                "were not used")

    envelope(answer, token, bad)
    ms = answer.get("members")
    if answer.get("kind") != "noises" or not isinstance(ms, list) or len(ms) != rows:
        raise bad(f"expected member scores of {rows} noise rows")
    got = [_members(m, members, f"noise row {j}", bad) for j, m in enumerate(ms)]
    if type(answer.get("nfe")) is not int or answer["nfe"] != int(nfe):
        raise bad(f"it spent {answer.get('nfe')!r} NFEs, expected {int(nfe)}")
    return {"members": torch.tensor(got, dtype=torch.float32).reshape(rows, members), "nfe": int(nfe),
            "latents": None, "batch": [None] * rows, "scores": None}


def noises_answer(out: Dict[str, Any], *, token: str, fingerprint: Dict[str, str]) -> Dict[str, Any]:
    """A noises task's answer as plain data (the worker side of :func:`check_noises_answer`)."""
    return {"protocol": PROTOCOL, "kind": "noises", "token": token, "fingerprint": dict(fingerprint),
            "refused": None, "members": [[float(v) for v in r] for r in out["members"]], "nfe": int(out["nfe"])}
