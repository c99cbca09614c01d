"""Newton-Schulz evaluation: the two exact forms of the polynomial, their FLOPs, and which one runs.

Both forms compute the same polynomial of the (normalised) input; they differ in which
products they multiply and so in FLOPs, speed and round-off:

* **direct** (Keller Jordan's Muon): per iteration ``A = X X^T``, ``B = b A + c A^2``,
  ``X <- a X + B X`` -- three products, two of them over the long dimension m.
* **Gram** (Gram Newton-Schulz, Dao lab 2026): every iterate is ``X_k = Q_k X_0`` with
  ``Q_k`` a polynomial in ``R_0 = X_0 X_0^T``, so the iteration runs on n x n matrices and
  only the first Gram product and the final ``Q X_0`` touch m. Fewer FLOPs once m >~ 1.5 n.

Both work on either orientation without a transposed copy: a wide batch (n <= m) multiplies
by ``X X^T`` from the left, a tall one by ``X^T X`` from the right, so a tall weight's
direction comes out in the weight's own layout.

Which form runs is decided from the dtype and FLOPs only (:func:`ns_form`), never from a
timing, so the same config gives the same bits in every process. The Gram form is an fp32 /
fp64 form: it iterates on R = X X^T, which squares the condition number, so rounding R to
bf16 puts a noise floor of sqrt(2^-9) ~ 0.04 under every singular value, and the iteration
multiplies noise in R's small eigenvalues by a^2 ~ 12 per step. Measured against a float64
NS5 (``benchmarks/ns_bf16_variants.py``): on Gaussian inputs bf16 Gram is 1.4e-2 to 4.9e-2
(direct bf16: 0.9e-2 to 1.7e-2), but on ill-conditioned ones (singular values log-spaced
from 1 to 1e-3 or 1e-6, or decaying as i^-2) its output blows up, 0.7 to 1.9e4, while the
direct form stays at 0.07 to 0.24 as torch.optim.Muon's does. So in 16-bit only the direct
form runs.
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch
from torch import Tensor

from . import triton_ns
from .orthogonalizers import Coeffs

__all__ = [
    "NS_IMPLS", "ns_flops", "gram_is_cheaper", "ns_form",
    "Workspace", "normalized_batch", "quintic_direct", "quintic_gram", "newton_schulz_batch",
]

NS_IMPLS = ("auto", "gram", "direct")

# Inputs whose Frobenius norm is below this are first divided by their max-abs entry, so the
# squares inside the norm cannot underflow (1e-30 gradients; NVIDIA Emerging-Optimizers #229).
# The papers' "+ 1e-7" on the norm is not used: it only guards 0/0, and it swamps small inputs.
_SAFE_NORM = 1e-15
_FULL = (torch.float32, torch.float64)
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def ns_flops(n: int, m: int, steps: int = 5, gram: bool = False,
             coeffs: Sequence[Coeffs] | None = None) -> int:
    """FLOPs of `steps` Newton-Schulz iterations on one n x m matrix (either orientation).

    ``coeffs`` (if given) sets the steps and marks cubic iterations (c = 0), which skip the
    A^2 (direct) or R^2 (Gram) product.
    """
    n, m = min(n, m), max(n, m)
    if coeffs is not None:
        steps = len(coeffs)
        quintic = sum(1 for _, _, c in coeffs if c != 0)
    else:
        quintic = steps
    if gram:
        # R0 = X X^T and the final Q X0 (2 n^2 m each), then per iteration R^2 (quintic only),
        # Q <- P Q and R <- P R P (first Q is P itself; the last R update is skipped).
        n3_products = quintic + (steps - 1) + 2 * (steps - 1)
        return 4 * n * n * m + 2 * n**3 * n3_products
    return steps * 4 * n * n * m + quintic * 2 * n**3


def gram_is_cheaper(n: int, m: int, steps: int = 5, coeffs: Sequence[Coeffs] | None = None) -> bool:
    return ns_flops(n, m, steps, gram=True, coeffs=coeffs) < ns_flops(n, m, steps, gram=False, coeffs=coeffs)


def ns_form(n: int, m: int, impl: str = "auto", coeffs: Sequence[Coeffs] | None = None,
            dtype: torch.dtype | None = None) -> str:
    """``"gram"`` or ``"direct"``: the form ``impl`` runs on an n x m matrix in ``dtype``.

    ``"auto"``: in fp32 / fp64 the form with fewer FLOPs, in 16-bit the direct form. An
    explicit ``"gram"`` in 16-bit raises: that form diverges on ill-conditioned inputs there
    (module docstring).
    """
    if impl not in NS_IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {NS_IMPLS}")
    low_precision = dtype in _LOW_PRECISION
    if impl == "gram" and low_precision:
        raise ValueError(f"the Gram form of Newton-Schulz is not run in {dtype}: its R = X X^T iterate squares "
                         "the condition number and its output blows up on ill-conditioned inputs (0.7 to 1.9e4 "
                         "from a float64 NS5, measured); use impl='direct' or 'auto', or an fp32 iteration")
    if impl == "auto":
        return "gram" if not low_precision and gram_is_cheaper(n, m, coeffs=coeffs) else "direct"
    return impl


class Workspace:
    """Output buffers that Newton-Schulz reuses from one optimizer step to the next.

    On CPU a fresh multi-megabyte tensor is fresh memory from the OS, and its first write
    costs a page fault per 4 KiB: a quarter of a bf16 step's products went into those faults
    (measured). One buffer per (role, shape, dtype, device) removes them; CUDA's caching
    allocator already reuses memory, so the optimizer makes a workspace only for CPU
    parameters. Tensors returned from a workspace are overwritten by the next call that uses
    the same buffers: consume them first.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, Tensor] = {}

    def get(self, role: Hashable, shape: Sequence[int], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        key = (role, tuple(shape), dtype or like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(key[1], dtype=key[2], device=key[3])
        return buf

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


def _buffer(ws: Workspace | None, role: str, shape: Sequence[int], like: Tensor,
            dtype: torch.dtype | None = None) -> Tensor:
    if ws is None:
        return torch.empty(tuple(shape), dtype=dtype or like.dtype, device=like.device)
    return ws.get(role, shape, like, dtype)


def normalized_batch(mats: Sequence[Tensor], dtype: torch.dtype, safety: float = 1.0,
                     ws: Workspace | None = None) -> Tensor:
    """Stack (b_i, n, m) matrix batches into one (sum b_i, n, m) batch of ``dtype``, each matrix
    scaled to Frobenius norm 1/safety: ``X / (safety ||X||_F)``.

    Norms are taken from the inputs in fp32 (fp64 for fp64). The stack is written once, in
    ``dtype``, by one fused scale-and-cast pass per matrix (one rounding to ``dtype``).

    Tiny inputs (norm < 1e-15) are first divided by their max-abs entry, so the norm's squares
    cannot underflow and 1e-30 gradients orthogonalise like any other (NVIDIA
    Emerging-Optimizers #229); so are huge ones, whose norm overflows fp32 (entries ~1e18:
    the direction would be 0). A zero matrix stays zero instead of 0/0 = NaN (dion PR #24).
    """
    acc = torch.float64 if any(x.dtype == torch.float64 for x in mats) else torch.float32
    norms = torch.cat([torch.linalg.vector_norm(x, dim=(-2, -1), dtype=acc) for x in mats])
    if bool(((norms < _SAFE_NORM) | ~norms.isfinite()).any()):  # a host check: one sync per batch on CUDA
        return _rescued_batch(mats, dtype, acc, safety)
    tiny = torch.finfo(acc).tiny
    inv = (norms * safety).clamp_min(tiny).reciprocal()
    first = mats[0]
    out = _buffer(ws, "x0", (norms.numel(), *first.shape[-2:]), first, dtype)
    start = 0
    for x in mats:
        # One matrix at a time: with a 0-dim scale torch's CPU kernel writes a 16-bit output
        # as fast as a plain copy; with a (b, 1, 1) broadcast scale it is ~4x slower.
        for i in range(x.shape[0]):
            torch.mul(x[i], inv[start + i], out=out[start + i])
        start += x.shape[0]
    return out


def _rescued_batch(mats: Sequence[Tensor], dtype: torch.dtype, acc: torch.dtype, safety: float) -> Tensor:
    """:func:`normalized_batch` for batches holding a tiny, huge or zero matrix: each matrix is
    divided by its max-abs entry first, in ``acc``, then normalised."""
    X = torch.cat([x.to(acc) for x in mats])
    tiny = torch.finfo(acc).tiny
    X = X / X.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(tiny)
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    return X.mul_((norm * safety).clamp_min(tiny).reciprocal()).to(dtype)


def _gram(X: Tensor, tall: bool, out: Tensor) -> Tensor:
    """The small Gram matrix of a batch: X^T X for a tall batch, X X^T for a wide one."""
    return torch.bmm(X.mT, X, out=out) if tall else torch.bmm(X, X.mT, out=out)


def quintic_direct(X: Tensor, coeffs: Sequence[Coeffs], ws: Workspace | None = None,
                   symmetric: Callable[..., Tensor] | None = None) -> Tensor:
    """X <- a X + (b A + c A^2) X with A = X X^T (wide, n <= m) or X <- a X + X (b A + c A^2)
    with A = X^T X (tall). A cubic iteration (c = 0) skips the A^2 product.

    ``symmetric`` (:func:`.triton_ns.symmetric_product` on CUDA) computes the two symmetric
    products, ``A`` and ``b A + c A A^T``, from their upper tiles only. With a workspace the
    iterates alternate between two buffers of X's shape ("x0", where :func:`normalized_batch`
    writes the input, and "x1"), so X itself is overwritten.
    """
    tall = X.shape[-2] > X.shape[-1]
    k = min(X.shape[-2:])
    small = (X.shape[0], k, k)
    A_buf, B_buf = _buffer(ws, "a", small, X), _buffer(ws, "b", small, X)
    iterates = [X, _buffer(ws, "x1", X.shape, X)]
    for i, (a, b, c) in enumerate(coeffs):
        if symmetric is not None:
            A = symmetric(X.mT if tall else X, out=A_buf)
            B = symmetric(A, alpha=c, beta=b, C0=A, out=B_buf) if c != 0 else A.mul_(b)
        else:
            A = _gram(X, tall, A_buf)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c, out=B_buf) if c != 0 else A.mul_(b)
        Y = iterates[(i + 1) % 2] if ws is not None else torch.empty_like(X)
        X = torch.baddbmm(X, X, B, beta=a, out=Y) if tall else torch.baddbmm(X, B, X, beta=a, out=Y)
    return X


def quintic_gram(X0: Tensor, coeffs: Sequence[Coeffs], ws: Workspace | None = None) -> Tensor:
    """The same iteration carried out on the small Gram matrix (Gram Newton-Schulz).

    Wide: X_k = Q_k X_0 with Q_k a polynomial in R_0 = X_0 X_0^T, so only the first Gram
    product and the final Q X_0 touch the long dimension; tall: X_k = X_0 Q_k with
    R_0 = X_0^T X_0. Exact in exact arithmetic; in fp32 it agrees with the direct form to
    round-off (tested against the float64 reference); not run in 16-bit (:func:`ns_form`).
    """
    tall = X0.shape[-2] > X0.shape[-1]
    k = min(X0.shape[-2:])
    small = (X0.shape[0], k, k)
    R = _gram(X0, tall, _buffer(ws, "r0", small, X0))
    eye = torch.eye(k, dtype=R.dtype, device=R.device)
    Q = None
    last = len(coeffs) - 1
    for i, (a, b, c) in enumerate(coeffs):
        P = _buffer(ws, f"p{i % 2}", small, X0)
        if c != 0:
            torch.baddbmm(R, R, R, beta=b, alpha=c, out=P)
        else:
            torch.mul(R, b, out=P)
        P.add_(eye, alpha=a)
        if Q is None:
            Q = P
        else:
            Q = torch.bmm(Q, P, out=_buffer(ws, f"q{i % 2}", small, X0)) if tall else \
                torch.bmm(P, Q, out=_buffer(ws, f"q{i % 2}", small, X0))
        if i != last:
            RP = torch.bmm(R, P, out=_buffer(ws, "rp", small, X0))
            R = torch.bmm(P, RP, out=_buffer(ws, f"r{(i + 1) % 2}", small, X0))
    out = _buffer(ws, "x1", X0.shape, X0)
    return torch.bmm(X0, Q, out=out) if tall else torch.bmm(Q, X0, out=out)


def newton_schulz_batch(mats: Sequence[Tensor], coeffs: Sequence[Coeffs], impl: str = "auto",
                        dtype: torch.dtype | None = None, norm_safety: float = 1.0,
                        ws: Workspace | None = None) -> Tensor:
    """Newton-Schulz of same-shape (b_i, n, m) batches, either orientation, stacked into one
    (sum b_i, n, m) batch and returned in the iteration's ``dtype`` (default float32); with a
    workspace the result lives in it (see :class:`Workspace`)."""
    dtype = dtype or torch.float32
    n, m = mats[0].shape[-2:]
    form = ns_form(n, m, impl, coeffs, dtype)
    if min(n, m) == 0:  # empty matrices (a zero-size layer) have empty directions
        return torch.zeros((sum(x.shape[0] for x in mats), n, m), dtype=dtype, device=mats[0].device)
    X = normalized_batch(mats, dtype, norm_safety, ws)
    if form == "gram":
        return quintic_gram(X, coeffs, ws)
    return quintic_direct(X, coeffs, ws, symmetric=triton_ns.symmetric_product_fn(X))
