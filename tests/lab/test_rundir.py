"""The run-directory reader (muonclip.lab.rundir): metrics.jsonl, spectra.npz, config.json, run.json."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from muonclip.lab import metrics
from muonclip.lab.rundir import is_complete, load_run, read_config, read_metrics, read_run_info, read_spectra


def _row(step, **extra):
    return {"step": step, "tokens": 64 * step, "loss": 3.0 / step, "max_logit": 1.5 * step,
            "max_logits": [[1.0 * step, 1.5 * step], [0.5, 0.25]], "n_clipped": int(step == 2), **extra}


def _run_dir(tmp_path, *, spectra=True, info=True):
    run = tmp_path / "guardrail-abc123"
    run.mkdir()
    config = {"optim": {"optimizer": "muonclip", "qk_clip_tau": 5.0}, "schedule": {"kind": "cosine"}}
    (run / "config.json").write_text(json.dumps(config))
    if info:
        (run / "run.json").write_text(json.dumps({"config_hash": "abc123", "git_sha": "0123456789abcdef0"}))
    rows = [_row(1), _row(2, val_loss=2.5), _row(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "los')
    if spectra:
        buf = io.BytesIO()
        np.savez(buf, steps=np.array([1, 3]), **{"blocks.0.q|weight": np.ones((2, 4)),
                                                  "blocks.0.q|update": np.full((2, 4), 2.0)})
        (run / "spectra.npz").write_bytes(buf.getvalue())
    return run, rows


def test_read_metrics_ignores_a_torn_last_line(tmp_path):
    run, rows = _run_dir(tmp_path)
    assert read_metrics(run / "metrics.jsonl") == rows
    assert read_metrics(tmp_path / "missing.jsonl") == []
    assert metrics.read_metrics is read_metrics  # the writer module reads through the same function


@pytest.mark.parametrize("damage", [b"[1, 2]\n", b"\xff\xfe{\n", b"not json\n"])
def test_read_metrics_ends_at_a_damaged_line(tmp_path, damage):
    """A line that is not a JSON object (a list, undecodable bytes, text) ends the log like a
    torn line instead of raising; the resume check then sees the missing steps."""
    path = tmp_path / "metrics.jsonl"
    rows = [_row(1), _row(2), _row(3)]
    path.write_bytes(json.dumps(rows[0]).encode() + b"\n" + damage + json.dumps(rows[2]).encode() + b"\n")
    assert read_metrics(path) == rows[:1]


def test_a_run_with_a_truncated_log_is_not_complete(tmp_path):
    """A cached run whose metrics.jsonl lost rows was drawn as a shortened run; it no longer
    counts as complete (the story trains it again)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"steps": 3}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(_row(s)) + "\n" for s in (1, 2, 3)))
    assert is_complete(run)
    (run / "metrics.jsonl").write_text("".join(json.dumps(_row(s)) + "\n" for s in (1, 2)))
    assert not is_complete(run)
    (run / "summary.json").write_text("{")
    assert not is_complete(run)


def test_a_damaged_spectra_file_is_named(tmp_path):
    path = tmp_path / "spectra.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="spectra.npz is damaged"):
        read_spectra(path)


def test_a_spectra_file_holding_pickled_objects_is_refused_unrun(tmp_path, touch_on_unpickle):
    """spectra.npz is read without pickles: an object array in a shared run directory is refused."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "spectra.npz"
    np.savez(path, steps=np.array([1]), **{"w|weight": np.array([touch_on_unpickle(marker)], dtype=object)})
    with pytest.raises(ValueError, match="is damaged"):
        read_spectra(path)
    assert not marker.exists()


def test_read_spectra_config_and_info(tmp_path):
    run, _ = _run_dir(tmp_path)
    steps, spectra = read_spectra(run / "spectra.npz")
    assert steps.tolist() == [1, 3] and sorted(spectra) == ["blocks.0.q|update", "blocks.0.q|weight"]
    empty_steps, empty = read_spectra(tmp_path / "none.npz")
    assert empty_steps.size == 0 and empty == {}
    assert read_config(run)["optim"]["qk_clip_tau"] == 5.0
    assert read_run_info(run)["config_hash"] == "abc123" and read_run_info(tmp_path) == {}
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_config(tmp_path)


def test_load_run(tmp_path):
    run_dir, rows = _run_dir(tmp_path)
    run = load_run(run_dir, "guardrail")
    assert run.label == "guardrail" and run.run_id == "guardrail-abc123" and run.rows == rows
    assert run.provenance == "run guardrail-abc123 | config abc123 | git 0123456789ab"
    assert run.optimizer == "muonclip" and run.clips and run.tau == 5.0
    steps, values = run.series("max_logit")
    assert steps.tolist() == [1, 2, 3] and values.tolist() == [1.5, 3.0, 4.5]
    tokens, val = run.series("val_loss", "tokens")
    assert tokens.tolist() == [128] and val.tolist() == [2.5]
    assert run.head_logits().shape == (3, 2, 2)
    assert run.weight_spectra("blocks.0.q").shape == (2, 4) and run.update_spectra("blocks.0.q")[0, 0] == 2.0
    assert run.spectra_steps.tolist() == [1, 3]


def test_load_run_without_optional_files(tmp_path):
    run_dir, _ = _run_dir(tmp_path, spectra=False, info=False)
    run = load_run(run_dir)
    assert run.label == run.run_id and run.spectra == {} and run.spectra_steps.size == 0
    assert run.git_sha == "unknown" and run.config_hash == ""
    assert not is_complete(run_dir)
    (run_dir / "summary.json").write_text("{}")
    assert is_complete(run_dir)
