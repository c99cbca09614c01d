"""What QK-Clip did in one run: when it fired, which heads, the cap after the first clip, its phases.

The clip at step t uses that row's ``max_logits`` (``S_h``), so the heads clipped at step t are
the ones whose row value exceeds tau, and ``max_logit`` of every later row measures the
one-step slack of the guardrail (the update of step t-1 acting on weights clipped at step t-1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...viz.style import fmt_g
from .logits import (
    Row,
    _num,
    final_max_logit,
    head_names,
    head_peaks,
    heads_above,
    n_heads,
    peak_max_logit,
    total_steps,
)
from .losses import final_val_loss

__all__ = [
    "clip_steps", "first_clip_step", "last_clip_step", "heads_ever_clipped", "fraction_heads_ever_clipped",
    "max_after_first_clip", "clip_slack", "cap_ratio", "peaks_over_tau", "clip_raster", "clip_span_per_head",
    "landing_points", "landing_after_clip", "layer_clip_shrinkage", "ClipPhases", "clip_phases", "rogue_pick",
    "K2_FRACTION_CLIPPED", "per_layer_comparison", "mean_over_heads",
]


def _clipped(row: Row) -> bool:
    return int(row.get("n_clipped", 0) or 0) > 0


def clip_steps(rows: Sequence[Row]) -> list[int]:
    """Steps at which QK-Clip rescaled at least one head."""
    return [int(r["step"]) for r in rows if _clipped(r)]


def first_clip_step(rows: Sequence[Row]) -> int | None:
    """First step with a clip (None if the clip never fired)."""
    steps = clip_steps(rows)
    return steps[0] if steps else None


def last_clip_step(rows: Sequence[Row]) -> int | None:
    """Last step with a clip (None if the clip never fired)."""
    steps = clip_steps(rows)
    return steps[-1] if steps else None


def heads_ever_clipped(rows: Sequence[Row], tau: float) -> set[tuple[int, int]]:
    """Heads clipped at least once: the heads above ``tau`` in the rows where the clip fired
    (``n_clipped > 0``).

    The one definition in both reports (the story counted heads that ever passed tau in any
    row; in a MuonClip run that is the same set, and a run without the clip now has none)."""
    out: set[tuple[int, int]] = set()
    for r in rows:
        if _clipped(r):
            out |= heads_above(r, tau)
    return out


def fraction_heads_ever_clipped(rows: Sequence[Row], tau: float) -> float:
    """Share of all heads that were clipped at least once."""
    return len(heads_ever_clipped(rows, tau)) / n_heads(rows)


def max_after_first_clip(rows: Sequence[Row]) -> float | None:
    """Largest max logit over the steps *after* the first clip (None if the clip never fired
    or nothing follows it). The first clip's own row is excluded: it is the logit that made
    the clip fire. (The story included it; it now quotes this one.)"""
    first = first_clip_step(rows)
    after = [_num(r["max_logit"]) for r in rows if first is not None and int(r["step"]) > first]
    return max(after) if after else None


def clip_slack(rows: Sequence[Row], tau: float) -> float | None:
    """``max_after_first_clip / tau - 1``: how far one step's update can push a clipped head
    past tau before the next clip. Negative means the max logit stayed strictly below tau.
    None if the clip never fired."""
    after = max_after_first_clip(rows)
    return None if after is None else after / tau - 1.0


def cap_ratio(rows: Sequence[Row], tau: float) -> float | None:
    """``max_after_first_clip / tau``: the cap as K2 draws it (1.0 = flat at tau)."""
    after = max_after_first_clip(rows)
    return None if after is None else after / tau


def peaks_over_tau(rows: Sequence[Row], tau: float) -> list[tuple[tuple[int, int], float, bool]]:
    """Each head's peak max logit / tau over the whole run, largest first, with whether it was
    ever clipped (:func:`heads_ever_clipped`)."""
    peaks, ever = head_peaks(rows), heads_ever_clipped(rows, tau)
    out = [((li, hi), float(peaks[li, hi]) / tau, (li, hi) in ever) for li, hi in head_names(rows)]
    return sorted(out, key=lambda t: -t[1])


def clip_raster(rows: Sequence[Row], tau: float) -> tuple[list[int], list[tuple[int, int]], np.ndarray]:
    """``(steps, heads, clipped [steps, heads])``: which head each clipping step clipped (the
    heads above tau in the rows where the clip fired), for every head ever clipped."""
    heads = sorted(heads_ever_clipped(rows, tau))
    steps = [int(r["step"]) for r in rows]
    raster = np.zeros((len(rows), len(heads)), dtype=bool)
    for i, r in enumerate(rows):
        if _clipped(r):
            above = heads_above(r, tau)
            raster[i] = [h in above for h in heads]
    return steps, heads, raster


def clip_span_per_head(rows: Sequence[Row], tau: float) -> dict[tuple[int, int], tuple[int, int]]:
    """Every ever-clipped head's first and last clipping step."""
    steps, heads, raster = clip_raster(rows, tau)
    return {h: (steps[int(np.argmax(col))], steps[len(col) - 1 - int(np.argmax(col[::-1]))])
            for h, col in zip(heads, raster.T, strict=True)}


def landing_points(rows: Sequence[Row], tau: float) -> tuple[list[int], list[float]]:
    """``(steps, ratios)``: for every head clipped at a step, that step and the head's max logit
    of the updated, clipped weights on the step's own batch (``max_logits_after``) over tau."""
    points = [(int(r["step"]), _num(r["max_logits_after"][li][hi]) / tau) for r in rows if r.get("max_logits_after")
              for li, hi in sorted(heads_above(r, tau))]
    return [p[0] for p in points], [p[1] for p in points]


def landing_after_clip(rows: Sequence[Row], tau: float) -> dict[str, Any] | None:
    """Where the clip put the clipped heads (:func:`landing_points`): min, median, max and the
    largest distance from tau. None without such rows."""
    _, ratios = landing_points(rows, tau)
    if not ratios:
        return None
    return {"n": len(ratios), "min": min(ratios), "max": max(ratios), "median": float(np.median(ratios)),
            "max_abs_error": max(abs(x - 1.0) for x in ratios)}


def layer_clip_shrinkage(rows: Sequence[Row], tau: float) -> dict[str, Any]:
    """What per-layer clipping (``qk_clip_granularity="layer"``) does to healthy heads.

    At each clipping step every head of a layer whose worst head passed tau is scaled by that
    layer's gamma = tau / max; the heads at or below tau there were healthy and shrunk anyway.
    Returns the healthy heads shrunk at least once, the number of such (step, head) events, the
    median gamma of those events and each shrunk head's total logit factor (the product of its
    gammas), smallest first."""
    total: dict[tuple[int, int], float] = {}
    gammas = []
    for r in rows:
        if not _clipped(r):
            continue
        for li, layer in enumerate(r["max_logits"]):
            worst = max(_num(v) for v in layer)
            if worst <= tau:
                continue
            gamma = tau / worst
            for hi, v in enumerate(layer):
                if _num(v) <= tau:
                    total[(li, hi)] = total.get((li, hi), 1.0) * gamma
                    gammas.append(gamma)
    return {"healthy_heads_shrunk": sorted(total), "events": len(gammas),
            "median_gamma": float(np.median(gammas)) if gammas else None,
            "total_factor": dict(sorted(total.items(), key=lambda kv: kv[1]))}


@dataclass(frozen=True)
class ClipPhases:
    """QK-Clip's life in one run, found from the rows.

    ``first_clip``/``last_clip``: the first and last step with a clipped head (None if it
    never fired). ``stabilised``: the clip stayed off for at least ``min_quiet`` steps after
    ``last_clip`` until the end of the run.
    """

    total_steps: int
    first_clip: int | None
    last_clip: int | None
    clip_steps: int
    heads_clipped_ever: int
    heads_total: int
    stabilised: bool
    final_max_logit: float
    peak_max_logit: float
    tau: float

    @property
    def active_fraction(self) -> float:
        """Share of the run from the first to the last clip (both included)."""
        if self.first_clip is None:
            return 0.0
        return (self.last_clip - self.first_clip + 1) / self.total_steps


def clip_phases(rows: Sequence[Row], tau: float, min_quiet: int | None = None) -> ClipPhases:
    """The :class:`ClipPhases` of a run; ``min_quiet`` defaults to max(5, 5% of the run)."""
    total = total_steps(rows)
    first, last = first_clip_step(rows), last_clip_step(rows)
    if min_quiet is None:
        min_quiet = max(5, total // 20)
    return ClipPhases(
        total_steps=total, first_clip=first, last_clip=last, clip_steps=len(clip_steps(rows)),
        heads_clipped_ever=len(heads_ever_clipped(rows, tau)), heads_total=n_heads(rows),
        stabilised=last is not None and total - last >= min_quiet,
        final_max_logit=final_max_logit(rows) if rows else math.nan,
        peak_max_logit=peak_max_logit(rows) if rows else math.nan, tau=float(tau),
    )


def rogue_pick(rows: Sequence[Row], tau: float | None) -> tuple[int, int, str]:
    """``(row index, layer, why)`` of the step and layer the rogue-heads picture shows.

    The first step where some head's max logit passes tau (the first clip of a MuonClip run);
    failing that, the step and layer where the spread between a layer's largest head and its
    median head is largest.
    """
    heads = np.array([r["max_logits"] for r in rows], dtype=np.float64)  # [S, L, H]
    if tau is not None:
        hit = np.argwhere((heads > tau).any(axis=2))
        if hit.size:
            i = int(hit[0, 0])
            return i, int(np.argmax(heads[i].max(axis=1))), f"first step where a head passed tau = {fmt_g(tau)}"
    spread = heads.max(axis=2) - np.median(heads, axis=2)  # [S, L]
    i, layer = np.unravel_index(int(np.argmax(spread)), spread.shape)
    return int(i), int(layer), "step and layer with the widest spread between heads"


K2_FRACTION_CLIPPED = 0.127  # Kimi K2 report: 12.7% of heads were ever clipped


def per_layer_comparison(head_rows: Sequence[Row], layer_rows: Sequence[Row], tau: float,
                         entropy_head: Sequence[Sequence[float]],
                         entropy_layer: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Per-head (K2) against per-layer clipping on the same preset and seed: heads ever clipped,
    the healthy heads per-layer clipping shrank (:func:`layer_clip_shrinkage`), their attention
    entropy in both runs (per layer, per head tables, e.g. from ``muonclip.lab.probe``), the
    mean entropy of all heads, the caps and the final validation losses."""
    shrink = layer_clip_shrinkage(layer_rows, tau)
    healthy = shrink["healthy_heads_shrunk"]
    factors = list(shrink["total_factor"].values())
    return {"tau": tau, "healthy_shrunk": len(healthy), "events": shrink["events"],
            "median_gamma": shrink["median_gamma"], "min_total_factor": min(factors) if factors else None,
            "total_factor": shrink["total_factor"],
            "entropy_head": mean_over_heads(entropy_head, healthy),
            "entropy_layer": mean_over_heads(entropy_layer, healthy),
            "entropy_all_head": mean_over_heads(entropy_head, head_names(head_rows)),
            "entropy_all_layer": mean_over_heads(entropy_layer, head_names(layer_rows)),
            "heads_ever_head": len(heads_ever_clipped(head_rows, tau)),
            "heads_ever_layer": len(heads_ever_clipped(layer_rows, tau)),
            "heads_total": n_heads(head_rows),
            "cap_head": cap_ratio(head_rows, tau), "cap_layer": cap_ratio(layer_rows, tau),
            "val_head": final_val_loss(head_rows), "val_layer": final_val_loss(layer_rows)}


def mean_over_heads(values: Sequence[Sequence[float]], heads: Sequence[tuple[int, int]]) -> float | None:
    """Mean of a per-layer, per-head table (e.g. attention entropy) over ``heads``."""
    picked = [float(values[li][hi]) for li, hi in heads]
    return sum(picked) / len(picked) if picked else None
