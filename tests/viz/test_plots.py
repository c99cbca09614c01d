"""Plot and animation functions: data in, matplotlib objects out; the render layer writes
PNGs with provenance metadata and GIFs with more than 10 frames."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from muonclip.story import analysis  # noqa: E402
from muonclip.story.render import save_animation, save_figure  # noqa: E402
from muonclip.viz import animate as A  # noqa: E402
from muonclip.viz import plots as P  # noqa: E402

PROV = "run test-abc | config abc | git 0123456789ab"


def _spectra(S=5, k=8, peaked=True, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(1, 0.1, k) ** (3 if peaked else 0.3)
    return np.sort(base[None, :] * (1 + 0.1 * np.arange(S))[:, None] + 0.01 * rng.random((S, k)), axis=1)[:, ::-1]


def _rows(n=40, L=2, H=4, tau=5.0):
    rows = []
    for s in range(1, n + 1):
        heads = [[0.2 * s * (1 + h) / H + 0.1 * layer for h in range(H)] for layer in range(L)]
        flat = max(max(r) for r in heads)
        rows.append({"step": s, "tokens": 64 * s, "loss": 3.0 / s ** 0.3, "max_logit": flat, "max_logits": heads,
                     "n_clipped": 1 if 10 < s < 30 else 0})
    return rows


def test_static_plots_return_figures_with_provenance(tmp_path):
    steps = np.arange(1, 41)
    figs = [
        P.plot_max_logits({"AdamW": (steps, steps * 0.1 + 1), "Muon": (steps, steps ** 1.5)}, tau=10, provenance=PROV),
        P.plot_loss_vs_tokens({"Muon": (steps * 64, 3 / steps ** 0.3)}, {"Muon": (steps[::10] * 64, 3 / steps[::10] ** 0.3)},
                              provenance=PROV),
        P.plot_spectral_entropy({"AdamW": (steps[:5], ["a", "b"], np.full((5, 2), 0.7))}, provenance=[PROV, PROV]),
        P.plot_dragon(steps, steps ** 1.5, 50.0, reference=(steps, steps * 0.5, "AdamW"), provenance=PROV),
        P.plot_rogue_heads(np.array([[1.0, 2.0, 9.0, 3.0], [2.0, 11.0, 1.0, 0.5]]), 1, 20, 5.0, why="test",
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
        "surface": A.animate_spectrum_surface(steps, _spectra(), title="t", provenance=PROV, frames=12),
        "side": A.animate_spectra_side_by_side(steps, [("AdamW", _spectra()), ("Muon", _spectra(peaked=False))],
                                               title="t", provenance=PROV, frames=12),
        "dragon": A.animate_dragon(np.arange(1, 41), np.arange(1, 41) ** 1.5, 50.0, provenance=PROV, frames=12),
        "maxlogit": A.animate_max_logit(np.arange(1, 41), np.minimum(np.arange(1, 41), 20.0), tau=20.0, title="t",
                                        lower=(np.arange(1, 41), np.arange(40) % 3, "clipped"),
                                        phases=[(20, 30, "active", "#bcd9f5")], provenance=PROV, frames=12),
    }
    for name, anim in anims.items():
        assert anim.story_frames >= A.MIN_FRAMES > 10
        path = save_animation(anim, tmp_path / f"{name}.gif")
        with Image.open(path) as im:
            assert im.n_frames > 10, name
            assert PROV.encode() in im.info.get("comment", b"")


def test_frame_indices_reveal_everything():
    idx = A.frame_indices(5, 3)
    assert len(idx) == A.MIN_FRAMES and idx[0] == 1 and idx[-1] == 5 and np.all(np.diff(idx) >= 0)
    assert list(A.frame_indices(100, 20))[-1] == 100


def test_analysis_numbers_come_from_the_rows():
    rows = _rows()
    ph = analysis.clip_phases(rows, tau=5.0)
    assert (ph.first_clip, ph.last_clip) == (11, 29)
    assert ph.stabilised and ph.clip_steps == 19 and ph.active_fraction == pytest.approx(19 / 40)
    i, layer, why = analysis.rogue_pick(rows, 5.0)
    assert "first step" in why and max(max(r) for r in rows[i]["max_logits"]) > 5.0
    assert max(max(r) for r in rows[i - 1]["max_logits"]) <= 5.0
    i2, _, why2 = analysis.rogue_pick(rows, None)
    assert "spread" in why2
    flat = analysis.normalized_entropy(np.ones((1, 8)))[0]
    spike = analysis.normalized_entropy(np.array([[1.0] + [1e-9] * 7]))[0]
    assert flat == pytest.approx(1.0) and spike < 0.05
    assert analysis.most_distorted_param({"a|weight": _spectra(peaked=False), "b|weight": _spectra()}) == "b"
