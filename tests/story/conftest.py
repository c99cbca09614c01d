"""One quick story, shared by every story test of the session (it trains, so it is made once)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def quick_story(tmp_path_factory):
    """``(result, out_dir, cache_dir)`` of ``run_story(quick=True)`` from fresh runs.

    ``MUONCLIP_STORY_TEST_CACHE`` points the run cache elsewhere (to reuse runs while developing).
    """
    pytest.importorskip("matplotlib")
    from muonclip.story.pipeline import run_story

    root = tmp_path_factory.mktemp("story")
    cache = Path(os.environ.get("MUONCLIP_STORY_TEST_CACHE") or root / "cache")
    out = root / "out"
    result = run_story(out, cache_dir=cache, quick=True, progress=False)
    return result, out, cache
