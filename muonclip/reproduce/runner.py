"""Run a config once and reuse it: runs are cached by config hash, interrupted ones resumed."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..lab.checkpoint import CheckpointError
from ..lab.config import TrainConfig, config_hash
from ..lab.train import train

__all__ = ["run_dir_for", "ensure_run"]


def run_dir_for(cfg: TrainConfig, cache_dir: str | Path, label: str) -> Path:
    """``cache_dir/LABEL-HASH``: a changed config never reuses a stale run."""
    return Path(cache_dir) / f"{label}-{config_hash(cfg)}"


def ensure_run(cfg: TrainConfig, cache_dir: str | Path, label: str, *, progress: bool | None = None,
               log: Callable[[str], None] | None = None) -> Path:
    """The run directory of ``cfg``, training it first unless a complete run is cached.

    A cached run counts only if its ``summary.json`` exists (it is written last). A run that
    was interrupted resumes from its checkpoint; one whose checkpoint is unreadable restarts.
    """
    run_dir = run_dir_for(cfg, cache_dir, label)
    if (run_dir / "summary.json").exists():
        if log:
            log(f"reusing cached run {run_dir}")
        return run_dir
    resume = (run_dir / "checkpoint.pt").exists()
    try:
        train(cfg, run_dir, resume=resume, progress=progress, log=log)
    except CheckpointError:
        if not resume:
            raise
        train(cfg, run_dir, resume=False, progress=progress, log=log)
    return run_dir
