"""One number over several seeds: its median and min-max (:class:`Spread`), and a curve's band.

Every seeded quantity of both reports is a list of per-seed values (one pure function of each
seed's run, from the sibling modules) summarised here; :meth:`Spread.text` is how both pages
print it, so docs/results.md and report.html show the same characters. With one seed a spread
is just that seed's value.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ...viz.style import fmt

__all__ = ["Spread", "spread", "curve_spread", "SEED_SEP"]

# Between the low and high end of a range: an en dash, so a range never reads as a minus sign.
SEED_SEP = "\u2013"


def _finite(v: float | int | None) -> bool:
    return v is not None and (isinstance(v, int) or math.isfinite(v))


@dataclass(frozen=True)
class Spread:
    """Per-seed values of one quantity, in seed order (None: not measurable on that seed, e.g.
    a cap when the clip never fired)."""

    values: tuple[float | int | None, ...]

    @property
    def present(self) -> list[float | int]:
        return [v for v in self.values if _finite(v)]

    @property
    def missing(self) -> int:
        return len(self.values) - len(self.present)

    @property
    def median(self) -> float | int | None:
        """The median; for counts (all ints) the lower median, so a count stays a count."""
        got = self.present
        if not got:
            return None
        if all(isinstance(v, int) for v in got):
            return statistics.median_low(got)
        return float(statistics.median(got))

    @property
    def lo(self) -> float | int | None:
        return min(self.present, default=None)

    @property
    def hi(self) -> float | int | None:
        return max(self.present, default=None)

    def text(self, digits: int = 3, *, as_text: Callable[[float | int], str] | None = None) -> str:
        """``median (min–max)`` over the seeds, each part formatted by ``as_text`` (default
        :func:`~muonclip.viz.style.fmt` with ``digits``); a lone seed prints its value alone;
        ``n/a on k of N seeds`` says where a seed had no value."""
        one = as_text or (lambda v: fmt(v, digits))
        if not self.present:
            return "n/a"
        if len(self.values) == 1:
            return one(self.values[0])
        note = f"n/a on {self.missing} of {len(self.values)} seeds" if self.missing else ""
        if len(self.present) == 1:
            return f"{one(self.present[0])} ({note})"
        rng = f"{one(self.lo)}{SEED_SEP}{one(self.hi)}"
        return f"{one(self.median)} ({rng}{', ' + note if note else ''})"


def spread(values: Sequence[float | int | None]) -> Spread:
    """The :class:`Spread` of per-seed ``values`` (numpy scalars become Python numbers)."""
    if not len(values):
        raise ValueError("a spread needs at least one seed")
    out = []
    for v in values:
        if isinstance(v, np.generic):
            v = v.item()
        out.append(v if v is None or isinstance(v, int) and not isinstance(v, bool) else float(v))
    return Spread(tuple(out))


def curve_spread(curves: Sequence[tuple[Sequence[float], Sequence[float]]]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(xs, median, lo, hi)`` of per-seed curves ``(xs, ys)``, on the xs that every seed has
    (same config, so normally all of them), in the first curve's order."""
    if not curves:
        raise ValueError("a curve spread needs at least one seed")
    common = set(curves[0][0])
    for xs, _ in curves[1:]:
        common &= set(xs)
    xs = [x for x in curves[0][0] if x in common]
    by_x = [dict(zip(cx, cy, strict=True)) for cx, cy in curves]
    stack = np.array([[curve[x] for x in xs] for curve in by_x], dtype=np.float64)
    return (np.asarray(xs), np.median(stack, axis=0), stack.min(axis=0), stack.max(axis=0))
