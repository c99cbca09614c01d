"""NorMuon: a per-neuron second moment on the orthogonalised update (Li et al., arXiv 2510.05491).

After Newton-Schulz, each output row (neuron) i of the update O gets an EMA of its mean square
and is divided by its root; the result is rescaled to O's Frobenius norm, then the usual
update scale applies (official code: ShizukaKuze/NorMuon, ``normuon_update``)::

    v_i   <- beta2 v_i + (1 - beta2) mean_j O_ij^2          (no bias correction)
    O_hat  = O / (sqrt(v) + eps)
    O_hat <- O_hat ||O||_F / (||O_hat||_F + eps)

The row statistics are local to a row, so under FSDP2 (rows sharded like the parameter) only
the two Frobenius norms need a sum over ranks: :func:`normuon_rows_` returns the local sums of
squares, :func:`normuon_rescale_` takes the (reduced) sums.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["NORMUON_BETA2", "NORMUON_EPS", "normuon_rows_", "normuon_rescale_", "normuon_", "second_moment_shape",
           "row_views", "normuon_directions_"]

# Official NorMuon code (ShizukaKuze/NorMuon normuon.py): beta2 = 0.95 default, and 1e-10 both
# under the root and in the Frobenius rescale. The paper reports beta2 = 0.95 throughout.
NORMUON_BETA2 = 0.95
NORMUON_EPS = 1e-10


def normuon_rows_(ortho: Tensor, v: Tensor, beta2: float,
                  eps: float = NORMUON_EPS) -> tuple[Tensor, Tensor, Tensor]:
    """Update ``v`` in place with this step's row mean squares and divide the rows by sqrt(v).

    ``ortho`` is a (B, n, m) batch of (local rows of) orthogonalised updates O and ``v`` its
    (B, n, 1) second moment. Returns ``(O_hat, sum O^2, sum O_hat^2)``, the sums per matrix
    (shape (B,)) over the rows given here.
    """
    v.lerp_(ortho.square().mean(dim=-1, keepdim=True), 1.0 - beta2)
    normed = ortho / (v.sqrt() + eps)
    return normed, ortho.square().sum(dim=(-2, -1)), normed.square().sum(dim=(-2, -1))


def normuon_rescale_(normed: Tensor, sq_ortho: Tensor, sq_normed: Tensor, eps: float = NORMUON_EPS) -> Tensor:
    """Rescale each matrix of ``normed`` (B, n, m) to O's Frobenius norm, in place, from the
    (possibly all-reduced) per-matrix sums of squares of O and of ``normed``."""
    factor = sq_ortho.sqrt() / (sq_normed.sqrt() + eps)
    return normed.mul_(factor.reshape(-1, 1, 1))


def normuon_(ortho: Tensor, v: Tensor, beta2: float, eps: float = NORMUON_EPS) -> Tensor:
    """Both steps on whole matrices (single process or replicated): the NorMuon'd update."""
    normed, sq_ortho, sq_normed = normuon_rows_(ortho, v, beta2, eps)
    return normuon_rescale_(normed, sq_ortho, sq_normed, eps)


def second_moment_shape(shape: torch.Size | tuple[int, ...], expert_stack: bool) -> tuple[int, ...]:
    """Shape of NorMuon's per-row state for a parameter of ``shape``: (out, 1), or (E, n, 1) for
    a declared expert stack. Dim 0 matches the parameter's, so a ``Shard(0)`` placement shards
    the state exactly like the parameter's rows."""
    return (shape[0], shape[1], 1) if expert_stack else (shape[0], 1)


def row_views(direction: Tensor, v: Tensor, expert_stack: bool) -> tuple[Tensor, Tensor]:
    """(B, n, m) and (B, n, 1) views of a (local) direction and its state, sharing storage."""
    if expert_stack:
        return direction, v  # already (E, n, m)
    rows = direction.shape[0]
    return direction.reshape(1, rows, math.prod(direction.shape[1:])), v.reshape(1, rows, 1)


def normuon_directions_(directions: Sequence[Tensor], second_moments: Sequence[Tensor], expert_flags: Sequence[bool],
                        scales: Sequence[float], beta2: float, *, partial: Sequence[bool] | None = None,
                        sum_over_ranks: Callable[[Tensor], Tensor] | None = None) -> list[Tensor]:
    """NorMuon on a group's unscaled (local) directions, then each one's update scale.

    ``second_moments[i]`` (its local rows) is updated in place. ``partial[i]`` marks a
    direction that holds only some rows of its matrix (FSDP2 row shard, not an expert stack):
    the sums of squares of all those are concatenated and passed once to ``sum_over_ranks``
    (an all-reduce SUM), so each matrix is rescaled by its global Frobenius norms.
    """
    partial = list(partial) if partial is not None else [False] * len(directions)
    normed, sums = [], []
    for d, v, stack in zip(directions, second_moments, expert_flags, strict=True):
        out, sq_ortho, sq_normed = normuon_rows_(*row_views(d, v, stack), beta2)
        normed.append(out)
        sums.append([sq_ortho, sq_normed])
    shared = [i for i, flag in enumerate(partial) if flag]
    if shared:
        if sum_over_ranks is None:
            raise ValueError("row-sharded directions need sum_over_ranks")
        flat = sum_over_ranks(torch.cat([t for i in shared for t in sums[i]]))
        for k, i in enumerate(shared):
            sums[i] = [flat[2 * k:2 * k + 1], flat[2 * k + 1:2 * k + 2]]
    return [normuon_rescale_(out, *sq).mul_(scale).reshape(d.shape)
            for out, sq, scale, d in zip(normed, sums, scales, directions, strict=True)]
