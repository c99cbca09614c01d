"""The guardrail's one-step slack against lr and tau: the update's growth beside the next batch's variation.

Data in (one point per MuonClip run, from :func:`muonclip.reproduce.results.slack_decomposition`),
matplotlib Figure out, no I/O.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from matplotlib.figure import Figure

from .plots import decorate, new_figure
from .style import COLORS, fmt_g

__all__ = ["slack_figure"]

_PARTS = (("growth", "growth: same batch after the update and clip", COLORS["muon"]),
          ("batch", "batch variation: next batch, same weights", COLORS["adamw"]))


def slack_figure(points: Sequence[Mapping], *, stat: str = "max", cap: float | None = None, title: str = "") -> Figure:
    """Two panels, lr (left) and tau (right) on x; on y each part's factor over the clipped
    heads of a run (``stat``: ``max`` or ``p90`` of :func:`slack_decomposition`'s stats) minus 1,
    in percent. ``points``: ``{"lr", "tau", "growth": {...}, "batch": {...}}`` per run, and
    optionally ``"worst": {"excess": ...}``, the run's worst covered row (a cross). ``cap`` draws
    the cap target (1.10: +10%)."""
    if not points:
        raise ValueError("slack_figure needs at least one run")
    fig = new_figure(10, 4, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, x_key, x_label in zip(axes, ("lr", "tau"), ("Muon lr (peak of the schedule)", "tau"), strict=True):
        for key, label, color in _PARTS:
            xs = [float(p[x_key]) for p in points if p.get(key)]
            ys = [100 * (float(p[key][stat]) - 1) for p in points if p.get(key)]
            ax.scatter(xs, ys, color=color, label=label, alpha=0.8, s=28)
        worst = [p for p in points if p.get("worst")]
        ax.scatter([float(p[x_key]) for p in worst], [100 * (float(p["worst"]["excess"]) - 1) for p in worst],
                   color=COLORS["tau"], marker="x", s=40, label="worst row over tau (any head near tau)")
        if cap is not None:
            ax.axhline(100 * (cap - 1), color=COLORS["tau"], ls="--", lw=1, label=f"cap target ({fmt_g(cap)} tau)")
        ax.axhline(0, color="#bbbbbb", lw=0.8)
        decorate(ax, x_label, f"{stat} over clipped head-steps: factor - 1 (%)" if ax is axes[0] else "",
                 legend=ax is axes[0])
    fig.suptitle(title or "One-step slack after a clip: the update's growth against batch-to-batch variation")
    return fig
