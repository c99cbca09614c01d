"""Animations of the story, built from saved snapshots (spectra.npz arrays, metrics rows).

Each function returns a :class:`matplotlib.animation.FuncAnimation` on an Agg figure;
:func:`muonclip.story.render.save_animation` writes it as a GIF with Pillow. Every
animation has at least ``MIN_FRAMES`` frames (short snapshot series are shown with a
slowly turning or holding view rather than fewer frames).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.animation import FuncAnimation

from .plots import draw_dragon, draw_max_logit_panel, finish, new_figure
from .style import COLORS, color_for, fmt, fmt_pct

__all__ = [
    "MIN_FRAMES", "frame_indices", "animate_spectrum_surface", "animate_spectra_side_by_side",
    "animate_dragon", "animate_max_logit", "animate_tradeoff",
]

MIN_FRAMES = 16


def _animation(fig, update, n_frames: int) -> FuncAnimation:
    """A FuncAnimation that also exposes its frame function and count (``story_update``,
    ``story_frames``) so the render layer can draw each frame exactly once."""
    anim = FuncAnimation(fig, update, frames=n_frames, blit=False, cache_frame_data=False)
    anim.story_update = update
    anim.story_frames = n_frames
    anim.story_fig = fig
    return anim


def frame_indices(n_points: int, frames: int) -> np.ndarray:
    """For each of ``frames`` frames, how many of ``n_points`` points are revealed (1..n, non-decreasing,
    ending at n)."""
    frames = max(frames, MIN_FRAMES)
    return np.clip(np.ceil(np.linspace(1, n_points, frames)).astype(int), 1, n_points)


def animate_spectrum_surface(steps: np.ndarray, values: np.ndarray, *, title: str, zlabel: str = "singular value",
                             top_over_median: Sequence[float] | None = None, provenance=None, frames: int = 24,
                             color: str = COLORS["adamw"]) -> FuncAnimation:
    """3-D surface of singular values (index x step x value), revealed snapshot by snapshot
    while the camera turns. ``top_over_median[i]`` (σ_max / median σ of snapshot i) goes in
    the title when given."""
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float64)  # [S, k]
    S, k = values.shape
    idx = frame_indices(S, frames)
    fig = new_figure(7.5, 5.5, dpi=80)
    ax = fig.add_subplot(projection="3d")
    X, Y = np.meshgrid(np.arange(1, k + 1), steps)
    zmax = float(values.max()) * 1.05

    def update(f: int):
        ax.cla()
        n = int(idx[f])
        if n >= 2:
            ax.plot_surface(X[:n], Y[:n], values[:n], cmap="viridis", linewidth=0, antialiased=False,
                            vmin=0, vmax=zmax)
        ax.plot(np.arange(1, k + 1), np.full(k, steps[n - 1]), values[n - 1], color=color, lw=2)
        ax.set_xlim(1, k)
        ax.set_ylim(steps[0], steps[-1] if S > 1 else steps[0] + 1)
        ax.set_zlim(0, zmax)
        ax.set_xlabel("index i (sorted)")
        ax.set_ylabel("step")
        ax.set_zlabel(zlabel)
        ax.view_init(elev=28, azim=-65 + 35 * f / max(1, len(idx) - 1))
        ratio = "" if top_over_median is None else f": σ_max = {fmt(float(top_over_median[n - 1]), 1)} x median σ"
        ax.set_title(f"{title}\nstep {steps[n - 1]}{ratio}", fontsize=10)
        return ()

    update(0)
    finish(fig, provenance)
    return _animation(fig, update, len(idx))


def animate_spectra_side_by_side(steps: np.ndarray, panels: Sequence[tuple[str, np.ndarray]], *, title: str,
                                 normalise: str = "max", ylabel: str | None = None, provenance=None,
                                 frames: int = 24, reference: float | None = None,
                                 entropies: Sequence[Sequence[float]] | None = None) -> FuncAnimation:
    """One panel per run (``(label, values [S, k])``, same snapshot steps), showing the sorted
    singular values at each snapshot. ``normalise="max"``: σ/σ_max; ``"mean"``: σ/mean(σ)
    (a perfectly flat spectrum is then 1 everywhere). ``entropies[panel][i]``, the normalised
    spectral entropy of snapshot i, goes in the panel titles when given."""
    steps = np.asarray(steps)
    S = min(v.shape[0] for _, v in panels)
    n_frames = max(frames, MIN_FRAMES)
    # Frames morph linearly between consecutive measured snapshots (labelled as such), so a
    # run with few snapshots still animates smoothly; snapshot frames show measured data only.
    pos = np.linspace(0, S - 1, n_frames)
    fig = new_figure(4.2 * len(panels), 4.2, dpi=80)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))

    def norm(v: np.ndarray) -> np.ndarray:
        d = v.max() if normalise == "max" else v.mean()
        return v / max(float(d), 1e-12)

    top = max(float(norm(v[i]).max()) for _, v in panels for i in range(S)) * 1.1

    def update(f: int):
        lo = int(np.floor(pos[f]))
        hi = min(lo + 1, S - 1)
        w = float(pos[f] - lo)
        near = hi if w >= 0.5 else lo
        for j, (ax, (label, vals)) in enumerate(zip(axes, panels, strict=True)):
            ax.cla()
            v = (1 - w) * norm(vals[lo]) + w * norm(vals[hi])
            k = v.size
            ax.fill_between(np.arange(1, k + 1), 0, v, color=color_for(label), alpha=0.35, step="mid")
            ax.plot(np.arange(1, k + 1), v, color=color_for(label), lw=1.6, drawstyle="steps-mid")
            if reference is not None:
                ax.axhline(reference, color=COLORS["tau"], ls=":", lw=1)
            h = "" if entropies is None else f"entropy {fmt(float(entropies[j][near]), 3)} "
            ax.set_title(f"{label}\n{h}at step {steps[near]}" + (" (1 = flat)" if h else ""), fontsize=10)
            ax.set_ylim(0, top)
            ax.set_xlabel("index i (sorted)")
            ax.grid(alpha=0.25)
        axes[0].set_ylabel(ylabel or ("σ_i / σ_max" if normalise == "max" else "σ_i / mean σ"))
        when = (f"step {steps[lo]}" if w < 1e-9 or lo == hi
                else f"between steps {steps[lo]} and {steps[hi]} (interpolated)")
        fig.suptitle(f"{title} - {when}", fontsize=11)
        return ()

    update(0)
    finish(fig, provenance)
    return _animation(fig, update, n_frames)


def animate_dragon(steps: np.ndarray, values: np.ndarray, tau: float, *,
                   reference: tuple[np.ndarray, np.ndarray, str] | None = None, provenance=None,
                   frames: int = 30, title: str = "The dragon wakes: vanilla Muon") -> FuncAnimation:
    steps, values = np.asarray(steps), np.asarray(values)
    idx = frame_indices(len(steps), min(frames, len(steps)))
    fig = new_figure(7.5, 4.2, dpi=80)
    ax = fig.add_subplot()
    ymax = max(float(values.max()) * 1.15, tau * 1.5)

    def update(f: int):
        ax.cla()
        n = int(idx[f])
        draw_dragon(ax, steps, values, tau, upto=n, reference=reference, ymax=ymax)
        ax.set_title(f"{title} - step {steps[n - 1]}: max logit {fmt(float(values[n - 1]), 1)}", fontsize=10)
        return ()

    update(0)
    finish(fig, provenance)
    return _animation(fig, update, len(idx))


def animate_max_logit(steps: np.ndarray, values: np.ndarray, *, tau: float | None, title: str,
                      label: str = "MuonClip", ghost: tuple[np.ndarray, np.ndarray, str] | None = None,
                      lower: tuple[np.ndarray, np.ndarray, str] | None = None,
                      phases: Sequence[tuple[float, float, str, str]] = (), provenance=None,
                      frames: int = 30) -> FuncAnimation:
    """Max logit revealed over training (guardrail, lifecycle). ``lower = (steps, counts, ylabel)``
    adds a panel below (e.g. heads clipped per step); ``phases`` shade spans of the run."""
    steps, values = np.asarray(steps), np.asarray(values)
    idx = frame_indices(len(steps), min(frames, len(steps)))
    fig = new_figure(7.5, 5.2 if lower is not None else 4.2, dpi=80)
    if lower is not None:
        ax, axl = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        ax, axl = fig.add_subplot(), None
    ymax = max(float(values.max()), float(ghost[1].max()) if ghost else 0.0, tau or 0.0) * 1.15

    def update(f: int):
        n = int(idx[f])
        ax.cla()
        draw_max_logit_panel(ax, steps, values, tau=tau, upto=n, label=label, ghost=ghost, phases=phases, ymax=ymax)
        ax.set_title(f"{title} - step {steps[n - 1]}: max logit {fmt(float(values[n - 1]), 1)}", fontsize=10)
        if axl is not None:
            axl.cla()
            ls, lv, ylabel = lower
            k = np.searchsorted(ls, steps[n - 1], side="right")
            axl.fill_between(ls[:k], 0, lv[:k], step="mid", color=COLORS["muonclip"], alpha=0.8, lw=0)
            axl.set_ylim(0, max(1.0, float(np.max(lv)) * 1.15))
            axl.set_xlim(steps[0], steps[-1])
            axl.set_ylabel(ylabel, fontsize=8)
            axl.set_xlabel("step")
            axl.grid(alpha=0.25)
        else:
            ax.set_xlabel("step")
        return ()

    update(0)
    finish(fig, provenance)
    return _animation(fig, update, len(idx))


def animate_tradeoff(result: Mapping, *, provenance=None, frames: int = 24) -> FuncAnimation:
    """The trade-off experiment over training: for each arm (MuonClip low tau, Muon), the
    attention of the answer position over one probe prompt (keyword bar highlighted), and
    below, keyword vs distractor attention and accuracy so far."""
    arms = result["arms"]
    S = min(len(a["snapshots"]) for a in arms)
    idx = frame_indices(S, frames)
    probe_tokens = result["probe_text"]
    kw_pos = result["probe_keyword_pos"]
    fig = new_figure(4.6 * len(arms), 6.0, dpi=80)
    axes = fig.subplots(2, len(arms), squeeze=False)

    def update(f: int):
        n = int(idx[f])
        for j, arm in enumerate(arms):
            snaps = arm["snapshots"][:n]
            cur = snaps[-1]
            c = color_for(arm["optimizer"])
            ax = axes[0, j]
            ax.cla()
            row = np.asarray(cur["probe_attention"])
            bar_colors = [COLORS["keyword"] if p == kw_pos else COLORS["distractor"] for p in range(row.size)]
            ax.bar(range(row.size), row, color=bar_colors)
            ax.set_xticks(range(row.size))
            ax.set_xticklabels(probe_tokens, rotation=90, fontsize=6)
            ax.set_ylim(0, 1)
            layer, head = cur.get("best_head", ("?", "?"))
            ax.set_title(f"{arm['label']}\nstep {cur['step']}: acc {fmt_pct(cur['accuracy'], 0)}, "
                         f"max logit {fmt(cur['max_logit'], 1)}", fontsize=9)
            ax.set_ylabel(f"attention from '?' (layer {layer}, head {head})", fontsize=8)
            ax2 = axes[1, j]
            ax2.cla()
            st = [s["step"] for s in snaps]
            ax2.plot(st, [s["keyword_attention"] for s in snaps], color=COLORS["keyword"], lw=1.8, label="keyword")
            ax2.plot(st, [s["distractor_attention"] for s in snaps], color=COLORS["distractor"], lw=1.4,
                     ls="--", label="each distractor (mean)")
            ax2.plot(st, [s["accuracy"] for s in snaps], color=c, lw=1.4, ls=":", label="accuracy")
            ax2.set_xlim(arm["snapshots"][0]["step"], arm["snapshots"][S - 1]["step"])
            ax2.set_ylim(0, 1.02)
            ax2.set_xlabel("step")
            ax2.grid(alpha=0.25)
            ax2.legend(fontsize=7, loc="center right")
        fig.suptitle("QK-Clip trade-off on a tool-selection task (measured)", fontsize=11)
        return ()

    update(0)
    finish(fig, provenance)
    return _animation(fig, update, len(idx))
