"""Shared helper of the reproduction tests: train (or reuse) a shortened run, single-threaded."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from muonclip.lab.rundir import read_metrics
from muonclip.reproduce.runner import ensure_run


@pytest.fixture(scope="module")
def train_quick():
    """``train_quick(cfg, cache, label)`` -> the run's metrics rows. One torch thread while it
    trains (steadiest on a shared 2-core machine); the caller's thread count is restored."""
    def train(cfg, cache: Path, label: str) -> list[dict]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run_dir = ensure_run(cfg, cache, label, progress=False, log=lambda m: None)
        finally:
            torch.set_num_threads(threads)
        return read_metrics(run_dir / "metrics.jsonl")
    return train
