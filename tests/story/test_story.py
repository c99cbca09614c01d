"""`muonclip story --quick` from fresh runs: every file, real animations, provenance, numbers."""
from __future__ import annotations

import contextlib
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



def test_story_key_follows_the_runs_contents(tmp_path):
    """A run retrained under the same name kept its old figures: the key named runs only."""
    from muonclip.story.pipeline import _story_key

    run = tmp_path / "dragon-muon-abc"
    run.mkdir()
    (run / "summary.json").write_text('{"steps": 50}')
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    plan = [{"run_id": run.name, "roles": ["dragon"]}]
    before = _story_key(plan, True, {}, tmp_path)
    assert _story_key(plan, True, {}, tmp_path) == before
    (run / "summary.json").write_text('{"steps": 100}')
    assert _story_key(plan, True, {}, tmp_path) != before


@pytest.mark.parametrize("args,message", [
    (["story", "--quick", "--threads", "-1"], "must be >= 0"),
    (["story", "--quick", "--out", "{file}"], "File exists"),
    (["reproduce", "--quick", "--only", "dragon", "--out", "{file}"], "Not a directory"),
])
def test_story_and_reproduce_refuse_bad_places_before_training(tmp_path, capsys, monkeypatch, args, message):
    import muonclip.reproduce.runner as runner
    from muonclip.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("")

    def no_training(*a, **k):
        raise AssertionError("trained before checking where to write")

    monkeypatch.setattr(runner, "train", no_training)
    argv = [a.replace("{file}", str(blocker)) for a in args] + ["--cache", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) if "--threads" in args else contextlib.nullcontext():
        assert main(argv) == 2
    assert message in capsys.readouterr().err


# Every figure that draws a tau line or divides by tau records it; the story draws each one.
DRAWS_TAU = {"dragon", "rogue_heads", "guardrail", "cap", "lifecycle", "max_logits"}


def test_every_figure_draws_its_own_runs_tau(quick_story):
    """One tau per preset: the tau each figure drew is the one in the config of the run it names,
    and that run is one the figure was drawn from."""
    import re

    result, out, cache = quick_story
    numbers = json.loads((out / "numbers.json").read_text())
    manifest = json.loads((out / "figures.json").read_text())
    recorded = {k for k, v in numbers.items() if isinstance(v, dict) and "tau_drawn" in v}
    assert DRAWS_TAU <= recorded, DRAWS_TAU - recorded
    for key in recorded:
        drawn = numbers[key]["tau_drawn"]
        config = json.loads((cache / drawn["run_id"] / "config.json").read_text())
        assert drawn["tau"] == config["optim"]["qk_clip_tau"], key
        sources = {r["run_id"] for m in manifest.values() if m["figure"] == key for r in m["runs"]}
        assert drawn["run_id"] in sources, key
    dragon = next(p for p in numbers["plan"] if "dragon" in p["roles"])
    assert numbers["dragon"]["tau_drawn"]["run_id"] == dragon["run_id"]
    # the page prints the dragon's tau as that run's
    html = (out / "report.html").read_text()
    printed = set(re.findall(r'<span data-q="dragon.tau">([^<]*)</span>', html))
    assert printed == {f"{numbers['dragon']['tau']:g}"}


def test_interactive_data_is_the_runs_metrics(quick_story):
    """The series embedded for the sliders are the rows of metrics.jsonl, value for value."""
    result, out, cache = quick_story
    numbers = json.loads((out / "numbers.json").read_text())
    for key in ("dragon", "guardrail", "lifecycle"):
        for line in numbers[key]["interactive"]["lines"]:
            rows = [json.loads(x) for x in (cache / line["run_id"] / "metrics.jsonl").read_text().splitlines() if x]
            assert line["steps"] == [r["step"] for r in rows]
            assert line["max_logit"] == [r["max_logit"] for r in rows]
            assert line["n_clipped"] == [r["n_clipped"] for r in rows]


def test_cap_chapter_splits_the_slack_from_the_guardrail_run(quick_story):
    """The cap chapter's growth x batch split is the guardrail run's own metrics, recomputed here."""
    import math

    _, out, cache = quick_story
    numbers = json.loads((out / "numbers.json").read_text())
    parts = numbers["cap"]["slack_parts"]
    guard = next(p for p in numbers["plan"] if "guardrail" in p["roles"])
    run = load_run(cache / guard["run_id"])
    tau = run.config["optim"]["qk_clip_tau"]
    by_step = {r["step"]: r for r in run.rows}
    growth, batch = [], []
    for r in run.rows:  # clipped heads at steps with an after-pass and a next row, straight from the log
        nxt = by_step.get(r["step"] + 1)
        if not r.get("max_logits_after") or nxt is None or not r["n_clipped"]:
            continue
        for li, layer in enumerate(r["max_logits"]):
            for hi, s in enumerate(layer):
                if s > tau:
                    a = r["max_logits_after"][li][hi]
                    growth.append(a / tau)
                    batch.append(nxt["max_logits"][li][hi] / a)
    if not growth:
        assert parts is None
        return
    assert parts["growth"]["max"] == pytest.approx(max(growth))
    assert parts["batch"]["max"] == pytest.approx(max(batch))
    w = parts["worst"]
    assert w["excess"] == pytest.approx(w["growth"] * w["batch"])
    assert math.isclose(w["excess"], by_step[w["step"]]["max_logits"][w["head"][0]][w["head"][1]] / tau,
                        rel_tol=1e-9)
    html = (out / "report.html").read_text()
    assert f"step {w['step']}, head ({w['head'][0]},{w['head'][1]})" in html
