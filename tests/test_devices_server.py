"""Server tier: a search on several devices of one machine, simulated with two CPU "devices" (two model copies,
two sampling threads in one ComfyUI process): the same candidates, scores, ranking and bit-identical winner as
the search on one device, for random search (an ancestral sampler: a noise stream per candidate in each thread)
and zero-order (rounds); the report says which device sampled how many rows; a bad ``devices`` text is an error
naming the input; Cancel stops both devices."""
from __future__ import annotations

import json

import safetensors.torch

from comfy_server import execution_error, interrupt_run
from graphs import PREFIX, search_graph
from strategy_graphs import with_strategy


def report_of(entry) -> dict:
    return json.loads(entry["outputs"]["8"]["text"][0])


def latent_of(comfy, entry):
    return safetensors.torch.load_file(comfy.output_file(entry["outputs"]["9"]["latents"][0]))["latent_tensor"]


def run(comfy, devices, prefix, strategy=None, **kw):
    g = search_graph(prefix=prefix, **kw)
    if devices is not None:
        g["6"]["inputs"]["devices"] = devices
    if strategy is not None:
        g = with_strategy(g, strategy)
    entry = comfy.run_ok(g)
    return report_of(entry), latent_of(comfy, entry)


def same_search(one, two):
    (rep1, lat1), (rep2, lat2) = one, two
    def key(rep):
        return [(c["index"], c["seed"], c["rank"], c["nfe"], c["final_score"] is None) for c in rep["candidates"]]
    assert key(rep1) == key(rep2)  # the ranking
    # the candidates are sampled one per model call on the CPU either way (the same latents), but the verifier
    # scores the rows of one sampling call together (one micro-batch per device), so a score may differ in its
    # last bit (a winner sampled alone keeps its search score on current ComfyUI: no re-render needed)
    for c1, c2 in zip(rep1["candidates"], rep2["candidates"]):
        for k in ("score", "final_score"):
            if c1[k] is not None:
                assert abs(c1[k] - c2[k]) <= 1e-6 * max(1.0, abs(c1[k])), (k, c1, c2)
    assert rep1["best"]["index"] == rep2["best"]["index"] and rep1["nfe_total"] == rep2["nfe_total"]
    assert lat1.equal(lat2)  # the winner's re-render, bit for bit


def test_two_devices_random_search_equals_one_device(comfy):
    kw = dict(seed=31, candidates=4, top_k=1, steps=3, sampler="euler_ancestral")
    one = run(comfy, "cpu", "dev_one", **kw)
    two = run(comfy, "cpu,cpu", "dev_two", **kw)
    same_search(one, two)
    assert one[0]["settings"]["devices"]["rows"] == {"cpu": 4}
    assert two[0]["settings"]["devices"]["rows"] == {"0:cpu": 2, "1:cpu": 2}
    assert two[0]["settings"]["devices"]["used"] == ["cpu", "cpu"]
    assert two[0]["settings"]["devices"]["decode_on_every_device"]  # a VAE copy per device
    default = run(comfy, None, "dev_default", **kw)  # "all": the one CPU device here
    same_search(one, default)
    assert default[0]["settings"]["devices"]["requested"] == "all"


def test_two_devices_zero_order_equals_one_device(comfy):
    kw = dict(seed=17, candidates=3, top_k=1, steps=3, sampler="euler")
    one = run(comfy, "cpu", "zo_one", strategy="zero_order", **kw)
    two = run(comfy, "cpu,cpu", "zo_two", strategy="zero_order", **kw)
    assert one[0]["algorithm"] == "zero_order"
    same_search(one, two)
    rows = two[0]["settings"]["devices"]["rows"]
    assert rows["0:cpu"] > 0 and rows["1:cpu"] > 0  # every round's neighbours on both devices
    assert sum(rows.values()) == one[0]["settings"]["devices"]["rows"]["cpu"]


def test_bad_devices_text_names_the_input(comfy):
    g = search_graph(seed=3, candidates=2, top_k=1, steps=2, prefix="dev_bad")
    g["6"]["inputs"]["devices"] = "gpu-zero"
    err = execution_error(comfy.run(g))
    assert err is not None and err["node_type"] == PREFIX + "SearchLoop"
    assert "devices: 'gpu-zero' is not a device" in err["exception_message"], err["exception_message"]


def held_after(comfy, devices, prefix, **kw):
    """A search on ``devices``, then, in the same prompt (the loaders' outputs still cached), what the process holds:
    the live ModelPatchers and VAEs and ComfyUI's loaded models, by object id (tests/fixtures/test_nodes)."""
    g = search_graph(prefix=prefix, **kw)
    if devices is not None:
        g["6"]["inputs"]["devices"] = devices
    g["30"] = {"class_type": "InfScaleTest_HeldModels", "inputs": {"after": ["8", 0]}}  # runs after the search
    entry = comfy.run_ok(g)
    return json.loads(entry["outputs"]["30"]["text"][0]), report_of(entry)


def test_device_copies_are_released_when_the_search_ends(comfy):
    """The model clone and VAE copy a 'cpu,cpu' search makes for its second lane are gone when it ends: the process
    holds the same model and VAE objects as after the same search on one device, ComfyUI's loaded models are
    among them, and a later search on 'all' finds nothing left either."""
    kw = dict(seed=41, candidates=2, top_k=1, steps=2, sampler="euler")
    one, _ = held_after(comfy, "cpu", "held_one", **kw)
    for devices, prefix in (("cpu,cpu", "held_two"), (None, "held_all")):
        now, rep = held_after(comfy, devices, prefix, **kw)
        if devices == "cpu,cpu":  # both lanes sampled and decoded: a clone and a VAE copy were made
            assert rep["settings"]["devices"]["rows"] == {"0:cpu": 1, "1:cpu": 1}
            assert rep["settings"]["devices"]["decode_on_every_device"]
        assert len(now["patchers"]) == len(one["patchers"]) and now["patchers"] == one["patchers"], \
            f"model patchers alive after a search on {devices!r}: {len(now['patchers'])}, on 'cpu': {len(one['patchers'])}"
        assert now["vaes"] == one["vaes"], f"VAEs alive after a search on {devices!r}: {len(now['vaes'])}, " \
            f"on 'cpu': {len(one['vaes'])}"
        assert set(now["loaded"]) <= set(one["patchers"]), (devices, now["loaded"], one["patchers"])


def test_cpu_named_thirty_times_is_refused_on_the_node(comfy):
    g = search_graph(seed=3, candidates=2, top_k=1, steps=2, prefix="dev_cpu30")
    g["6"]["inputs"]["devices"] = ",".join(["cpu"] * 30)
    err = execution_error(comfy.run(g))
    assert err is not None and err["node_type"] == PREFIX + "SearchLoop"
    msg = err["exception_message"]
    assert "'cpu' is named more than 2 times" in msg and "… (119 characters)" in msg, msg
    g["6"]["inputs"]["devices"] = "x" * 100_000
    msg = execution_error(comfy.run(g))["exception_message"]
    assert "… (100000 characters)" in msg and len(msg) < 400, msg[:500]


def test_cancel_stops_every_device(comfy):
    g = search_graph(seed=5, candidates=64, top_k=1, steps=30, prefix="dev_intr")
    g["6"]["inputs"]["devices"] = "cpu,cpu"
    interrupted, later, seconds = interrupt_run(comfy, g, after=2, timeout=120)
    assert interrupted, "the search was not interrupted"
    # each device may finish the model call it is in; 64 x 30 NFEs would otherwise follow
    assert later <= 3, f"{later} progress updates after the interrupt"
    assert seconds < 30
    comfy.run_ok(search_graph(seed=6, candidates=2, top_k=1, steps=2, prefix="dev_after"))
