"""Numbers of the experiments that are not one lab run: the trade-off (and its sweep), the field comparison."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ...viz.style import fmt, fmt_g, fmt_pct
from .logits import Row, growth_factor, peak_max_logit
from .losses import final_val_loss, tokens_to_reach, val_curve

__all__ = ["tradeoff_summary", "seed_stats", "field_table", "tradeoff_sweep_grid", "tradeoff_edge"]


def tradeoff_summary(result: Mapping[str, Any]) -> dict:
    """Final numbers of each arm of the trade-off experiment (:mod:`muonclip.reproduce.tradeoff`)
    and a one-sentence conclusion drawn from them."""
    out: dict[str, Any] = {}
    for arm in result["arms"]:
        last = arm["snapshots"][-1]
        out[arm["optimizer"]] = {
            "label": arm["label"], **{k: last[k] for k in ("accuracy", "keyword_attention", "distractor_attention",
                                                            "margin", "max_logit")},
            "steps_to_90": next((s["step"] for s in arm["snapshots"] if s["accuracy"] >= 0.9), None),
            "loss": last["loss"], "clipped_steps": arm.get("clipped_steps", 0),
            "peak_max_logit": max(s["max_logit"] for s in arm["snapshots"]),
        }
    c, m = out.get("muonclip"), out.get("muon")
    if c and m:
        d_acc = c["accuracy"] - m["accuracy"]
        if abs(d_acc) < 0.02:
            acc = f"accuracy was the same ({fmt_pct(c['accuracy'])} with the clip, {fmt_pct(m['accuracy'])} without)"
        else:
            acc = (f"accuracy was {'lower' if d_acc < 0 else 'higher'} with the clip "
                   f"({fmt_pct(c['accuracy'])} vs {fmt_pct(m['accuracy'])})")
        d_margin = c["margin"] - m["margin"]
        if abs(d_margin) < 0.05:
            att = f"attention on the keyword was about as sharp (margin {fmt(c['margin'], 2)} vs {fmt(m['margin'], 2)})"
        else:
            att = (f"attention on the keyword was {'flatter' if d_margin < 0 else 'sharper'} with the clip "
                   f"(keyword weight {fmt(c['keyword_attention'], 2)} vs {fmt(m['keyword_attention'], 2)}; "
                   f"margin over a distractor {fmt(c['margin'], 2)} vs {fmt(m['margin'], 2)})")
        out["conclusion"] = f"At tau = {fmt_g(result['config']['tau'])}, {acc}; {att}."
    return out


def seed_stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and half-range over seeds (``spread``: (max - min) / 2); missing values are
    counted in ``missing`` (e.g. a seed that never reached the target loss)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"mean": sum(finite) / len(finite) if finite else None,
            "spread": (max(finite) - min(finite)) / 2 if finite else None,
            "values": [None if v is None else float(v) for v in values],
            "missing": len(values) - len(finite)}


def field_table(efficiency: Mapping[str, Sequence[Sequence[Row]]], dragon: Mapping[str, Sequence[Sequence[Row]]],
                *, baseline: str = "adamw") -> dict[str, dict[str, Any]]:
    """Per arm of the field comparison (:mod:`muonclip.reproduce.field`), over its seeds:
    final validation loss; tokens to reach the baseline's mean final validation loss (and
    that over the baseline's own tokens); and on ``dragon`` the peak max logit and its growth."""
    target = seed_stats([final_val_loss(r) for r in efficiency[baseline]])["mean"]
    base_tokens = seed_stats([tokens_to_reach(*val_curve(r), target) for r in efficiency[baseline]])["mean"]
    out = {}
    for name, runs in efficiency.items():
        tokens = seed_stats([tokens_to_reach(*val_curve(r), target) if target is not None else None for r in runs])
        row = {"seeds": len(runs), "final_val_loss": seed_stats([final_val_loss(r) for r in runs]),
               "tokens_to_baseline": tokens,
               "tokens_vs_baseline": (tokens["mean"] / base_tokens if tokens["mean"] and base_tokens else None)}
        if dragon.get(name):
            row["dragon_peak_max_logit"] = seed_stats([peak_max_logit(r) for r in dragon[name]])
            row["dragon_growth"] = seed_stats([growth_factor(r) for r in dragon[name]])
        out[name] = row
    return out


def tradeoff_sweep_grid(result: Mapping[str, Any], key: str) -> np.ndarray:
    """``[len(seq_lens), len(taus)]`` of one measured quantity of the trade-off sweep."""
    seq_lens, taus = result["seq_lens"], result["taus"]
    grid = np.full((len(seq_lens), len(taus)), np.nan)
    for cell in result["cells"]:
        grid[seq_lens.index(cell["seq_len"]), taus.index(cell["tau"])] = cell[key]
    return grid


def tradeoff_edge(result: Mapping[str, Any], key: str = "accuracy", *, margin: float = 0.02) -> dict[int, float | None]:
    """Per prompt length, the largest tau at which ``key`` is worse than the unclipped arm's by
    more than ``margin`` (held-out accuracy lower, or, for ``eval_loss``, loss higher); None when
    no tau of the sweep cost that much."""
    taus = result["taus"]
    grid = tradeoff_sweep_grid(result, key)
    sign = -1.0 if key in ("eval_loss", "loss") else 1.0  # +1: higher is better
    free = taus.index(None)
    out = {}
    for i, seq_len in enumerate(result["seq_lens"]):
        costly = [t for j, t in enumerate(taus) if t is not None and sign * (grid[i, free] - grid[i, j]) > margin]
        out[seq_len] = max(costly) if costly else None
    return out
