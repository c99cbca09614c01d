"""`muonclip story --quick` from fresh runs: every file, real animations, provenance, numbers."""
from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("matplotlib")
from muonclip.lab.rundir import load_run  # noqa: E402
from muonclip.reproduce import tradeoff  # noqa: E402
from muonclip.story.pipeline import STORY_FILES, run_story  # noqa: E402
from muonclip.story.runs import REQUIRED_ROLES, story_plan  # noqa: E402

# The first test to use the shared quick story pays for training it.
pytestmark = pytest.mark.timeout(1200)


def test_plan_covers_every_role():
    for quick in (True, False):
        plan = story_plan(quick)
        roles = {r for run in plan for r in run.roles}
        assert set(REQUIRED_ROLES) <= roles
        assert len({run.label for run in plan}) == len(plan)


def test_every_file_is_produced(quick_story):
    result, out, _ = quick_story
    assert result.ok, result.errors
    missing = [f for f in STORY_FILES if not (out / f).exists()]
    assert not missing


def test_gifs_are_animations_and_pngs_carry_provenance(quick_story):
    from PIL import Image

    _, out, _ = quick_story
    gifs = sorted(out.glob("*.gif"))
    assert len(gifs) >= 7
    for gif in gifs:
        with Image.open(gif) as im:
            assert im.n_frames > 10, gif.name
            assert b"config" in im.info.get("comment", b""), gif.name
    for png in sorted(out.glob("*.png")):
        with Image.open(png) as im:
            assert im.size[0] >= 400 and im.size[1] >= 250, png.name
            assert "config" in im.text.get("Source", ""), png.name
            assert len(im.convert("RGB").getcolors(1 << 20) or []) > 50, f"{png.name} looks blank"


def test_numbers_come_from_the_runs(quick_story):
    result, out, cache = quick_story
    numbers = json.loads((out / "numbers.json").read_text())
    plan = {p["label"]: p for p in numbers["plan"]}
    dragon = next(p for p in numbers["plan"] if "dragon" in p["roles"])
    run = load_run(cache / dragon["run_id"])
    assert numbers["dragon"]["final"] == pytest.approx(run.rows[-1]["max_logit"])
    assert numbers["dragon"]["peak"] == pytest.approx(max(r["max_logit"] for r in run.rows))
    life = next(p for p in numbers["plan"] if "lifecycle" in p["roles"])
    lrun = load_run(cache / life["run_id"])
    clipped = [r["step"] for r in lrun.rows if r["n_clipped"]]
    assert numbers["lifecycle"]["first_clip"] == (clipped[0] if clipped else None)
    assert numbers["lifecycle"]["last_clip"] == (clipped[-1] if clipped else None)
    assert "conclusion" in numbers["tradeoff"]
    assert "tradeoff" in plan
    html = (out / "report.html").read_text()
    assert f"{numbers['dragon']['peak']:.1f}" in html


def test_second_story_reuses_runs_and_figures(quick_story, monkeypatch, tmp_path):
    """A second story on the same cache starts no training run, trade-off or SAE and draws no
    figure: counted by wrapping the functions that launch them, not by timing."""
    import muonclip.reproduce.runner as runner
    import muonclip.sae.compare as sae_compare
    from muonclip.story import figures

    result, out, cache = quick_story
    started: list[str] = []

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            started.append(name)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(runner, "train", counted("train", runner.train))
    monkeypatch.setattr(tradeoff, "run_tradeoff", counted("tradeoff", tradeoff.run_tradeoff))
    monkeypatch.setattr(sae_compare, "run_compare", counted("sae", sae_compare.run_compare))
    for spec in figures.FIGURES:
        monkeypatch.setattr(spec, "fn", counted(f"figure:{spec.key}", spec.fn))
    drawn = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".png", ".gif")}
    assert len(drawn) >= 10
    numbers = json.loads((out / "numbers.json").read_text())

    again = run_story(out, cache_dir=cache, quick=True, progress=False)
    assert again.ok, again.errors
    assert started == []  # no run trained, no trade-off or SAE computed, no figure drawn
    assert [p["run_id"] for p in again.numbers["plan"]] == [p["run_id"] for p in result.numbers["plan"]]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".png", ".gif")} == drawn
    numbers_again = json.loads((out / "numbers.json").read_text())
    assert numbers_again["story_key"] == numbers["story_key"] == result.numbers["story_key"]
    for spec in figures.FIGURES:
        assert numbers_again.get(spec.key) == numbers.get(spec.key), spec.key

    # the count does see a launch: a trade-off missing from a cache is computed
    tiny = dataclasses.replace(tradeoff.QUICK, steps=6, snapshot_every=3, n_eval=32, n_probe=8, d_model=16)
    tradeoff.ensure_tradeoff(tiny, tmp_path)
    assert started == ["tradeoff"]

