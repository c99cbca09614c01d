"""The story's training stage: its runs, the trade-off experiment, the sweep and the SAEs, on every core.

Everything the story reads that has to be trained is one :class:`Job`. The jobs the cache
lacks run in spawned worker processes with one torch thread each (as the workers of
:mod:`muonclip.reproduce.pool`), longest first, so every core trains; the SAE job waits for
the run it reads. A job writes the same cache entry it writes when trained alone
(:func:`~muonclip.reproduce.runner.ensure_run`, :func:`~muonclip.reproduce.tradeoff.ensure_tradeoff`,
...): running in parallel changes when a result is computed, never what it is. The pipeline
then reads every result from the cache. One line per finished job, with the time left.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..lab import TrainConfig
from ..reproduce import tradeoff
from ..reproduce.pool import missing_jobs
from ..reproduce.runner import cached_run, ensure_run, ensure_sae_compare, sae_dir
from ..sae.config import SAEConfig

__all__ = ["Job", "story_jobs", "train_jobs", "default_workers", "run_cost", "tradeoff_cost", "sae_cost",
           "format_seconds"]


@dataclass(frozen=True)
class Job:
    """One thing to train: ``fn(*args)`` in a worker (a module-level function, so that it pickles).

    ``cost``: a relative size (multiply-adds of its training, roughly): the longest jobs start
    first, and the measured seconds per unit turn the work left into a time-left estimate.
    ``after``: the name of a job that must finish first (the SAE reads a run)."""

    name: str
    fn: Callable[..., Any]
    args: tuple
    cost: float
    after: str | None = None


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on every OS
        return max(1, os.cpu_count() or 1)


def _per_token(n_layer: int, d_model: int, seq_len: int, vocab: int) -> int:
    """Multiply-adds of one token's forward pass: weights, attention scores, output layer."""
    return n_layer * (12 * d_model**2 + 2 * seq_len * d_model) + d_model * vocab


def run_cost(cfg: TrainConfig) -> float:
    """A lab run's training: forward and backward (3 forwards) on every token."""
    m = cfg.model
    return 3.0 * cfg.run.steps * cfg.run.batch_size * m.seq_len * _per_token(m.n_layer, m.d_model, m.seq_len,
                                                                              m.vocab_size)


def tradeoff_cost(cfg: tradeoff.TradeoffConfig, arms: int = 2) -> float:
    """``arms`` trade-off arms of ``cfg``."""
    per = _per_token(cfg.n_layer, cfg.d_model, cfg.seq_len, cfg.vocab_size)
    return 3.0 * arms * cfg.steps * cfg.batch_size * cfg.seq_len * per


def sae_cost(run_cfg: TrainConfig, sae_cfg: SAEConfig, optimizers: int = 2) -> float:
    """Collecting the SAE's activations (forwards of the run's model) and training one SAE per optimizer."""
    m = run_cfg.model
    d_sae = sae_cfg.d_sae or sae_cfg.expansion * m.d_model
    collect = (sae_cfg.n_tokens + sae_cfg.n_eval_tokens) * _per_token(m.n_layer, m.d_model, m.seq_len, m.vocab_size)
    return collect + optimizers * 3.0 * sae_cfg.steps * sae_cfg.batch_size * 2 * m.d_model * d_sae


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# -- what a worker runs (module level: a spawned worker imports them by name) --------------------

def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    """Run ``fn(*args)``; return the CPU seconds it took (this process's, all its threads):
    on a busy machine the wall time says little, the CPU time what the job costs."""
    t0 = time.process_time()
    fn(*args)
    return time.process_time() - t0


def _train_run(cfg: TrainConfig, cache: str, label: str) -> None:
    ensure_run(cfg, cache, label, progress=False)


def _train_tradeoff(cfg: tradeoff.TradeoffConfig, cache: str, git_sha: str | None) -> None:
    tradeoff.ensure_tradeoff(cfg, cache, git_sha=git_sha)


def _train_sweep(cfg: tradeoff.TradeoffConfig, cache: str, taus: tuple, seq_lens: tuple, git_sha: str | None) -> None:
    tradeoff.ensure_tradeoff_sweep(cfg, cache, taus, seq_lens, git_sha=git_sha)


def _train_sae(run_cfg: TrainConfig, run_label: str, sae_cfg: SAEConfig, cache: str) -> None:
    run_dir = cached_run(run_cfg, cache, run_label)
    if run_dir is None:
        raise RuntimeError(f"the SAE's run {run_label} is not in the cache")
    ensure_sae_compare(run_dir, sae_cfg, cache)


def story_jobs(runs: Sequence[tuple[str, TrainConfig]], cache: str | Path, *,
               tradeoff_cfg: tradeoff.TradeoffConfig | None = None, sweep: tuple | None = None,
               sae: tuple[str, TrainConfig, SAEConfig] | None = None, git_sha: str | None = None) -> list[Job]:
    """The jobs of a story whose results ``cache`` lacks.

    ``runs``: ``(label, config)`` of the plan; ``sweep``: ``(config, taus, prompt lengths)``;
    ``sae``: ``(run label, run config, SAE config)`` of the Adam vs Muon SAEs."""
    cache = Path(cache)
    jobs = [Job(f"run {label}", _train_run, (cfg, str(cache), label), run_cost(cfg))
            for label, cfg in missing_jobs(list(runs), cache)]
    if tradeoff_cfg is not None and not (tradeoff.tradeoff_dir(tradeoff_cfg, cache) / "result.json").is_file():
        jobs.append(Job("tradeoff", _train_tradeoff, (tradeoff_cfg, str(cache), git_sha), tradeoff_cost(tradeoff_cfg)))
    if sweep is not None:
        sweep_cfg, taus, seq_lens = sweep
        if not (tradeoff.sweep_dir(sweep_cfg, cache, taus, seq_lens) / "result.json").is_file():
            cost = sum(tradeoff_cost(replace(sweep_cfg, seq_len=n), arms=len(taus)) for n in seq_lens)
            jobs.append(Job("tradeoff-sweep", _train_sweep,
                            (sweep_cfg, str(cache), tuple(taus), tuple(seq_lens), git_sha), cost))
    if sae is not None:
        label, run_cfg, sae_cfg = sae
        run_dir = cached_run(run_cfg, cache, label)
        if run_dir is None or not (sae_dir(run_dir, sae_cfg, cache) / "compare.json").exists():
            # the run the SAE reads, when it is trained in this stage too (its label may differ:
            # the same config trained under another label counts)
            from ..lab import config_hash
            key = config_hash(run_cfg)
            waits = next((j.name for j in jobs if j.fn is _train_run and config_hash(j.args[0]) == key), None)
            jobs.append(Job("SAE", _train_sae, (run_cfg, label, sae_cfg, str(cache)), sae_cost(run_cfg, sae_cfg),
                            after=waits))
    return jobs


def train_jobs(jobs: Sequence[Job], *, workers: int | None = None, threads: int = 1,
               log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run ``jobs``; returns ``{"seconds": {name: s}, "cpu": {name: s}, "errors": {name: message},
    "wall": s}`` (``seconds``: each job's wall time, ``cpu``: its CPU time).

    ``workers`` (default: every core) spawned processes with ``threads`` torch threads each;
    ``workers=1`` runs the jobs here, one after another. A failed job does not stop the others
    (a job waiting for it fails too); the caller decides what a failure means."""
    workers = default_workers() if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique, got {names}")
    unknown = [j.after for j in jobs if j.after is not None and j.after not in names]
    if unknown:
        raise ValueError(f"jobs wait for jobs that are not in the list: {unknown}")
    out: dict[str, Any] = {"seconds": {}, "cpu": {}, "errors": {}, "wall": 0.0}
    if not jobs:
        return out
    workers = min(workers, len(jobs))
    total = sum(j.cost for j in jobs)
    log(f"training {len(jobs)} job(s) on {workers} worker process(es), {threads} thread(s) each: "
        + ", ".join(j.name for j in jobs))
    t0 = time.perf_counter()
    # longest first: the last job to start is a short one, so the cores finish together
    pending = sorted(jobs, key=lambda j: -j.cost)
    started: dict[str, float] = {}
    done_cost = 0.0

    def finished(job: Job, error: BaseException | None, cpu: float | None = None) -> None:
        nonlocal done_cost
        now = time.perf_counter()
        out["seconds"][job.name] = now - started[job.name]
        if cpu is not None:
            out["cpu"][job.name] = cpu
        done_cost += job.cost
        n_done = len(out["seconds"])
        if error is not None:
            out["errors"][job.name] = f"{type(error).__name__}: {error}"
        status = "FAILED: " + out["errors"][job.name] if error is not None else \
            f"done in {format_seconds(out['seconds'][job.name])} ({format_seconds(cpu or 0.0)} CPU)"
        left = total - done_cost
        eta = ""
        if left > 0 and done_cost > 0:
            # work per second across the workers so far, applied to the work left
            eta = f", about {format_seconds((now - t0) * left / done_cost)} left"
        log(f"[{n_done}/{len(jobs)}] {job.name} {status} ({format_seconds(now - t0)} so far{eta})")

    def ready(job: Job) -> bool:
        return job.after is None or job.after in out["seconds"]

    def blocked(job: Job) -> bool:
        return job.after is not None and job.after in out["errors"]

    if workers == 1:
        while pending:
            job = next(j for j in pending if ready(j) or blocked(j))
            pending.remove(job)
            started[job.name] = time.perf_counter()
            if blocked(job):
                finished(job, RuntimeError(f"{job.after} failed"))
                continue
            try:
                cpu = _timed(job.fn, *job.args)
            except Exception as exc:  # keep the other jobs going; the caller sees the error
                finished(job, exc)
            else:
                finished(job, None, cpu)
        out["wall"] = time.perf_counter() - t0
        return out

    # spawn, not fork: a forked child would inherit this process's torch thread pools and locks
    ctx = multiprocessing.get_context("spawn")

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(threads,))

    pool = new_pool()
    running: dict[Future, Job] = {}
    # jobs that were running when a worker died: tried again alone, so that the one whose worker
    # dies (a job that crashes its process, or the largest when memory runs out) is the one that fails
    alone: set[str] = set()

    def may_start(job: Job) -> bool:
        if not ready(job) or any(j.name in alone for j in running.values()):
            return False
        return job.name not in alone or not running

    try:
        while pending or running:
            for job in [j for j in pending if blocked(j)]:
                pending.remove(job)
                started[job.name] = time.perf_counter()
                finished(job, RuntimeError(f"{job.after} failed"))
            broken = False
            while len(running) < workers and any(may_start(j) for j in pending):
                job = next(j for j in pending if may_start(j))
                try:
                    future = pool.submit(_timed, job.fn, *job.args)
                except BrokenProcessPool:  # a worker died since the last look: rebuilt below
                    broken = True
                    break
                pending.remove(job)
                started[job.name] = time.perf_counter()
                running[future] = job
            done: set[Future] = set()
            if running and not broken:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = any(isinstance(f.exception(), BrokenProcessPool) for f in done)
            if broken:
                # A worker process died (killed from outside, or out of memory): the executor
                # fails every job it was running. Each gets one more try, alone, in a fresh pool;
                # the cache keeps what finished, and an interrupted run resumes or restarts cleanly.
                wait(running)
                done = set(running)
            requeue = []
            for future in done:
                job = running.pop(future)
                error = future.exception()
                if isinstance(error, BrokenProcessPool) and job.name not in alone:
                    log(f"{job.name}: its worker process died; trying it once more, alone")
                    alone.add(job.name)
                    requeue.append(job)
                    continue
                finished(job, error, None if error is not None else future.result())
            pending[:0] = requeue
            if broken:
                pool.shutdown(wait=True, cancel_futures=True)
                pool = new_pool()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    out["wall"] = time.perf_counter() - t0
    return out
