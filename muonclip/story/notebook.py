"""Helpers for ``notebooks/muonclip_story.ipynb``: the notebook only calls these."""
from __future__ import annotations

import os
from pathlib import Path

from .pipeline import StoryResult, run_story
from .report import report_sections

__all__ = ["settings", "make_story", "show"]


def settings() -> dict:
    """Where the notebook's story goes. Environment overrides (used by the tests):
    ``MUONCLIP_STORY_QUICK`` (``1``: quick, the default in the notebook; ``0``: full),
    ``MUONCLIP_STORY_OUT`` and ``MUONCLIP_STORY_CACHE``."""
    root = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
    return {
        "quick": os.environ.get("MUONCLIP_STORY_QUICK", "1") != "0",
        "out": Path(os.environ.get("MUONCLIP_STORY_OUT") or root / "runs" / "story-notebook"),
        "cache": Path(os.environ.get("MUONCLIP_STORY_CACHE") or root / "runs" / "cache"),
    }


def make_story(quick: bool, out, cache) -> StoryResult:
    """Run (or reuse) the story; returns :class:`muonclip.story.pipeline.StoryResult`."""
    return run_story(out, cache_dir=cache, quick=quick, progress=False)


def show(result, section: str) -> None:
    """Display one section of the report (text with its numbers and figures) in the notebook."""
    from IPython.display import HTML, display  # lazy: IPython is there only inside a notebook kernel

    sections = report_sections(result.out_dir, result.numbers)
    display(HTML(sections.get(section, f"<p>(no section {section!r})</p>")))
