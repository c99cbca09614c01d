"""Charts of docs/results.md and of the SAE L0 chart: data in, matplotlib Figure out, no I/O.

Built with the object API on an Agg canvas (no pyplot state, works headless); the caller
saves them. Colours come from :mod:`muonclip.viz.style`. Over several seeds a chart draws each
run's median curve as the line and the seeds' min-max as a faint band around it (``bands``,
from :func:`muonclip.reproduce.results.curve_spread`); with one seed there is no band.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .plots import decorate, draw_bands, new_figure
from .style import COLORS, color_for, fmt_g

__all__ = [
    "Band", "max_logit_figure", "layer_heads_figure", "lifecycle_figure", "update_spectra_figure",
    "spectral_series_figure", "val_curves_figure", "lr_sweep_figure", "plot_l0",
]

Curve = tuple[Sequence[float], Sequence[float]]
Band = tuple[Sequence[float], Sequence[float], Sequence[float]]  # (xs, lowest, highest) over the seeds


def _figure(width: float, height: float) -> Figure:
    return new_figure(width, height, layout="constrained")


def _lines(ax, curves: Mapping[str, Curve], **style) -> None:
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=label, color=color_for(label), **style)


def max_logit_figure(curves: Mapping[str, Curve], *, tau: float | None = None, title: str = "",
                     log: bool = True, bands: Mapping[str, Band] | None = None) -> Figure:
    """Max attention logit (over all layers and heads) against step, one line per run (the
    median over seeds, with ``bands``)."""
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    draw_bands(ax, bands)
    _lines(ax, curves, lw=1.2)
    if tau is not None:
        ax.axhline(tau, color=COLORS["tau"], ls="--", lw=1, label=f"tau = {fmt_g(tau)}")
        ax.axhline(3 * tau, color="gray", ls=":", lw=1, label=f"3 tau = {fmt_g(3 * tau)}")
    if log:
        ax.set_yscale("log")
    decorate(ax, "step", "max attention logit", title)
    return fig


def layer_heads_figure(steps: Sequence[int], max_logits: np.ndarray, *, tau: float | None = None,
                       title: str = "") -> Figure:
    """Per-head max logit over training, one panel per layer. ``max_logits`` has shape
    ``[steps, layers, heads]``."""
    arr = np.asarray(max_logits, dtype=float)
    n_layer, n_head = arr.shape[1], arr.shape[2]
    fig = _figure(3.2 * n_layer, 3.2)
    axes = np.atleast_1d(fig.subplots(1, n_layer, sharey=True))
    viridis = colormaps["viridis"]
    for li, ax in enumerate(axes):
        for hi in range(n_head):
            ax.plot(steps, arr[:, li, hi], lw=0.9, color=viridis(hi / max(1, n_head - 1)))
        if tau is not None:
            ax.axhline(tau, color=COLORS["tau"], ls="--", lw=1)
        decorate(ax, "step", "", f"layer {li}", legend=False)
    axes[0].set_ylabel("max logit per head")
    fig.suptitle(title)
    return fig


def lifecycle_figure(steps: Sequence[int], max_logit: Sequence[float], n_clipped: Sequence[int],
                     lr: Sequence[float], *, tau: float, title: str = "", band: Band | None = None) -> Figure:
    """K2 Fig. 2 (right) at CPU scale: max logit with tau, heads clipped per step, and the lr
    (``band``: the max logit's min-max over seeds)."""
    fig = _figure(7, 5)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if band is not None:
        draw_bands(top, {"max logit": band}, color=COLORS["muonclip"])
    top.plot(steps, max_logit, color=COLORS["muonclip"], lw=1.2, label="max logit (MuonClip)")
    top.axhline(tau, color=COLORS["tau"], ls="--", lw=1, label=f"tau = {fmt_g(tau)}")
    top.axhline(0.8 * tau, color="gray", ls=":", lw=1, label="0.8 tau")
    top.set_ylabel("max attention logit")
    top.grid(alpha=0.3)
    top.legend(loc="lower right")
    top.set_title(title)
    bottom.bar(steps, n_clipped, width=1.0, color=COLORS["clipped"], label="heads clipped")
    decorate(bottom, "step", "heads clipped", legend=False)
    lr_axis = bottom.twinx()
    lr_axis.plot(steps, lr, color="k", lw=1, label="lr")
    lr_axis.set_ylabel("lr")
    return fig


def update_spectra_figure(spectra: Mapping[str, np.ndarray], *, title: str = "") -> Figure:
    """Normalised singular values (s_i / s_1) of one update matrix per optimizer, log scale:
    Muon's are flat, AdamW's fall off after a few directions."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for label, s in spectra.items():
        s = np.asarray(s, dtype=float)
        ax.plot(np.arange(1, len(s) + 1), s / s[0], label=label, color=color_for(label), lw=1.5)
    ax.set_yscale("log")
    decorate(ax, "singular value index", "s_i / s_1", title)
    return fig


def spectral_series_figure(series: Mapping[str, Mapping[str, Curve]], *, title: str = "",
                           bands: Mapping[str, Mapping[str, Band]] | None = None) -> Figure:
    """Effective rank over training. ``series[panel][label] = (steps, values)``, e.g. panels
    'update' and 'weight', labels the optimizers; ``bands[panel][label]`` their seeds' min-max."""
    panels = list(series)
    fig = _figure(5 * len(panels), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels, strict=True):
        draw_bands(ax, (bands or {}).get(panel))
        _lines(ax, series[panel], marker="o", ms=3)
        decorate(ax, "step", "effective rank (mean over tracked matrices)", panel)
    fig.suptitle(title)
    return fig


def val_curves_figure(curves: Mapping[str, Curve], *, target: float | None = None,
                      marks: Mapping[str, float | None] | None = None, title: str = "",
                      bands: Mapping[str, Band] | None = None) -> Figure:
    """Validation loss against tokens; ``target`` draws AdamW's final loss, ``marks`` the
    tokens at which each run reaches it, ``bands`` the seeds' min-max."""
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    draw_bands(ax, bands)
    _lines(ax, curves, lw=1.3)
    for label, mark in (marks or {}).items():
        if mark is not None and label in curves:
            ax.axvline(mark, color=color_for(label), ls=":", lw=1)
    if target is not None:
        ax.axhline(target, color=COLORS["tau"], ls="--", lw=1, label=f"AdamW final {target:.3f}")
    decorate(ax, "training tokens", "validation loss", title)
    return fig


def lr_sweep_figure(sweeps: Mapping[str, Curve], *, title: str = "") -> Figure:
    """Final validation loss against learning rate, one line per optimizer."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    _lines(ax, sweeps, marker="o")
    ax.set_xscale("log")
    decorate(ax, "learning rate", "final validation loss", title)
    return fig


_L0_LABELS = {"adam": "Adam", "muon": "Muon (MuonClip, no clip)"}


def plot_l0(series: Mapping[str, Curve], *, title: str | None = None, d_sae: int | None = None) -> Figure:
    """L0 (mean active latents per token) of sparse autoencoders against SAE step.

    ``series`` maps a label (``"adam"``, ``"muon"`` or anything) to ``(steps, l0)``. The
    y-axis is logarithmic; with ``d_sae`` given, dotted lines mark d_sae/2 (where a ReLU
    SAE at random init starts) and d_sae/20 (a 10x fall).
    """
    fig = new_figure(7.0, 4.2, dpi=120, layout="constrained")
    ax = fig.add_subplot()
    finals: list[float] = []
    for label, (steps, l0) in series.items():
        pts = [(s, v) for s, v in zip(steps, l0, strict=True) if v > 0]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        color = color_for(label)
        ax.plot(xs, ys, label=_L0_LABELS.get(label.lower(), label), color=color, linewidth=1.6)
        # stagger the end labels of lines that finish close together (log scale: ratio)
        close = [f for f in finals if abs(ys[-1] / f - 1) < 0.4]
        dy = sum(7 if ys[-1] >= f else -7 for f in close)
        finals.append(ys[-1])
        ax.annotate(f"{ys[-1]:.1f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, dy),
                    fontsize=8, color=color, va="center")
    if d_sae:
        for level, line, text, ink in ((d_sae / 2, "0.5", f" d_sae/2 = {d_sae // 2}", "0.4"),
                                       (d_sae / 20, "0.7", " d_sae/20 = 10x below start", "0.5")):
            ax.axhline(level, color=line, linestyle=":", linewidth=1)
            ax.text(0.01, level, text, transform=ax.get_yaxis_transform(), fontsize=8, color=ink, va="bottom")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("SAE training step")
    ax.set_ylabel("L0 (active latents per token)")
    ax.set_title(title or "Sparse autoencoder L0 over training")
    ax.grid(True, which="both", alpha=0.25)
    if series:
        ax.legend(loc="upper right")
    return fig
