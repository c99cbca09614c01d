"""A slow, obviously correct float64 MuonClip/AdamW step, for parity tests of the fast paths."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .functional import ORTHOGONALIZERS, matrix_dims, update_scale

__all__ = [
    "reference_orthogonalize", "reference_polar_express", "reference_muon_step", "reference_adamw_step",
]


def _ref_ns_matrix(G: Tensor, coeffs: Sequence[tuple[float, float, float]], norm_safety: float) -> Tensor:
    """Quintic NS on one matrix, the textbook way: X <- a X + b (X X^T) X + c (X X^T)^2 X."""
    X = G.double()
    transposed = X.shape[0] > X.shape[1]
    if transposed:
        X = X.T
    scale = X.abs().max()
    if scale == 0:
        return torch.zeros_like(G, dtype=torch.float64)
    X = X / scale
    X = X / (X.norm() * norm_safety)
    for a, b, c in coeffs:
        A = X @ X.T
        X = a * X + b * (A @ X) + c * (A @ A @ X)
    return X.T if transposed else X


def reference_orthogonalize(G: Tensor, method: str = "ns5", steps: int = 5, *,
                            expert_stack: bool = False) -> Tensor:
    """Float64 orthogonalisation of a 2-D tensor, a declared expert stack (per slice) or any
    other >=3-D tensor (flattened to (out, in*k...))."""
    spec = ORTHOGONALIZERS[method]
    coeffs = spec.schedule(steps)
    mats = G.reshape(matrix_dims(G.shape, expert_stack))
    return torch.stack([_ref_ns_matrix(m, coeffs, spec.norm_safety) for m in mats]).reshape(G.shape)


# Amsel et al., arXiv 2505.16932, Alg. 1 and its reference code, transcribed in float64 with
# no shared code: the published coefficients, safety 1.01 on all but the last, and the input
# divided by 1.01 ||G||_F + 1e-7.
_PAPER_COEFFS = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]


def reference_polar_express(G: Tensor, steps: int) -> Tensor:
    """Polar Express of one matrix exactly as the paper writes it, in float64."""
    coeffs = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _PAPER_COEFFS[:-1]] + [_PAPER_COEFFS[-1]]
    schedule = coeffs[:steps] + [coeffs[-1]] * max(0, steps - len(coeffs))
    X = G.double()
    transposed = X.shape[-2] > X.shape[-1]
    if transposed:
        X = X.mT
    X = X / (X.norm() * 1.01 + 1e-7)
    for a, b, c in schedule:
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if transposed else X


def reference_muon_step(
    param: Tensor, grad: Tensor, buf: Tensor, *, lr: float, momentum: float = 0.95,
    nesterov: bool = True, weight_decay: float = 0.0, scale_mode: str = "rms_match",
    method: str = "ns5", steps: int = 5, expert_stack: bool = False,
) -> tuple[Tensor, Tensor]:
    """Returns (new_param, new_buf) in float64; inputs are not modified."""
    g = grad.double()
    buf = momentum * buf.double() + g
    u = g + momentum * buf if nesterov else buf
    ortho = reference_orthogonalize(u, method, steps, expert_stack=expert_stack)
    _, n, m = matrix_dims(param.shape, expert_stack)
    new = param.double() * (1 - lr * weight_decay) - lr * update_scale(n, m, scale_mode) * ortho
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
