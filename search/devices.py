"""Candidates on several devices of one machine: which devices a search runs on
(the ``devices`` text of Search Loop), and how the rows of one sampling call
are cut into contiguous per-device chunks.

Plain Python: ``engine/devices.py`` makes one model clone per device and runs
each chunk in its own thread; the rows come back in their order, so a
candidate's result does not depend on the device that ran it."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

# CPU lanes exist to test the many-device path on a machine without GPUs: each is one more copy of the model's
# weights in RAM, so a text may name the CPU at most this many times.
MAX_CPU_LANES = 2
DEVICES_HELP = ("write 'all' (every GPU ComfyUI can use), GPU numbers such as '0,1', torch device names such as "
                f"'cuda:0,cuda:1', or 'cpu' (for testing: it may be named up to {MAX_CPU_LANES} times)")
ECHO_CHARS = 80  # the most characters of the input an error message repeats


class DevicesError(ValueError):
    """A ``devices`` text that names no usable device."""


def shorten(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` as an error message repeats it: whole when short, else its first ``limit`` characters, an ellipsis
    and the full length (a workflow's text may be any size)."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def parse_devices(text: Optional[str], available: Sequence[str], main: str) -> List[str]:
    """The devices named by ``text``, as torch device names, the main device first when it is named.

    ``available``: the devices ComfyUI can use (``"cuda:0"``, ``"cuda:1"``...); ``main``: the device the model is
    loaded on.  ``""`` or ``"all"``: every available device, main first.  A number ``k`` is GPU ``k`` of the main
    device's type; ``"cpu"`` is always allowed and may repeat up to ``MAX_CPU_LANES`` times (model copies on the
    CPU, for testing); a GPU named twice is refused (it would hold the weights twice for nothing).  Errors repeat
    the text shortened (:func:`shorten`)."""
    main = str(main)
    avail = [str(d) for d in available]
    raw = (text or "").strip().lower()
    if raw in ("", "all", "auto"):
        rest = [d for d in avail if d != main]
        return [main] + rest if main in avail or not avail else rest
    kind = main.split(":")[0] if main != "cpu" else (avail[0].split(":")[0] if avail else "cuda")
    out: List[str] = []
    for token in [t.strip() for t in raw.replace(";", ",").replace(" ", ",").split(",")]:
        if not token:
            continue
        if token == "cpu":
            if out.count("cpu") >= MAX_CPU_LANES:
                raise DevicesError(f"devices: 'cpu' is named more than {MAX_CPU_LANES} times in "
                                   f"'{shorten(text)}': CPU lanes are for testing and each holds one more copy "
                                   f"of the model, so name cpu at most {MAX_CPU_LANES} times")
            out.append("cpu")
            continue
        prefix, _, index = token.rpartition(":")
        # a device index: ASCII digits only (int() of other Unicode digits, or of a huge number, raises)
        number = index.isascii() and index.isdigit() and len(index) <= 6
        if number and ":" not in token:
            name = f"{kind}:{int(index)}"
        elif number and prefix.isascii() and prefix.isalpha() and len(prefix) <= 16:
            name = f"{prefix}:{int(index)}"
        elif token in ("cuda", "xpu", "mps", "npu", "mlu"):
            name = f"{token}:0"
        else:
            raise DevicesError(f"devices: '{shorten(token)}' is not a device: {DEVICES_HELP}")
        if name not in avail and not (name == main):
            have = ", ".join(avail) if avail else "none"
            raise DevicesError(f"devices: {name} is not a device ComfyUI can use here (it can use: {have}): "
                               f"{DEVICES_HELP}")
        if name in out:
            raise DevicesError(f"devices: {name} is named twice: name each device once")
        out.append(name)
    if not out:
        raise DevicesError(f"devices: '{shorten(text)}' names no device: {DEVICES_HELP}")
    if main in out:  # the main device first: the rows of a small call go there
        out.remove(main)
        out.insert(0, main)
    return out


def split_rows(n: int, weights: Sequence[float], min_rows: int = 1) -> List[Tuple[int, int, int]]:
    """``(device index, start, end)`` chunks that cut rows ``0..n-1`` into contiguous pieces, in device order.

    Each device's share is proportional to its weight (largest remainders get the leftover rows, ties to the
    earlier device); a device gets either nothing or at least ``min_rows`` rows, so with few rows only the first
    devices work.  Devices with weight 0 get nothing.  Chunks with no rows are left out; the ends add up to ``n``.
    """
    n, min_rows = int(n), max(1, int(min_rows))
    if n < 0:
        raise ValueError(f"cannot split {n} rows")
    if not weights:
        raise ValueError("no device to split rows over")
    if any(w < 0 for w in weights):
        raise ValueError(f"device weights must not be negative, got {list(weights)}")
    if n == 0:
        return []
    min_rows = min(min_rows, n)  # fewer rows than the minimum: they all go to one device
    active = [i for i, w in enumerate(weights) if w > 0]
    if not active:
        raise ValueError("every device has weight 0")
    # as many devices as can each get min_rows, the heaviest first (ties: the earlier device)
    can = max(1, min(len(active), n // min_rows))
    active = sorted(sorted(active, key=lambda i: -weights[i])[:can])
    total = float(sum(weights[i] for i in active))
    exact = {i: n * weights[i] / total for i in active}
    share = {i: int(exact[i]) for i in active}
    left = n - sum(share.values())
    for i in sorted(active, key=lambda i: (-(exact[i] - share[i]), i))[:left]:
        share[i] += 1
    # lift devices under min_rows, taking rows from the largest share (stays >= min_rows: n >= can * min_rows)
    for i in active:
        while share[i] < min_rows:
            j = max(active, key=lambda k: (share[k], -k))
            share[j] -= 1
            share[i] += 1
    out, start = [], 0
    for i in active:
        if share[i]:
            out.append((i, start, start + share[i]))
            start += share[i]
    return out
