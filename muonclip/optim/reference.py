"""A slow, obviously correct float64 MuonClip/AdamW step, for parity tests of the fast path."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .functional import NS5_COEFFS, update_scale

__all__ = ["reference_orthogonalize", "reference_muon_step", "reference_adamw_step"]


def _ref_ns_matrix(G: Tensor, coeffs: Sequence[tuple[float, float, float]]) -> Tensor:
    """Quintic NS on one matrix, the textbook way: X <- a X + b (X X^T) X + c (X X^T)^2 X."""
    X = G.double()
    transposed = X.shape[0] > X.shape[1]
    if transposed:
        X = X.T
    scale = X.abs().max()
    if scale == 0:
        return torch.zeros_like(G, dtype=torch.float64)
    X = X / scale
    X = X / (X.norm() + 1e-7)
    for a, b, c in coeffs:
        A = X @ X.T
        X = a * X + b * (A @ X) + c * (A @ A @ X)
    return X.T if transposed else X


def reference_orthogonalize(G: Tensor, coeffs: Sequence[tuple[float, float, float]] = NS5_COEFFS) -> Tensor:
    """Float64 orthogonalisation of a 2-D, 3-D (per slice) or conv (flattened) tensor."""
    if G.ndim == 2:
        return _ref_ns_matrix(G, coeffs)
    if G.ndim == 3:
        return torch.stack([_ref_ns_matrix(g, coeffs) for g in G])
    return _ref_ns_matrix(G.reshape(G.shape[0], -1), coeffs).reshape(G.shape)


def reference_muon_step(
    param: Tensor, grad: Tensor, buf: Tensor, *, lr: float, momentum: float = 0.95,
    nesterov: bool = True, weight_decay: float = 0.0, scale_mode: str = "rms_match",
    coeffs: Sequence[tuple[float, float, float]] = NS5_COEFFS,
) -> tuple[Tensor, Tensor]:
    """Returns (new_param, new_buf) in float64; inputs are not modified."""
    g = grad.double()
    buf = momentum * buf.double() + g
    u = g + momentum * buf if nesterov else buf
    O = reference_orthogonalize(u, coeffs)
    if param.ndim == 3:
        n, m = param.shape[1:]
    else:
        n, m = param.shape[0], math.prod(param.shape[1:])
    new = param.double() * (1 - lr * weight_decay) - lr * update_scale(n, m, scale_mode) * O
    return new, buf


def reference_adamw_step(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, *, lr: float,
    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """AdamW (Loshchilov & Hutter) in float64; ``step`` counts from 1."""
    b1, b2 = betas
    g = grad.double()
    m = b1 * exp_avg.double() + (1 - b1) * g
    v = b2 * exp_avg_sq.double() + (1 - b2) * g * g
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    new = param.double() * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps)
    return new, m, v
