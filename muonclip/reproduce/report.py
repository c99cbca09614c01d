"""``muonclip reproduce``: run the presets (cached by config hash) and write ``docs/results.md``.

The sections (:mod:`.sections`) take every number from :mod:`muonclip.reproduce.results`
and draw their figures with :mod:`muonclip.viz.charts`; :mod:`.markdown` writes the text.
This module runs them, adds the determinism check and the SAE comparison, and saves the files.
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..io import atomic_write_json, atomic_write_text
from ..lab import apply_overrides, get_preset
from ..lab.rundir import read_metrics
from ..lab.train import train
from ..sae import DEFAULT, QUICK
from ..sae.compare import compare_markdown
from . import presets, results
from .markdown import build_report
from .pool import train_missing
from .runner import Runner, ensure_sae_compare
from .sections import SECTION_NAMES, SECTIONS, arms_of
from .sections.base import environment

__all__ = ["SECTION_NAMES", "determinism_check", "main"]

_IGNORED_IN_DIFF = ("time", "tokens_per_s")


def determinism_check(log: Callable[[str], None]) -> tuple[str, float, list[str]]:
    """Train a short MuonClip run twice from scratch; return (label, max abs difference over
    all logged numbers except timings, keys compared)."""
    # The quick guardrail (1 layer, 100 steps): cheap, and the clip fires in it.
    cfg = apply_overrides(get_preset("guardrail"), presets.QUICK_OVERRIDES["guardrail"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            log(f"[reproduce] determinism check: quick guardrail, run {i + 1} of 2")
            train(cfg, Path(tmp) / f"r{i}", progress=False, log=log)
            rows.append(read_metrics(Path(tmp) / f"r{i}" / "metrics.jsonl"))
    diff, keys = 0.0, set()

    def walk(a: Any, b: Any) -> None:
        nonlocal diff
        if isinstance(a, dict):
            for k in a:
                if k not in _IGNORED_IN_DIFF:
                    walk(a[k], b[k])
        elif isinstance(a, list):
            for x, y in zip(a, b, strict=False):
                walk(x, y)
        elif isinstance(a, (int, float)):
            diff = max(diff, abs(float(a) - float(b)))

    for ra, rb in zip(*rows, strict=False):
        keys |= {k for k in ra if k not in _IGNORED_IN_DIFF}
        walk(ra, rb)
    if len(rows[0]) != len(rows[1]):
        diff = math.inf
    n_clips = sum(1 for r in rows[0] if r.get("n_clipped"))
    return (f"the quick guardrail ({len(rows[0])} steps on the smaller model, {n_clips} of them with a clip)",
            diff, sorted(keys))


def sae_section(rn: Runner) -> str:
    """Adam vs Muon SAEs (issue #8) trained on the guardrail run's residual stream, cached in
    the reproduce cache by run and SAE config; every number comes from their metrics."""
    run = rn.get("dragon-clip", "dragon", "muonclip", quick_key="dragon-clip")
    _, result = ensure_sae_compare(run.run_dir, QUICK if rn.quick else DEFAULT, rn.cache,
                                   log=lambda m: rn.log(f"[reproduce] {m}"), train_log=rn.log)
    flags = " --quick" if rn.quick else ""
    return "\n".join([
        "```bash", f"python -m muonclip sae --run runs/{run.label} --preset compare{flags} --out runs/sae-compare",
        "```", "", compare_markdown(result)])


# Every target of the page, as data: what results.md's targets table prints, per section.
TARGETS_DATA = "results-targets.json"


def targets_data(sections: list, *, quick: bool, seeds: int) -> dict[str, Any]:
    """The targets of ``sections`` (each :class:`~.results.Verdict` as a dict) with the seeds and
    the environment they were measured on."""
    return {"what": "every target of docs/results.md: met only where every seed meets it",
            "seeds": list(range(seeds)), "quick": quick, "environment": environment(),
            "sections": {sec.name: [v.to_dict() for v in sec.checks] for sec in sections}}


def main(*, only: list[str] | None = None, quick: bool = False, cache: str | Path = "runs/reproduce",
         out: str | Path = "docs", threads: int = 1, determinism: bool = True, seeds: int = 1, workers: int = 1,
         log: Callable[[str], None] | None = None) -> Path:
    """Run the presets and write ``OUT/results.md`` plus ``OUT/figures/*.png``. Returns the path.

    ``threads``: torch CPU threads while it runs (restored afterwards; 0 keeps torch's setting).
    ``seeds``: each seeded arm runs on seeds 0 .. seeds-1 and every number is reported as
    median (min-max), a target met only where every seed meets it. ``workers``: the missing runs
    are first trained that many at a time in worker processes (``threads`` threads each)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    names = list(only or SECTION_NAMES)
    bad = [n for n in names if n not in SECTIONS]
    if bad:
        raise ValueError(f"unknown section {bad[0]!r}; choose from {', '.join(SECTION_NAMES)}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 keeps torch's setting), got {threads}")
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)  # before training: an unwritable --out fails first
    Path(cache).mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        rn = Runner(Path(cache), quick, log, seeds=seeds)
        train_missing(rn.jobs(arms_of(names, quick)), cache, workers=workers, threads=threads, log=log)
        sections = [SECTIONS[n](rn) for n in names]
        sae_md = sae_section(rn) if only is None else None
        det = determinism_check(log) if determinism else None
        for sec in sections:
            for stem, fig in sec.figures.items():
                fig.savefig(fig_dir / f"{stem}.png", dpi=110)
        text = build_report(sections, quick=quick, threads=torch.get_num_threads(), fig_rel="figures",
                            determinism=det, elapsed=time.perf_counter() - t0, sae_md=sae_md,
                            seeds=seeds, workers=workers,
                            trained=(len(rn.runs), sum(results.training_seconds(r.data.rows)
                                                       for r in rn.runs.values())))
    finally:
        torch.set_num_threads(before)
    for sec in sections:  # the data files the page names (e.g. data/guardrail-seeds.json)
        for name, obj in sec.data.items():
            atomic_write_json(out / "data" / name, obj)
    atomic_write_json(out / "data" / TARGETS_DATA, targets_data(sections, quick=quick, seeds=seeds))
    path = out / "results.md"
    atomic_write_text(path, text + "\n")
    log(f"[reproduce] wrote {path}")
    return path
