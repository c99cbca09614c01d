"""report.html's interactive panels: inline SVG drawn by a little vanilla JS from JSON embedded in the page.

Why this layer (see docs/architecture.md): the page must stay one offline file that makes no
network request; a charting library (plotly, Vega) would add megabytes of script to every
report, while the few charts here need axes, lines, bars and a cursor. Every control is a
real ``<input type="range">`` or ``<select>`` (keyboard-usable, testable) named by
``data-control``; its readout is the ``<output>`` with the same ``data-readout``, whose
fields (``data-field``) carry the exact value read from the data in ``data-value``.
The data comes from :mod:`muonclip.story.interactive` (the runs' metrics), never typed in.
"""
from __future__ import annotations

import html
import json
import math
from importlib import resources
from typing import Any

__all__ = ["data_script", "step_panel", "rogue_panel", "whatif_panel", "script", "CSS"]


def _finite(x: Any) -> Any:
    """``x`` with every non-finite float as None (JSON has no NaN; a diverged run logs inf)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def data_script(data: dict[str, Any]) -> str:
    """The panels' data as a JSON script element (``</`` escaped so no value can end the script;
    non-finite numbers become null, which the readouts print as n/a)."""
    text = json.dumps(_finite(data), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return f'<script type="application/json" id="story-data">{text}</script>'


def _range(name: str, lo: float, hi: float, value: float, step: float, label: str) -> str:
    return (f'<label class="ctl">{html.escape(label)} <input type="range" data-control="{name}" id="ctl-{name}" '
            f'min="{lo:g}" max="{hi:g}" step="{step:g}" value="{value:g}" aria-label="{html.escape(label)}"></label>')


def _readout(name: str) -> str:
    return f'<output class="readout" data-readout="{name}" for="ctl-{name}" aria-live="polite"></output>'


def _svg(name: str, label: str) -> str:
    return f'<svg class="chart" data-chart="{name}" role="img" aria-label="{html.escape(label)}"></svg>'


def step_panel(key: str, steps: list[int], label: str, note: str = "") -> str:
    """A line chart of ``key``'s data with a step slider (``KEY-step``) and its readout."""
    name = f"{key}-step"
    return (f'<div class="panel" data-panel="{key}">{_svg(key, label)}'
            f'<div class="controls">{_range(name, steps[0], steps[-1], steps[-1], 1, "step")}{_readout(name)}</div>'
            + (f'<p class="note">{note}</p>' if note else "") + "</div>")


def rogue_panel(steps: list[int], heads: list[str], start_head: str) -> str:
    """Every head's max logit / tau at the slider's step (``rogue-step``) and one head's
    trajectory with its clip ticks (``rogue-head``)."""
    options = "".join(f'<option value="{h}"{" selected" if h == start_head else ""}>{h}</option>' for h in heads)
    return ('<div class="panel" data-panel="rogue">'
            f'{_svg("rogue-bars", "every head max logit over tau at the chosen step")}'
            f'<div class="controls">{_range("rogue-step", steps[0], steps[-1], steps[-1], 1, "step")}'
            f'{_readout("rogue-step")}</div><p class="note">Bars: each head\'s max logit / &tau; at that step; red: '
            'clipped at that step, orange: clipped at some other step, grey: never clipped.</p>'
            f'{_svg("rogue-head", "the chosen head max logit over tau and its clipping steps")}'
            '<div class="controls"><label class="ctl">head <select data-control="rogue-head" id="ctl-rogue-head" '
            f'aria-label="head">{options}</select></label>{_readout("rogue-head")}</div></div>')


def whatif_panel(arms: list[dict], note: str) -> str:
    """The trade-off's measured attention row under a logit scale gamma (``tradeoff-gamma``),
    for the chosen arm (``tradeoff-arm``)."""
    options = "".join(f'<option value="{i}">{html.escape(a["label"])}</option>' for i, a in enumerate(arms))
    return ('<div class="panel" data-panel="tradeoff">'
            f'{_svg("tradeoff", "attention of the answer position over the probe prompt")}'
            '<div class="controls"><label class="ctl">arm <select data-control="tradeoff-arm" id="ctl-tradeoff-arm" '
            f'aria-label="arm">{options}</select></label>{_readout("tradeoff-arm")}</div>'
            f'<div class="controls">{_range("tradeoff-gamma", 0.05, 2, 1, 0.05, "logit scale γ")}'
            f'{_readout("tradeoff-gamma")}</div><p class="note">{note}</p></div>')


CSS = """
.panel{margin:1em 0;padding:.6em;border:1px solid #cfd8e3;border-radius:6px;background:#fff}
.chart{width:100%;height:auto;display:block}.controls{display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:center;
margin:.3em 0}.ctl{font-size:.9em;white-space:nowrap}.ctl input[type=range]{width:min(420px,60vw);vertical-align:middle}
.readout{font-size:.88em;font-family:ui-monospace,monospace;background:#f3f6f9;padding:.15em .4em;border-radius:3px}
.note{font-size:.85em;color:#4a5564}.chart text{font:11px system-ui,sans-serif;fill:#333}
.chart .tip rect{fill:#fff;stroke:#999;opacity:.93}details.prov{font-size:.8em;color:#7a8594}
details.prov summary{cursor:pointer}
"""


def script() -> str:
    """The page's script (``report.js`` beside this module, inlined: the page loads nothing)."""
    return resources.files(__package__).joinpath("report.js").read_text(encoding="utf-8")
