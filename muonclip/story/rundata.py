"""Everything the story reads from a lab run directory, loaded once."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..lab.metrics import read_metrics

__all__ = ["RunData", "load_run"]


@dataclass
class RunData:
    """A finished lab run: config, provenance, metric rows and singular-value snapshots."""

    label: str
    run_dir: Path
    config: dict
    info: dict
    rows: list[dict]
    spectra_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    spectra: dict[str, np.ndarray] = field(default_factory=dict)

    # ------------------------------------------------------------------ provenance
    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def config_hash(self) -> str:
        return str(self.info.get("config_hash", ""))

    @property
    def git_sha(self) -> str:
        return str(self.info.get("git_sha") or "unknown")

    @property
    def provenance(self) -> str:
        return f"run {self.run_id} | config {self.config_hash} | git {self.git_sha[:12]}"

    # ------------------------------------------------------------------ config shortcuts
    @property
    def optimizer(self) -> str:
        return self.config["optim"]["optimizer"]

    @property
    def tau(self) -> float | None:
        return float(self.config["optim"]["qk_clip_tau"]) if self.optimizer == "muonclip" else None

    # ------------------------------------------------------------------ series
    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of ``key`` over the rows that carry it (e.g. ``val_loss``)."""
        rows = [r for r in self.rows if key in r and r[key] is not None]
        steps = np.array([r["step"] for r in rows], dtype=np.int64)
        vals = np.array([float(r[key]) for r in rows], dtype=np.float64)
        return steps, vals

    def tokens_series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [r for r in self.rows if key in r and r[key] is not None]
        return (np.array([r["tokens"] for r in rows], dtype=np.int64),
                np.array([float(r[key]) for r in rows], dtype=np.float64))

    def head_logits(self) -> np.ndarray:
        """Per-step per-head max logits, shape [steps, layers, heads]."""
        return np.array([r["max_logits"] for r in self.rows], dtype=np.float64)

    def tracked_params(self) -> list[str]:
        return sorted({k.split("|")[0] for k in self.spectra})

    def weight_spectra(self, param: str) -> np.ndarray:
        return self.spectra[f"{param}|weight"]

    def update_spectra(self, param: str) -> np.ndarray:
        return self.spectra[f"{param}|update"]


def load_run(run_dir: str | Path, label: str | None = None) -> RunData:
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    info_path = run_dir / "run.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = np.zeros(0, dtype=np.int64)
    spectra: dict[str, np.ndarray] = {}
    npz = run_dir / "spectra.npz"
    if npz.exists():
        with np.load(npz) as data:
            steps = data["steps"].copy()
            spectra = {k: data[k].copy() for k in data.files if k != "steps"}
    return RunData(label or run_dir.name, run_dir, config, info, rows, steps, spectra)
