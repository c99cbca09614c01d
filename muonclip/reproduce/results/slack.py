"""The guardrail's one-step slack, decomposed: the update's growth against the next batch's variation.

QK-Clip at step t scales a head by gamma = tau / S_t, where S_t is the head's max logit on batch
t *before* step t's update, so the clip cannot see what that update adds. The lab logs, at every
clipping step, each head's max logit of the updated, clipped weights on the same batch t
(``max_logits_after``, A_t), and the next row logs the max logit of the same weights on batch t+1
(``max_logits``, S_{t+1}). For a head clipped at step t:

    S_{t+1} / tau  =  (A_t / tau)  x  (S_{t+1} / A_t)
      excess         growth (update t,      batch variation (batch t+1
                     same batch)            against batch t, same weights)

so in logs the two parts add up exactly. A head over tau at step t+1 that was *not* clipped at
step t has its own A_t as well (the after-pass covers every head), so it is decomposed the same
way. The lab runs the after-pass on clipping steps and on steps with a head within 10% of tau,
so only rows that follow a step with every head further below tau are not covered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...lab.train import AFTER_PASS_NEAR
from .logits import Row, _num, heads_above

__all__ = ["SlackEvent", "slack_events", "slack_decomposition"]


@dataclass(frozen=True)
class SlackEvent:
    """One head at step ``step + 1`` after a clipping step ``step``: ``excess`` = S_{t+1}/tau =
    ``growth`` x ``batch`` (see the module docstring); ``clipped``: the head was clipped at ``step``."""

    step: int
    head: tuple[int, int]
    clipped: bool
    growth: float
    batch: float

    @property
    def excess(self) -> float:
        return self.growth * self.batch

    @property
    def growth_share(self) -> float | None:
        """Share of log(excess) that the update's growth explains (None unless excess > 1)."""
        total = math.log(self.excess)
        return math.log(self.growth) / total if total > 0 else None


def slack_events(rows: Sequence[Row], tau: float, *, near: float = AFTER_PASS_NEAR) -> list[SlackEvent]:
    """Every head at or above ``near`` x tau (on the same batch after step t's update and clip)
    at each step t with an after-pass whose next row is step t+1; clipped heads always included."""
    by_step = {int(r["step"]): r for r in rows}
    out = []
    for r in rows:
        after = r.get("max_logits_after")
        nxt = by_step.get(int(r["step"]) + 1)
        if not after or nxt is None:
            continue
        clipped = heads_above(r, tau) if int(r.get("n_clipped", 0) or 0) else set()
        for li, layer in enumerate(after):
            for hi, a in enumerate(layer):
                a = _num(a)
                if not (a > 0 and math.isfinite(a)) or ((li, hi) not in clipped and a < near * tau):
                    continue
                s_next = _num(nxt["max_logits"][li][hi])
                out.append(SlackEvent(int(r["step"]), (li, hi), (li, hi) in clipped, a / tau, s_next / a))
    return out


def _stats(xs: Sequence[float]) -> dict[str, float] | None:
    if not xs:
        return None
    a = np.asarray(xs, dtype=float)
    return {"median": float(np.median(a)), "p90": float(np.quantile(a, 0.9)), "max": float(a.max())}


def slack_decomposition(rows: Sequence[Row], tau: float) -> dict[str, Any] | None:
    """The slack of one MuonClip run: over the clipped heads of every covered step, the growth
    (A_t/tau) and batch (S_{t+1}/A_t) factors (median, p90, max); over the events that ended above
    tau, the median share of the log-excess that growth explains; and the worst event (largest
    S_{t+1}/tau) with its two factors. None if the clip never fired with a next row to read."""
    events = slack_events(rows, tau)
    clipped = [e for e in events if e.clipped]
    if not clipped:
        return None
    over = [e for e in events if e.excess > 1.0]
    worst = max(events, key=lambda e: e.excess)
    shares = [e.growth_share for e in over if e.growth_share is not None]
    return {
        "events": len(clipped), "events_over_tau": len(over),
        "growth": _stats([e.growth for e in clipped]), "batch": _stats([e.batch for e in clipped]),
        "growth_share_median": float(np.median(shares)) if shares else None,
        "worst": {"step": worst.step + 1, "head": list(worst.head), "excess": worst.excess,
                  "growth": worst.growth, "batch": worst.batch, "clipped": worst.clipped},
    }
