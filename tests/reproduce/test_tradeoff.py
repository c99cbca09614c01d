"""The trade-off experiment (muonclip.reproduce.tradeoff): deterministic arms, cached results."""
from __future__ import annotations

import dataclasses

from muonclip.reproduce import tradeoff

TINY = dataclasses.replace(tradeoff.QUICK, steps=6, snapshot_every=3, n_eval=32, n_probe=8, d_model=16)


def test_tradeoff_is_deterministic():
    a, b = tradeoff.run_arm(TINY, clip=True), tradeoff.run_arm(TINY, clip=True)
    assert a == b
    assert len(a["snapshots"]) == 3
    s = a["snapshots"][-1]
    assert 0 <= s["keyword_attention"] <= 1 and 0 <= s["accuracy"] <= 1


def test_ensure_tradeoff_caches_by_config_hash(tmp_path, monkeypatch):
    result, run_dir = tradeoff.ensure_tradeoff(TINY, tmp_path, git_sha="abc")
    assert run_dir.name == f"tradeoff-{TINY.hash()}" and (run_dir / "result.json").exists()
    assert result["run_id"] == run_dir.name and result["git_sha"] == "abc"
    assert [arm["optimizer"] for arm in result["arms"]] == ["muonclip", "muon"]

    def no_training(*args, **kwargs):
        raise AssertionError("a cached trade-off was recomputed")

    monkeypatch.setattr(tradeoff, "run_tradeoff", no_training)
    again, same_dir = tradeoff.ensure_tradeoff(TINY, tmp_path)
    assert same_dir == run_dir and again["arms"] == result["arms"]
