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
evaluation of the polynomial (direct and Gram forms, FLOPs) in :mod:`.ns_forms`, the
matrix views (flattening, expert stacks, per-head blocks) in :mod:`.shapes`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .ns_auto import parse_plan
from .ns_forms import Workspace, gram_is_cheaper, newton_schulz_batch, ns_flops
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

    Returns a float32 tensor of G's shape (float64 when ``dtype`` is float64). ``dtype`` is the
    precision of the iteration's products (default float32); the norms are always taken in
    float32 or wider. ``impl`` picks the evaluation (:mod:`.ns_forms`): ``"direct"`` (15
    GEMMs for 5 steps), ``"gram"`` (Gram-NS, fewer FLOPs when m >= ~1.5 n) or ``"auto"``
    (whichever needs fewer FLOPs). Both compute the same polynomial of G, on the short side
    of the matrix, without transposing it. ``coeffs`` defaults to NS5 repeated ``steps`` times.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(G.shape)}")
    if coeffs is None:
        coeffs = ORTHOGONALIZERS["ns5"].schedule(steps)
    shape = G.shape
    X = G.reshape(math.prod(shape[:-2]), shape[-2], shape[-1])  # explicit: -1 is ambiguous when empty
    X = newton_schulz_batch([X], coeffs, impl, dtype, norm_safety)
    return X.to(_out_dtype(dtype)).reshape(shape)


def _out_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The dtype directions are returned in by default: float64 for a float64 iteration, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def orthogonalize(G: Tensor, method: OrthogonalizerSpec = "ns5", steps: int | None = None, *,
                  impl: str = "auto", dtype: torch.dtype | None = None) -> Tensor:
    """Orthogonalise with a named method from :data:`ORTHOGONALIZERS` or custom coefficients
    (``steps`` None: the method's own number of iterations)."""
    spec = resolve_orthogonalizer(method)
    return newton_schulz(G, coeffs=spec.schedule(steps), impl=impl, dtype=dtype, norm_safety=spec.norm_safety)


def muon_momentum_(bufs: list[Tensor], grads: list[Tensor], momentum: float, nesterov: bool,
                   out: list[Tensor] | None = None) -> list[Tensor]:
    """Update the momentum buffers in place; return the tensors to orthogonalise.

    buf <- mu * buf + g; returns g + mu * buf (Nesterov; into ``out`` when given) or the
    buffers. On CUDA batched with foreach kernels; on CPU one fused ``g + mu * buf`` pass per
    tensor, which reads each buffer once instead of twice (this part of the step is
    memory-bound there).
    """
    if not bufs:
        return []
    if bufs[0].device.type == "cpu":
        for buf, grad in zip(bufs, grads, strict=True):
            torch.add(grad, buf, alpha=momentum, out=buf)
    else:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
    if not nesterov:
        return list(bufs)
    if out is None:
        return torch._foreach_add(grads, bufs, alpha=momentum)
    for dest, grad, buf in zip(out, grads, bufs, strict=True):
        torch.add(grad, buf, alpha=momentum, out=dest)
    return list(out)


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
    out_dtype: torch.dtype | None = None,
    workspace: Workspace | None = None,
    plans: Sequence[str] | None = None,
    keep_dtype: bool = False,
) -> list[Tensor]:
    """Scaled Muon directions ``s(n, m) NS(U)``, shaped like ``shapes``.

    Matrices of the same shape are orthogonalised in one batched call, each on its short side
    in its own layout (no transposed copies). ``expert_flags[i]`` declares update ``i`` a stack
    of experts (orthogonalised per slice); other >=3-D tensors are flattened (see
    :func:`matrix_dims`). ``head_blocks[i] = (dim, width)`` (see :func:`effective_head_block`)
    orthogonalises each block of ``width`` rows (dim 0) or columns (dim 1) on its own, scaled
    by the block's ``s(n', m')``. ``scaled=False`` returns the unscaled ``NS(U)`` (NorMuon
    scales later). ``out_dtype``: the directions' dtype, default float32 (float64 for a
    float64 iteration); passing the iteration's ``dtype`` (e.g. bf16) skips a conversion pass,
    and :func:`apply_updates_` takes such directions as they are. With a ``workspace`` (see
    :class:`.ns_forms.Workspace`) the directions may be views of its buffers, valid until
    its next use. ``plans[i]`` (:mod:`.ns_auto`, e.g. ``"bf16:direct"``) sets update ``i``'s
    precision and form instead of ``impl`` and ``dtype``; ``keep_dtype`` returns each direction
    in its iteration's dtype (no conversion pass).
    """
    count = len(updates)
    flags = list(expert_flags) if expert_flags is not None else [False] * count
    blocks = list(head_blocks) if head_blocks is not None else [None] * count
    full = [u.reshape(matrix_dims(s, e)) for u, s, e in zip(updates, shapes, flags, strict=True)]
    mats = [_split_blocks(x, b) for x, b in zip(full, blocks, strict=True)]
    by_shape: dict[tuple[int, int, str | None], list[int]] = {}
    for i, mat in enumerate(mats):
        by_shape.setdefault((*mat.shape[-2:], plans[i] if plans is not None else None), []).append(i)
    spec = resolve_orthogonalizer(method)
    coeffs = spec.schedule(steps)
    out_dtype = out_dtype or _out_dtype(dtype)
    directions: list[Tensor | None] = [None] * count
    for (n, m, plan), members in by_shape.items():
        it_dtype, it_impl = parse_plan(plan) if plan is not None else (dtype, impl)
        # The last iteration is linear in (a, b, c): scaling them applies the update scale for
        # free instead of another pass over every matrix.
        scale = update_scale(n, m, scale_mode) if scaled and n and m else 1.0  # empty: nothing to scale
        a, b, c = coeffs[-1]
        scaled_coeffs = coeffs[:-1] + ((a * scale, b * scale, c * scale),)
        out = newton_schulz_batch([mats[i] for i in members], scaled_coeffs, it_impl, it_dtype, spec.norm_safety,
                                  workspace)
        out = out if keep_dtype else out.to(out_dtype)
        for i, block in zip(members, out.split([mats[i].shape[0] for i in members]), strict=True):
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
