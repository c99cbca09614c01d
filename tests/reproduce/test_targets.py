"""Targets judged over seeds: one seed that misses makes the target missed, on every page."""
from muonclip.reproduce.markdown import build_report
from muonclip.reproduce.results import targets
from muonclip.reproduce.sections.base import Section


def _guardrail_seed(cap: float, fraction: float = 0.2) -> dict:
    return {"muon_peak_over_tau": 3.0, "muon_growth": 20.0, "first_clip": 10, "cap": cap,
            "fraction_clipped": fraction, "val_rel": 0.001}


def test_a_target_missed_on_one_seed_is_missed():
    per_seed = [_guardrail_seed(1.05), _guardrail_seed(1.20), _guardrail_seed(1.08)]
    verdicts = {v.name: v for v in targets.guardrail_targets(per_seed, seeds=[0, 1, 2])}
    cap = verdicts["guardrail: cap after the first clip <= 1.10 tau"]
    assert cap.met is False and cap.missed_seeds == (1,) and cap.met_text == "no (seed 1)"
    assert cap.measured.startswith("1.08") and "1.05" in cap.measured and "1.2" in cap.measured
    # the targets every seed meets stay met
    assert verdicts["guardrail: Muon peak >= 2.5 tau"].met is True
    assert verdicts["guardrail: heads ever clipped <= 25%"].met is True


def test_a_seed_without_a_value_misses_and_no_value_is_not_judged():
    missing = targets.verdict("x", ">= 1", [2.0, None], lambda v: v >= 1)
    assert missing.met is False and missing.missed_seeds == (1,)
    none = targets.verdict("x", ">= 1", [None, None], lambda v: v >= 1)
    assert none.met is None and none.met_text == "n/a"


def test_the_report_marks_a_one_seed_miss_as_missed():
    per_seed = [_guardrail_seed(1.05), _guardrail_seed(1.05, fraction=0.4), _guardrail_seed(1.05)]
    section = Section("guardrail", "The guardrail", checks=targets.guardrail_targets(per_seed, seeds=[0, 1, 2]))
    text = build_report([section], quick=True, threads=1, fig_rel="figures", determinism=None, elapsed=1.0,
                        sae_md=None, seeds=3)
    row = next(line for line in text.splitlines() if line.startswith("| guardrail: heads ever clipped"))
    assert "no (seed 1)" in row
    cap_row = next(line for line in text.splitlines() if line.startswith("| guardrail: cap after"))
    assert cap_row.rstrip(" |").endswith("yes")
