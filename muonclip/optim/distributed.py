"""Helpers for MuonClip on torch.distributed (DDP replicas and FSDP2 / DTensor shards).

Muon's update needs the *whole* matrix (Newton-Schulz is not element-wise), so under data
parallelism each matrix gets one owner rank that orthogonalises it:

* :func:`partition_by_flops` assigns matrices to ranks, balancing Newton-Schulz FLOPs
  (``functional.ns_flops``) with the longest-processing-time greedy rule. Every rank computes
  the same assignment from shapes alone, so no negotiation is needed.
* DDP (replicated parameters, gradients already averaged by DDP): the owner orthogonalises
  its matrices and :func:`all_gather_owned` hands every rank every direction (one padded
  ``all_gather`` per step), so all replicas apply the same update bit for bit.
* FSDP2 (``fully_shard``; DTensor parameters with ``Shard(0)`` on a 1-D mesh): every rank
  holds a row block of each matrix. :func:`gather_to_owners` sends each block to the
  matrix's owner (one ``all_to_all_single``), the owner orthogonalises the full matrix and
  :func:`scatter_from_owners` sends the row blocks of the result back (a second
  ``all_to_all_single``). Momentum stays sharded like the parameter.
* :class:`ShardRows` lets QK-Clip (which addresses *global* rows of q/k weights) scale the
  rows of a ``Shard(0)`` DTensor that live on this rank.

Every collective issued here goes through :func:`_record`, which adds its payload to
:data:`COMM` (bytes each rank sends and receives), so the communication cost of a step can be
measured instead of guessed.

This module never imports the models or the lab.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor

from . import functional as muon_math
from .ns_forms import parse_form

__all__ = [
    "COMM", "CommStats", "DistContext", "ShardRows", "all_gather_owned", "all_reduce_", "all_reduce_max",
    "context",
    "gather_to_owners", "is_dtensor", "local", "matrix_cost", "partition_by_flops", "row_ranges",
    "scatter_from_owners", "shard_row_views", "zeros_rows_like",
]


# -- bookkeeping -----------------------------------------------------------------------------
@dataclass
class CommStats:
    """Bytes this rank sent and received through the collectives of this module."""

    calls: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    received: int = 0

    def reset(self) -> None:
        self.calls.clear()
        self.sent = self.received = 0

    def add(self, kind: str, sent: int, received: int) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.sent += int(sent)
        self.received += int(received)


COMM = CommStats()


def _record(kind: str, sent: int, received: int) -> None:
    COMM.add(kind, sent, received)


def ring_all_reduce_bytes(nbytes: int, world_size: int) -> int:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``nbytes``."""
    return 0 if world_size <= 1 else 2 * (world_size - 1) * nbytes // world_size


# -- tensors ---------------------------------------------------------------------------------
def _dtensor_cls():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - very old torch
        return None
    return DTensor


def is_dtensor(t) -> bool:
    cls = _dtensor_cls()
    return cls is not None and isinstance(t, cls)


def local(t: Tensor) -> Tensor:
    """The tensor this rank holds: a DTensor's local shard (sharing storage), else ``t``."""
    return t.to_local() if is_dtensor(t) else t


def zeros_rows_like(p: Tensor, shape: Sequence[int]) -> Tensor:
    """fp32 zeros of global ``shape`` whose dim 0 is ``p``'s dim 0, placed like ``p``: a DTensor
    on p's mesh with p's placement (a ``Shard(0)`` parameter's row block i holds state rows i),
    else a plain tensor on p's device. For per-row optimizer state (NorMuon)."""
    shape = tuple(shape)
    if not is_dtensor(p):
        return torch.zeros(shape, dtype=torch.float32, device=p.device)
    from torch.distributed.tensor import DTensor

    rows = local(p).shape[0] if is_row_sharded(p) else shape[0]
    block = torch.zeros((rows,) + shape[1:], dtype=torch.float32, device=local(p).device)
    stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
    return DTensor.from_local(block, p.device_mesh, p.placements, run_check=False, shape=torch.Size(shape),
                              stride=stride)


@dataclass(frozen=True)
class DistContext:
    group: object  # a ProcessGroup, or None for the default group
    rank: int
    world_size: int
    # where the communication buffers live: the parameters' device (cuda under NCCL, cpu under gloo)
    device: torch.device = torch.device("cpu")


def context(params: Iterable[Tensor], process_group=None) -> DistContext | None:
    """The data-parallel context of a step, or None when the single-process path applies.

    Distributed when torch.distributed is initialised and either the group has more than one
    rank or some parameter is a DTensor. DTensor parameters must all live on one 1-D mesh with
    ``Shard(0)`` or ``Replicate()`` placement (what ``fully_shard`` produces); that mesh's
    group is used.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    params = list(params)
    mesh = None
    for p in params:
        if is_dtensor(p):
            if p.device_mesh.ndim != 1:
                raise NotImplementedError(
                    "MuonClip supports DTensor parameters on a 1-D mesh (fully_shard); "
                    f"got a {p.device_mesh.ndim}-D mesh (HSDP / TP are not implemented)")
            _check_placement(p)
            if mesh is None:
                mesh = p.device_mesh
            elif p.device_mesh != mesh:
                raise NotImplementedError("MuonClip needs all DTensor parameters on the same device mesh")
    group = mesh.get_group(0) if mesh is not None else process_group
    world = dist.get_world_size(group)
    if world == 1 and mesh is None:
        return None
    device = local(params[0]).device if params else torch.device("cpu")
    return DistContext(group, dist.get_rank(group), world, device)


def _check_placement(p) -> None:
    from torch.distributed.tensor import Replicate, Shard

    (pl,) = p.placements
    if isinstance(pl, Replicate) or (isinstance(pl, Shard) and pl.dim == 0):
        return
    raise NotImplementedError(f"MuonClip supports Shard(0) or Replicate() DTensors, got {p.placements}")


def is_row_sharded(p) -> bool:
    from torch.distributed.tensor import Shard

    return is_dtensor(p) and isinstance(p.placements[0], Shard)


def row_ranges(n_rows: int, world_size: int) -> list[tuple[int, int]]:
    """Rows ``[start, stop)`` of each rank under ``Shard(0)`` (``torch.chunk`` rule: blocks of
    ``ceil(n / world)`` rows, trailing ranks may hold fewer or none)."""
    chunk = -(-n_rows // world_size) if n_rows else 0
    return [(min(n_rows, r * chunk), min(n_rows, (r + 1) * chunk)) for r in range(world_size)]


# -- partition -------------------------------------------------------------------------------
def matrix_cost(shape: Sequence[int], steps: int = 5, impl: str = "auto", expert_stack: bool = False,
                head_block: tuple[int, int] | None = None,
                coeffs: Sequence[tuple[float, float, float]] | None = None) -> int:
    """Newton-Schulz FLOPs for one parameter of ``shape`` (a declared expert stack: per expert;
    any other >=3-D tensor: flattened, as :func:`functional.matrix_dims` says; a per-head
    layout: per block). ``coeffs`` (the schedule) sets the steps and marks cubic iterations."""
    batch, n, m = muon_math.block_dims(shape, expert_stack, head_block)
    if impl == "auto":
        gram = muon_math.gram_is_cheaper(n, m, steps, coeffs)
        return batch * muon_math.ns_flops(n, m, steps, gram=gram, coeffs=coeffs)
    kind, restarts = parse_form(impl)
    return batch * muon_math.ns_flops(n, m, steps, gram=kind == "gram", coeffs=coeffs, restarts=restarts or ())


def partition_by_flops(costs: Sequence[int], world_size: int) -> list[int]:
    """Owner rank of each item: longest-processing-time greedy (largest cost first, to the
    least-loaded rank, ties to the lowest rank). Deterministic from ``costs`` alone, so every
    rank computes the same assignment. Some ranks own nothing when items < ranks."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    owners = [0] * len(costs)
    heap = [(0, r) for r in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, r = heapq.heappop(heap)
        owners[i] = r
        heapq.heappush(heap, (load + costs[i], r))
    return owners


# -- collectives -----------------------------------------------------------------------------
def all_reduce_(t: Tensor, op: str, ctx: DistContext) -> Tensor:
    import torch.distributed as dist

    ops = {"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "sum": dist.ReduceOp.SUM}
    dist.all_reduce(t, op=ops[op], group=ctx.group)
    nbytes = ring_all_reduce_bytes(t.numel() * t.element_size(), ctx.world_size)
    _record("all_reduce", nbytes, nbytes)
    return t


def all_reduce_max(tensors: list[Tensor], group=None) -> list[Tensor]:
    """Element-wise MAX of a list of tensors over the ranks of ``group`` (identity when not
    distributed). QK-Clip reduces the max logits this way before computing gamma, so every
    rank scales the same heads by the same factor (ranks otherwise drift, ms-swift #9901)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return tensors
    sizes = [t.numel() for t in tensors]
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.MAX, group=group)
    nbytes = ring_all_reduce_bytes(4 * flat.numel(), dist.get_world_size(group))
    _record("all_reduce", nbytes, nbytes)
    return [t.reshape(orig.shape) for t, orig in zip(flat.split(sizes), tensors, strict=False)]


def all_gather_owned(owned: dict[int, Tensor], owners: Sequence[int], numels: Sequence[int],
                     ctx: DistContext) -> list[Tensor]:
    """Every rank gets every item: ``owned`` maps item index -> flat fp32 tensor for the items
    this rank owns; returns a flat tensor per item (one padded ``all_gather``)."""
    import torch.distributed as dist

    per_rank = [[i for i in range(len(owners)) if owners[i] == r] for r in range(ctx.world_size)]
    sizes = [sum(numels[i] for i in idx) for idx in per_rank]
    width = max(sizes) if sizes else 0
    out: list[Tensor | None] = [None] * len(owners)
    if width == 0:
        return out  # type: ignore[return-value]
    mine = per_rank[ctx.rank]
    send = torch.zeros(width, dtype=torch.float32, device=ctx.device)
    if mine:
        torch.cat([owned[i].reshape(-1) for i in mine], out=send[: sizes[ctx.rank]])
    bufs = [torch.empty(width, dtype=torch.float32, device=ctx.device) for _ in range(ctx.world_size)]
    dist.all_gather(bufs, send, group=ctx.group)
    _record("all_gather", 4 * width * (ctx.world_size - 1), 4 * width * (ctx.world_size - 1))
    for r, idx in enumerate(per_rank):
        start = 0
        for i in idx:
            out[i] = owned[i].reshape(-1) if r == ctx.rank else bufs[r][start:start + numels[i]]
            start += numels[i]
    return out  # type: ignore[return-value]


def _rows_numel(shape: Sequence[int], rows: tuple[int, int]) -> int:
    return (rows[1] - rows[0]) * math.prod(shape[1:])


def _all_to_all(send: list[Tensor], recv_sizes: list[int], ctx: DistContext) -> list[Tensor]:
    import torch.distributed as dist

    send_sizes = [t.numel() for t in send]
    inp = torch.cat(send) if send_sizes and sum(send_sizes) else torch.zeros(0, device=ctx.device)
    out = torch.empty(sum(recv_sizes), dtype=torch.float32, device=ctx.device)
    dist.all_to_all_single(out, inp.float(), recv_sizes, send_sizes, group=ctx.group)
    _record("all_to_all", 4 * (sum(send_sizes) - send_sizes[ctx.rank]),
            4 * (sum(recv_sizes) - recv_sizes[ctx.rank]))
    return list(out.split(recv_sizes))


def gather_to_owners(local_blocks: Sequence[Tensor], shapes: Sequence[Sequence[int]],
                     owners: Sequence[int], ctx: DistContext) -> dict[int, Tensor]:
    """Row-sharded items -> full tensors on their owners.

    ``local_blocks[i]`` is this rank's ``Shard(0)`` block of item ``i`` (global ``shapes[i]``).
    Returns ``{i: full fp32 tensor}`` for the items this rank owns.
    """
    ranges = [row_ranges(s[0], ctx.world_size) for s in shapes]
    for i, blk in enumerate(local_blocks):
        expect = _rows_numel(shapes[i], ranges[i][ctx.rank])
        if blk.numel() != expect:
            raise RuntimeError(f"local shard of item {i} has {blk.numel()} elements, expected {expect} "
                               f"(Shard(0) with torch.chunk rows) for global shape {tuple(shapes[i])}")
    mine = [i for i in range(len(owners)) if owners[i] == ctx.rank]
    send = []
    for dst in range(ctx.world_size):
        items = [local_blocks[i].reshape(-1).float() for i in range(len(owners)) if owners[i] == dst]
        send.append(torch.cat(items) if items else torch.zeros(0, device=ctx.device))
    recv_sizes = [sum(_rows_numel(shapes[i], ranges[i][src]) for i in mine) for src in range(ctx.world_size)]
    got = _all_to_all(send, recv_sizes, ctx)
    parts: dict[int, list[Tensor]] = {i: [] for i in mine}
    for src in range(ctx.world_size):
        start = 0
        for i in mine:
            k = _rows_numel(shapes[i], ranges[i][src])
            parts[i].append(got[src][start:start + k])
            start += k
    return {i: torch.cat(parts[i]).reshape(tuple(shapes[i])) for i in mine}


def scatter_from_owners(full: dict[int, Tensor], shapes: Sequence[Sequence[int]],
                        owners: Sequence[int], ctx: DistContext) -> list[Tensor]:
    """The inverse of :func:`gather_to_owners`: owners hold full tensors of their items; every
    rank gets its ``Shard(0)`` row block of every item (flat fp32)."""
    ranges = [row_ranges(s[0], ctx.world_size) for s in shapes]
    mine = [i for i in range(len(owners)) if owners[i] == ctx.rank]
    send = []
    for dst in range(ctx.world_size):
        blocks = []
        for i in mine:
            a, b = ranges[i][dst]
            blocks.append(full[i].reshape(shapes[i][0], -1)[a:b].reshape(-1))
        send.append(torch.cat(blocks) if blocks else torch.zeros(0, device=ctx.device))
    recv_sizes = []
    for src in range(ctx.world_size):
        recv_sizes.append(sum(_rows_numel(shapes[i], ranges[i][ctx.rank])
                              for i in range(len(owners)) if owners[i] == src))
    got = _all_to_all(send, recv_sizes, ctx)
    out: list[Tensor | None] = [None] * len(owners)
    for src in range(ctx.world_size):
        start = 0
        for i in range(len(owners)):
            if owners[i] != src:
                continue
            k = _rows_numel(shapes[i], ranges[i][ctx.rank])
            out[i] = got[src][start:start + k]
            start += k
    return out  # type: ignore[return-value]


# -- QK-Clip on shards -----------------------------------------------------------------------
class ShardRows:
    """A stand-in for a ``Shard(0)`` DTensor that QK-Clip can index with *global* rows.

    ``proxy.data[a:b].mul_(f)`` scales the rows of ``[a, b)`` that this rank holds (possibly
    none); ``proxy.shape`` is the global shape, so the row-range checks of QK-Clip still hold.
    """

    def __init__(self, local_rows: Tensor, shape: Sequence[int], start: int = 0) -> None:
        self._local, self.shape, self._start = local_rows, torch.Size(shape), start

    @classmethod
    def of(cls, p) -> "ShardRows":
        start = 0
        if is_row_sharded(p):
            start = row_ranges(p.shape[0], p.device_mesh.size())[p.device_mesh.get_local_rank()][0]
        return cls(local(p).detach(), p.shape, start)

    @property
    def data(self) -> "ShardRows":
        return self

    def __getitem__(self, rows: slice) -> Tensor:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("ShardRows supports contiguous row slices only")
        n = self._local.shape[0]
        a = min(max(rows.start - self._start, 0), n)
        b = min(max(rows.stop - self._start, 0), n)
        return self._local[a:b]


def shard_row_views(params_by_name: dict[str, Tensor]) -> dict[str, object]:
    """Replace DTensors by :class:`ShardRows` (plain tensors pass through)."""
    return {n: ShardRows.of(p) if is_dtensor(p) else p for n, p in params_by_name.items()}
