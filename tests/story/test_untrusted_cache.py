"""A downloaded ``runs/cache`` is data, never code: a hostile pickle (valid header, matching
checksum) planted in a cached run's checkpoint is refused by every story stage that reads it
(the cache lookup, the per-layer figure's attention probe, the SAE chapter's activations, the
resume of an interrupted cached run) and never runs. The story's own functions are called on a
tiny cached run: a whole ``muonclip story`` would train its trade-off experiment for minutes."""
from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")
from muonclip.lab import apply_overrides, get_preset  # noqa: E402
from muonclip.lab.checkpoint import CheckpointError  # noqa: E402
from muonclip.lab.rundir import load_run  # noqa: E402
from muonclip.lab.train import train  # noqa: E402
from muonclip.reproduce.runner import ensure_run, ensure_sae_compare, run_dir_for  # noqa: E402
from muonclip.sae import QUICK  # noqa: E402
from muonclip.story.figures import FIGURES  # noqa: E402


@pytest.fixture
def tiny_cfg(corpus_file):
    return apply_overrides(get_preset("tiny"), [f"data.source={corpus_file}", "run.steps=4", "run.eval_every=0",
                                                "run.spectra_every=0", "run.checkpoint_every=0",
                                                "optim.qk_clip_tau=0.5"])


def test_a_planted_cached_checkpoint_is_refused_by_the_story_stages(tmp_path, tiny_cfg, plant_pickle_payload):
    cache, marker = tmp_path / "cache", tmp_path / "MARKER"
    run_dir = ensure_run(tiny_cfg, cache, "guardrail", progress=False)
    plant_pickle_payload(run_dir / "checkpoint.pt", marker)
    messages: list[str] = []
    assert ensure_run(tiny_cfg, cache, "guardrail", progress=False, log=messages.append) == run_dir
    assert messages == [f"reusing cached run {run_dir}"]
    data = load_run(run_dir, "guardrail")
    per_layer = next(spec for spec in FIGURES if spec.key == "per_layer")
    with pytest.raises(CheckpointError, match="refusing to load .*could run code"):
        per_layer.fn({"guardrail": data, "guardrail_layer": data}, tmp_path / "story", {})
    sae_cfg = apply_overrides(QUICK, ["steps=10", "n_tokens=1024", "n_eval_tokens=256", "batch_size=128"])
    with pytest.raises(CheckpointError, match="refusing to load"):
        ensure_sae_compare(run_dir, sae_cfg, cache)
    assert not marker.exists()
    assert not (tmp_path / "story" / "qk_clip_per_layer.png").exists()


def test_an_interrupted_cached_run_with_a_planted_checkpoint_is_trained_again(tmp_path, tiny_cfg,
                                                                               plant_pickle_payload):
    """The story resumes an incomplete cached run from its checkpoint: a hostile one is refused
    and the run trained again from the start, which replaces it."""
    cache, marker = tmp_path / "cache", tmp_path / "MARKER"
    run_dir = run_dir_for(tiny_cfg, cache, "dragon")
    train(tiny_cfg, run_dir, progress=False, log=lambda m: None, stop_after=2)
    plant_pickle_payload(run_dir / "checkpoint.pt", marker)
    messages: list[str] = []
    assert ensure_run(tiny_cfg, cache, "dragon", progress=False, log=messages.append) == run_dir
    assert any(m.startswith(f"training {run_dir} again from the start: refusing to load") for m in messages), messages
    assert not marker.exists()
    assert load_run(run_dir, "dragon").rows[-1]["step"] == 4
