"""One palette and one number formatter for every figure, docs/results.md and report.html.

No matplotlib here: :mod:`muonclip.reproduce.results` and the report writers import it too.
:data:`DIGITS` fixes the decimals of each kind of quantity that both reports print, so the
same number reads the same in both.
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["COLORS", "color_for", "fmt", "fmt_g", "fmt_pct", "DIGITS"]

COLORS = {"adamw": "#1f6fb4", "muon": "#d62728", "muonclip": "#2a9d3a", "tau": "#444444",
          "safe": "#d9f2d9", "danger": "#f9d6d5", "keyword": "#e08a00", "distractor": "#7f7f7f",
          "clipped": "#ff7f0e", "other": "#555555"}

# Decimals per kind of quantity (see fmt): both reports format a shared number with these.
DIGITS = {
    "logit": 1,          # a max attention logit (peak, final, after the first clip)
    "initial_logit": 2,  # the max logit of step 1 (small: a fresh model)
    "growth": 1,         # growth factor of the max logit
    "ratio": 3,          # a value over tau, a slack, a fraction of training
    "loss": 4,           # a validation or training loss (nats/token)
    "entropy": 3,        # a spectral entropy
    "rank": 1,           # an effective rank, s_1 / s_median
}


def color_for(name: str) -> str:
    """Colour of an optimizer, or of a label that contains its name (``"MuonClip (tau 50)"``);
    ``adam`` (the SAEs' optimizer) takes AdamW's colour."""
    low = name.lower()
    for key in ("muonclip", "adamw", "muon"):  # muonclip before muon: substring
        if key in low:
            return COLORS[key]
    if "adam" in low:
        return COLORS["adamw"]
    if "clip" in low or "guard" in low or "life" in low:
        return COLORS["muonclip"]
    return COLORS["other"]


def fmt(x: Any, digits: int = 3, *, none: str = "n/a") -> str:
    """The number formatter of both reports.

    None: ``none``; bool: yes/no; int: thousands separated (``983,040``); a float with
    ``|x| >= 1000`` or ``0 < |x| < 1e-3``: three significant digits (``1.27e+03``); other
    floats: ``digits`` decimals; non-finite floats and anything else: ``str(x)``.
    """
    if x is None:
        return none
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if abs(x) >= 1000 or (abs(x) < 1e-3 and x != 0):
            return f"{x:.3g}"
        return f"{x:.{digits}f}"
    return str(x)


def fmt_g(x: Any, *, none: str = "n/a") -> str:
    """A setting (tau, a learning rate, weight decay) in its shortest form: ``50``, ``0.02``, ``0.001``."""
    return none if x is None else f"{x:g}"


def fmt_pct(x: float | None, digits: int = 1, *, signed: bool = False, none: str = "n/a") -> str:
    """A fraction as a percentage: ``0.125`` -> ``12.5%`` (``+12.50%`` with ``signed`` and 2 digits)."""
    if x is None:
        return none
    return f"{100 * x:{'+' if signed else ''}.{digits}f}%"
