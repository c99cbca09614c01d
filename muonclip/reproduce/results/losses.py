"""Loss numbers of one run: validation curve, final and best losses, tokens to a target, spikes."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .logits import Row, _num, series

__all__ = [
    "val_curve", "final_val_loss", "best_val_loss", "final_train_loss", "relative_change", "tokens_to_reach",
    "loss_spikes", "max_loss_jump", "smooth",
]


def val_curve(rows: Sequence[Row], x: str = "tokens") -> tuple[list[float], list[float]]:
    """Validation loss against ``tokens`` (default) or ``step``."""
    return series(rows, "val_loss", x)


def final_val_loss(rows: Sequence[Row]) -> float | None:
    """The last validation loss of the run (None if it never evaluated)."""
    _, ys = val_curve(rows)
    return ys[-1] if ys else None


def best_val_loss(rows: Sequence[Row]) -> float | None:
    """The lowest validation loss of the run."""
    _, ys = val_curve(rows)
    finite = [y for y in ys if math.isfinite(y)]
    return min(finite) if finite else None


def final_train_loss(rows: Sequence[Row]) -> float:
    """Training loss of the last step's batch."""
    return _num(rows[-1]["loss"])


def relative_change(value: float | None, reference: float | None) -> float | None:
    """``(value - reference) / reference`` (e.g. MuonClip's final val loss against Muon's);
    None when either is missing or the reference is 0."""
    if value is None or not reference:
        return None
    return (value - reference) / reference


def tokens_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """First ``x`` at which the curve ``ys`` reaches ``target`` (``y <= target``), linearly
    interpolated between the two evaluations around the crossing. None if never reached.
    If the first point is already at or below the target, its x is returned."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    prev = None
    for x, y in zip(xs, ys, strict=True):
        if math.isfinite(y) and y <= target:
            if prev is None:
                return float(x)
            px, py = prev
            if py == y:
                return float(x)
            return float(px + (x - px) * (py - target) / (py - y))
        prev = (x, y) if math.isfinite(y) else prev
    return None


def _jumps(rows: Sequence[Row], window: int) -> list[float]:
    """Per step: training loss minus the median of the previous ``window`` finite losses
    (inf for a non-finite loss, 0 for the first step)."""
    losses = [_num(r["loss"]) for r in rows]
    out = []
    for i, v in enumerate(losses):
        prev = sorted(u for u in losses[max(0, i - window):i] if math.isfinite(u))
        if not math.isfinite(v):
            out.append(math.inf)
        elif not prev:
            out.append(0.0)
        else:
            n = len(prev)
            med = prev[n // 2] if n % 2 else 0.5 * (prev[n // 2 - 1] + prev[n // 2])
            out.append(v - med)
    return out


def loss_spikes(rows: Sequence[Row], *, window: int = 20, threshold: float = 0.5) -> int:
    """Steps whose training loss exceeds the median of the previous ``window`` steps by more
    than ``threshold`` nats (non-finite losses count as spikes)."""
    return sum(1 for j in _jumps(rows, window) if j > threshold)


def max_loss_jump(rows: Sequence[Row], *, window: int = 20) -> float:
    """Largest rise of the training loss above the median of the previous ``window`` steps."""
    return max(_jumps(rows, window), default=0.0)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (same length; the first points average what exists)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(values.size):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out
