"""Run metrics: one JSONL row per step (plus TensorBoard scalars), resumable without duplicates."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from .rundir import read_metrics  # the reader lives with the other run-directory formats

__all__ = ["METRIC_FIELDS", "PERIODIC_FIELDS", "MetricsLog", "read_metrics"]

# Every row has these keys (documented schema; tests check it).
METRIC_FIELDS = (
    "step",           # optimizer steps completed (1-based)
    "tokens",         # training tokens seen so far
    "loss",           # training loss of this step's batch
    "lr",             # learning rate of the first param group (Muon's, for muon/muonclip)
    "max_logit",      # max over layers and heads of this step's forward
    "max_logits",     # per layer, per head max pre-softmax logit (list[list[float]])
    "n_clipped",      # heads clipped by QK-Clip this step (0 when the clip is off)
    "min_gamma",      # smallest QK-Clip factor this step (1.0 = no clip)
    "grad_norm",      # global L2 norm of all gradients (before any clipping)
    "update_rms",     # RMS of the applied update of the hidden matrices, divided by lr
    "tokens_per_s",   # throughput of this step
    "time",           # wall seconds since the run started (excluding earlier sessions)
)
# Rows of evaluation / spectra steps also carry these; rows of steps where QK-Clip fired, or where
# a head was within 10% of tau (``train.AFTER_PASS_NEAR``), carry ``max_logits_after``: per layer,
# per head max logit of the updated, clipped weights on that step's own batch.
PERIODIC_FIELDS = ("val_loss", "spectra", "max_logits_after")


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no NaN/Inf; keep them visible instead of crashing
    return x


class MetricsLog:
    """Append-only metrics.jsonl plus TensorBoard event files in ``run_dir/tb``.

    ``resume_step=k`` keeps only rows with ``step <= k`` (those covered by the checkpoint)
    and rewrites the file atomically, so re-run steps are logged exactly once.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is None:
            atomic_write_text(self.path, "")
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # lazy: heavy, and only when TensorBoard is on

            # purge_step drops events the checkpoint does not cover (TensorBoard's own mechanism).
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=(resume_step + 1) if resume_step else None)

    def write(self, row: dict[str, Any], tensorboard: bool = True) -> None:
        """Append ``row``; with ``tensorboard``, also its scalars (``run.log_every`` thins those)."""
        self._fh.write(json.dumps({k: _finite(v) for k, v in row.items()}) + "\n")
        self._fh.flush()
        if self._tb is not None and tensorboard:
            step = row["step"]
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            for layer, heads in enumerate(row.get("max_logits") or []):
                self._tb.add_scalar(f"max_logit/layer{layer}", max(heads), step)

    def sync(self) -> None:
        """Flush to disk (called before each checkpoint so the log covers it)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.sync()
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
