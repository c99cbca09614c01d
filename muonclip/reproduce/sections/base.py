"""What every section of docs/results.md is made of, and the helpers that turn runs into its cells.

A :class:`Section` holds one chapter's commands, table, text, figures, targets (each a
:class:`~muonclip.reproduce.results.Verdict` over the seeds) and data files. The helpers take
one function of a run's rows (from :mod:`muonclip.reproduce.results`) and the chapter's runs
on every seed, and print the median (min-max) with :class:`~muonclip.reproduce.results.Spread`.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ...optim import precision
from ...viz.style import DIGITS, fmt
from .. import results
from ..results import Verdict
from ..runner import Run

__all__ = ["Section", "Verdict", "seeds_of", "spread", "cell", "curves_and_bands", "first_seed", "logit", "loss",
           "ratio", "cpu_model", "environment"]


@dataclass(frozen=True)
class Section:
    """One chapter of results.md. ``table``: (quantity, value) rows; ``figures``: file stem ->
    Figure; ``checks``: its targets; ``data``: file name -> JSON-able object, written to OUT/data/."""

    name: str
    title: str
    commands: list[str] = field(default_factory=list)
    table: list[tuple[str, str]] = field(default_factory=list)
    extra_md: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Verdict] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def logit(x: float | None) -> str:
    return fmt(x, DIGITS["logit"])


def loss(x: float | None) -> str:
    return fmt(x, DIGITS["loss"])


def ratio(x: float | None) -> str:
    return fmt(x, DIGITS["ratio"])


def seeds_of(runs: Sequence[Run]) -> list[int]:
    return [r.seed for r in runs]


def spread(runs: Sequence[Run], of: Callable[[list[dict]], Any]) -> results.Spread:
    """``of(rows)`` of every seed's run."""
    return results.spread([of(r.rows) for r in runs])


def cell(runs: Sequence[Run], of: Callable[[list[dict]], Any], digits: int = 3, *,
         as_text: Callable[[Any], str] | None = None) -> str:
    """The table cell of ``of(rows)`` over the seeds: ``median (min–max)``, or the value alone."""
    return spread(runs, of).text(digits, as_text=as_text)


def first_seed(quantity: str, runs: Sequence[Run]) -> str:
    """A quantity shown for the first seed only says so when there are several."""
    return f"{quantity} (seed {runs[0].seed})" if len(runs) > 1 else quantity


def curves_and_bands(arms: dict[str, Sequence[Run]], key: str = "max_logit", x: str = "step"
                     ) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Per label: the median curve of ``key`` against ``x`` over its seeds, and (with several
    seeds) the band ``(xs, lowest, highest)`` the charts draw around it."""
    curves, bands = {}, {}
    for label, runs in arms.items():
        per_seed = [results.series(r.rows, key, x) for r in runs]
        per_seed = [c for c in per_seed if c[0]]
        if not per_seed:
            continue
        xs, median, lo, hi = results.curve_spread(per_seed)
        curves[label] = (xs, median)
        if len(per_seed) > 1:
            bands[label] = (xs, lo, hi)
    return curves, bands


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where the numbers were measured: the CPU and its bf16 support, torch and Python."""
    return {"cpu": cpu_model(), "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_flags": list(precision.cpu_bf16_flags()), "torch": torch.__version__,
            "python": platform.python_version()}
