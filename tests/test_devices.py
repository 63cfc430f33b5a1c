"""Core tier: the planner that cuts one sampling call's rows over the devices of a machine
(``search/devices.py``), and the parsing of Search Loop's ``devices`` text, with fake device lists."""
from __future__ import annotations

import ast
import os

import pytest

from search.devices import MAX_CPU_LANES, DevicesError, parse_devices, split_rows

GPUS = ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def engine_constant(name: str):
    """A constant of engine/devices.py, read from its source (importing it needs ComfyUI)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine", "devices.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise LookupError(f"engine/devices.py has no {name}")


GPU_MIN_ROWS = engine_constant("GPU_MIN_ROWS")


def rows_of(chunks):
    return [(i, b - a) for i, a, b in chunks]


def covers(chunks, n):
    """Contiguous, in device order, every row once."""
    assert [a for _, a, _ in chunks] == [0] + [b for _, _, b in chunks[:-1]]
    assert chunks[-1][2] == n
    assert [i for i, _, _ in chunks] == sorted(i for i, _, _ in chunks)


@pytest.mark.parametrize("n,devices,expect", [
    (8, 2, [(0, 4), (1, 4)]),
    (7, 2, [(0, 4), (1, 3)]),          # the leftover row goes to the first device
    (10, 4, [(0, 3), (1, 3), (2, 2), (3, 2)]),
    (5, 1, [(0, 5)]),                  # one device: everything
    (3, 4, [(0, 1), (1, 1), (2, 1)]),  # more devices than rows: one row each, the last device idle
    (1, 8, [(0, 1)]),
])
def test_split_rows_even(n, devices, expect):
    chunks = split_rows(n, [1.0] * devices)
    assert rows_of(chunks) == expect
    covers(chunks, n)


def test_split_rows_proportional_with_a_minimum():
    assert rows_of(split_rows(12, [2.0, 1.0])) == [(0, 8), (1, 4)]
    assert rows_of(split_rows(9, [1.0, 0.0, 1.0])) == [(0, 5), (2, 4)]  # weight 0: no rows
    # a device gets nothing or at least min_rows: the small share is lifted from the largest
    assert rows_of(split_rows(10, [8.0, 1.0, 1.0], min_rows=2)) == [(0, 6), (1, 2), (2, 2)]
    # too few rows for every device to get min_rows: only as many devices as can, the heaviest ones
    assert rows_of(split_rows(5, [1.0, 3.0, 2.0], min_rows=2)) == [(1, 3), (2, 2)]
    assert split_rows(0, [1.0, 1.0]) == []
    for n in range(1, 40):
        for weights in ([1.0, 1.0, 1.0], [5.0, 1.0], [1.0, 2.0, 3.0, 4.0]):
            for m in (1, 2, 3):
                chunks = split_rows(n, weights, min_rows=m)
                covers(chunks, n)
                sizes = [b - a for _, a, b in chunks]
                assert all(s >= min(m, n) for s in sizes), (n, weights, m, sizes)


def test_split_rows_refuses_nonsense():
    with pytest.raises(ValueError):
        split_rows(4, [])
    with pytest.raises(ValueError):
        split_rows(4, [0.0, 0.0])
    with pytest.raises(ValueError):
        split_rows(4, [1.0, -1.0])


def test_parse_devices():
    assert parse_devices("all", GPUS, "cuda:0") == GPUS
    assert parse_devices("", GPUS, "cuda:1") == ["cuda:1", "cuda:0", "cuda:2", "cuda:3"]  # the main device first
    assert parse_devices("2, 0", GPUS, "cuda:0") == ["cuda:0", "cuda:2"]
    assert parse_devices("cuda:3,cuda:1", GPUS, "cuda:0") == ["cuda:3", "cuda:1"]  # the main device not named
    assert parse_devices("all", ["cpu"], "cpu") == ["cpu"]
    assert parse_devices("cpu,cpu", ["cpu"], "cpu") == ["cpu", "cpu"]
    assert parse_devices("cpu", GPUS, "cuda:0") == ["cpu"]


@pytest.mark.parametrize("text,words", [
    ("gpu0", ["devices", "'gpu0' is not a device", "all"]),
    ("0,7", ["devices", "cuda:7", "cuda:0, cuda:1, cuda:2, cuda:3"]),
    ("1,1", ["devices", "cuda:1 is named twice"]),
    (" , ", ["devices", "names no device"]),
])
def test_parse_devices_errors_name_the_input(text, words):
    with pytest.raises(DevicesError) as e:
        parse_devices(text, GPUS, "cuda:0")
    for w in words:
        assert w in str(e.value)


def test_a_device_is_named_once_and_cpu_lanes_are_capped():
    """A workflow is untrusted input: 'cpu' thirty times made thirty model copies.  The CPU may be named up to
    MAX_CPU_LANES times (lanes for testing), any other device once; the message says so."""
    assert MAX_CPU_LANES == 2
    assert parse_devices(",".join(["cpu"] * MAX_CPU_LANES), GPUS, "cuda:0") == ["cpu"] * MAX_CPU_LANES
    for text in ("cpu,cpu,cpu", ",".join(["cpu"] * 30), "0,cpu,1,cpu,cpu"):
        with pytest.raises(DevicesError) as e:
            parse_devices(text, GPUS, "cuda:0")
        msg = str(e.value)
        assert "'cpu' is named more than 2 times" in msg and "name cpu at most 2 times" in msg, msg
    for text, name in (("cuda:2,cuda:2", "cuda:2"), ("0,cuda:0", "cuda:0"), ("2,cuda:02", "cuda:2")):
        with pytest.raises(DevicesError, match=f"{name} is named twice: name each device once"):
            parse_devices(text, GPUS, "cuda:0")


@pytest.mark.parametrize("text", [
    "cpu," * 25_000,                      # 100,000 characters: the CPU named 25,000 times
    "x" * 100_000,                        # one huge token
    " , " * 40_000,                       # names nothing
    "9" * 100_000,                        # a huge GPU number (int() of it is refused by Python)
    "cuda:" + "9" * 100_000,
    "a" * 100_000 + ":1",
])
def test_a_huge_devices_text_is_echoed_shortened(text):
    with pytest.raises(DevicesError) as e:
        parse_devices(text, GPUS, "cuda:0")
    msg = str(e.value)
    assert msg.startswith("devices: ") and len(msg) < 400, msg[:500]
    assert f"… ({len(text)} characters)" in msg, msg


M = GPU_MIN_ROWS


@pytest.mark.parametrize("n,devices,expect", [
    (M, 2, [(0, M)]),  # a call of GPU_MIN_ROWS rows (a zero-order round of 4 neighbours) stays on the main GPU
    (M + M // 2, 2, [(0, M + M // 2)]),
    (2 * M, 2, [(0, M), (1, M)]),
    (3 * M, 4, [(0, M), (1, M), (2, M)]),  # three GPUs of four get a share
    (4 * M + 1, 2, [(0, 2 * M + 1), (1, 2 * M)]),
])
def test_split_rows_with_the_gpu_minimum(n, devices, expect):
    """engine/devices.py cuts a call over GPUs only when each gets at least GPU_MIN_ROWS rows."""
    assert GPU_MIN_ROWS >= 2
    chunks = split_rows(n, [1.0] * devices, min_rows=GPU_MIN_ROWS)
    covers(chunks, n)
    assert rows_of(chunks) == expect
    assert all(b - a >= GPU_MIN_ROWS for _, a, b in chunks)
