"""Figures of the reproduction. Every function takes data (lists / arrays) and returns a
matplotlib ``Figure``; nothing here reads or writes files (``report.py`` saves them).
The non-interactive Agg backend is used so this works on headless machines."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "max_logit_figure",
    "layer_heads_figure",
    "lifecycle_figure",
    "update_spectra_figure",
    "spectral_series_figure",
    "val_curves_figure",
    "lr_sweep_figure",
]

Curve = tuple[Sequence[float], Sequence[float]]
COLORS = {"adamw": "tab:blue", "muon": "tab:red", "muonclip": "tab:green"}


def _color(label: str, i: int) -> str:
    for key in ("muonclip", "adamw", "muon"):  # muonclip before muon: substring
        if key in label.lower():
            return COLORS[key]
    return f"C{i}"


def max_logit_figure(curves: Mapping[str, Curve], *, tau: float | None = None, title: str = "",
                     log: bool = True) -> Figure:
    """Max attention logit (over all layers and heads) against step, one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for i, (label, (xs, ys)) in enumerate(curves.items()):
        ax.plot(xs, ys, label=label, color=_color(label, i), lw=1.2)
    if tau is not None:
        ax.axhline(tau, color="k", ls="--", lw=1, label=f"tau = {tau:g}")
        ax.axhline(3 * tau, color="gray", ls=":", lw=1, label=f"3 tau = {3 * tau:g}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("max attention logit")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def layer_heads_figure(steps: Sequence[int], max_logits: np.ndarray, *, tau: float | None = None,
                       title: str = "") -> Figure:
    """Per-head max logit over training, one panel per layer. ``max_logits`` has shape
    ``[steps, layers, heads]``."""
    arr = np.asarray(max_logits, dtype=float)
    n_layer, n_head = arr.shape[1], arr.shape[2]
    fig, axes = plt.subplots(1, n_layer, figsize=(3.2 * n_layer, 3.2), sharey=True, constrained_layout=True)
    axes = np.atleast_1d(axes)
    for li, ax in enumerate(axes):
        for hi in range(n_head):
            ax.plot(steps, arr[:, li, hi], lw=0.9, color=plt.cm.viridis(hi / max(1, n_head - 1)))
        if tau is not None:
            ax.axhline(tau, color="k", ls="--", lw=1)
        ax.set_title(f"layer {li}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("max logit per head")
    fig.suptitle(title)
    return fig


def lifecycle_figure(steps: Sequence[int], max_logit: Sequence[float], n_clipped: Sequence[int],
                     lr: Sequence[float], *, tau: float, title: str = "") -> Figure:
    """K2 Fig. 2 (right) at CPU scale: max logit with tau, heads clipped per step, and the lr."""
    fig, (a0, a1) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, constrained_layout=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
    a0.plot(steps, max_logit, color=COLORS["muonclip"], lw=1.2, label="max logit (MuonClip)")
    a0.axhline(tau, color="k", ls="--", lw=1, label=f"tau = {tau:g}")
    a0.axhline(0.8 * tau, color="gray", ls=":", lw=1, label="0.8 tau")
    a0.set_ylabel("max attention logit")
    a0.grid(alpha=0.3)
    a0.legend(loc="lower right")
    a0.set_title(title)
    a1.bar(steps, n_clipped, width=1.0, color="tab:orange", label="heads clipped")
    a1.set_ylabel("heads clipped")
    a1.set_xlabel("step")
    ax2 = a1.twinx()
    ax2.plot(steps, lr, color="k", lw=1, label="lr")
    ax2.set_ylabel("lr")
    a1.grid(alpha=0.3)
    return fig


def update_spectra_figure(spectra: Mapping[str, np.ndarray], *, title: str = "") -> Figure:
    """Normalised singular values (s_i / s_1) of one update matrix per optimizer, log scale:
    Muon's are flat, AdamW's fall off after a few directions."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for i, (label, s) in enumerate(spectra.items()):
        s = np.asarray(s, dtype=float)
        ax.plot(np.arange(1, len(s) + 1), s / s[0], label=label, color=_color(label, i), lw=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("s_i / s_1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def spectral_series_figure(series: Mapping[str, Mapping[str, Curve]], *, title: str = "") -> Figure:
    """Effective rank over training. ``series[panel][label] = (steps, values)``, e.g. panels
    'update' and 'weight', labels the optimizers."""
    panels = list(series)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), constrained_layout=True)
    axes = np.atleast_1d(axes)
    for ax, panel in zip(axes, panels):
        for i, (label, (xs, ys)) in enumerate(series[panel].items()):
            ax.plot(xs, ys, marker="o", ms=3, label=label, color=_color(label, i))
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.set_ylabel("effective rank (mean over tracked matrices)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


def val_curves_figure(curves: Mapping[str, Curve], *, target: float | None = None,
                      marks: Mapping[str, float | None] | None = None, title: str = "") -> Figure:
    """Validation loss against tokens; ``target`` draws AdamW's final loss, ``marks`` the
    tokens at which each run reaches it."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for i, (label, (xs, ys)) in enumerate(curves.items()):
        ax.plot(xs, ys, label=label, color=_color(label, i), lw=1.3)
        if marks and marks.get(label) is not None:
            ax.axvline(marks[label], color=_color(label, i), ls=":", lw=1)
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=1, label=f"AdamW final {target:.3f}")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def lr_sweep_figure(sweeps: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "") -> Figure:
    """Final validation loss against learning rate, one line per optimizer."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for i, (label, (lrs, losses)) in enumerate(sweeps.items()):
        ax.plot(lrs, losses, marker="o", label=label, color=_color(label, i))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
