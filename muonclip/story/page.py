"""The building blocks of report.html: a page of sections, inline figures, tables and measured-number spans.

Numbers are formatted by :mod:`muonclip.viz.style` like docs/results.md. A number that
docs/results.md also prints carries ``data-q="KEY"`` (e.g. ``dragon.muon.peak``), so the two
can be compared (tests/story/test_consistency.py).
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ..viz.style import fmt, fmt_g

__all__ = ["Page", "CSS", "f", "e", "n", "q", "tau"]

_MIME = {".png": "image/png", ".gif": "image/gif"}


def f(x: Any, digits: int = 1, none: str = "n/a") -> str:
    return html.escape(fmt(x, digits, none=none))


def e(text: Any) -> str:
    return html.escape(str(text))


def n(x: Any, digits: int = 1, *, q: str | None = None, text: str | None = None) -> str:
    """A measured number in bold; ``q`` names it when docs/results.md prints it too; ``text``
    replaces the default formatting (``fmt(x, digits)``)."""
    attr = f' data-q="{q}"' if q else ""
    return f'<span class="num"{attr}>{f(x, digits) if text is None else html.escape(text)}</span>'


def q(x: Any, key: str, digits: int = 1) -> str:
    """A number docs/results.md prints too, in the running text (not bold)."""
    return f'<span data-q="{key}">{f(x, digits)}</span>'


def tau(x: Any, key: str | None = None) -> str:
    """A setting (tau, weight decay) in its shortest form, with its results.md key when shared."""
    return f'<span data-q="{key}">{e(fmt_g(x))}</span>' if key else e(fmt_g(x))


class Page:
    """The report being written: HTML parts collected per section (by anchor), figures inline."""

    def __init__(self, out_dir: Path, manifest: dict, captions: dict[str, str], interactive: bool = True) -> None:
        self.out_dir, self.manifest, self.captions, self.interactive = out_dir, manifest, captions, interactive
        self.parts: list[str] = []
        self.shown: list[str] = []
        self.sections: dict[str, list[str]] = {"intro": self.parts}
        self.data: dict[str, Any] = {}  # the interactive panels' data (embedded as JSON)

    def add(self, text: str) -> None:
        self.parts.append(text)

    def p(self, text: str, cls: str = "") -> None:
        self.parts.append(f'<p class="{cls}">{text}</p>' if cls else f"<p>{text}</p>")

    def h2(self, text: str, anchor: str) -> None:
        self.parts = self.sections.setdefault(anchor, [])
        self.parts.append(f'<h2 id="{anchor}">{e(text)}</h2>')

    def figure(self, name: str, *, folded: bool = False) -> None:
        """The image ``name`` inline, with its caption and, folded away, the runs it was drawn
        from; ``folded``: the whole figure in a closed ``<details>`` (a GIF the page's controls
        replace)."""
        caption = self.captions[name]
        path = self.out_dir / name
        if not path.exists():
            self.parts.append(f'<p class="missing">({e(name)} was not produced: see "Problems" below.)</p>')
            return
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        runs = self.manifest.get(name, {}).get("runs", [])
        prov = "<br>".join(e(f"run {r['run_id']} (config {r['config_hash']}, git {str(r.get('git_sha') or '?')[:12]})")
                           for r in runs)
        self.shown.append(name)
        fig = (f'<figure id="fig-{e(path.stem)}"><img src="data:{_MIME[path.suffix]};base64,{data}" '
               f'alt="{e(caption)}" data-file="{e(name)}">'
               f"<figcaption><b>{e(name)}</b>: {caption}"
               + (f'<details class="prov"><summary>provenance</summary>{prov}</details>' if prov else "")
               + "</figcaption></figure>")
        if folded:
            fig = f'<details class="anim"><summary>the animation ({e(name)})</summary>{fig}</details>'
        self.parts.append(fig)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#1d2330;line-height:1.55}
h1{font-size:1.9em;margin-bottom:.2em}h2{margin-top:2.2em;border-bottom:1px solid #dde3ea;padding-bottom:.2em}
figure{margin:1.2em 0;padding:.6em;background:#f7f9fb;border:1px solid #e3e8ee;border-radius:6px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:.9em;color:#3b4656;margin-top:.4em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
td,th{border:1px solid #d5dce4;padding:.3em .6em;text-align:left}
th{background:#eef2f6}.num{font-weight:600}.missing,.problems{color:#a02020}.lead{font-size:1.08em}
nav a{margin-right:.8em}code{background:#eef2f6;padding:0 .2em;border-radius:3px}
.look{background:#fff8e6;border-left:4px solid #e0a800;padding:.4em .7em}.look b{color:#7a5600}
details.anim{margin:.6em 0}details.anim summary{cursor:pointer;color:#3b4656}
"""
