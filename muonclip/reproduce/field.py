"""The field comparison (#16): Muon against per-head Muon, NorMuon, cautious decay and other orthogonalisers.

Each *arm* is the ``efficiency`` preset trained with ``--optimizer muon`` (or ``adamw``, the
baseline) plus the arm's overrides. The experiment has three phases, all cached by config hash
(:func:`muonclip.reproduce.runner.ensure_run`), so a killed run picks up where it stopped:

1. an lr sweep per arm on seed 0 (lowest final validation loss wins);
2. the chosen lr on the other seeds;
3. each Muon arm on the ``dragon`` preset (no decay, constant lr): its max-logit growth.

``python -m muonclip.reproduce.field --out runs/field --device cuda --jobs 6`` trains every run
(worker processes, one queue) and writes ``field.json``: the per-arm numbers of
:func:`muonclip.reproduce.results.field_table`. ``--quick`` shortens every run to a smoke test.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..io import atomic_write_json
from ..lab import apply_overrides, get_preset
from ..lab.rundir import read_metrics
from . import results
from .runner import ensure_run

__all__ = ["ARMS", "ARM_NAMES", "Arm", "Task", "arm", "sweep_tasks", "seed_tasks", "dragon_tasks", "run_tasks",
           "best_lrs", "run_comparison", "main"]


@dataclass(frozen=True)
class Arm:
    """One optimizer variant: the lab optimizer, its overrides and the lrs swept."""

    name: str
    optimizer: str
    overrides: tuple[str, ...]
    lrs: tuple[float, ...]
    what: str

    def lr_override(self, lr: float) -> str:
        # AdamW sweeps the whole model's rate; Muon arms sweep the hidden matrices' rate and
        # keep the preset's adamw_lr (3e-3) for embeddings, norms and the head.
        return f"optim.adamw_lr={lr:g}" if self.optimizer == "adamw" else f"optim.lr={lr:g}"


MUON_LRS = (0.005, 0.01, 0.02, 0.04)
ARMS: tuple[Arm, ...] = (
    Arm("adamw", "adamw", (), (3e-4, 1e-3, 3e-3, 1e-2), "AdamW on every parameter (the baseline)"),
    Arm("muon", "muon", (), MUON_LRS, "Muon, NS5, whole matrices"),
    Arm("muon_per_head", "muon", ("optim.muon_heads_per_block=1",), MUON_LRS,
        "q, k, v orthogonalised per head (Kimi K3, GLM-5)"),
    Arm("muon_head_pairs", "muon", ("optim.muon_heads_per_block=2",), MUON_LRS,
        "q, k, v orthogonalised per pair of heads (modded-nanogpt PR #253)"),
    Arm("normuon", "muon", ("optim.normuon=true",), MUON_LRS, "NorMuon: per-neuron second moment after NS"),
    Arm("cautious_wd", "muon", ("optim.cautious_weight_decay=true",), MUON_LRS,
        "decay only where update and weight agree in sign (Muon and AdamW groups)"),
    Arm("polar_express", "muon", ("optim.ns_method=polar_express",), MUON_LRS,
        "Polar Express schedule: NS5's FLOPs, about half its distance to the polar factor"),
    Arm("deepseek_v4", "muon", ("optim.ns_method=deepseek_v4",), MUON_LRS,
        "DeepSeek-V4 10-step schedule: the closest to the polar factor, 2x NS5's FLOPs"),
)
ARM_NAMES = tuple(a.name for a in ARMS)
SEEDS = (0, 1, 2)
DRAGON_SEEDS = (0, 1)
# The smoke-test shortening of --quick (and of the tests): 12 steps, one eval at the end.
QUICK = ("run.steps=12", "run.eval_every=6", "run.eval_batches=1", "schedule.warmup_steps=2",
         "run.spectra_every=0", "run.batch_size=4", "model.seq_len=32", "model.n_layer=2")


@dataclass(frozen=True)
class Task:
    """One training run of the comparison."""

    label: str
    preset: str
    arm: str
    lr: float | None
    seed: int
    optimizer: str
    overrides: tuple[str, ...]


def arm(name: str) -> Arm:
    """The arm called ``name`` (ValueError lists the others)."""
    for a in ARMS:
        if a.name == name:
            return a
    raise ValueError(f"unknown arm {name!r}; choose from {', '.join(ARM_NAMES)}")


def _task(a: Arm, preset: str, lr: float | None, seed: int, common: Sequence[str]) -> Task:
    lr_part = [a.lr_override(lr)] if lr is not None else []
    label = f"{preset}-{a.name}" + (f"-lr{lr:g}" if lr is not None else "") + f"-s{seed}"
    return Task(label, preset, a.name, lr, seed, a.optimizer, (*a.overrides, *lr_part, f"run.seed={seed}", *common))


def sweep_tasks(arms: Sequence[str], common: Sequence[str]) -> list[Task]:
    """Phase 1: every arm at every lr of its grid, seed 0, on ``efficiency``."""
    return [_task(arm(n), "efficiency", lr, SEEDS[0], common) for n in arms for lr in arm(n).lrs]


def seed_tasks(best_lr: dict[str, float], seeds: Sequence[int], common: Sequence[str]) -> list[Task]:
    """Phase 2: each arm at its chosen lr on the seeds other than 0."""
    return [_task(arm(n), "efficiency", lr, s, common) for n, lr in best_lr.items() for s in seeds if s != SEEDS[0]]


def dragon_tasks(arms: Sequence[str], seeds: Sequence[int], common: Sequence[str]) -> list[Task]:
    """Phase 3: each Muon arm on ``dragon`` at the preset's lr (spectra off: growth only)."""
    return [_task(arm(n), "dragon", None, s, (*common, "run.spectra_every=0"))
            for n in arms if arm(n).optimizer == "muon" for s in seeds]


def _train_one(job: tuple[Task, str, int]) -> tuple[str, str]:
    import torch

    task, cache, threads = job
    torch.set_num_threads(threads)
    cfg = apply_overrides(get_preset(task.preset), [f"optim.optimizer={task.optimizer}", *task.overrides])
    run_dir = ensure_run(cfg, cache, task.label, progress=False, log=lambda _msg: None)
    return task.label, str(run_dir)


def run_tasks(tasks: Sequence[Task], cache: str | Path, *, jobs: int = 1, threads: int = 1,
              log: Callable[[str], None] = print) -> dict[str, list[dict]]:
    """Train ``tasks`` (cached by config hash) on ``jobs`` worker processes; label -> metrics rows."""
    work = [(t, str(cache), threads) for t in tasks]
    done: dict[str, list[dict]] = {}

    def record(label: str, run_dir: str) -> None:
        done[label] = read_metrics(Path(run_dir) / "metrics.jsonl")
        log(f"[{len(done)}/{len(work)}] {label}")

    if jobs <= 1 or len(work) <= 1:
        for job in work:
            record(*_train_one(job))
    else:
        # spawn, not fork: a forked CUDA context is unusable in the child
        with multiprocessing.get_context("spawn").Pool(min(jobs, len(work))) as pool:
            for label, run_dir in pool.imap_unordered(_train_one, work):
                record(label, run_dir)
    return done


def best_lrs(tasks: Sequence[Task], rows: dict[str, list[dict]]) -> dict[str, float]:
    """Per arm, the swept lr with the lowest final validation loss (a diverged run never wins)."""
    best: dict[str, tuple[float, float]] = {}
    for t in tasks:
        loss = results.final_val_loss(rows[t.label])
        loss = loss if loss is not None and math.isfinite(loss) else math.inf
        if t.arm not in best or loss < best[t.arm][0]:
            best[t.arm] = (loss, t.lr)
    return {name: lr for name, (_, lr) in best.items()}


def _by_arm(tasks: Sequence[Task], rows: dict[str, list[dict]], lrs: dict[str, float] | None) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in sorted(tasks, key=lambda t: t.seed):
        if lrs is None or t.lr == lrs.get(t.arm):
            out.setdefault(t.arm, []).append(rows[t.label])
    return out


def run_comparison(arms: Sequence[str], cache: str | Path, *, device: str = "cpu", seeds: Sequence[int] = SEEDS,
                   dragon_seeds: Sequence[int] = DRAGON_SEEDS, quick: bool = False, jobs: int = 1,
                   threads: int = 1, log: Callable[[str], None] = print) -> dict[str, Any]:
    """All three phases; returns what ``field.json`` holds."""
    for name in arms:
        arm(name)
    if "adamw" not in arms:
        raise ValueError("the comparison needs the adamw arm: tokens are counted to AdamW's final loss")
    common = (f"run.device={device}", *(QUICK if quick else ()))
    sweep = sweep_tasks(arms, common)
    rows = run_tasks(sweep, cache, jobs=jobs, threads=threads, log=log)
    chosen = best_lrs(sweep, rows)
    seeded = seed_tasks(chosen, seeds, common)
    dragon = dragon_tasks(arms, dragon_seeds, common)
    rows |= run_tasks([*seeded, *dragon], cache, jobs=jobs, threads=threads, log=log)
    sweep_table = {name: {f"{t.lr:g}": results.final_val_loss(rows[t.label]) for t in sweep if t.arm == name}
                   for name in arms}
    table = results.field_table(_by_arm([*sweep, *seeded], rows, chosen), _by_arm(dragon, rows, None),
                                baseline="adamw")
    return {
        "experiment": "field_comparison", "device": device, "quick": quick, "seeds": list(seeds),
        "dragon_seeds": list(dragon_seeds), "arms": {name: arm(name).what for name in arms},
        "overrides": {name: list(arm(name).overrides) for name in arms}, "common_overrides": list(common),
        "best_lr": chosen, "sweep_final_val_loss": sweep_table, "table": table,
        "torch": _torch_version(), "device_name": _device_name(device),
    }


def _torch_version() -> str:
    import torch

    return torch.__version__


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    from ..optim.precision import cpu_bf16_flags

    return f"cpu ({torch.backends.cpu.get_cpu_capability()}, bf16 flags: {list(cpu_bf16_flags()) or 'none'})"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m muonclip.reproduce.field", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="cache directory of the runs; field.json is written there")
    ap.add_argument("--device", default="cpu", help="run.device of every run: cpu, cuda or cuda:N")
    ap.add_argument("--arms", default=",".join(ARM_NAMES), help=f"comma-separated subset of {', '.join(ARM_NAMES)}")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="seeds of the efficiency runs (0 first)")
    ap.add_argument("--dragon-seeds", default=",".join(map(str, DRAGON_SEEDS)))
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (several share one GPU well)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--quick", action="store_true", help="12-step smoke test of the whole pipeline")
    args = ap.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    if seeds[0] != SEEDS[0]:
        ap.error("--seeds must start with 0, the sweep's seed")
    try:
        out = run_comparison(arms, args.out, device=args.device, seeds=seeds,
                             dragon_seeds=[int(s) for s in args.dragon_seeds.split(",")], quick=args.quick,
                             jobs=args.jobs, threads=args.threads, log=lambda m: print(m, file=sys.stderr))
    except ValueError as exc:
        ap.error(str(exc))
    atomic_write_json(Path(args.out) / "field.json", out)
    print(json.dumps(out["table"]))
    return out


if __name__ == "__main__":
    main()
