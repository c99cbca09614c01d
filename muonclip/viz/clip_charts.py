"""Charts of QK-Clip's per-head picture: rogue heads, the cap, per-layer shrinkage and the trade-off sweep.

Data in, matplotlib Figure out, no I/O (the callers save them); numbers come from
:mod:`muonclip.reproduce.results`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .plots import decorate, new_figure
from .style import COLORS, fmt_g, fmt_pct

__all__ = ["rogue_heads_figure", "cap_figure", "per_layer_figure", "tradeoff_sweep_figure"]

_CLIPPED, _HEALTHY = COLORS["muon"], "#9a9a9a"


def _head(h: Sequence[int]) -> str:
    return f"L{h[0]}H{h[1]}"


def rogue_heads_figure(peaks: Sequence[tuple[Sequence[int], float, bool]], steps: Sequence[int],
                       raster_heads: Sequence[Sequence[int]], raster: np.ndarray, *, title: str = "",
                       reference_fraction: float | None = None) -> Figure:
    """Left: every head's peak max logit / tau over the run, largest first (clipped heads in red).
    Right: when each ever-clipped head was clipped (one row per head, a mark per clipping step).
    ``reference_fraction`` (e.g. K2's 12.7%) is quoted beside the measured fraction."""
    fig = new_figure(11, 4.2, layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    ratios = [r for _, r, _ in peaks]
    colors = [_CLIPPED if c else _HEALTHY for _, _, c in peaks]
    left.bar(range(len(ratios)), ratios, color=colors, width=0.85)
    tau_line = left.axhline(1.0, color=COLORS["tau"], ls="--", lw=1)
    n_clipped = sum(1 for _, _, c in peaks if c)
    share = f"{n_clipped}/{len(peaks)} heads ever clipped ({fmt_pct(n_clipped / max(1, len(peaks)))})"
    if reference_fraction is not None:
        share += f"; K2: {fmt_pct(reference_fraction)}"
    left.set_xticks(range(len(peaks)), [_head(h) for h, _, _ in peaks], rotation=90, fontsize=6)
    decorate(left, "head, sorted by peak", "peak max logit / tau", share, legend=False)
    left.legend([tau_line, Patch(color=_CLIPPED), Patch(color=_HEALTHY)], ["tau", "ever clipped", "never clipped"])
    if len(raster_heads):
        ys, xs = np.nonzero(np.asarray(raster).T)
        right.scatter(np.asarray(steps)[xs], ys, marker="|", s=40, color=_CLIPPED, lw=1)
        right.set_yticks(range(len(raster_heads)), [_head(h) for h in raster_heads], fontsize=7)
        right.set_ylim(-0.5, len(raster_heads) - 0.5)
    right.set_xlim(min(steps), max(steps))
    decorate(right, "step", "", "clipping steps per clipped head", legend=False)
    fig.suptitle(title)
    return fig


def cap_figure(steps: Sequence[int], max_logit: Sequence[float], landing_steps: Sequence[int],
               landing: Sequence[float], *, tau: float, cap_target: float | None = None, title: str = "",
               seed_curves: Sequence[tuple[Sequence[int], Sequence[float]]] = ()) -> Figure:
    """The cap: each step's max logit (divided by ``tau`` here) from the forward before the update
    (what the clip reacts to), and where the clipped heads landed: ``landing`` is already their
    max logit / tau on the same batch with the updated, clipped weights. ``seed_curves``: the
    other seeds' ``(steps, max logit)``, drawn as faint lines."""
    fig = new_figure(7, 4, layout="constrained")
    ax = fig.add_subplot()
    for i, (xs, ys) in enumerate(seed_curves):
        ax.plot(xs, np.asarray(ys, dtype=float) / tau, color=COLORS["muonclip"], lw=0.8, alpha=0.35,
                label="other seeds" if i == 0 else None)
    ax.plot(steps, np.asarray(max_logit, dtype=float) / tau, color=COLORS["muonclip"], lw=1.1,
            label="max logit / tau (forward before the step)")
    ax.scatter(landing_steps, landing, s=8, color=COLORS["muon"], zorder=3,
               label="clipped heads after the clip, same batch")
    ax.axhline(1.0, color=COLORS["tau"], ls="--", lw=1, label="tau")
    if cap_target is not None:
        ax.axhline(cap_target, color="gray", ls=":", lw=1, label=f"{fmt_g(cap_target)} tau")
    decorate(ax, "step", "max logit / tau", title)
    return fig


def per_layer_figure(factors: Mapping[Sequence[int], float], *, title: str = "") -> Figure:
    """Healthy heads shrunk by per-layer clipping: each one's total logit factor over the run
    (the product of its layer's gammas at the steps where another head of the layer passed tau)."""
    fig = new_figure(7, 3.6, layout="constrained")
    ax = fig.add_subplot()
    heads = list(factors)
    ax.bar(range(len(heads)), [factors[h] for h in heads], color=COLORS["muon"], width=0.85)
    ax.axhline(1.0, color=COLORS["tau"], ls="--", lw=1)
    ax.set_xticks(range(len(heads)), [_head(h) for h in heads], rotation=90, fontsize=6)
    ax.set_ylim(0, 1.05)
    decorate(ax, "healthy head (never above tau at those steps)", "total logit factor", title, legend=False)
    return fig


# Shares are drawn on their whole range, so a 0.98 accuracy does not look like a collapse.
SHARE_LIMITS = {"held-out accuracy": (0.0, 1.0), "attention on the keyword": (0.0, 1.0)}


def tradeoff_sweep_figure(seq_lens: Sequence[int], taus: Sequence[float | None], grids: Mapping[str, np.ndarray],
                          *, title: str = "") -> Figure:
    """One heatmap per measured quantity (``grids[name]`` is ``[len(seq_lens), len(taus)]``):
    rows = prompt length (difficulty), columns = tau (None = no clip). Quantities named in
    ``SHARE_LIMITS`` use that colour range; others their own."""
    fig = new_figure(4.2 * len(grids), 3.6, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(grids)))
    labels = ["none" if t is None else fmt_g(t) for t in taus]
    for ax, (name, grid) in zip(axes, grids.items(), strict=True):
        grid = np.asarray(grid, dtype=float)
        vmin, vmax = SHARE_LIMITS.get(name, (float(np.nanmin(grid)), float(np.nanmax(grid))))
        image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower", vmin=vmin, vmax=vmax)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2g}" if abs(v) < 0.01 else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if v < (vmin + vmax) / 2 else "black")
        ax.set_xticks(range(len(taus)), labels)
        ax.set_yticks(range(len(seq_lens)), [str(n) for n in seq_lens])
        ax.set_xlabel("tau")
        ax.set_ylabel("words in the prompt")
        ax.set_title(name)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title)
    return fig
