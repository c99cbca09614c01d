"""The field comparison (muonclip.reproduce.field): its three phases, cache and table, at smoke-test size."""
from __future__ import annotations

import json

import pytest

from muonclip.reproduce import field

ARMS = "adamw,muon_head_pairs"


@pytest.fixture(scope="module")
def quick_field(tmp_path_factory):
    out = tmp_path_factory.mktemp("field")
    result = field.main(["--out", str(out), "--quick", "--arms", ARMS, "--seeds", "0,1", "--dragon-seeds", "0"])
    return out, result


def test_phases_table_and_file(quick_field):
    out, result = quick_field
    assert json.loads((out / "field.json").read_text()) == json.loads(json.dumps(result))
    assert set(result["table"]) == {"adamw", "muon_head_pairs"}
    for name, lr in result["best_lr"].items():
        assert lr in field.arm(name).lrs  # chosen from the arm's own grid
        assert lr == min(field.arm(name).lrs, key=lambda x: result["sweep_final_val_loss"][name][f"{x:g}"])
    assert result["table"]["adamw"]["seeds"] == 2 and result["table"]["adamw"]["tokens_vs_baseline"] == 1.0
    assert "dragon_growth" in result["table"]["muon_head_pairs"] and "dragon_growth" not in result["table"]["adamw"]
    assert result["overrides"]["muon_head_pairs"] == ["optim.muon_heads_per_block=2"]


def test_second_call_trains_nothing(quick_field, monkeypatch):
    out, result = quick_field
    from muonclip.reproduce import runner

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was retrained")

    monkeypatch.setattr(runner, "train", no_training)
    again = field.main(["--out", str(out), "--quick", "--arms", ARMS, "--seeds", "0,1", "--dragon-seeds", "0"])
    assert again["table"] == result["table"]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        field.main(["--out", str(tmp_path), "--arms", "adamw,muonn"])
    with pytest.raises(SystemExit):
        field.main(["--out", str(tmp_path), "--arms", "muon"])  # no baseline
    with pytest.raises(SystemExit):
        field.main(["--out", str(tmp_path), "--seeds", "1,2"])
    assert not list(tmp_path.iterdir())  # refused before any run started
