"""muonclip.story.training: the story's jobs trained on every core, each once, failures kept apart."""
from __future__ import annotations

import json
import math
import os
import time

import pytest

from muonclip.lab import apply_overrides, get_preset
from muonclip.reproduce.runner import cached_run
from muonclip.story.training import Job, format_seconds, story_jobs, train_jobs


def _jobs():
    return [Job("short", time.sleep, (0.05,), 1.0), Job("long", time.sleep, (0.2,), 4.0),
            Job("bad", math.sqrt, (-1.0,), 1.0), Job("after bad", time.sleep, (0.0,), 1.0, after="bad"),
            Job("after long", time.sleep, (0.0,), 1.0, after="long")]


@pytest.mark.parametrize("workers", [1, 2])
def test_train_jobs_runs_each_job_once_and_keeps_failures_apart(workers):
    lines = []
    out = train_jobs(_jobs(), workers=workers, log=lines.append)
    assert set(out["seconds"]) == {"short", "long", "bad", "after bad", "after long"}
    assert set(out["errors"]) == {"bad", "after bad"}
    assert "ValueError" in out["errors"]["bad"] and "bad failed" in out["errors"]["after bad"]
    done = [line for line in lines if line.startswith("[")]
    assert len(done) == 5 and done[-1].startswith("[5/5]")
    assert any("left)" in line for line in done[:-1]), "a time-left estimate once some work is done"
    # a job waiting for another starts after it
    order = [line.split("] ")[1].split(" done")[0].split(" FAILED")[0] for line in done]
    assert order.index("after long") > order.index("long")


def test_a_job_whose_worker_dies_is_tried_once_more_and_the_others_finish():
    """A worker process killed mid-job (here it exits) breaks the executor: the jobs it was
    running get one more try each, alone, in a fresh pool; the dying one then fails, the
    others finish."""
    lines = []
    jobs = [Job("dies", os._exit, (3,), 2.0), Job("fine", time.sleep, (0.5,), 1.0),
            Job("later", time.sleep, (0.0,), 0.5)]
    out = train_jobs(jobs, workers=2, log=lines.append)
    assert set(out["errors"]) == {"dies"} and "BrokenProcessPool" in out["errors"]["dies"]
    assert set(out["seconds"]) == {"dies", "fine", "later"}
    assert any(line.startswith("dies: its worker process died") for line in lines)
    assert sum("died" in line for line in lines) <= 2, "each job is tried again at most once"


def test_train_jobs_refuses_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        train_jobs(_jobs(), workers=0)
    with pytest.raises(ValueError, match="unique"):
        train_jobs([Job("a", time.sleep, (0,), 1), Job("a", time.sleep, (0,), 1)])
    with pytest.raises(ValueError, match="not in the list"):
        train_jobs([Job("a", time.sleep, (0,), 1, after="b")])
    assert train_jobs([]) == {"seconds": {}, "cpu": {}, "errors": {}, "wall": 0.0}


def test_format_seconds():
    assert format_seconds(42.4) == "42 s" and format_seconds(150) == "2.5 min" and format_seconds(-3) == "0 s"


def test_a_run_trained_in_a_worker_is_the_run_trained_here(tmp_path):
    """The parallel stage changes when a run is computed, never what: a worker process (one
    thread) writes the same metrics as the same config trained in this process. Newton-Schulz
    is pinned to fp32: with ``auto`` each process plans from its own rate probe, and what a
    probe sees is the machine's load, not the run (the story's presets pin fp32 too)."""
    import torch

    cfg = apply_overrides(get_preset("tiny"), ["run.steps=3", "run.eval_every=0", "run.spectra_every=0",
                                               "optim.ns_precision=fp32"])
    here, there = tmp_path / "here", tmp_path / "there"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_jobs(story_jobs([("tiny", cfg)], here), workers=1)["errors"] == {}
    finally:
        torch.set_num_threads(before)
    jobs = story_jobs([("tiny", cfg), ("tiny-again", cfg)], there)
    assert [j.name for j in jobs] == ["run tiny"], "one job per config"
    assert train_jobs(jobs + [Job("other", time.sleep, (0.0,), 0.0)], workers=2)["errors"] == {}

    def losses(cache):
        lines = (cached_run(cfg, cache, "tiny") / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    assert losses(here) == losses(there)
    assert story_jobs([("tiny", cfg)], there) == []


def test_story_jobs_of_a_complete_story_are_none(quick_story):
    """Everything the quick story trained is found in its cache: nothing to train again."""
    from muonclip.reproduce import tradeoff
    from muonclip.story.pipeline import _sae_config, _sae_source
    from muonclip.story.runs import story_plan

    _, _, cache = quick_story
    plan = story_plan(True)
    source = _sae_source(plan)
    kwargs = dict(tradeoff_cfg=tradeoff.QUICK, sweep=tradeoff.sweep_plan(True),
                  sae=(source.label, source.cfg, _sae_config(True)))
    assert story_jobs([(p.label, p.cfg) for p in plan], cache, **kwargs) == []
    # and a missing SAE (another SAE config) is one job, with nothing to wait for
    other = _sae_config(True).replace(steps=151)
    jobs = story_jobs([(p.label, p.cfg) for p in plan], cache, **{**kwargs, "sae": (source.label, source.cfg, other)})
    assert [(j.name, j.after) for j in jobs] == [("SAE", None)]
