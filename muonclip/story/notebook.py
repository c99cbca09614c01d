"""Helpers for ``notebooks/muonclip_story.ipynb``, and running it: ``python -m muonclip.story.notebook``.

The notebook's story chapters call :func:`make_story` and :func:`show`; its lessons (the
Newton-Schulz and QK-Clip math) are written out in the notebook itself, with their figures
and sliders in :mod:`.lessons`. :func:`execute_notebook` runs it top to bottom with nbclient
and writes it back with its outputs (``make notebook``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..io import atomic_write_text
from .pipeline import StoryResult, run_story
from .report import report_sections

__all__ = ["settings", "make_story", "show", "execute_notebook", "NOTEBOOK"]

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "muonclip_story.ipynb"


def settings() -> dict:
    """Where the notebook's story goes. Environment overrides (used by the tests):
    ``MUONCLIP_STORY_QUICK`` (``1``: quick, the default in the notebook; ``0``: full),
    ``MUONCLIP_STORY_OUT`` and ``MUONCLIP_STORY_CACHE``. Paths are relative to the working
    directory (the notebook's folder, or the repository root)."""
    root = Path("..") if Path.cwd().name == "notebooks" else Path(".")
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


def execute_notebook(path: str | Path = NOTEBOOK, *, quick: bool = True, widgets: bool = False,
                     timeout: int = 1200, write: bool = True):
    """Run the notebook top to bottom in a fresh kernel (its folder as working directory) and,
    with ``write``, save it in place with its outputs (atomically: a failed run leaves the file
    as it was). ``widgets=False``: static figures instead of sliders, so the saved outputs
    render anywhere. Returns the executed notebook; raises nbclient's error on a failing cell."""
    import nbclient
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    # the kernel imports the muonclip that runs this (a worktree's, not another install's)
    root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {"MUONCLIP_STORY_QUICK": "1" if quick else "0", "MUONCLIP_NOTEBOOK_WIDGETS": "1" if widgets else "0",
           "PYTHONPATH": pythonpath}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                         resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if write:
        atomic_write_text(path, nbformat.writes(nb) + "\n")
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m muonclip.story.notebook",
                                     description="Execute notebooks/muonclip_story.ipynb and save it with its outputs.")
    parser.add_argument("path", nargs="?", default=str(NOTEBOOK))
    parser.add_argument("--full", action="store_true", help="the full story instead of the quick one")
    parser.add_argument("--widgets", action="store_true", help="sliders instead of static figures")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    execute_notebook(args.path, quick=not args.full, widgets=args.widgets)
    print(f"executed {args.path} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
