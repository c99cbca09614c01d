"""The SAE "L0 over training steps" chart: reading SAE directories and saving the PNG.

The chart itself is :func:`muonclip.viz.charts.plot_l0` (a pure function, re-exported here);
:func:`l0_series` reads an SAE directory's metrics.jsonl and :func:`save_l0_png` writes the
chart of several SAE directories to a PNG.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

from ..io import atomic_write_bytes
from ..lab.rundir import read_metrics
from ..viz.charts import plot_l0
from .config import load_sae_config

__all__ = ["plot_l0", "l0_series", "save_l0_png"]


def l0_series(sae_dir: str | Path) -> tuple[list[int], list[float]]:
    """``(steps, l0)`` from an SAE directory's metrics.jsonl."""
    rows = read_metrics(Path(sae_dir) / "metrics.jsonl")
    return [r["step"] for r in rows], [float(r["l0"]) for r in rows]


def save_l0_png(sae_dirs: Mapping[str, str | Path] | Sequence[str | Path], path: str | Path, *,
                title: str | None = None) -> Path:
    """Read each SAE directory's metrics and save :func:`plot_l0` to ``path``.

    ``sae_dirs``: ``{label: dir}``, or a list of dirs labelled by their config's optimizer.
    """
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
