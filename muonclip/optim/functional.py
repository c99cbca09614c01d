"""Pure tensor functions of the Muon and AdamW updates: orthogonalisers, scales and steps.

Nothing here keeps state or touches an optimizer: every function takes tensors and returns
tensors (the ``*_`` functions mutate their first argument in place, as torch does). The
single-process, DDP and FSDP2 paths of :class:`muonclip.MuonClip` all run the same three
functions, in this order::

    updates = muon_momentum_(buffers, grads, momentum, nesterov)       # M <- mu M + G
    directions = muon_directions(updates, shapes, expert_flags, ...)   # s(n, m) NS(U)
    apply_updates_(params, directions, lr, weight_decay)                # W <- W(1-lr wd) - lr D

with, between the last two in a NorMuon group, :func:`.normuon.normuon_directions_` (then
``muon_directions(..., scaled=False)``). Schedules live in :mod:`.orthogonalizers`, the
matrix views (flattening, expert stacks, per-head blocks) in :mod:`.shapes`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .orthogonalizers import (
    NS5_COEFFS,
    ORTHOGONALIZERS,
    POLAR_EXPRESS_COEFFS,
    Coeffs,
    Orthogonalizer,
    OrthogonalizerSpec,
    coefficient_schedule,
    resolve_orthogonalizer,
)
from .shapes import (
    HeadBlock,
    _merge_blocks,
    _split_blocks,
    as_matrix_batch,
    block_dims,
    effective_head_block,
    matrix_dims,
)

__all__ = [
    "NS5_COEFFS",
    "POLAR_EXPRESS_COEFFS",
    "ORTHOGONALIZERS",
    "Orthogonalizer",
    "resolve_orthogonalizer",
    "UPDATE_SCALES",
    "RMS_MATCH_FACTOR",
    "coefficient_schedule",
    "newton_schulz",
    "orthogonalize",
    "update_scale",
    "direction_scale",
    "as_matrix_batch",
    "matrix_dims",
    "block_dims",
    "effective_head_block",
    "muon_momentum_",
    "muon_directions",
    "apply_updates_",
    "adamw_update_",
    "muon_update",
    "gram_is_cheaper",
    "ns_flops",
]

# Moonlight (arXiv 2502.16982, Sec. 2.2): scale the orthogonalised update by
# 0.2 * sqrt(max(n, m)) so its RMS matches AdamW's typical ~0.2, letting AdamW's lr and
# weight decay carry over. Keller's original rule is sqrt(max(1, n/m)).
RMS_MATCH_FACTOR = 0.2
UPDATE_SCALES = ("rms_match", "original")

# Inputs whose Frobenius norm is below this are first divided by their max-abs entry, so the
# squares inside the norm cannot underflow (1e-30 gradients; NVIDIA Emerging-Optimizers #229).
# The papers' "+ 1e-7" on the norm is not used: it only guards 0/0, and it swamps small inputs.
_SAFE_NORM = 1e-15
# Parameter dtypes updated in place; narrower ones (bf16, fp16) are updated in fp32 and cast back.
_FULL = (torch.float32, torch.float64)


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a parameter of ``dtype`` is updated and its state kept in: fp32, or fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


def update_scale(n: int, m: int, mode: str = "rms_match") -> float:
    """Scale applied to an orthogonalised (n x m) update."""
    if mode == "rms_match":
        return RMS_MATCH_FACTOR * math.sqrt(max(n, m))
    if mode == "original":
        return math.sqrt(max(1.0, n / m))
    raise ValueError(f"unknown update_scale {mode!r}; expected one of {UPDATE_SCALES}")


def direction_scale(shape: Sequence[int], expert_stack: bool = False, head_block: HeadBlock | None = None,
                    mode: str = "rms_match") -> float:
    """The update scale of a parameter: :func:`update_scale` of the blocks it is orthogonalised
    in (all blocks of a parameter have the same size, so one number)."""
    _, n, m = block_dims(shape, expert_stack, head_block)
    return update_scale(n, m, mode)


def ns_flops(n: int, m: int, steps: int = 5, gram: bool = False,
             coeffs: Sequence[Coeffs] | None = None) -> int:
    """FLOPs of `steps` Newton-Schulz iterations on one matrix (n <= m after orientation).

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


def _normalized_batch(mats: Sequence[Tensor], dtype: torch.dtype, safety: float = 1.0) -> Tensor:
    """Stack (b_i, n, m) matrix batches into one (sum b_i, n, m) batch of ``dtype``, each matrix
    scaled to Frobenius norm 1/safety: ``X / (safety ||X||_F)``.

    The scale is taken in the inputs' precision (fp32 at least) and the cast to ``dtype`` is
    fused into it: one scaling pass that writes ``dtype``, in place on the stacked copy when
    that copy is already of ``dtype`` (this is memory-bound work; every pass and every fresh
    allocation shows in the step time).

    Tiny inputs (norm < 1e-15) are first divided by their max-abs entry, so the norm's squares
    cannot underflow and 1e-30 gradients orthogonalise like any other (NVIDIA
    Emerging-Optimizers #229); so are huge ones, whose norm overflows fp32 (entries ~1e18:
    the direction would be 0). A zero matrix stays zero instead of 0/0 = NaN (dion PR #24).
    """
    owned = len(mats) > 1
    X = torch.cat(mats) if owned else mats[0]
    if X.dtype not in _FULL:
        X, owned = X.float(), True
    tiny = torch.finfo(X.dtype).tiny
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    if bool(((norm < _SAFE_NORM) | ~norm.isfinite()).any()):  # a host check: one sync per batch on CUDA
        X, owned = X / X.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(tiny), True
        norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    inv = (norm * safety).clamp_min(tiny).reciprocal()
    if owned and X.dtype == dtype:
        return X.mul_(inv)
    return torch.mul(X, inv, out=torch.empty(X.shape, dtype=dtype, device=X.device))


def _quintic_direct(X: Tensor, coeffs: Sequence[Coeffs]) -> Tensor:
    """X <- a X + (b A + c A^2) X with A = X X^T; X is a wide batch (B, n, m), n <= m.
    A cubic iteration (c = 0) skips the A^2 product."""
    for a, b, c in coeffs:
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c) if c != 0 else A.mul_(b)
        X = torch.baddbmm(X, B, X, beta=a, alpha=1.0)
    return X


def _quintic_gram(X0: Tensor, coeffs: Sequence[Coeffs]) -> Tensor:
    """The same iteration carried out on the n x n Gram matrix (Gram Newton-Schulz).

    Every iterate is X_k = Q_k X_0 with Q_k a polynomial in R_0 = X_0 X_0^T, so
    X_k X_k^T = P R P-style updates stay n x n; only the first Gram product and the final
    Q X_0 touch the long dimension m. Exact in exact arithmetic; in fp32 it agrees with the
    direct form to round-off (tested against the float64 reference). Not picked for bf16,
    where the long product chain drifts: 2e-2 to 9e-2 from float64 NS5 against the direct
    form's 1.1e-2 to 1.4e-2 (``benchmarks/ns_bf16_variants.py``).
    """
    R = torch.bmm(X0, X0.mT)
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    Q = None
    last = len(coeffs) - 1
    for i, (a, b, c) in enumerate(coeffs):
        P = (torch.baddbmm(R, R, R, beta=b, alpha=c) if c != 0 else R * b).add_(eye, alpha=a)
        Q = P if Q is None else torch.bmm(P, Q)
        if i != last:
            R = torch.bmm(P, torch.bmm(R, P))
    return torch.bmm(Q, X0)


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    coeffs: Sequence[Coeffs] | None = None,
    *,
    impl: str = "auto",
    dtype: torch.dtype | None = None,
    norm_safety: float = 1.0,
) -> Tensor:
    """Approximately orthogonalise G (..., n, m) with quintic Newton-Schulz.

    Works on the wide orientation (transposes when n > m) and returns a float32 tensor of G's
    shape. ``dtype`` is the precision of the iteration (default float32); the normalisation
    is always done in float32. ``impl`` picks the evaluation: ``"direct"`` (15 GEMMs for 5
    steps), ``"gram"`` (Gram-NS, fewer FLOPs when m >= ~1.5 n) or ``"auto"`` (whichever needs
    fewer FLOPs in fp32/fp64, direct in 16-bit). Both compute the same polynomial of G.
    ``coeffs`` defaults to NS5 repeated ``steps`` times.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(G.shape)}")
    if coeffs is None:
        coeffs = ORTHOGONALIZERS["ns5"].schedule(steps)
    shape = G.shape
    X = G.reshape(math.prod(shape[:-2]), shape[-2], shape[-1])  # explicit: -1 is ambiguous when empty
    transposed = X.shape[-2] > X.shape[-1]
    X = _newton_schulz_wide([X.mT if transposed else X], coeffs, impl, dtype, norm_safety)
    return (X.mT if transposed else X).reshape(shape)


def _newton_schulz_wide(mats: Sequence[Tensor], coeffs: Sequence[Coeffs], impl: str = "auto",
                        dtype: torch.dtype | None = None, norm_safety: float = 1.0) -> Tensor:
    """:func:`newton_schulz` of wide (b_i, n, m) batches (n <= m), stacked into one batch:
    returns (sum b_i, n, m), float64 when ``dtype`` is float64, else float32."""
    dtype = dtype or torch.float32
    n, m = mats[0].shape[-2:]
    low_precision = dtype in (torch.bfloat16, torch.float16)
    choice = {"auto": not low_precision and gram_is_cheaper(n, m, coeffs=coeffs), "gram": True, "direct": False}
    if impl not in choice:
        raise ValueError(f"unknown impl {impl!r}; expected 'auto', 'gram' or 'direct'")
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if n == 0:  # empty matrices (a zero-size layer) have empty directions
        return torch.zeros((sum(x.shape[0] for x in mats), n, m), dtype=out_dtype, device=mats[0].device)
    X = _normalized_batch(mats, dtype, norm_safety)
    X = _quintic_gram(X, coeffs) if choice[impl] else _quintic_direct(X, coeffs)
    return X.to(out_dtype)


def orthogonalize(G: Tensor, method: OrthogonalizerSpec = "ns5", steps: int | None = None, *,
                  impl: str = "auto", dtype: torch.dtype | None = None) -> Tensor:
    """Orthogonalise with a named method from :data:`ORTHOGONALIZERS` or custom coefficients
    (``steps`` None: the method's own number of iterations)."""
    spec = resolve_orthogonalizer(method)
    return newton_schulz(G, coeffs=spec.schedule(steps), impl=impl, dtype=dtype, norm_safety=spec.norm_safety)


def muon_momentum_(bufs: list[Tensor], grads: list[Tensor], momentum: float, nesterov: bool) -> list[Tensor]:
    """Update the momentum buffers in place; return the tensors to orthogonalise.

    buf <- mu * buf + g; returns g + mu * buf (Nesterov) or the buffers. Batched with foreach
    kernels (one Python call for every parameter of a group).
    """
    if not bufs:
        return []
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, grads)
    return torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else list(bufs)


def muon_directions(
    updates: Sequence[Tensor],
    shapes: Sequence[Sequence[int]],
    expert_flags: Sequence[bool] | None = None,
    *,
    method: OrthogonalizerSpec = "ns5",
    steps: int | None = 5,
    scale_mode: str = "rms_match",
    impl: str = "auto",
    dtype: torch.dtype | None = None,
    head_blocks: Sequence[HeadBlock | None] | None = None,
    scaled: bool = True,
) -> list[Tensor]:
    """Scaled Muon directions ``s(n, m) NS(U)`` (float32, shaped like ``shapes``).

    Matrices of the same (sorted) size are orthogonalised in one batched call, tall ones
    transposed to wide. ``expert_flags[i]`` declares update ``i`` a stack of experts
    (orthogonalised per slice); other >=3-D tensors are flattened (see :func:`matrix_dims`).
    ``head_blocks[i] = (dim, width)`` (see :func:`effective_head_block`) orthogonalises each
    block of ``width`` rows (dim 0) or columns (dim 1) on its own, scaled by the block's
    ``s(n', m')``. ``scaled=False`` returns the unscaled ``NS(U)`` (NorMuon scales later).
    """
    count = len(updates)
    flags = list(expert_flags) if expert_flags is not None else [False] * count
    blocks = list(head_blocks) if head_blocks is not None else [None] * count
    full = [u.reshape(matrix_dims(s, e)) for u, s, e in zip(updates, shapes, flags, strict=True)]
    mats = [_split_blocks(x, b) for x, b in zip(full, blocks, strict=True)]
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, mat in enumerate(mats):
        n, m = mat.shape[-2:]
        by_size.setdefault((min(n, m), max(n, m)), []).append(i)
    spec = resolve_orthogonalizer(method)
    coeffs = spec.schedule(steps)
    directions: list[Tensor | None] = [None] * count
    for members in by_size.values():
        wide = [mats[i] if mats[i].shape[-2] <= mats[i].shape[-1] else mats[i].mT for i in members]
        # The last iteration is linear in (a, b, c): scaling them applies the update scale for
        # free instead of another pass over every matrix.
        n, m = mats[members[0]].shape[-2:]
        scale = update_scale(n, m, scale_mode) if scaled and n and m else 1.0  # empty: nothing to scale
        a, b, c = coeffs[-1]
        scaled_coeffs = coeffs[:-1] + ((a * scale, b * scale, c * scale),)
        out = _newton_schulz_wide(wide, scaled_coeffs, impl, dtype, spec.norm_safety)
        for i, block in zip(members, out.split([w.shape[0] for w in wide]), strict=True):
            block = block.mT if mats[i].shape[-2] > mats[i].shape[-1] else block
            directions[i] = _merge_blocks(block, blocks[i], *full[i].shape[-2:]).reshape(shapes[i])
    return directions  # type: ignore[return-value]


def apply_updates_(params: list[Tensor], directions: list[Tensor], lr: float, weight_decay: float,
                   cautious: bool = False) -> None:
    """W <- W (1 - lr wd) - lr D, in fp32 whatever W's dtype.

    The decay uses the base lr, not the RMS-scaled one (Moonlight Sec. 2.2). ``cautious``:
    Cautious Weight Decay (Chen et al., arXiv 2510.12402, Alg. 1), x <- x - lr (u + wd I(u x >= 0) x):
    the decay only reaches entries where the update D and the weight W agree in sign (or one is 0).
    """
    if cautious and weight_decay:
        for p, d in zip(params, directions, strict=True):
            w = p if p.dtype in _FULL else p.float()
            w.mul_(_cautious_decay(d, w, lr * weight_decay)).add_(d, alpha=-lr)
            if w is not p:
                p.copy_(w)
        return
    full = [i for i, p in enumerate(params) if p.dtype in _FULL]
    if full:
        ps = [params[i] for i in full]
        if weight_decay:
            torch._foreach_mul_(ps, 1.0 - lr * weight_decay)
        torch._foreach_add_(ps, [directions[i] for i in full], alpha=-lr)
    for i, p in enumerate(params):
        if p.dtype not in _FULL:
            w = p.float()
            if weight_decay:
                w.mul_(1.0 - lr * weight_decay)
            w.add_(directions[i], alpha=-lr)
            p.copy_(w)


def _cautious_decay(update: Tensor, w: Tensor, decay: float) -> Tensor:
    """Per-entry decay factor of Cautious Weight Decay (arXiv 2510.12402, Alg. 1): 1 - decay
    where update * w >= 0, else exactly 1. ``update`` is the step's direction (W -= lr update)."""
    keep = torch.ones((), dtype=w.dtype, device=w.device)
    return torch.where(update * w >= 0, torch.full_like(keep, 1.0 - decay), keep)


def adamw_update_(p: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: float, *, lr: float,
                  betas: tuple[float, float], eps: float, weight_decay: float, cautious: bool = False) -> None:
    """One AdamW step on one (local) tensor; ``step`` counts from 1. Moments are fp32.

    The same operations, in the same order, as torch.optim.AdamW's single-tensor path, so the
    two agree bit for bit in fp32. ``cautious``: Cautious Weight Decay (arXiv 2510.12402), the
    decay only where the update m_hat / (sqrt(v_hat) + eps) -- whose sign is exp_avg's after this
    step's update -- and the weight agree in sign.
    """
    beta1, beta2 = betas
    full = p.dtype in _FULL
    w = p if full else p.float()
    grad = grad if full else grad.float()
    if not cautious:
        w.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if cautious:
        w.mul_(_cautious_decay(exp_avg, w, lr * weight_decay))
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
    w.addcdiv_(exp_avg, denom, value=-step_size)
    if not full:
        p.copy_(w)


def muon_update(
    grad: Tensor,
    momentum_buffer: Tensor,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    method: OrthogonalizerSpec = "ns5",
    ns_steps: int | None = 5,
    scale_mode: str = "rms_match",
    expert_stack: bool = False,
    head_block: HeadBlock | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The scaled Muon direction for one parameter (not yet multiplied by -lr).

    Updates ``momentum_buffer`` in place. Conv weights and other >=3-D tensors are one
    flattened (out, in*k...) matrix unless ``expert_stack`` declares a 3-D stack of experts.
    Returns a float32 tensor of grad's shape. The optimizer runs exactly these steps.
    """
    (u,) = muon_momentum_([momentum_buffer], [grad.to(_working_dtype(grad.dtype))], momentum, nesterov)
    (d,) = muon_directions([u], [grad.shape], [expert_stack], method=method, steps=ns_steps,
                           scale_mode=scale_mode, dtype=dtype, head_blocks=[head_block])
    return d
