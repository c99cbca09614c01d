"""The one palette and number formatter of both reports (muonclip.viz.style)."""
from __future__ import annotations

import math

from muonclip.viz.style import COLORS, DIGITS, color_for, fmt, fmt_g, fmt_pct


def test_fmt_rules():
    assert fmt(None) == "n/a" and fmt(None, none="-") == "-"
    assert fmt(True) == "yes" and fmt(False) == "no"
    assert fmt(300) == "300" and fmt(983040) == "983,040"
    assert fmt(353.04, 1) == "353.0" and fmt(0.2812, 2) == "0.28" and fmt(2.20621, 4) == "2.2062"
    assert fmt(1267.9, 1) == "1.27e+03" and fmt(0.0004) == "0.0004" and fmt(0.0) == "0.000"
    assert fmt(math.inf) == "inf" and fmt(math.nan) == "nan"
    assert fmt("x") == "x"


def test_fmt_g_and_pct():
    assert fmt_g(50.0) == "50" and fmt_g(0.02) == "0.02" and fmt_g(1e-3) == "0.001" and fmt_g(None) == "n/a"
    assert fmt_pct(0.125) == "12.5%" and fmt_pct(1.0) == "100.0%" and fmt_pct(0.476, 0) == "48%"
    assert fmt_pct(-0.046, 2, signed=True) == "-4.60%" and fmt_pct(0.01, 2, signed=True) == "+1.00%"
    assert fmt_pct(None) == "n/a"


def test_palette():
    assert color_for("MuonClip (tau 50)") == COLORS["muonclip"]  # not Muon's: muonclip is matched first
    assert color_for("muon (lr 0.01)") == COLORS["muon"] and color_for("AdamW") == COLORS["adamw"]
    assert color_for("adam") == COLORS["adamw"]  # the SAEs' Adam
    assert color_for("guardrail") == COLORS["muonclip"] and color_for("something") == COLORS["other"]
    assert set(DIGITS) >= {"logit", "loss", "ratio", "growth"}
