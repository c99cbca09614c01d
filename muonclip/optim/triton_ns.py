"""A Triton kernel for Newton-Schulz's symmetric products on CUDA: C = alpha X X^T + beta C0, upper tiles only.

Two of the direct form's three products per iteration are symmetric: ``A = X X^T`` and
``b A + c A^2 = b A + c A A^T`` (A is symmetric). A general GEMM computes both triangles;
this kernel computes each tile (i, j) with i <= j once, accumulates in fp32, applies the
``alpha``/``beta`` epilogue and writes the tile and its mirror, so those two products cost
about half their FLOPs (the idea of flash-muon's ``matmul_transpose`` and dion's kernels;
written here from the formula, batched over same-shape matrices). The third product, ``B X``,
is not symmetric and stays with cuBLAS.

Optional: Triton is an extra (``pip install muonclip[triton]``), imported only when a CUDA
tensor reaches :func:`symmetric_product_fn`; without it, or on CPU, Newton-Schulz uses
``torch.bmm`` / ``torch.baddbmm``. ``MUONCLIP_TRITON=0`` turns the kernel off.

Tested on CPU through Triton's interpreter (``TRITON_INTERPRET=1``) against float64. The
interpreter cannot multiply bf16 tiles (numpy has no bf16) and truncates fp32 -> bf16 casts,
so under it the kernel widens each loaded tile to fp32 before ``tl.dot`` and writes fp32,
which torch then rounds to nearest: the same numbers a GPU's bf16 MMA with fp32 accumulation
and its round-to-nearest store produce, up to the order of the fp32 sums.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch
from torch import Tensor

__all__ = ["available", "symmetric_product", "symmetric_product_fn"]

# Tile sizes: (BLOCK_N, BLOCK_K, num_warps, num_stages). The GPU choice is a common one for
# bf16 MMA on Hopper-class GPUs (not tuned here: no GPU measured it); the interpreter runs
# numpy per program, so small tiles keep the CPU tests fast.
_GPU_TILES = (128, 64, 8, 3)
_INTERPRETER_TILES = (16, 16, 1, 1)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@functools.lru_cache(maxsize=1)
def _kernel():
    """Compile-on-demand: the @triton.jit kernel, or None when Triton cannot be imported."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def sym_kernel(X, C0, C, n, m, sxb, sxn, sxm, s0b, s0n, s0m, scb, scn, scm, alpha, beta,
                   HAS_C0: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   WIDEN: tl.constexpr, IEEE: tl.constexpr):
        ti = tl.program_id(0)
        tj = tl.program_id(1)
        batch = tl.program_id(2)
        if ti > tj:  # the lower tiles are written as mirrors of the upper ones
            return
        rows_i = ti * BLOCK_N + tl.arange(0, BLOCK_N)
        rows_j = tj * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, BLOCK_K)
        base = X + batch * sxb
        acc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, m, BLOCK_K):
            kk = k0 + ks
            a = tl.load(base + rows_i[:, None] * sxn + kk[None, :] * sxm,
                        mask=(rows_i[:, None] < n) & (kk[None, :] < m), other=0.0)
            b = tl.load(base + rows_j[None, :] * sxn + kk[:, None] * sxm,
                        mask=(rows_j[None, :] < n) & (kk[:, None] < m), other=0.0)
            if WIDEN:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        acc = acc * alpha
        mask = (rows_i[:, None] < n) & (rows_j[None, :] < n)
        if HAS_C0:
            c0 = tl.load(C0 + batch * s0b + rows_i[:, None] * s0n + rows_j[None, :] * s0m, mask=mask, other=0.0)
            acc = acc + beta * c0.to(tl.float32)
        out = acc.to(C.dtype.element_ty)
        tl.store(C + batch * scb + rows_i[:, None] * scn + rows_j[None, :] * scm, out, mask=mask)
        if ti != tj:
            tl.store(C + batch * scb + rows_j[None, :] * scn + rows_i[:, None] * scm, out, mask=mask)

    return triton, sym_kernel


def available() -> bool:
    """True when Triton imports and the kernel is not turned off (``MUONCLIP_TRITON=0``)."""
    return os.environ.get("MUONCLIP_TRITON", "1") != "0" and _kernel() is not None


def symmetric_product(X: Tensor, alpha: float = 1.0, beta: float = 0.0, C0: Tensor | None = None,
                      out: Tensor | None = None) -> Tensor:
    """``alpha X X^T + beta C0`` for a batch X (B, n, m) of any strides; C0 (B, n, n) must be
    symmetric (only its upper tiles are read). Output in X's dtype, accumulated in fp32 (IEEE
    fp32 products for fp32 inputs, not TF32). A tall matrix's ``X^T X`` is
    ``symmetric_product(X.mT)``."""
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("symmetric_product needs Triton (pip install 'muonclip[triton]')")
    triton, sym_kernel = kernel
    if X.ndim != 3:
        raise ValueError(f"symmetric_product takes a (B, n, m) batch, got shape {tuple(X.shape)}")
    batch, n, m = X.shape
    if C0 is not None and tuple(C0.shape) != (batch, n, n):
        raise ValueError(f"C0 must be ({batch}, {n}, {n}), got {tuple(C0.shape)}")
    C = out if out is not None else torch.empty((batch, n, n), dtype=X.dtype, device=X.device)
    c0 = C0 if C0 is not None else C
    interpreting = _interpreting()
    block_n, block_k, warps, stages = _INTERPRETER_TILES if interpreting else _GPU_TILES
    widen = interpreting and X.dtype != torch.float32
    # The interpreter truncates fp32 -> bf16 casts; a GPU rounds to nearest (cvt.rn). Under
    # the interpreter the kernel writes fp32 and torch rounds, as the GPU would.
    target = torch.empty((batch, n, n), dtype=torch.float32, device=X.device) if widen else C
    tiles = triton.cdiv(n, block_n)
    sym_kernel[(tiles, tiles, batch)](
        X, c0, target, n, m, *X.stride(), *c0.stride(), *target.stride(), float(alpha), float(beta),
        HAS_C0=C0 is not None, BLOCK_N=block_n, BLOCK_K=block_k, WIDEN=widen, IEEE=X.dtype == torch.float32,
        num_warps=warps, num_stages=stages)
    return C.copy_(target) if widen else C


def symmetric_product_fn(X: Tensor) -> Callable[..., Tensor] | None:
    """The symmetric product Newton-Schulz should use for X: the Triton kernel for a CUDA
    tensor when Triton is available, else None (``torch.bmm``)."""
    return symmetric_product if X.is_cuda and available() else None
