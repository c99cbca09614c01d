"""What a resumed lab run may change and what it must find: the resumable keys, the config of a
resume, and the checks against its checkpoint."""
from __future__ import annotations

from pathlib import Path

from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig, apply_overrides, config_hash, load_config, to_dict
from .rundir import METRICS_FILE, missing_steps

__all__ = ["RESUMABLE_KEYS", "model_hash", "resume_config", "check_metrics_cover"]

# Keys a resumed run may change: how long it runs and how often it logs/saves.
# The device too: a checkpoint holds CPU tensors, so a run may move between cpu and cuda.
RESUMABLE_KEYS = ("run.steps", "run.eval_every", "run.checkpoint_every", "run.spectra_every", "run.log_every",
                  "run.device")


def model_hash(cfg: TrainConfig) -> str:
    """Hash of everything a checkpoint's tensors depend on (not how long the run is)."""
    return config_hash(cfg, 16, exclude=RESUMABLE_KEYS)


def resume_config(run_dir: str | Path, overrides: list[str]) -> TrainConfig:
    """The saved config of ``run_dir`` with the allowed overrides applied."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.exists():
        raise ConfigError(f"{run_dir} has no config.json; is it a muonclip run directory?")
    cfg = load_config(path)
    new = apply_overrides(cfg, overrides)
    old_d, new_d = to_dict(cfg), to_dict(new)
    changed = [f"{sec}.{k}" for sec in new_d for k in new_d[sec] if new_d[sec][k] != old_d[sec][k]]
    bad = [c for c in changed if c not in RESUMABLE_KEYS]
    if bad:
        raise ConfigError(f"cannot change {bad} when resuming (only {list(RESUMABLE_KEYS)})")
    if "run.steps" in changed and cfg.schedule.kind != "constant":
        raise ConfigError(
            f"cannot change run.steps when resuming a {cfg.schedule.kind} schedule: its lr curve is laid over "
            "run.steps, so the steps already taken would not belong to the new run's schedule; only a "
            "constant schedule continues exactly")
    return new


def check_metrics_cover(run_dir: Path, step: int) -> None:
    """Refuse to resume when metrics.jsonl lacks a step the checkpoint covers: resuming keeps
    only the rows up to the checkpoint, so the missing ones would be lost for good."""
    missing = missing_steps(run_dir, step)
    if missing:
        raise CheckpointError(
            f"{run_dir / METRICS_FILE} lacks {len(missing)} of the {step} steps the checkpoint covers (first: step "
            f"{missing[0]}): it is damaged or from another run. Restore it, or start again with --force")
