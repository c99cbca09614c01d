"""muonclip.story.lessons: the notebook's figures, its sliders (and their static fallback) and the mini-dragon."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from muonclip.story import lessons  # noqa: E402


def test_sliders_fall_back_to_one_static_draw_without_ipywidgets(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails, as when not installed
    monkeypatch.setattr(lessons, "_in_kernel", lambda: True)
    calls = []
    assert not lessons.widgets_enabled()
    lessons.sliders(lambda steps, tau: calls.append((steps, tau)), steps=(0, 8, 1, 5), tau=(1.0, 9.0, 0.5, 2.0))
    assert calls == [(5, 2.0)]


def test_sliders_are_static_when_the_notebook_is_rendered_for_saving(monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(lessons, "_in_kernel", lambda: True)
    assert lessons.widgets_enabled()
    monkeypatch.setenv("MUONCLIP_NOTEBOOK_WIDGETS", "0")
    assert not lessons.widgets_enabled()


def test_sliders_give_widgets_in_a_kernel(monkeypatch):
    w = pytest.importorskip("ipywidgets")
    monkeypatch.setattr(lessons, "_in_kernel", lambda: True)
    monkeypatch.delenv("MUONCLIP_NOTEBOOK_WIDGETS", raising=False)
    calls = []
    ui = lessons.sliders(lambda steps, tau: calls.append((steps, tau)), steps=(0, 8, 1, 5), tau=(1.0, 9.0, 0.5, 2.0))
    kinds = {c.description: type(c) for c in ui.widget.children if isinstance(c, w.ValueWidget)}
    assert kinds == {"steps": w.IntSlider, "tau": w.FloatSlider}
    assert calls == [(5, 2.0)]  # drawn once with the defaults


@pytest.mark.parametrize("spec", [(0, 8, 1), (0, 8, 1, 9), (5, 1, 1, 3)])
def test_sliders_refuse_a_bad_control_before_drawing(spec):
    calls = []
    with pytest.raises(ValueError, match="low <= default <= high"):
        lessons.sliders(lambda steps: calls.append(steps), steps=spec)
    assert calls == []


def test_figures_draw_their_data():
    history = [torch.tensor([[1.0, 0.9], [0.2, 0.4]], dtype=torch.float64), torch.eye(2, dtype=torch.float64)]
    fig = lessons.circle_figure(history)
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].lines) == len(history) + 1  # one ellipse per iterate + the unit circle
    sv = np.array([[1.0, 0.1], [1.1, 0.34]])
    fig = lessons.singular_values_figure(sv, sv, (3.4445, -4.7750, 2.0315))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    logits = torch.randn(6, 6, dtype=torch.float64)
    fig = lessons.logits_figure(logits, 0.5 * logits, 1.0)
    assert "max logit" in fig.axes[0].get_title() and "tau = 1" in fig._suptitle.get_text()


def test_mini_dragon_trains_three_optimizers_from_one_start():
    draws = []
    result = lessons.train_mini_dragon(4, tau=0.05, draw_every=2, on_draw=lambda r: draws.append(len(r.loss["muon"])),
                                       progress=False)
    assert draws == [2, 4]
    first = {name: logits[0] for name, logits in result.max_logit.items()}
    assert len(set(first.values())) == 1, "same init and batch: the same first max logit"
    assert all(len(v) == 4 for v in result.loss.values())
    assert result.n_clipped["adamw"] == result.n_clipped["muon"] == 0
    assert result.n_clipped["muonclip"] > 0  # tau far under the logits: the clip fires
    assert result.tau == 0.05
    assert isinstance(lessons.mini_dragon_figure(result), Figure)
