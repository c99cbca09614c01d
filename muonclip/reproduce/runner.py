"""Run a config once and reuse it: runs are cached by config hash, interrupted ones resumed.

:func:`ensure_run` (lab runs) and :func:`ensure_sae_compare` (Adam vs Muon SAEs on a run) are
how both the reproduction and the story get what they report; :class:`Runner` is the
reproduction's plan on top of them: each chapter's :class:`Arm` (preset + optimizer +
overrides) on every seed, quick or full. :mod:`.pool` trains a plan's missing runs in worker
processes first; the runner then only reads them.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..lab import TrainConfig, apply_overrides, config_hash, get_preset
from ..lab.checkpoint import CheckpointError
from ..lab.rundir import RunData, is_complete, load_run
from ..lab.train import train
from ..sae import compare as sae_compare
from ..sae.config import SAEConfig, sae_config_hash
from . import presets

__all__ = ["run_dir_for", "cached_run", "ensure_run", "sae_dir", "ensure_sae_compare", "Arm", "Run", "Runner",
           "train_command", "seed_label"]


def run_dir_for(cfg: TrainConfig, cache_dir: str | Path, label: str) -> Path:
    """``cache_dir/LABEL-HASH``: a changed config never reuses a stale run."""
    return Path(cache_dir) / f"{label}-{config_hash(cfg)}"


def cached_run(cfg: TrainConfig, cache_dir: str | Path, label: str) -> Path | None:
    """A complete run of ``cfg`` in ``cache_dir``: ``LABEL-HASH`` first, else any ``*-HASH``
    (the same config trained under another label, e.g. by the story into a shared cache)."""
    own = run_dir_for(cfg, cache_dir, label)
    if is_complete(own):
        return own
    others = sorted(Path(cache_dir).glob(f"*-{config_hash(cfg)}")) if Path(cache_dir).is_dir() else []
    return next((d for d in others if d.is_dir() and is_complete(d)), None)


def ensure_run(cfg: TrainConfig, cache_dir: str | Path, label: str, *, progress: bool | None = None,
               log: Callable[[str], None] | None = None) -> Path:
    """The run directory of ``cfg``, training it first unless a complete run is cached.

    A cached run counts only if its ``summary.json`` exists (it is written last) and its
    metrics log is whole. A run that was interrupted resumes from its checkpoint, if it wrote
    one (``run.checkpoint_every``, or the end of the run); one whose checkpoint or metrics log
    is damaged trains again from the start, with a message.
    """
    cached = cached_run(cfg, cache_dir, label)
    if cached is not None:
        if log:
            log(f"reusing cached run {cached}")
        return cached
    run_dir = run_dir_for(cfg, cache_dir, label)
    resume = (run_dir / "checkpoint.pt").exists()
    try:
        train(cfg, run_dir, resume=resume, progress=progress, log=log)
    except CheckpointError as exc:
        if not resume:
            raise
        if log:
            log(f"training {run_dir} again from the start: {exc}")
        train(cfg, run_dir, resume=False, progress=progress, log=log)
    return run_dir


def sae_dir(run_dir: str | Path, cfg: SAEConfig, cache_dir: str | Path) -> Path:
    """Where :func:`ensure_sae_compare` caches the Adam vs Muon SAEs of ``run_dir``."""
    return Path(cache_dir) / f"sae-{Path(run_dir).name}-{sae_config_hash(cfg)}"


def ensure_sae_compare(run_dir: str | Path, cfg: SAEConfig, cache_dir: str | Path, *,
                       log: Callable[[str], None] | None = None,
                       train_log: Callable[[str], None] | None = None) -> tuple[Path, dict]:
    """``(CACHE/sae-RUN-HASH, result)`` of Adam vs Muon SAEs trained on ``run_dir``'s residual
    stream (:func:`muonclip.sae.compare.run_compare`), computed unless cached for this run and
    SAE config. ``log`` gets one line; ``train_log`` the training's own progress (default: none)."""
    out = sae_dir(run_dir, cfg, cache_dir)
    if (out / "compare.json").exists():
        if log:
            log(f"reusing cached SAE comparison {out.name}")
        return out, sae_compare.load_compare(out)
    if log:
        log(f"training Adam and Muon SAEs on {Path(run_dir).name}")
    result = sae_compare.run_compare(run_dir, cfg, out, progress=False, log=train_log or (lambda m: None),
                                     tensorboard=False)
    return out, result


def train_command(preset: str, optimizer: str, overrides: list[str], out: str) -> str:
    """The exact ``muonclip train`` command that reproduces one run."""
    parts = ["python", "-m", "muonclip", "train", "--preset", preset, "--optimizer", optimizer]
    for o in overrides:
        parts += ["--set", o]
    parts += ["--out", out]
    return " ".join(shlex.quote(p) for p in parts)


def seed_label(label: str, seed: int, preset_seed: int) -> str:
    """The label of ``label``'s run on ``seed``: unchanged on the preset's own seed (so the
    one-seed report and its cached runs keep their names), ``LABEL-seedN`` on the others."""
    return label if seed == preset_seed else f"{label}-seed{seed}"


@dataclass(frozen=True)
class Arm:
    """One arm of a chapter: ``preset`` trained with ``optimizer`` and ``overrides``.

    ``seeded``: the arm runs on every seed of the report (else on the first seed only: a
    contrast or a sweep point whose spread nothing reports). ``quick_key``: the
    ``QUICK_OVERRIDES`` entry ``--quick`` adds (default: the preset's)."""

    label: str
    preset: str
    optimizer: str
    overrides: tuple[str, ...] = ()
    quick_key: str | None = None
    seeded: bool = True


@dataclass(frozen=True)
class Run:
    """One run of the reproduction: how it was asked for (preset, optimizer, overrides, seed, the
    resulting config) and what it measured (:class:`~muonclip.lab.rundir.RunData`)."""

    label: str
    preset: str
    optimizer: str
    overrides: tuple[str, ...]
    cfg: Any
    data: RunData
    seed: int = 0

    @property
    def rows(self) -> list[dict]:
        return self.data.rows

    @property
    def run_dir(self) -> Path:
        return self.data.run_dir

    @property
    def tau(self) -> float:
        return self.cfg.optim.qk_clip_tau


class Runner:
    """The reproduction's runs, trained or reused once each.

    ``quick`` adds the presets' ``QUICK_OVERRIDES`` and prefixes the labels with ``quick-``;
    ``seeds``: how many seeds (``run.seed`` = 0 .. seeds-1) each seeded :class:`Arm` runs on."""

    def __init__(self, cache: Path, quick: bool, log: Callable[[str], None], seeds: int = 1):
        if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
            raise ValueError(f"seeds must be a whole number >= 1, got {seeds!r}")
        self.cache, self.quick, self.log, self.seeds = Path(cache), quick, log, seeds
        self.runs: dict[str, Run] = {}

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seeds))

    def _request(self, label: str, preset: str, optimizer: str, overrides, quick_key: str | None,
                 seed: int | None) -> tuple[str, tuple[str, ...], TrainConfig]:
        """``(label, overrides, config)`` of one run, the seed's override included."""
        overrides = list(overrides or [])
        if self.quick:
            overrides = overrides + presets.QUICK_OVERRIDES[quick_key or preset]
            label = f"quick-{label}"
        cfg = apply_overrides(get_preset(preset), [f"optim.optimizer={optimizer}", *overrides])
        if seed is not None and seed != cfg.run.seed:
            label = seed_label(label, seed, cfg.run.seed)
            overrides.append(f"run.seed={seed}")
            cfg = apply_overrides(cfg, [f"run.seed={seed}"])
        return label, tuple(overrides), cfg

    def get(self, label: str, preset: str, optimizer: str, overrides: list[str] | None = None,
            *, quick_key: str | None = None, seed: int | None = None) -> Run:
        """One run (``seed`` None: the preset's own seed), trained unless cached."""
        label, overrides, cfg = self._request(label, preset, optimizer, overrides, quick_key, seed)
        if label in self.runs:
            return self.runs[label]
        t0 = time.perf_counter()
        self.log(f"[reproduce] {label}: {preset} / {optimizer} {' '.join(overrides)}")
        data = load_run(ensure_run(cfg, self.cache, label, progress=False, log=self.log), label)
        self.log(f"[reproduce] {label}: done in {time.perf_counter() - t0:.0f} s ({len(data.rows)} steps)")
        run = Run(label, preset, optimizer, overrides, cfg, data, cfg.run.seed)
        self.runs[label] = run
        return run

    def arm_seeds(self, arm: Arm) -> tuple[int | None, ...]:
        """The seeds ``arm`` runs on (None: only the preset's own seed)."""
        return self.seed_list if arm.seeded else (None,)

    def arm(self, arm: Arm) -> list[Run]:
        """``arm``'s run on every seed it runs on, first seed first."""
        return [self.get(arm.label, arm.preset, arm.optimizer, list(arm.overrides), quick_key=arm.quick_key,
                         seed=seed) for seed in self.arm_seeds(arm)]

    def jobs(self, arms: list[Arm]) -> list[tuple[str, TrainConfig]]:
        """``(label, config)`` of every run of ``arms`` on its seeds: what :mod:`.pool` trains."""
        out = []
        for arm in arms:
            for seed in self.arm_seeds(arm):
                label, _, cfg = self._request(arm.label, arm.preset, arm.optimizer, arm.overrides, arm.quick_key, seed)
                out.append((label, cfg))
        return out

    def command(self, run: Run) -> str:
        return train_command(run.preset, run.optimizer, list(run.overrides), f"runs/{run.label}")
