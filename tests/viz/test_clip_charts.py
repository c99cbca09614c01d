"""QK-Clip's per-head charts (muonclip.viz.clip_charts): data in, Figure out, the data visible in it."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from muonclip.viz import clip_charts  # noqa: E402


def test_rogue_heads_bars_follow_the_sorted_peaks_and_mark_the_clipped():
    peaks = [((0, 2), 1.2, True), ((0, 0), 1.05, True), ((0, 1), 0.7, False)]
    raster = np.array([[True, False], [True, True], [False, False]])
    fig = clip_charts.rogue_heads_figure(peaks, [1, 2, 3], [(0, 0), (0, 2)], raster, reference_fraction=0.127)
    left, right = fig.axes[:2]
    heights = [p.get_height() for p in left.patches]
    assert heights == pytest.approx([1.2, 1.05, 0.7])
    colors = [tuple(p.get_facecolor()) for p in left.patches]
    assert colors[0] == colors[1] != colors[2]
    assert "2/3 heads ever clipped" in left.get_title() and "K2: 12.7%" in left.get_title()
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["tau", "ever clipped", "never clipped"]
    assert len(right.collections[0].get_offsets()) == int(raster.sum())


def test_cap_and_per_layer_charts_draw_their_points():
    fig = clip_charts.cap_figure([1, 2, 3], [5.0, 11.0, 10.0], [2], [1.01], tau=10.0, cap_target=1.1)
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.5, 1.1, 1.0])
    assert ax.collections[0].get_offsets().tolist() == [[2.0, 1.01]]
    fig = clip_charts.per_layer_figure({(0, 1): 0.2, (0, 3): 0.9})
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx([0.2, 0.9])


def test_tradeoff_heatmap_shares_use_their_whole_range():
    grids = {"held-out accuracy": np.array([[0.98, 1.0], [1.0, 1.0]]), "held-out loss": np.array([[0.07, 1e-4],
                                                                                                  [0.0, 1e-4]])}
    fig = clip_charts.tradeoff_sweep_figure([16, 32], [0.5, None], grids)
    acc, loss = (ax.images[0] for ax in fig.axes if ax.images)
    assert acc.get_clim() == (0.0, 1.0)
    assert loss.get_clim() == pytest.approx((0.0, 0.07))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.5", "none"]
