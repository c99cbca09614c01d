"""How a Muon parameter is viewed as matrices: flattening, expert stacks and per-head blocks.

Pure shape logic on tensors, shared by the fast path (:mod:`.functional`), the float64
reference and the distributed cost model. A parameter is a batch of (n, m) matrices
(:func:`matrix_dims`); a per-head layout (Kimi K3 arXiv 2607.24653 Sec. 2.5, GLM-5 "Muon
Split" arXiv 2602.15763) cuts each matrix into blocks of rows or columns that are
orthogonalised on their own (:func:`block_dims`).
"""
from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor

__all__ = ["HeadBlock", "matrix_dims", "as_matrix_batch", "effective_head_block", "block_dims"]

HeadBlock = tuple[int, int]  # (dim of the matrix view: 0 rows / 1 columns, block width)


def matrix_dims(shape: Sequence[int], expert_stack: bool = False) -> tuple[int, int, int]:
    """``(batch, n, m)`` of the matrices a Muon parameter of ``shape`` is orthogonalised as.

    2-D: one (n, m) matrix. A declared expert stack (E, n, m): E matrices. Any other >=3-D
    tensor (Conv1d (out, in, k), Conv2d (out, in, kh, kw), ...) is one (out, in*k...) matrix,
    so the update scale sees the true fan-in (KellerJordan/Muon #63). Shape alone cannot tell
    a Conv1d weight from an expert stack, so stacks must be declared.
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"Muon needs a >=2-D tensor, got shape {shape}")
    if expert_stack:
        if len(shape) != 3:
            raise ValueError(f"an expert stack must be 3-D (experts, n, m), got shape {shape}")
        return shape[0], shape[1], shape[2]
    return 1, shape[0], math.prod(shape[1:])


def as_matrix_batch(t: Tensor, expert_stack: bool = False) -> Tensor:
    """View a Muon parameter/gradient as a batch of matrices (B, n, m); see :func:`matrix_dims`."""
    return t.reshape(matrix_dims(t.shape, expert_stack))


def effective_head_block(shape: Sequence[int], expert_stack: bool, head_block: HeadBlock | None,
                         heads_per_block: int = 1) -> HeadBlock | None:
    """``(dim, width)`` of the blocks a parameter is orthogonalised in, from its per-head layout.

    ``head_block = (dim, head_width)`` splits the (n, m) matrix view along ``dim`` (0: rows,
    1: columns) into heads of ``head_width``; ``heads_per_block = g`` groups g neighbouring
    heads per block (g is capped at the number of heads, which it must then divide). Raises
    ``ValueError`` when the layout does not tile the matrix.
    """
    if head_block is None:
        return None
    if heads_per_block < 1:
        raise ValueError(f"heads_per_block must be >= 1, got {heads_per_block}")
    dim, width = head_block
    _, n, m = matrix_dims(shape, expert_stack)
    if dim not in (0, 1) or not isinstance(width, int) or width < 1:
        raise ValueError(f"a head block is (dim in {{0, 1}}, width >= 1), got {tuple(head_block)}")
    size = (n, m)[dim]
    if size % width:
        raise ValueError(f"head width {width} does not divide dim {dim} ({size}) of the {n}x{m} matrix view "
                         f"of shape {tuple(shape)}")
    heads = size // width
    group = min(heads_per_block, heads)
    if heads % group:
        raise ValueError(f"heads_per_block={heads_per_block} does not divide the {heads} heads of shape "
                         f"{tuple(shape)} (dim {dim}, head width {width})")
    return dim, width * group


def block_dims(shape: Sequence[int], expert_stack: bool = False,
               head_block: HeadBlock | None = None) -> tuple[int, int, int]:
    """``(batch, n, m)`` of the matrices actually orthogonalised: :func:`matrix_dims`, each
    matrix cut into ``head_block = (dim, width)`` blocks when given."""
    batch, n, m = matrix_dims(shape, expert_stack)
    if head_block is None:
        return batch, n, m
    dim, width = head_block
    if dim == 0:
        return batch * (n // width), width, m
    return batch * (m // width), n, width


def _split_blocks(X: Tensor, head_block: HeadBlock | None) -> Tensor:
    """(B, n, m) -> (B k, n', m'): the row (dim 0) or column (dim 1) blocks as a batch."""
    if head_block is None:
        return X
    dim, width = head_block
    B, n, m = X.shape
    if dim == 0:
        return X.reshape(B * (n // width), width, m)
    k = m // width
    return X.reshape(B, n, k, width).permute(0, 2, 1, 3).reshape(B * k, n, width)


def _merge_blocks(X: Tensor, head_block: HeadBlock | None, n: int, m: int) -> Tensor:
    """The inverse of :func:`_split_blocks`: (B k, n', m') -> (B, n, m)."""
    if head_block is None:
        return X
    dim, width = head_block
    if dim == 0:
        return X.reshape(-1, n, m)
    k = m // width
    return X.reshape(-1, k, n, width).permute(0, 2, 1, 3).reshape(-1, n, m)
