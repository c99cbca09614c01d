"""docs/results.md and report.html, made from the same quick runs, print the same numbers.

Every number report.html shares with results.md carries ``data-q="KEY"``; this test reads each
one and finds the same text in results.md's tables (written by ``muonclip reproduce --quick``
from the story's run cache, so both read the very same run directories).
"""
from __future__ import annotations

import json
import re

import pytest

# The first test to use the shared quick story pays for training it.
pytestmark = pytest.mark.timeout(1200)

pytest.importorskip("matplotlib")


def _tables(md: str) -> dict[str, dict[str, str]]:
    """``{section title: {quantity: value}}`` of the two-column tables of results.md."""
    out: dict[str, dict[str, str]] = {}
    title = ""
    for line in md.splitlines():
        if line.startswith("## "):
            title = line[3:]
            out[title] = {}
        m = re.fullmatch(r"\| (.+?) \| (.+?) \|", line)
        if m and title:
            out[title][m.group(1)] = m.group(2)
    return out


def _part(value: str, i: int) -> str:
    """The i-th number of a cell like ``85 / 300 of 300`` or ``32 / 32 (100.0%)``."""
    return re.findall(r"[-+]?[\d,]*\.?\d+(?:e[-+]\d+)?", value)[i]


# report.html key -> (results.md section, quantity, which number of the cell)
WHERE = {
    "dragon.muon.start": ("The dragon", "Muon: max logit at step 1 / peak / final", 0),
    "dragon.muon.peak": ("The dragon", "Muon: max logit at step 1 / peak / final", 1),
    "dragon.muon.final": ("The dragon", "Muon: max logit at step 1 / peak / final", 2),
    "dragon.muon.growth": ("The dragon", "Muon: growth factor (peak / step 1)", 0),
    "dragon.muon.peak_over_tau": ("The dragon", "Muon: peak / tau", 0),
    "dragon.adamw.growth": ("The dragon", "AdamW: growth factor (peak / step 1)", 0),
    "dragon.adamw.peak_over_tau": ("The dragon", "AdamW: peak / tau", 0),
    "dragon.tau": ("The dragon", "tau (this scale)", 0),
    "dragon.adamw.peak": ("The dragon", "AdamW: max logit at step 1 / peak / final", 1),
    "dragon.adamw.final": ("The dragon", "AdamW: max logit at step 1 / peak / final", 2),
    "dragon.muon.final_val": ("The dragon", "Muon: final val loss", 0),
    "dragon.adamw.final_val": ("The dragon", "AdamW: final val loss", 0),
    "guardrail.tau": ("The guardrail", "tau", 0),
    "guardrail.first_clip": ("The guardrail", "MuonClip: first clip / last clip (step)", 0),
    "guardrail.steps": ("The guardrail", "MuonClip: first clip / last clip (step)", 2),
    "guardrail.clip_steps": ("The guardrail", "MuonClip: steps with a clip", 0),
    "guardrail.cap": ("The guardrail", "MuonClip: the cap, max logit after the first clip / tau (forward before "
                                       "each step)", 0),
    "guardrail.heads_ever": ("The guardrail", "MuonClip: heads ever clipped", 0),
    "guardrail.heads_total": ("The guardrail", "MuonClip: heads ever clipped", 1),
    "guardrail.final_val": ("The guardrail", "final val loss: MuonClip / Muon", 0),
    "guardrail.muon_final_val": ("The guardrail", "final val loss: MuonClip / Muon", 1),
    "lifecycle.tau": ("The lifecycle", "tau", 0),
    "lifecycle.first_clip": ("The lifecycle", "first clip / last clip (step)", 0),
    "lifecycle.last_clip": ("The lifecycle", "first clip / last clip (step)", 1),
    "lifecycle.steps": ("The lifecycle", "first clip / last clip (step)", 2),
    "lifecycle.final_over_tau": ("The lifecycle", "final max logit / tau", 0),
    "lifecycle.heads_ever": ("The lifecycle", "heads ever clipped", 0),
    "lifecycle.heads_total": ("The lifecycle", "heads ever clipped", 1),
}


def test_results_md_and_report_html_print_the_same_numbers(quick_story, tmp_path):
    from muonclip.reproduce.report import main

    result, out, cache = quick_story
    assert result.ok, result.errors
    md_path = main(only=["dragon", "guardrail", "lifecycle"], quick=True, cache=cache, out=tmp_path,
                   determinism=False, log=lambda m: None)
    tables = _tables(md_path.read_text(encoding="utf-8"))
    # the page's targets as data print what its targets table prints
    data = json.loads((tmp_path / "data" / "results-targets.json").read_text(encoding="utf-8"))
    md_targets = md_path.read_text(encoding="utf-8").split("## Targets", 1)[1].split("\n## ", 1)[0]
    for verdicts in data["sections"].values():
        for v in verdicts:
            assert f"| {v['name']} | {v['wanted']} | {v['measured']} | {v['met_text']} |" in md_targets.replace(
                "**", ""), v
    html = (out / "report.html").read_text(encoding="utf-8")
    shown = re.findall(r'<span (?:class="num" )?data-q="([^"]+)">([^<]*)</span>', html)
    unknown = sorted({key for key, _ in shown} - set(WHERE))
    assert not unknown, f"report.html names numbers this test does not know: {unknown}"
    compared = set()
    for key, text in shown:
        prefix, quantity, i = WHERE[key]
        section = next(t for title, t in tables.items() if title.startswith(prefix))
        assert text == _part(section[quantity], i), (key, text, section[quantity])
        compared.add(key)
    # the shared quantities of the dragon, guardrail and lifecycle chapters are all compared
    assert {"dragon.muon.peak", "dragon.muon.growth", "dragon.muon.start", "dragon.tau", "guardrail.heads_ever",
            "guardrail.first_clip", "guardrail.cap", "guardrail.final_val", "lifecycle.first_clip",
            "lifecycle.last_clip", "lifecycle.heads_ever"} <= compared
    # The lifecycle chapter tells one of two endings, whichever the run reached (the quick preset
    # now self-stabilises with margin on every kernel set measured; its old settings were still
    # clipping at step 196 of 200 on a Zen 4). The ending it tells must be the one the run shows,
    # and its own numbers must be compared.
    from muonclip.lab.rundir import load_run
    from muonclip.reproduce import results

    # the very run the report drew (figures.json names it; a shared cache may hold older ones)
    figures = json.loads((out / "figures.json").read_text(encoding="utf-8"))
    (run_id,) = {run["run_id"] for entry in figures.values() for run in entry["runs"] if run["label"] == "lifecycle"}
    rows = load_run(cache / run_id).rows
    tau = result.numbers["lifecycle"]["tau"]
    lifecycle = next(t for title, t in tables.items() if title.startswith("The lifecycle"))
    cell = lifecycle["first clip / last clip (step)"]
    assert int(_part(cell, 1).replace(",", "")) == results.last_clip_step(rows)
    stabilised = results.clip_phases(rows, tau).stabilised
    assert stabilised == result.numbers["lifecycle"]["stabilised"], (cell, result.numbers["lifecycle"])
    if stabilised:
        assert "self-stabilised</b>" in html and "lifecycle.final_over_tau" in compared
    else:
        assert "did not reach the self-stabilised phase" in html and "lifecycle.steps" in compared
