"""An SAE directory or a lab run from someone else is data, never code: a hostile pickle
(valid header, matching checksum) in the run's checkpoint, the SAE's checkpoint or its
activation buffer is refused by `sae --run` and `sae --resume` without running."""
from __future__ import annotations

import random
import shutil

import pytest
import torch

from muonclip.cli import main
from muonclip.lab.checkpoint import CheckpointError
from muonclip.lab.config import apply_overrides
from muonclip.lab.presets import get_preset
from muonclip.lab.train import train
from muonclip.sae import QUICK
from muonclip.sae.train import load_sae, run_sae

_WORDS = "the optimizer keeps every hidden matrix orthogonal while a clip bounds each attention logit".split()
SMALL = ["steps=12", "l1_warmup_steps=4", "n_tokens=2048", "n_eval_tokens=256", "batch_size=128",
         "dead_window=10"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """A tiny lab run (6 steps) on a small synthetic text."""
    root = tmp_path_factory.mktemp("sae_untrusted")
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(600))
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    cfg = apply_overrides(get_preset("tiny"), [f"data.source={root / 'corpus.txt'}", "run.steps=6",
                                               "run.spectra_every=0", "run.checkpoint_every=0", "run.eval_every=0"])
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, root / "run", progress=False, log=lambda m: None)
    finally:
        torch.set_num_threads(previous)
    return root / "run"


@pytest.fixture
def run_dir(clean_run, tmp_path):
    """A copy of the run that a test may poison."""
    return shutil.copytree(clean_run, tmp_path / "run")


@pytest.fixture
def partial_sae(run_dir, tmp_path):
    """An SAE stopped part-way (checkpoint and activations.pt in its directory)."""
    sae = tmp_path / "sae"
    run_sae(run_dir, apply_overrides(QUICK, SMALL), sae, progress=False, log=lambda m: None, stop_after=5,
            tensorboard=False)
    assert (sae / "checkpoint.pt").is_file() and (sae / "activations.pt").is_file()
    return sae


def test_sae_run_refuses_a_planted_run_checkpoint(run_dir, tmp_path, plant_pickle_payload, capsys):
    marker = tmp_path / "MARKER"
    plant_pickle_payload(run_dir / "checkpoint.pt", marker)
    assert main(["sae", "--run", str(run_dir), "--quick", "--set", *SMALL, "--out", str(tmp_path / "sae"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "could run code" in err
    assert not marker.exists() and not (tmp_path / "sae" / "checkpoint.pt").exists()


@pytest.mark.parametrize("artifact", ["checkpoint.pt", "activations.pt"])
def test_sae_resume_refuses_a_planted_artifact(partial_sae, tmp_path, plant_pickle_payload, capsys, artifact):
    marker = tmp_path / "MARKER"
    plant_pickle_payload(partial_sae / artifact, marker)
    assert main(["sae", "--resume", str(partial_sae), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and artifact in err
    if artifact == "checkpoint.pt":
        with pytest.raises(CheckpointError, match="refusing to load"):
            load_sae(partial_sae)
    assert not marker.exists() and not (partial_sae / "summary.json").exists()


def test_a_planted_activation_cache_is_collected_afresh_not_loaded(run_dir, tmp_path, plant_pickle_payload):
    """A shared buffer path holding a hostile file is not reused: it is collected again (with a
    message saying why) and overwritten by plain activations."""
    marker = tmp_path / "MARKER"
    buffer = plant_pickle_payload(tmp_path / "acts.pt", marker)
    messages: list[str] = []
    summary = run_sae(run_dir, apply_overrides(QUICK, SMALL), tmp_path / "sae", buffer_path=buffer,
                      progress=False, log=messages.append, tensorboard=False)
    assert summary["complete"] and not marker.exists()
    assert any(m.startswith(f"not reusing {buffer}: refusing to load") for m in messages), messages
    cfg, sae = load_sae(tmp_path / "sae")
    assert sae.d_sae == cfg.d_sae
