"""The trade-off experiment (muonclip.reproduce.tradeoff): deterministic arms, cached results."""
from __future__ import annotations

import dataclasses

import numpy as np

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


def test_a_damaged_cached_tradeoff_is_computed_again(tmp_path):
    """A truncated result.json used to crash the story with a JSONDecodeError."""
    result, run_dir = tradeoff.ensure_tradeoff(TINY, tmp_path)
    (run_dir / "result.json").write_text('{"arms": [')
    again, _ = tradeoff.ensure_tradeoff(TINY, tmp_path)
    assert again["arms"] == result["arms"]


def test_sweep_cells_and_edge_are_cached_and_complete(tmp_path, monkeypatch):
    from muonclip.reproduce import results

    taus, lens = (0.5, None), (8, 12)
    result, run_dir = tradeoff.ensure_tradeoff_sweep(TINY, tmp_path, taus, lens)
    assert run_dir.name.startswith("tradeoff-sweep-") and (run_dir / "result.json").exists()
    assert {(c["seq_len"], c["tau"]) for c in result["cells"]} == {(n, t) for n in lens for t in taus}
    grid = results.tradeoff_sweep_grid(result, "accuracy")
    assert grid.shape == (2, 2) and np.isfinite(grid).all()
    unclipped = [c for c in result["cells"] if c["tau"] is None]
    assert all(c["clipped_steps"] == 0 for c in unclipped)
    assert set(results.tradeoff_edge(result)) == set(lens)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached sweep was recomputed")

    monkeypatch.setattr(tradeoff, "run_sweep", no_training)
    assert tradeoff.ensure_tradeoff_sweep(TINY, tmp_path, taus, lens)[1] == run_dir
