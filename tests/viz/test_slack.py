"""The slack figure draws each run's growth and batch factors against lr and tau."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from muonclip.viz.slack import slack_figure  # noqa: E402


def _point(lr, tau, growth, batch):
    return {"lr": lr, "tau": tau, "growth": {"max": growth, "p90": growth}, "batch": {"max": batch, "p90": batch}}


def test_each_panel_plots_every_run_in_percent_over_one():
    points = [_point(0.01, 20.0, 1.05, 1.0), _point(0.02, 26.7, 1.2, 1.02)]
    fig = slack_figure(points, cap=1.10)
    left, right = fig.axes[:2]
    growth_l, batch_l = left.collections[:2]
    assert np.allclose(growth_l.get_offsets(), [[0.01, 5.0], [0.02, 20.0]])
    assert np.allclose(batch_l.get_offsets(), [[0.01, 0.0], [0.02, 2.0]])
    assert np.allclose(right.collections[0].get_offsets()[:, 0], [20.0, 26.7])
    assert any(np.allclose(line.get_ydata(), [10.0, 10.0]) for line in left.lines)  # the cap target
    assert len(left.collections[2].get_offsets()) == 0  # no worst rows given


def test_worst_rows_are_drawn_as_their_excess():
    fig = slack_figure([{**_point(0.02, 20.0, 1.01, 1.0), "worst": {"excess": 1.25}}])
    assert np.allclose(fig.axes[0].collections[2].get_offsets(), [[0.02, 25.0]])


def test_a_run_without_clips_is_left_out_and_no_runs_is_an_error():
    fig = slack_figure([_point(0.01, 20.0, 1.05, 1.0), {"lr": 0.02, "tau": 30.0, "growth": None, "batch": None}])
    assert len(fig.axes[0].collections[0].get_offsets()) == 1
    with pytest.raises(ValueError):
        slack_figure([])
