"""notebooks/muonclip_story.ipynb runs top to bottom (quick mode) with nbclient.

It reuses the session's quick story (same output and cache folders), so executing it only
re-reads the runs and figures: the notebook holds no logic of its own.
"""
from __future__ import annotations

from pathlib import Path

import pytest

# The first test to use the shared quick story pays for training it.
pytestmark = pytest.mark.timeout(1200)

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "muonclip_story.ipynb"


def test_notebook_calls_only_the_package():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "def " not in code and "class " not in code, "the notebook must not define logic"
    assert "muonclip.story" in code


def test_notebook_executes_in_quick_mode(quick_story, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    _, out, cache = quick_story
    monkeypatch.setenv("MUONCLIP_STORY_QUICK", "1")
    monkeypatch.setenv("MUONCLIP_STORY_OUT", str(out))
    monkeypatch.setenv("MUONCLIP_STORY_CACHE", str(cache))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs if o.get("output_type") == "display_data")
    assert html.count("<img") >= 10, "the chapters should show the figures"
    assert "data:image/gif;base64," in html
    shown_report = [o for o in outputs if "report.html" in str(o.get("text", ""))]
    assert shown_report, "the notebook prints where the report is"
