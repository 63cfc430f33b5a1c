"""Core tier: the pictures (ranked grid, score plot) and schedule resampling."""
import importlib.util
import os

import torch

from search.schedule import resample_sigmas

# engine/drawing.py imports no ComfyUI: load the file alone (importing the nodes package would need ComfyUI)
_spec = importlib.util.spec_from_file_location(
    "infscale_render", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine", "drawing.py"))
_render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_render)
caption, ranked_grid, score_plot = _render.caption, _render.ranked_grid, _render.score_plot


def test_ranked_grid_layout_and_captions():
    imgs = torch.zeros(5, 32, 48, 3)
    imgs[2] = 1.0
    g = ranked_grid(imgs, [caption(i + 1, 0.5 - i / 10, 100 + i) for i in range(5)], columns=3)
    assert g.shape[0] == 1 and g.shape[-1] == 3
    assert g.shape[2] == 3 * (48 + 4) + 4  # 3 columns
    assert g.shape[1] > 2 * 32  # 2 rows plus caption bands
    # tile 3 (white) sits in row 0, column 2
    assert float(g[0, 4 + 10, 4 + 2 * 52 + 10].mean()) == 1.0
    # captions are drawn: the band under tile 1 is not uniform
    band = g[0, 4 + 32:4 + 32 + 12, 4:4 + 48]
    assert float(band.std()) > 0
    assert caption(1, 0.123456, 42) == "#1  0.1235  seed 42"


def test_score_plot_draws_each_series():
    p = score_plot({"random": [(10, 0.1), (20, 0.3), (30, 0.3)], "zo": [(10, 0.2), (30, 0.5)]}, title="t",
                   width=320, height=200)
    assert p.shape == (1, 200, 320, 3)
    red = ((p[0, :, :, 0] > 0.9) & (p[0, :, :, 1] < 0.6) & (p[0, :, :, 2] < 0.2)).sum()  # the orange line
    blue = ((p[0, :, :, 2] > 0.6) & (p[0, :, :, 0] < 0.3)).sum()
    assert red > 20 and blue > 20
    assert score_plot({}, width=200, height=150).shape == (1, 150, 200, 3)


def test_resample_sigmas_keeps_ends():
    s = torch.tensor([14.6, 8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.03, 0.0])
    r = resample_sigmas(s, 4)
    assert r.numel() == 5 and float(r[-1]) == 0.0
    assert abs(float(r[0]) - 14.6) < 1e-4 and abs(float(r[-2]) - 0.03) < 1e-5
    assert all(float(a) > float(b) for a, b in zip(r[:-1], r[1:]))
    flow = torch.linspace(1.0, 0.05, 11)
    r2 = resample_sigmas(flow, 20)
    assert r2.numel() == 21 and abs(float(r2[0]) - 1.0) < 1e-6 and abs(float(r2[-1]) - 0.05) < 1e-6


def test_score_plot_and_caption_take_a_failed_minus_inf_score():
    """A remote grader's failed answer (-inf) at the start of a trace is left off the plot's axis."""
    series = {"random": [(4, float("-inf")), (8, 0.3), (12, 0.5)], "failed": [(4, float("-inf"))]}
    img = score_plot(series, title="remote", width=200, height=120)
    assert img.shape == (1, 120, 200, 3) and torch.isfinite(img).all() and img.min() < 1.0
    assert "-inf" in caption(3, float("-inf"), 7)
