"""Pure functions from metrics rows (``metrics.jsonl``, see :mod:`muonclip.lab.metrics`) to
the numbers the reproduction reports. No I/O, no torch: every function takes the list of
row dicts (or plain sequences) and returns plain Python values, so each one is unit-tested
on synthetic rows.

A note on timing: a row's ``max_logit`` / ``max_logits`` come from that step's forward
pass, i.e. from the weights *before* that step's update and QK-Clip. The clip at step t
uses exactly these values (``S_h``), so the heads clipped at step t are the ones whose
row value exceeds tau, and ``max_logit`` of every later row measures the one-step slack
of the guardrail (the update of step t-1 acting on weights clipped at step t-1).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = [
    "series",
    "initial_max_logit",
    "peak_max_logit",
    "growth_factor",
    "clip_steps",
    "first_clip_step",
    "last_clip_step",
    "heads_above",
    "heads_ever_clipped",
    "fraction_heads_ever_clipped",
    "n_heads",
    "clip_slack",
    "val_curve",
    "final_val_loss",
    "best_val_loss",
    "tokens_to_reach",
    "loss_spikes",
    "max_loss_jump",
    "layer_max_series",
    "spectra_series",
    "mean_spectra_series",
    "is_finite_run",
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


def growth_factor(rows: Sequence[Row], *, at: str = "peak") -> float:
    """``peak`` (default) or ``final`` max logit divided by the initial one."""
    if at not in ("peak", "final"):
        raise ValueError("at must be 'peak' or 'final'")
    top = peak_max_logit(rows) if at == "peak" else _num(rows[-1]["max_logit"])
    return top / initial_max_logit(rows)


def clip_steps(rows: Sequence[Row]) -> list[int]:
    """Steps at which QK-Clip rescaled at least one head."""
    return [int(r["step"]) for r in rows if int(r.get("n_clipped", 0) or 0) > 0]


def first_clip_step(rows: Sequence[Row]) -> int | None:
    """First step with a clip (None if the clip never fired)."""
    steps = clip_steps(rows)
    return steps[0] if steps else None


def last_clip_step(rows: Sequence[Row]) -> int | None:
    """Last step with a clip (None if the clip never fired)."""
    steps = clip_steps(rows)
    return steps[-1] if steps else None


def n_heads(rows: Sequence[Row]) -> int:
    """Total number of attention heads (layers x heads) in the run."""
    return sum(len(layer) for layer in rows[0]["max_logits"])


def heads_above(row: Row, tau: float) -> set[tuple[int, int]]:
    """``(layer, head)`` pairs of this row whose max logit exceeds ``tau``: for a MuonClip
    run these are exactly the heads clipped at this step."""
    return {(li, hi) for li, layer in enumerate(row["max_logits"]) for hi, v in enumerate(layer)
            if _num(v) > tau}


def heads_ever_clipped(rows: Sequence[Row], tau: float) -> set[tuple[int, int]]:
    """Heads clipped at least once (heads above ``tau`` in a row with ``n_clipped > 0``)."""
    out: set[tuple[int, int]] = set()
    for r in rows:
        if int(r.get("n_clipped", 0) or 0) > 0:
            out |= heads_above(r, tau)
    return out


def fraction_heads_ever_clipped(rows: Sequence[Row], tau: float) -> float:
    """Share of all heads that were clipped at least once."""
    return len(heads_ever_clipped(rows, tau)) / n_heads(rows)


def clip_slack(rows: Sequence[Row], tau: float) -> float | None:
    """Max over steps after the first clip of ``max_logit / tau - 1``: how far one step's
    update can push a clipped head past tau before the next clip. Negative means the max
    logit stayed strictly below tau. None if the clip never fired."""
    first = first_clip_step(rows)
    if first is None:
        return None
    after = [_num(r["max_logit"]) for r in rows if int(r["step"]) > first]
    if not after:
        return None
    return max(after) / tau - 1.0


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


def tokens_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """First ``x`` at which the curve ``ys`` reaches ``target`` (``y <= target``), linearly
    interpolated between the two evaluations around the crossing. None if never reached.
    If the first point is already at or below the target, its x is returned."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    prev = None
    for x, y in zip(xs, ys):
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


def layer_max_series(rows: Sequence[Row]) -> tuple[list[int], list[list[float]]]:
    """``(steps, per_layer)`` where ``per_layer[l][i]`` is layer l's max over heads at step i."""
    steps = [int(r["step"]) for r in rows]
    n_layer = len(rows[0]["max_logits"]) if rows else 0
    per_layer = [[max(_num(v) for v in r["max_logits"][li]) for r in rows] for li in range(n_layer)]
    return steps, per_layer


def spectra_series(rows: Sequence[Row]) -> tuple[list[int], dict[str, dict[str, list[float]]]]:
    """``(steps, {param: {stat: values}})`` from rows that carry ``spectra`` (stats:
    w_entropy, w_erank, u_entropy, u_erank)."""
    steps: list[int] = []
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        spec = r.get("spectra")
        if not spec:
            continue
        steps.append(int(r["step"]))
        for name, stats in spec.items():
            d = out.setdefault(name, {})
            for k, v in stats.items():
                d.setdefault(k, []).append(_num(v))
    return steps, out


def mean_spectra_series(rows: Sequence[Row], stat: str, *, contains: str = "") -> tuple[list[int], list[float]]:
    """Mean of ``stat`` over the tracked matrices whose name contains ``contains``."""
    steps, per = spectra_series(rows)
    names = [n for n in per if contains in n and stat in per[n]]
    if not names:
        return steps, []
    return steps, [sum(per[n][stat][i] for n in names) / len(names) for i in range(len(steps))]
