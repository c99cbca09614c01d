"""Train a plan's missing runs in worker processes, each run once, into the run cache.

The reproduction and the story list every run they will read (``(label, config)``);
:func:`train_missing` trains the ones the cache lacks, ``workers`` at a time, each worker
with ``threads`` torch threads, then the callers read every run from the cache. Runs with the
same config hash are trained once; a run directory is guarded by ``io.exclusive_lock``, so a
second process training the same run fails cleanly instead of writing over it.
"""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..lab import TrainConfig, config_hash
from .runner import cached_run, ensure_run

__all__ = ["train_missing", "missing_jobs"]

Job = tuple[str, TrainConfig]


def missing_jobs(jobs: Sequence[Job], cache: str | Path) -> list[Job]:
    """The jobs whose config has no complete run in ``cache`` yet, one per config hash (the
    first label asked for wins)."""
    seen: set[str] = set()
    out = []
    for label, cfg in jobs:
        key = config_hash(cfg)
        if key in seen:
            continue
        seen.add(key)
        if cached_run(cfg, cache, label) is None:
            out.append((label, cfg))
    return out


def _init_worker(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def _train_one(cfg: TrainConfig, cache: str, label: str) -> str:
    return str(ensure_run(cfg, cache, label, progress=False))


def train_missing(jobs: Sequence[Job], cache: str | Path, *, workers: int = 1, threads: int = 1,
                  log: Callable[[str], None] = lambda m: None) -> list[str]:
    """Train every job of ``jobs`` that ``cache`` lacks; returns the labels trained.

    ``workers`` > 1 runs them in that many spawned processes (``threads`` torch threads each;
    0 keeps torch's default); 1 trains them here, one after another, with this process's
    threads. A failed run does not stop the others; after all have finished, the first
    failure is raised again (the runs that finished stay cached)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 keeps torch's setting), got {threads}")
    todo = missing_jobs(jobs, cache)
    if not todo:
        return []
    Path(cache).mkdir(parents=True, exist_ok=True)
    log(f"[reproduce] {len(todo)} run(s) to train, {min(workers, len(todo))} at a time")
    t0 = time.perf_counter()
    if workers == 1 or len(todo) == 1:
        for i, (label, cfg) in enumerate(todo, 1):
            ensure_run(cfg, cache, label, progress=False)
            log(f"[reproduce] trained {label} ({i} of {len(todo)}, {time.perf_counter() - t0:.0f} s so far)")
        return [label for label, _ in todo]
    failures: list[tuple[str, BaseException]] = []
    # spawn, not fork: a forked child would inherit this process's torch thread pools and locks
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx, initializer=_init_worker,
                               initargs=(threads,))
    try:
        futures = {pool.submit(_train_one, cfg, str(cache), label): label for label, cfg in todo}
        for done, future in enumerate(as_completed(futures), 1):
            label = futures[future]
            try:
                future.result()
            except Exception as exc:  # keep the other runs going; raised again below
                failures.append((label, exc))
                log(f"[reproduce] {label} FAILED: {type(exc).__name__}: {exc}")
                continue
            log(f"[reproduce] trained {label} ({done} of {len(todo)}, {time.perf_counter() - t0:.0f} s so far)")
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if failures:
        label, exc = failures[0]
        log(f"[reproduce] {len(failures)} of {len(todo)} run(s) failed; the first was {label}")
        raise exc
    return [label for label, _ in todo]
