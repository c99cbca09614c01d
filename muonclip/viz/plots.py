"""Static figures of the story: every function takes data and returns a matplotlib Figure.

Nothing here reads or writes files: figures are built with the object-oriented API on an
Agg canvas (no pyplot state), and saved by :mod:`muonclip.story.render`. Each figure can
carry a provenance footer (run id, config hash, git sha), see :func:`add_provenance`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .style import COLORS, color_for, fmt, fmt_g

__all__ = [
    "new_figure", "add_provenance", "finish", "decorate", "draw_bands",
    "plot_max_logits", "plot_loss_vs_tokens", "plot_spectral_entropy", "plot_dragon", "draw_dragon",
    "plot_rogue_heads", "draw_max_logit_panel", "plot_tradeoff_summary", "plot_logit_bound",
]

def new_figure(width: float = 8.0, height: float = 4.5, dpi: int = 100, layout: str | None = None) -> Figure:
    """A Figure on its own Agg canvas (works the same in scripts, tests and notebooks)."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def add_provenance(fig: Figure, text: str | Sequence[str] | None) -> Figure:
    """Write the provenance footer (one line per source run) at the bottom of ``fig``."""
    if not text:
        return fig
    lines = [text] if isinstance(text, str) else list(text)
    fig.text(0.005, 0.005, "\n".join(lines), fontsize=6, color="#777777", ha="left", va="bottom",
             family="monospace")
    fig._story_provenance = lines  # read by the render layer for PNG metadata
    return fig


def finish(fig: Figure, provenance, bottom: float | None = None) -> Figure:
    """Tight layout that leaves room for the provenance footer, then the footer."""
    n = 0 if not provenance else (1 if isinstance(provenance, str) else len(provenance))
    fig.tight_layout(rect=(0, bottom if bottom is not None else 0.02 + 0.022 * n, 1, 1))
    return add_provenance(fig, provenance)


def decorate(ax, xlabel: str, ylabel: str, title: str = "", *, legend: bool = True, fontsize: float | None = None,
             grid: float = 0.3, which: str = "major") -> None:
    """Axis labels, title, a light grid and (unless ``legend=False``) the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=grid, which=which)
    if legend:
        ax.legend(fontsize=fontsize)


# ------------------------------------------------------------------------------ K2-style charts


def plot_max_logits(series: Mapping[str, tuple[np.ndarray, np.ndarray]], *, tau: float | None = None,
                    title: str = "Max attention logit over training", log: bool = True,
                    provenance=None, bands: Mapping[str, tuple] | None = None) -> Figure:
    """One line per run: steps -> max pre-softmax logit over all layers and heads (the median
    over seeds; ``bands[label] = (steps, lowest, highest)`` the seeds' min-max)."""
    fig = new_figure()
    ax = fig.add_subplot()
    draw_bands(ax, bands)
    for label, (steps, vals) in series.items():
        ax.plot(steps, vals, label=label, color=color_for(label), lw=1.6)
    if tau is not None:
        ax.axhline(tau, color=COLORS["tau"], ls="--", lw=1, label=f"tau = {fmt_g(tau)}")
    if log:
        ax.set_yscale("log")
    decorate(ax, "step", "max logit (all heads)", title, fontsize=8, which="both")
    return finish(fig, provenance)


def plot_loss_vs_tokens(series: Mapping[str, tuple[np.ndarray, np.ndarray]],
                        val: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None, *,
                        title: str = "Training loss vs tokens", provenance=None) -> Figure:
    """Smoothed training loss against tokens seen (plus validation points when given)."""
    fig = new_figure()
    ax = fig.add_subplot()
    for label, (tokens, loss) in series.items():
        ax.plot(tokens, loss, label=f"{label} (train, smoothed)", color=color_for(label), lw=1.4)
    for label, (tokens, vloss) in (val or {}).items():
        ax.plot(tokens, vloss, "o", ms=4, color=color_for(label), label=f"{label} (val)")
    decorate(ax, "tokens", "loss (nats/token)", title, fontsize=8)
    return finish(fig, provenance)


def plot_spectral_entropy(series: Mapping[str, tuple[np.ndarray, list[str], np.ndarray]], *,
                          title: str = "Spectral entropy of the weights (1 = flat spectrum)",
                          provenance=None) -> Figure:
    """``series[label] = (steps, param names, entropy [snapshots, params])``: thin lines per
    matrix, thick line for the mean."""
    fig = new_figure()
    ax = fig.add_subplot()
    for label, (steps, names, ent) in series.items():
        c = color_for(label)
        for j in range(ent.shape[1]):
            ax.plot(steps, ent[:, j], color=c, lw=0.6, alpha=0.35)
        ax.plot(steps, ent.mean(axis=1), color=c, lw=2.4, label=f"{label}: mean of {len(names)} matrices")
    decorate(ax, "step", "normalised spectral entropy H(σ)/ln k", title, fontsize=8)
    return finish(fig, provenance)


# ------------------------------------------------------------------------------ the dragon


def draw_bands(ax, bands: Mapping[str, tuple] | None, *, color: str | None = None) -> None:
    """The seeds' min-max of each labelled curve, a faint band in its colour."""
    for label, (xs, lo, hi) in (bands or {}).items():
        ax.fill_between(xs, lo, hi, color=color or color_for(label), alpha=0.2, lw=0,
                        label=f"{label}: min-max over seeds")


def draw_dragon(ax, steps: np.ndarray, values: np.ndarray, tau: float, *, upto: int | None = None,
                label: str = "vanilla Muon", reference: tuple[np.ndarray, np.ndarray, str] | None = None,
                ymax: float | None = None, band: tuple | None = None) -> None:
    """Max logit with a green safe zone below tau and a red danger zone above it (``band``:
    ``(steps, lowest, highest)`` of the max logit over seeds, drawn up to the same step)."""
    n = len(steps) if upto is None else max(1, upto)
    top = ymax if ymax is not None else max(float(np.max(values if band is None else band[2])) * 1.15, tau * 1.5)
    ax.axhspan(0, tau, color=COLORS["safe"], zorder=0)
    ax.axhspan(tau, top, color=COLORS["danger"], zorder=0)
    ax.axhline(tau, color=COLORS["tau"], ls="--", lw=1)
    ax.text(steps[0], tau * 0.5, "safe zone", fontsize=9, color="#2a7a2a", va="center")
    ax.text(steps[-1], min(top * 0.95, tau + (top - tau) * 0.9), "danger zone ", fontsize=9, color="#b02020",
            va="center", ha="right")
    ax.text(steps[-1], tau, f" tau = {fmt_g(tau)}", fontsize=8, va="bottom", ha="right", color=COLORS["tau"])
    if reference is not None:
        rs, rv, rl = reference
        k = np.searchsorted(rs, steps[n - 1], side="right")
        ax.plot(rs[:k], rv[:k], color=color_for(rl), lw=1.2, alpha=0.8, label=rl)
    if band is not None:
        bs, lo, hi = (np.asarray(a) for a in band)
        k = np.searchsorted(bs, steps[n - 1], side="right")
        ax.fill_between(bs[:k], lo[:k], hi[:k], color=COLORS["muon"], alpha=0.2, lw=0,
                        label=f"{label}: min-max over seeds")
    ax.plot(steps[:n], values[:n], color=COLORS["muon"], lw=1.8, label=label)
    ax.plot([steps[n - 1]], [values[n - 1]], "o", color=COLORS["muon"], ms=5)
    ax.set_xlim(steps[0], steps[-1])
    ax.set_ylim(0, top)
    ax.set_xlabel("step")
    ax.set_ylabel("max attention logit")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.85))
    ax.grid(alpha=0.25)


def plot_dragon(steps: np.ndarray, values: np.ndarray, tau: float, *,
                reference: tuple[np.ndarray, np.ndarray, str] | None = None,
                title: str = "The dragon: vanilla Muon's max logit keeps climbing", provenance=None,
                band: tuple | None = None) -> Figure:
    """The dragon as a still: :func:`draw_dragon` over the whole run (``values``: the median over
    seeds when ``band`` gives their min-max)."""
    fig = new_figure()
    ax = fig.add_subplot()
    draw_dragon(ax, np.asarray(steps), np.asarray(values), tau, reference=reference, band=band)
    ax.set_title(title)
    return finish(fig, provenance)


# ------------------------------------------------------------------------------ rogue heads


def plot_rogue_heads(head_logits: np.ndarray, layer: int, step: int, tau: float | None, *,
                     why: str = "", run_label: str = "", provenance=None) -> Figure:
    """Left: every layer x head max logit at ``step`` (cells above tau outlined).
    Right: the heads of ``layer`` as bars, those above tau highlighted."""
    head_logits = np.asarray(head_logits, dtype=np.float64)  # [L, H]
    L, H = head_logits.shape
    fig = new_figure(9.0, 4.2)
    ax0, ax1 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    im = ax0.imshow(head_logits, cmap="magma", aspect="auto")
    fig.colorbar(im, ax=ax0, fraction=0.05, label="max logit")
    ax0.set_xlabel("head")
    ax0.set_ylabel("layer")
    ax0.set_xticks(range(H))
    ax0.set_yticks(range(L))
    ax0.set_title(f"all heads at step {step}", fontsize=10)
    if tau is not None:
        for li, hi in np.argwhere(head_logits > tau):
            ax0.add_patch(Rectangle((hi - 0.5, li - 0.5), 1, 1, fill=False, ec="#00e0ff", lw=2))
    ax0.add_patch(Rectangle((-0.5, layer - 0.5), H, 1, fill=False, ec="white", lw=1.2, ls=":"))
    vals = head_logits[layer]
    above = vals > tau if tau is not None else np.zeros(H, bool)
    colors = [COLORS["muon"] if a else "#9aa5b1" for a in above]
    ax1.bar(range(H), vals, color=colors)
    for h, v in enumerate(vals):
        ax1.text(h, v, fmt(float(v), 1), ha="center", va="bottom", fontsize=8)
    if tau is not None:
        ax1.axhline(tau, color=COLORS["tau"], ls="--", lw=1)
        ax1.text(H - 0.5, tau, f"tau = {fmt_g(tau)}", ha="right", va="bottom", fontsize=8)
    ax1.set_xticks(range(H))
    ax1.set_xlabel(f"head of layer {layer}")
    ax1.set_ylabel("max pre-softmax logit")
    n_above = int(above.sum())
    ax1.set_title(f"layer {layer}: {n_above} of {H} heads above tau" if tau is not None else f"layer {layer}",
                  fontsize=10)
    fig.suptitle(f"Rogue heads{(' - ' + run_label) if run_label else ''} ({why})" if why else "Rogue heads",
                 fontsize=10)
    return finish(fig, provenance)


# ------------------------------------------------------------------------------ guardrail / lifecycle panels


def draw_max_logit_panel(ax, steps: np.ndarray, values: np.ndarray, *, tau: float | None, upto: int | None = None,
                         label: str = "MuonClip", color: str | None = None,
                         ghost: tuple[np.ndarray, np.ndarray, str] | None = None,
                         phases: Sequence[tuple[float, float, str, str]] = (), ymax: float | None = None) -> None:
    """Max logit revealed up to index ``upto``; ``ghost`` is a faded comparison line,
    ``phases`` are shaded spans (start, end, text, color)."""
    n = len(steps) if upto is None else max(1, upto)
    color = color or COLORS["muonclip"]
    top = ymax if ymax is not None else max(float(np.max(values)), float(np.max(ghost[1])) if ghost else 0,
                                            tau or 0) * 1.15
    for start, end, text, pc in phases:
        if start <= steps[n - 1]:
            ax.axvspan(start, min(end, steps[n - 1]), color=pc, alpha=0.35, zorder=0)
            ax.text(start, top * 0.97, " " + text, fontsize=8, va="top", ha="left")
    if ghost is not None:
        gs, gv, gl = ghost
        k = np.searchsorted(gs, steps[n - 1], side="right")
        ax.plot(gs[:k], gv[:k], color=color_for(gl), lw=1.2, alpha=0.45, label=gl)
    if tau is not None:
        ax.axhline(tau, color=COLORS["tau"], ls="--", lw=1, label=f"tau = {fmt_g(tau)}")
    ax.plot(steps[:n], values[:n], color=color, lw=1.8, label=label)
    ax.plot([steps[n - 1]], [values[n - 1]], "o", color=color, ms=5)
    ax.set_xlim(steps[0], steps[-1])
    ax.set_ylim(0, top)
    ax.set_ylabel("max attention logit")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")


# ------------------------------------------------------------------------------ trade-off summary


def plot_tradeoff_summary(result: Mapping, *, provenance=None) -> Figure:
    """Accuracy and keyword-attention margin over training for each arm of the trade-off experiment."""
    fig = new_figure(9.0, 3.8)
    ax0, ax1 = fig.subplots(1, 2)
    for arm in result["arms"]:
        snaps = arm["snapshots"]
        steps = [s["step"] for s in snaps]
        c = color_for(arm["optimizer"])
        ax0.plot(steps, [s["accuracy"] for s in snaps], color=c, lw=1.8, label=arm["label"])
        ax1.plot(steps, [s["keyword_attention"] for s in snaps], color=c, lw=1.8, label=f"{arm['label']}: keyword")
        ax1.plot(steps, [s["distractor_attention"] for s in snaps], color=c, lw=1.2, ls="--",
                 label=f"{arm['label']}: each distractor")
    ax0.set_ylim(-0.02, 1.02)
    decorate(ax0, "step", "", "", fontsize=8)
    ax0.set_title("tool-selection accuracy (held-out prompts)", fontsize=10)
    ax1.set_ylim(0, 1)
    decorate(ax1, "step", "", "", fontsize=7)
    ax1.set_title("attention from the answer position", fontsize=10)
    return finish(fig, provenance)


# ------------------------------------------------------------------------------ spectra -> logits


def plot_logit_bound(panels: Mapping[str, Mapping], *, title: str = "", provenance=None) -> Figure:
    """The bridge from spectra to logits, one panel per run (``panels[label]`` as returned by
    :func:`muonclip.reproduce.results.logit_bound_series`): each layer's measured max logit
    (solid) and ``sigma_1(W_q) sigma_1(W_k) / sqrt(d)`` (dashed, the bound per unit input
    norm), both on one log axis so that equal slopes read as equal growth."""
    fig = new_figure(4.6 * max(1, len(panels)), 4.2)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels)), sharey=True))
    shades = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
    for ax, (label, p) in zip(axes, panels.items(), strict=False):
        for i, li in enumerate(p["layers"]):
            c = shades[i % len(shades)]
            ax.plot(p["steps"], p["measured"][i], color=c, lw=1.6, label=f"layer {li}: measured max logit")
            ax.plot(p["steps"], p["bound"][i], color=c, lw=1.2, ls="--",
                    label=f"layer {li}: \u03c3\u2081(W_q)\u00b7\u03c3\u2081(W_k)/\u221ad")
        ax.set_yscale("log")
        decorate(ax, "step", "logit (log scale)", label, fontsize=7, which="both")
    fig.suptitle(title)
    return finish(fig, provenance)
