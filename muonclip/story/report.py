"""``report.html``: one self-contained page with the narrative, every figure, the measured numbers and the controls.

Images are inline as data URIs; the interactive panels are inline SVG drawn by a small script
from JSON embedded in the page (:mod:`muonclip.story.widgets`), so the file opens offline and
makes no network request. The chapters (:mod:`muonclip.story.chapters`) build every sentence
that states a result from ``numbers``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_write_text
from . import widgets
from .chapters import CHAPTERS, colors, runs_section
from .page import CSS, Page
from .texts import CAPTIONS

__all__ = ["write_report", "build_html", "build_sections", "report_sections", "build_page"]


def build_page(out_dir: Path, numbers: dict, errors: dict, manifest: dict, *, interactive: bool = True) -> Page:
    """Every chapter written into one :class:`~muonclip.story.page.Page` (sections by anchor,
    and the panels' data when ``interactive``)."""
    pg = Page(out_dir, manifest, CAPTIONS, interactive=interactive)
    for chapter in CHAPTERS:
        chapter(pg, numbers)
    runs_section(pg, numbers, errors)
    return pg


def build_sections(out_dir: Path, numbers: dict, errors: dict, manifest: dict, *,
                   interactive: bool = False) -> dict[str, str]:
    """The report as HTML fragments keyed by section anchor (intro, singular, bridge, dragon,
    rogue, guardrail, lifecycle, tradeoff, k2, runs and, if anything failed, problems). Without
    ``interactive`` the fragments hold no controls (they need the page's script and data)."""
    pg = build_page(out_dir, numbers, errors, manifest, interactive=interactive)
    return {k: "\n".join(v) for k, v in pg.sections.items()}


def build_html(out_dir: Path, numbers: dict, errors: dict, manifest: dict) -> str:
    pg = build_page(out_dir, numbers, errors, manifest)
    body = "\n".join("\n".join(v) for v in pg.sections.values())
    script = ""
    if pg.data:
        script = widgets.data_script({**pg.data, "colors": colors()}) + f"<script>{widgets.script()}</script>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\"><title>MuonClip: the story, measured</title>"
            f"<style>{CSS}{widgets.CSS}</style></head><body>\n{body}\n{script}\n</body></html>\n")


def _manifest(out_dir: Path) -> dict:
    mpath = out_dir / "figures.json"
    return json.loads(mpath.read_text(encoding="utf-8")) if mpath.exists() else {}


def write_report(out_dir: str | Path, numbers: dict, errors: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    return atomic_write_text(out_dir / "report.html", build_html(out_dir, numbers, errors or {}, _manifest(out_dir)))


def report_sections(out_dir: str | Path, numbers: dict | None = None) -> dict[str, str]:
    """Sections of the report of an existing story folder (for the notebook: figures and text,
    no controls)."""
    out_dir = Path(out_dir)
    if numbers is None:
        numbers = json.loads((out_dir / "numbers.json").read_text(encoding="utf-8"))
    return build_sections(out_dir, numbers, {}, _manifest(out_dir))
