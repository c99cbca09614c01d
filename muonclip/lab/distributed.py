"""Data-parallel training for the lab: torchrun launch, rank context, data shards, rank-0 I/O.

``muonclip train --nproc N`` re-runs the same command under ``torch.distributed.run``
(torchrun, ``--standalone``: one node, free rendezvous port). Each worker then finds
``WORLD_SIZE``/``RANK`` in its environment and :func:`from_env` joins the process group
(gloo for CPU tensors; on a CUDA machine also nccl for CUDA tensors). In the training loop:

* the model is wrapped in DistributedDataParallel (:func:`wrap_model`);
* rank r trains on the r-th block of ``batch_size / N`` rows of the step's global batch
  (:func:`shard_batch`), so N ranks together see exactly the single-process batch;
* metrics report the global loss (mean over ranks) and global max logits (max over ranks);
* only rank 0 writes config, metrics, checkpoints and the summary.

With ``WORLD_SIZE`` unset or 1 every helper is the identity: single-process runs are
unchanged bit for bit.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError
from ..optim.distributed import all_reduce_max

T = TypeVar("T")

__all__ = ["LabDist", "NullLog", "from_env", "join_process_group", "launched_rank", "leave_process_group",
           "rank0_first", "launch", "max_across", "mean_across", "shard_batch", "shutdown", "strip_nproc",
           "torchrun_command", "wrap_model", "is_main"]


@dataclass(frozen=True)
class LabDist:
    rank: int
    world_size: int
    local_rank: int
    owns_group: bool  # True when from_env created the process group (and must destroy it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_main(ctx: LabDist | None) -> bool:
    return ctx is None or ctx.main


def backend() -> str:
    """gloo for CPU tensors; with CUDA available also nccl for CUDA tensors."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 for a plain process), readable before
    :func:`from_env` joins the process group."""
    return int(os.environ.get("RANK", "0"))


def from_env() -> LabDist | None:
    """Join the process group described by torchrun's environment; None for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    owns = not dist.is_initialized()
    if owns:
        join_process_group()
    return LabDist(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")), owns_group=owns)


def join_process_group(**init_kwargs) -> None:
    """``init_process_group`` (torchrun's environment, or ``init_kwargs``; the backend of
    :func:`backend` unless given), in a way that :func:`leave_process_group` can end.

    ``torch._dynamo``, which DistributedDataParallel and FSDP import, keeps the default group
    alive for the rest of the process when it is first imported after the group exists (torch
    2.13: gloo's threads outlive ``destroy_process_group`` and the last reference); imported
    before, it does not. So it is imported first.
    """
    import torch._dynamo  # noqa: F401  (see above)

    init_kwargs.setdefault("backend", backend())
    dist.init_process_group(**init_kwargs)


def resolve_device(name: str, ctx: LabDist | None) -> torch.device:
    """``run.device`` as a :class:`torch.device`: ``cpu``, ``cuda`` or ``cuda:N``. Under torchrun a
    bare ``cuda`` is this rank's ``LOCAL_RANK`` GPU. Refuses CUDA where torch sees none."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device={name!r}, but torch sees no CUDA device here "
                              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use run.device=cpu")
        if device.index is None:
            device = torch.device("cuda", ctx.local_rank if ctx is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"run.device={name!r}: the lab runs on cpu or cuda")
    return device


def leave_process_group(peers_done: bool = True) -> None:
    """Destroy the default process group so that its threads end here, not at exit.

    ``destroy_process_group`` only drops torch's own references to the group: gloo's worker
    threads run on while anything else holds it (a live DDP wrapper's reducer; torch._dynamo,
    see :func:`join_process_group`) and end at interpreter exit, where a worker that drops the
    last reference to a tensor needs the GIL that finalisation has taken away. Rank 1 of a
    2-process CLI run aborted so once ("terminate called without an active exception",
    SIGABRT); 70 reruns, 30 of them on a loaded machine, did not repeat it, but both ranks'
    gloo threads were alive at exit. So, with the group joined by :func:`join_process_group`
    and the caller's DDP wrapper dropped: a barrier when every rank has finished
    (``peers_done``; after an error the peers may be inside another collective, and torchrun
    stops them), destroy, then collect the garbage that still holds the group, which joins
    its threads while Python still runs.
    """
    if not dist.is_initialized():
        return
    if peers_done:
        dist.barrier()  # on gloo it also waits for this rank's earlier (gloo) collectives
    dist.destroy_process_group()
    gc.collect()


def shutdown(ctx: LabDist | None, peers_done: bool = True) -> None:
    """:func:`leave_process_group` when :func:`from_env` created the group."""
    if ctx is not None and ctx.owns_group:
        leave_process_group(peers_done)


def wrap_model(model: torch.nn.Module, ctx: LabDist | None) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (gradients averaged over ranks), else ``model``."""
    if ctx is None:
        return model
    on_cuda = next(model.parameters()).is_cuda
    return DistributedDataParallel(model, device_ids=[ctx.local_rank] if on_cuda else None)


def shard_batch(x: Tensor, y: Tensor, ctx: LabDist | None) -> tuple[Tensor, Tensor]:
    """This rank's block of rows of the global batch (identity for one process)."""
    if ctx is None:
        return x, y
    b = x.shape[0]
    if b % ctx.world_size:
        raise ValueError(f"run.batch_size={b} must be divisible by the number of processes ({ctx.world_size})")
    per = b // ctx.world_size
    rows = slice(ctx.rank * per, (ctx.rank + 1) * per)
    return x[rows], y[rows]


def mean_across(value: float, ctx: LabDist | None) -> float:
    """Mean of a per-rank scalar over ranks (e.g. the loss of equal-sized shards = global loss)."""
    if ctx is None:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / ctx.world_size


def max_across(tensors: list[Tensor], ctx: LabDist | None) -> list[Tensor]:
    """Elementwise max over ranks of a list of tensors (e.g. per-head max logits)."""
    if ctx is None or not tensors:
        return tensors
    return all_reduce_max(tensors)


def rank0_first(fn: Callable[[], T], ctx: LabDist | None) -> T:
    """``fn()`` on rank 0, then on the other ranks (so files rank 0 caches, e.g. a trained
    tokenizer, are read rather than rebuilt)."""
    if ctx is None:
        return fn()
    if ctx.main:
        out = fn()
        dist.barrier()
        return out
    dist.barrier()
    return fn()


class NullLog:
    """Stands in for MetricsLog on ranks other than 0."""

    def write(self, row: dict, tensorboard: bool = True) -> None:  # noqa: D401 - same interface as MetricsLog
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- launcher --------------------------------------------------------------------------------
def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m muonclip ARGV``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "muonclip", *strip_nproc(argv)]


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``muonclip ARGV`` on ``nproc`` local processes through torchrun; its exit code."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    env = dict(os.environ)
    # torchrun would default to 1 thread per worker anyway; say so explicitly and quietly.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(torchrun_command(nproc, argv), env=env)
