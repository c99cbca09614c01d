"""The guardrail search: candidates parse and fail early, and each stage lists the runs it needs."""
from __future__ import annotations

import argparse

import pytest

from muonclip.reproduce import presets, search


@pytest.fixture(autouse=True)
def _presets():
    presets.register_presets()


def test_candidate_from_the_command_line_and_unknown_keys_fail_before_training():
    c = search._parse_candidate("long=run.steps=800,optim.lr=0.01,tau_over_adamw=0.8")
    assert c == search.Candidate("long", ("run.steps=800", "optim.lr=0.01"), 0.8)
    assert search._parse_candidate("base") is search.CANDIDATES["base"]
    with pytest.raises(Exception, match="run.stepz"):
        search._parse_candidate("bad=run.stepz=3")
    with pytest.raises(argparse.ArgumentTypeError):
        search._parse_candidate("not-a-candidate")


def test_optim_stage_lists_muon_and_muonclip_per_seed_and_precision(tmp_path):
    c = search.Candidate("x", ("run.steps=70",))
    jobs = search.candidate_jobs(c, [0, 1], ["fp32", "bf16"], tmp_path, stage="optim")
    assert len(jobs) == 8 and not search.candidate_jobs(c, [0, 1], ["fp32"], tmp_path, stage="adamw")
    cfgs = {label: cfg for label, cfg in jobs}
    cfg = cfgs["search-x-muonclip-bf16-seed1"]
    assert (cfg.run.seed, cfg.run.steps, cfg.optim.ns_precision, cfg.optim.optimizer) == (1, 70, "bf16", "muonclip")
    assert cfg.optim.qk_clip_tau == presets.GUARDRAIL_TAU  # no rule: the preset's tau


def test_adamw_stage_ignores_the_muon_lr_so_one_run_serves_a_sweep(tmp_path):
    a = search.Candidate("a", ("optim.lr=0.01",), 1.0)
    b = search.Candidate("a", ("optim.lr=0.03",), 1.0)
    (ja,), (jb,) = (search.candidate_jobs(c, [0], ["fp32"], tmp_path, stage="adamw") for c in (a, b))
    assert ja[1] == jb[1] and ja[1].optim.optimizer == "adamw"


def test_a_clip_window_candidate_shares_the_muon_arm_with_base(tmp_path):
    base = search.Candidate("base")
    win = search.Candidate("win", ("optim.qk_clip_window=8",))
    jb, jw = (dict(search.candidate_jobs(c, [0], ["fp32"], tmp_path, stage="optim")) for c in (base, win))
    assert jb["search-base-muon-fp32-seed0"] == jw["search-win-muon-fp32-seed0"]
    assert jw["search-win-muonclip-fp32-seed0"].optim.qk_clip_window == 8
    assert jb["search-base-muonclip-fp32-seed0"].optim.qk_clip_window == 1
