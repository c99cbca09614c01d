"""Reading a lab run directory: ``metrics.jsonl``, ``spectra.npz``, ``config.json`` and ``run.json``.

:mod:`muonclip.lab.train` writes these files; this module is the only reader of their
formats. The reproduction (``docs/results.md``) and the story (``report.html``) read runs
through :func:`load_run`, which returns everything in one :class:`RunData`.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunData", "load_run", "read_metrics", "read_spectra", "read_config", "read_run_info", "is_complete",
           "missing_steps"]

METRICS_FILE = "metrics.jsonl"
SPECTRA_FILE = "spectra.npz"
CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run.json"
SUMMARY_FILE = "summary.json"  # written last: its presence marks a finished run
# Everything a training run writes in its directory; a fresh run (``--force``) removes them
# all first, so nothing of an earlier run (its checkpoint, spectra, tokenizer, TensorBoard
# events, cached probe) survives into the new one. Other files are left alone.
RUN_ARTIFACTS = (METRICS_FILE, SPECTRA_FILE, CONFIG_FILE, RUN_INFO_FILE, SUMMARY_FILE, "checkpoint.pt",
                 "tokenizer.json", "attention_entropy.json", "tb")
LOCK_FILE = ".lock"  # held while a process trains in the directory


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl up to the first line that is not a JSON object (a torn last
    line from a kill, or damage: the resume check compares the rows with the checkpoint)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    # undecodable bytes become U+FFFD, so such a line ends the log like any torn line
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
    return rows


def read_spectra(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(steps, {"PARAM|weight" or "PARAM|update": singular values [snapshots, k]})`` of a
    spectra.npz; an absent file gives no snapshots."""
    path = Path(path)
    if not path.exists():
        return np.zeros(0, dtype=np.int64), {}
    try:
        # np.load leaves a path it opened itself open when the archive is damaged; no pickles:
        # a run directory may come from someone else, and unpickling an object array runs code
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            steps = data["steps"].copy() if "steps" in data.files else np.zeros(0, dtype=np.int64)
            return steps, {k: data[k].copy() for k in data.files if k != "steps"}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is damaged ({exc}); delete its run directory to train the run again") from exc


def _read_json(path: Path, default: Any) -> Any:
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def read_config(run_dir: str | Path) -> dict:
    """The resolved config of a run (``config.json``) as a plain dict of sections."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no {CONFIG_FILE}; is it a muonclip run directory?")
    return _read_json(path, {})


def read_run_info(run_dir: str | Path) -> dict:
    """Provenance of a run (``run.json``: git sha, versions, seed, config hash); {} if absent."""
    return _read_json(Path(run_dir) / RUN_INFO_FILE, {})


def is_complete(run_dir: str | Path) -> bool:
    """True once the run has finished (its summary.json is written last) and its metrics log
    still holds every step the summary counts (a damaged log would draw a shortened run); an
    unreadable summary is not complete."""
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict):
        return False
    steps = summary.get("steps")
    if not isinstance(steps, int):
        return "steps" not in summary  # a summary that counts no steps has no log to check
    return not missing_steps(run_dir, steps)


def missing_steps(run_dir: str | Path, steps: int) -> list[int]:
    """The steps among 1..``steps`` that ``run_dir``'s metrics log has no row for."""
    logged = {row.get("step") for row in read_metrics(Path(run_dir) / METRICS_FILE)}
    return [step for step in range(1, steps + 1) if step not in logged]


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
    def clips(self) -> bool:
        """True when QK-Clip was on in this run (the muonclip optimizer)."""
        return self.optimizer == "muonclip"

    @property
    def tau(self) -> float | None:
        """The configured QK-Clip threshold (set even when the optimizer does not clip)."""
        tau = self.config["optim"].get("qk_clip_tau")
        return None if tau is None else float(tau)

    # ------------------------------------------------------------------ series
    def series(self, key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
        """``(x, values)`` of ``key`` over the rows that carry it (e.g. ``val_loss`` against ``tokens``)."""
        rows = [r for r in self.rows if key in r and r[key] is not None]
        return (np.array([r[x] for r in rows], dtype=np.int64),
                np.array([float(r[key]) for r in rows], dtype=np.float64))

    def head_logits(self) -> np.ndarray:
        """Per-step per-head max logits, shape [steps, layers, heads]."""
        return np.array([r["max_logits"] for r in self.rows], dtype=np.float64)

    def weight_spectra(self, param: str) -> np.ndarray:
        return self.spectra[f"{param}|weight"]

    def update_spectra(self, param: str) -> np.ndarray:
        return self.spectra[f"{param}|update"]


def load_run(run_dir: str | Path, label: str | None = None) -> RunData:
    """Everything a report reads from ``run_dir``, loaded once."""
    run_dir = Path(run_dir)
    steps, spectra = read_spectra(run_dir / SPECTRA_FILE)
    return RunData(label or run_dir.name, run_dir, read_config(run_dir), read_run_info(run_dir),
                   read_metrics(run_dir / METRICS_FILE), steps, spectra)
