"""The "L0 over training steps" chart: active latents per token, log scale, one line per optimizer.

:func:`plot_l0` does no file I/O (the caller saves the figure); :func:`save_l0_png` reads
SAE directories' metrics.jsonl and writes a PNG.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

from ..lab.io import atomic_write_bytes

__all__ = ["plot_l0", "l0_series", "save_l0_png"]

_COLORS = {"adam": "#1f77b4", "muon": "#d62728"}
_LABELS = {"adam": "Adam", "muon": "Muon (MuonClip, no clip)"}


def plot_l0(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str | None = None,
            d_sae: int | None = None):
    """A matplotlib Figure of L0 (mean active latents per token) against SAE step.

    ``series`` maps a label (``"adam"``, ``"muon"`` or anything) to ``(steps, l0)``. The
    y-axis is logarithmic; with ``d_sae`` given, dotted lines mark d_sae/2 (where a ReLU
    SAE at random init starts) and d_sae/20 (a 10x fall). Uses the object API, so no
    pyplot state is touched and nothing is shown or saved.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.2), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    finals: list[float] = []
    for label, (steps, l0) in series.items():
        steps, l0 = list(steps), list(l0)
        pts = [(s, v) for s, v in zip(steps, l0) if v > 0]
        if not pts:
            continue
        xs, ys = zip(*pts)
        key = label.lower()
        ax.plot(xs, ys, label=_LABELS.get(key, label), color=_COLORS.get(key), linewidth=1.6)
        # stagger the end labels of lines that finish close together (log scale: ratio)
        close = [f for f in finals if abs(ys[-1] / f - 1) < 0.4]
        dy = sum(7 if ys[-1] >= f else -7 for f in close)
        finals.append(ys[-1])
        ax.annotate(f"{ys[-1]:.1f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, dy),
                    fontsize=8, color=_COLORS.get(key), va="center")
    if d_sae:
        ax.axhline(d_sae / 2, color="0.5", linestyle=":", linewidth=1)
        ax.axhline(d_sae / 20, color="0.7", linestyle=":", linewidth=1)
        ax.text(0.01, d_sae / 2, f" d_sae/2 = {d_sae // 2}", transform=ax.get_yaxis_transform(),
                fontsize=8, color="0.4", va="bottom")
        ax.text(0.01, d_sae / 20, f" d_sae/20 = 10x below start", transform=ax.get_yaxis_transform(), fontsize=8,
                color="0.5", va="bottom")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

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


def l0_series(sae_dir: str | Path) -> tuple[list[int], list[float]]:
    """``(steps, l0)`` from an SAE directory's metrics.jsonl."""
    from ..lab.metrics import read_metrics

    rows = read_metrics(Path(sae_dir) / "metrics.jsonl")
    return [r["step"] for r in rows], [float(r["l0"]) for r in rows]


def save_l0_png(sae_dirs: Mapping[str, str | Path] | Sequence[str | Path], path: str | Path, *,
                title: str | None = None) -> Path:
    """Read each SAE directory's metrics and save :func:`plot_l0` to ``path``.

    ``sae_dirs``: ``{label: dir}``, or a list of dirs labelled by their config's optimizer.
    """
    from .config import load_sae_config

    if not isinstance(sae_dirs, Mapping):
        labelled = {}
        for d in sae_dirs:
            try:
                label = load_sae_config(Path(d) / "config.json").optimizer
            except Exception:
                label = Path(d).name
            labelled[label if label not in labelled else f"{label} ({Path(d).name})"] = d
        sae_dirs = labelled
    series = {label: l0_series(d) for label, d in sae_dirs.items()}
    d_sae = None
    for d in sae_dirs.values():
        try:
            d_sae = load_sae_config(Path(d) / "config.json").d_sae
            break
        except Exception:
            continue
    fig = plot_l0(series, title=title, d_sae=d_sae)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())
