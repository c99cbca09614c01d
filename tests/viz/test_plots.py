"""Plot, chart and animation functions: data in, matplotlib objects out (no pyplot, no I/O); the
render layer writes PNGs with provenance metadata and GIFs with more than 10 frames."""
from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from muonclip.reproduce import results  # noqa: E402
from muonclip.story.render import save_animation, save_figure  # noqa: E402
from muonclip.viz import animate, charts, plots  # noqa: E402

PROV = "run test-abc | config abc | git 0123456789ab"


def _spectra(S=5, k=8, peaked=True, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(1, 0.1, k) ** (3 if peaked else 0.3)
    return np.sort(base[None, :] * (1 + 0.1 * np.arange(S))[:, None] + 0.01 * rng.random((S, k)), axis=1)[:, ::-1]


def test_static_plots_return_figures_with_provenance(tmp_path):
    steps = np.arange(1, 41)
    figs = [
        plots.plot_max_logits({"AdamW": (steps, steps * 0.1 + 1), "Muon": (steps, steps ** 1.5)}, tau=10,
                              provenance=PROV),
        plots.plot_loss_vs_tokens({"Muon": (steps * 64, 3 / steps ** 0.3)},
                                  {"Muon": (steps[::10] * 64, 3 / steps[::10] ** 0.3)}, provenance=PROV),
        plots.plot_spectral_entropy({"AdamW": (steps[:5], ["a", "b"], np.full((5, 2), 0.7))}, provenance=[PROV, PROV]),
        plots.plot_dragon(steps, steps ** 1.5, 50.0, reference=(steps, steps * 0.5, "AdamW"), provenance=PROV),
        plots.plot_rogue_heads(np.array([[1.0, 2.0, 9.0, 3.0], [2.0, 11.0, 1.0, 0.5]]), 1, 20, 5.0, why="test",
                           provenance=PROV),
    ]
    for i, fig in enumerate(figs):
        assert isinstance(fig, Figure)
        assert any(PROV in t.get_text() for t in fig.texts)
        path = save_figure(fig, tmp_path / f"f{i}.png", description="test")
        with Image.open(path) as im:
            assert im.size[0] > 300 and im.size[1] > 200
            assert PROV in im.text["Source"]
            assert len(im.getcolors(1 << 20) or []) > 20  # not a blank canvas


def test_animations_have_more_than_ten_frames(tmp_path):
    steps = np.array([1, 10, 20, 30, 40])
    anims = {
        "surface": animate.animate_spectrum_surface(steps, _spectra(), title="t", provenance=PROV, frames=12,
                                                    top_over_median=[results.top_over_median(v) for v in _spectra()]),
        "side": animate.animate_spectra_side_by_side(
            steps, [("AdamW", _spectra()), ("Muon", _spectra(peaked=False))], title="t", provenance=PROV, frames=12,
            entropies=[results.normalized_entropy(_spectra()), results.normalized_entropy(_spectra(peaked=False))]),
        "dragon": animate.animate_dragon(np.arange(1, 41), np.arange(1, 41) ** 1.5, 50.0, provenance=PROV, frames=12),
        "maxlogit": animate.animate_max_logit(np.arange(1, 41), np.minimum(np.arange(1, 41), 20.0), tau=20.0, title="t",
                                        lower=(np.arange(1, 41), np.arange(40) % 3, "clipped"),
                                        phases=[(20, 30, "active", "#bcd9f5")], provenance=PROV, frames=12),
    }
    for name, anim in anims.items():
        assert anim.story_frames >= animate.MIN_FRAMES > 10
        path = save_animation(anim, tmp_path / f"{name}.gif")
        with Image.open(path) as im:
            assert im.n_frames > 10, name
            assert PROV.encode() in im.info.get("comment", b"")


def test_frame_indices_reveal_everything():
    idx = animate.frame_indices(5, 3)
    assert len(idx) == animate.MIN_FRAMES and idx[0] == 1 and idx[-1] == 5 and np.all(np.diff(idx) >= 0)
    assert list(animate.frame_indices(100, 20))[-1] == 100



@pytest.mark.filterwarnings("ignore:Animation was deleted without rendering")
def test_animation_titles_show_the_numbers_they_are_given():
    steps = np.array([1, 10, 20])
    flat, peaked = np.ones((3, 8)), _spectra(S=3)
    side = animate.animate_spectra_side_by_side(steps, [("AdamW", peaked), ("Muon", flat)], title="t", frames=12,
                                                entropies=[[0.5, 0.25, 0.125], [1.0, 1.0, 1.0]])
    titles = [ax.get_title() for ax in side.story_fig.axes]
    assert "entropy 0.500 at step 1 (1 = flat)" in titles[0] and "entropy 1.000" in titles[1]
    bare = animate.animate_spectra_side_by_side(steps, [("AdamW", peaked)], title="t", frames=12)
    assert "entropy" not in bare.story_fig.axes[0].get_title()
    surface = animate.animate_spectrum_surface(steps, peaked, title="t", top_over_median=[12.345, 2.0, 3.0], frames=12)
    assert "σ_max = 12.3 x median σ" in surface.story_fig.axes[0].get_title()
    del side, bare, surface  # never rendered on purpose: collect them here, where the warning is expected
    gc.collect()


def test_charts_return_figures():
    steps = list(range(1, 31))
    heads = np.random.default_rng(0).random((30, 2, 3)) * 10
    figs = [
        charts.max_logit_figure({"Muon": (steps, [s ** 1.5 for s in steps]), "AdamW": (steps, steps)}, tau=20.0),
        charts.layer_heads_figure(steps, heads, tau=5.0, title="heads"),
        charts.lifecycle_figure(steps, heads.max(axis=(1, 2)), [int(s % 3 == 0) for s in steps],
                                [0.01] * 30, tau=8.0),
        charts.update_spectra_figure({"Muon": np.ones(8), "AdamW": _spectra(S=1)[0]}),
        charts.spectral_series_figure({"update": {"Muon": (steps, steps)}, "weight": {"AdamW": (steps, steps)}}),
        charts.val_curves_figure({"adamw (lr 0.001)": (steps, [3 - s / 30 for s in steps])}, target=2.5,
                                 marks={"adamw (lr 0.001)": 15.0}),
        charts.lr_sweep_figure({"muon": ([0.01, 0.02], [2.0, 2.1])}),
        charts.plot_l0({"adam": ([1, 2, 3], [100, 10, 1]), "muon": ([1, 2, 3], [90, 9, 2])}, d_sae=200),
    ]
    for fig in figs:
        assert isinstance(fig, Figure) and fig.canvas is not None
        assert any(ax.lines or ax.patches for ax in fig.axes)


def test_drawing_modules_do_not_use_pyplot():
    """Figures are built on their own Agg canvas: importing the drawing and report code must not
    import pyplot (no global figure state, no backend switching)."""
    code = ("import sys; import muonclip.viz.charts, muonclip.viz.plots, muonclip.viz.animate, "
            "muonclip.reproduce.report, muonclip.story.pipeline, muonclip.sae.plots; "
            "sys.exit('matplotlib.pyplot' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0


def test_logit_bound_figure_draws_both_lines_per_layer_on_a_log_axis():
    panel = {"steps": [1, 8, 16], "layers": [0, 1], "bound": [[0.1, 0.2, 0.4], [0.1, 0.3, 0.5]],
             "measured": [[1.0, 2.0, 5.0], [1.0, 3.0, 6.0]]}
    fig = plots.plot_logit_bound({"AdamW": panel, "Muon": panel}, title="bridge", provenance=PROV)
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_yscale() == "log"
        assert len(ax.get_lines()) == 4
        assert [list(line.get_ydata()) for line in ax.get_lines()[:2]] == [panel["measured"][0], panel["bound"][0]]
