"""Numbers of one run's metric rows: steps, and the max attention logit over the run and per head.

A row's ``max_logit`` / ``max_logits`` come from that step's forward pass, i.e. from the weights
*before* that step's update and QK-Clip (see :mod:`muonclip.reproduce.results`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "series", "is_finite_run", "total_steps", "initial_max_logit", "peak_max_logit", "peak_step", "final_max_logit",
    "growth_factor", "first_step_above", "training_seconds", "n_heads", "heads_above", "head_peaks",
    "heads_peak_above", "head_names", "layer_max_series",
]


Row = Mapping[str, Any]


def _num(x: Any) -> float:
    """Row values may be the strings 'nan' / 'inf' (JSON has no non-finite floats)."""
    return float(x)


def series(rows: Sequence[Row], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of every row that has ``key`` (e.g. ``series(rows, "val_loss", "tokens")``)."""
    xs, ys = [], []
    for r in rows:
        if key in r and r[key] is not None:
            xs.append(r[x])
            ys.append(_num(r[key]))
    return xs, ys


def is_finite_run(rows: Sequence[Row]) -> bool:
    """True when every training loss is finite."""
    return all(math.isfinite(_num(r["loss"])) for r in rows)


def total_steps(rows: Sequence[Row]) -> int:
    """Length of the run in optimizer steps: the last row's step (0 for no rows)."""
    return int(rows[-1]["step"]) if rows else 0


def training_seconds(rows: Sequence[Row]) -> float:
    """The run's own training clock at its last row (seconds; a resumed run counts every leg)."""
    return float(rows[-1].get("time") or 0.0) if rows else 0.0


def initial_max_logit(rows: Sequence[Row]) -> float:
    """Max attention logit of the first step's forward (the freshly initialised model)."""
    if not rows:
        raise ValueError("no metrics rows")
    return _num(rows[0]["max_logit"])


def peak_max_logit(rows: Sequence[Row]) -> float:
    """Largest max attention logit over the run."""
    if not rows:
        raise ValueError("no metrics rows")
    return max(_num(r["max_logit"]) for r in rows)


def peak_step(rows: Sequence[Row]) -> int:
    """Step of the largest max attention logit (the first one on a tie)."""
    peak = peak_max_logit(rows)
    return next(int(r["step"]) for r in rows if _num(r["max_logit"]) == peak)


def final_max_logit(rows: Sequence[Row]) -> float:
    """Max attention logit of the last step's forward."""
    if not rows:
        raise ValueError("no metrics rows")
    return _num(rows[-1]["max_logit"])


def growth_factor(rows: Sequence[Row], *, at: str = "peak") -> float:
    """How far the max logit grew: the ``peak`` (default) or ``final`` max logit divided by
    the max logit of step 1 (:func:`initial_max_logit`).

    The one definition of growth in both reports (the story used final / mean of the
    first five steps; it now quotes this one)."""
    if at not in ("peak", "final"):
        raise ValueError("at must be 'peak' or 'final'")
    top = peak_max_logit(rows) if at == "peak" else final_max_logit(rows)
    return top / initial_max_logit(rows)


def first_step_above(rows: Sequence[Row], level: float) -> int | None:
    """First step whose max logit exceeds ``level`` (strictly, like the clip's S > tau); None if never.

    One definition for "first step above tau" (story) and "first step at 3 tau" (results.md,
    which used ``>=``: the two differ only when a logit equals the level exactly)."""
    return next((int(r["step"]) for r in rows if _num(r["max_logit"]) > level), None)


def n_heads(rows: Sequence[Row]) -> int:
    """Total number of attention heads (layers x heads) in the run."""
    return sum(len(layer) for layer in rows[0]["max_logits"]) if rows else 0


def heads_above(row: Row, tau: float) -> set[tuple[int, int]]:
    """``(layer, head)`` pairs of this row whose max logit exceeds ``tau``: for a MuonClip
    run these are exactly the heads clipped at this step (with ``optim.qk_clip_window`` > 1 the
    clip reads the remembered maximum, logged as ``max_logits_clip``)."""
    logits = row.get("max_logits_clip") or row["max_logits"]
    return {(li, hi) for li, layer in enumerate(logits) for hi, v in enumerate(layer) if _num(v) > tau}


def head_peaks(rows: Sequence[Row]) -> np.ndarray:
    """Each head's largest max logit over the run, shape [layers, heads]."""
    return np.array([r["max_logits"] for r in rows], dtype=np.float64).max(axis=0)


def heads_peak_above(rows: Sequence[Row], level: float) -> int:
    """How many heads have a peak max logit over the run above ``level``."""
    return int((head_peaks(rows) > level).sum())


def head_names(rows: Sequence[Row]) -> list[tuple[int, int]]:
    """Every ``(layer, head)`` of the run, in layer-major order."""
    return [(li, hi) for li, layer in enumerate(rows[0]["max_logits"]) for hi in range(len(layer))] if rows else []


def layer_max_series(rows: Sequence[Row]) -> tuple[list[int], list[list[float]]]:
    """``(steps, per_layer)`` where ``per_layer[l][i]`` is layer l's max over heads at step i."""
    steps = [int(r["step"]) for r in rows]
    n_layer = len(rows[0]["max_logits"]) if rows else 0
    per_layer = [[max(_num(v) for v in r["max_logits"][li]) for r in rows] for li in range(n_layer)]
    return steps, per_layer
