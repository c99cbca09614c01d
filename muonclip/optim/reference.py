"""A slow, obviously correct float64 MuonClip/AdamW step, for parity tests of the fast paths.

Written without the fast path's helpers where they carry the logic under test: heads are cut
out by explicit slicing, NorMuon and Cautious Weight Decay follow the papers' formulas.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .functional import update_scale
from .orthogonalizers import OrthogonalizerSpec, resolve_orthogonalizer
from .shapes import matrix_dims

__all__ = [
    "reference_orthogonalize", "reference_polar_express", "reference_muon_step", "reference_adamw_step",
    "reference_normuon", "ill_conditioned", "power_law", "input_classes",
]


def ill_conditioned(batch: int, n: int, m: int, log10_min: float, generator: torch.Generator) -> Tensor:
    """A float64 (batch, n, m) test batch whose singular values are log-spaced from 1 to
    10^log10_min (random orthonormal bases): inputs that, unlike Gaussian ones, tell apart the
    Newton-Schulz forms, as real momenta have a few dominant directions."""
    return _with_singular_values(torch.logspace(0, log10_min, min(n, m), dtype=torch.float64), batch, n, m,
                                 generator)


def power_law(batch: int, n: int, m: int, exponent: float, generator: torch.Generator) -> Tensor:
    """A float64 (batch, n, m) test batch with singular values i^exponent, i = 1..min(n, m)
    (random orthonormal bases): a heavy head and a long tail, like a trained layer's momentum."""
    return _with_singular_values(torch.arange(1, min(n, m) + 1, dtype=torch.float64) ** exponent, batch, n, m,
                                 generator)


def _with_singular_values(values: Tensor, batch: int, n: int, m: int, generator: torch.Generator) -> Tensor:
    """``batch`` float64 (n, m) matrices U diag(values) V^T with random orthonormal U and V."""
    k = len(values)
    mats = []
    for _ in range(batch):
        U, _ = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(m, k, generator=generator, dtype=torch.float64))
        mats.append((U * values) @ V.T)
    return torch.stack(mats)


def input_classes(batch: int, n: int, m: int, seed: int = 0) -> dict[str, Tensor]:
    """The four float32 input classes every Newton-Schulz form is held to: Gaussian, singular
    values log-spaced from 1 to 1e-3 and to 1e-6, and sigma_i proportional to i^-2."""
    g = torch.Generator().manual_seed(seed)
    return {"gaussian": torch.randn(batch, n, m, generator=g),
            "log_1e-3": ill_conditioned(batch, n, m, -3, g).float(),
            "log_1e-6": ill_conditioned(batch, n, m, -6, g).float(),
            "power_-2": power_law(batch, n, m, -2.0, g).float()}


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


def reference_orthogonalize(G: Tensor, method: OrthogonalizerSpec = "ns5", steps: int | None = 5, *,
                            expert_stack: bool = False, head_block: tuple[int, int] | None = None) -> Tensor:
    """Float64 orthogonalisation of a 2-D tensor, a declared expert stack (per slice) or any
    other >=3-D tensor (flattened to (out, in*k...)). ``head_block = (dim, width)``: each block
    of ``width`` rows (dim 0) or columns (dim 1) of every matrix on its own."""
    spec = resolve_orthogonalizer(method)
    coeffs = spec.schedule(steps)
    mats = G.reshape(matrix_dims(G.shape, expert_stack))
    out = torch.zeros(mats.shape, dtype=torch.float64)
    for b, mat in enumerate(mats):
        if head_block is None:
            out[b] = _ref_ns_matrix(mat, coeffs, spec.norm_safety)
            continue
        dim, width = head_block
        for start in range(0, mat.shape[dim], width):
            if dim == 0:
                out[b, start:start + width] = _ref_ns_matrix(mat[start:start + width], coeffs, spec.norm_safety)
            else:
                out[b, :, start:start + width] = _ref_ns_matrix(mat[:, start:start + width], coeffs, spec.norm_safety)
    return out.reshape(G.shape)


def reference_normuon(ortho: Tensor, v: Tensor, *, beta2: float = 0.95, eps: float = 1e-10,
                      expert_stack: bool = False) -> tuple[Tensor, Tensor]:
    """NorMuon (Li et al., arXiv 2510.05491; official ``normuon_update``) in float64, matrix by
    matrix: v <- beta2 v + (1 - beta2) mean_cols(O^2); O / (sqrt(v) + eps), rescaled to ||O||_F.
    ``v`` is (out, 1), or (E, n, 1) for an expert stack. Returns (new update, new v)."""
    mats = ortho.double().reshape(matrix_dims(ortho.shape, expert_stack))
    v_mats = v.double().reshape(mats.shape[0], mats.shape[1], 1)
    outs, vs = [], []
    for mat, vm in zip(mats, v_mats, strict=True):
        vm = beta2 * vm + (1 - beta2) * (mat * mat).mean(dim=1, keepdim=True)
        hat = mat / (vm.sqrt() + eps)
        outs.append(hat * mat.norm() / (hat.norm() + eps))
        vs.append(vm)
    return torch.stack(outs).reshape(ortho.shape), torch.stack(vs).reshape(v.shape)


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
    method: OrthogonalizerSpec = "ns5", steps: int | None = 5, expert_stack: bool = False,
    head_block: tuple[int, int] | None = None, cautious: bool = False,
    normuon_v: Tensor | None = None, normuon_beta2: float = 0.95,
) -> tuple[Tensor, ...]:
    """Returns (new_param, new_buf), plus the new NorMuon state when ``normuon_v`` is given, in
    float64; inputs are not modified. ``head_block`` is the effective (dim, block width)."""
    g = grad.double()
    buf = momentum * buf.double() + g
    u = g + momentum * buf if nesterov else buf
    ortho = reference_orthogonalize(u, method, steps, expert_stack=expert_stack, head_block=head_block)
    new_v = None
    if normuon_v is not None:
        ortho, new_v = reference_normuon(ortho, normuon_v, beta2=normuon_beta2, expert_stack=expert_stack)
    _, n, m = matrix_dims(param.shape, expert_stack)
    if head_block is not None:
        n, m = (head_block[1], m) if head_block[0] == 0 else (n, head_block[1])
    update = update_scale(n, m, scale_mode) * ortho
    w = param.double()
    mask = (update * w >= 0).double() if cautious else torch.ones_like(w)
    new = w - lr * (update + weight_decay * mask * w)
    return (new, buf) if new_v is None else (new, buf, new_v)


def reference_adamw_step(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, *, lr: float,
    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0,
    cautious: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """AdamW (Loshchilov & Hutter) in float64; ``step`` counts from 1. ``cautious``: Cautious
    Weight Decay (arXiv 2510.12402, Alg. 1), x <- x - lr (u + wd I(u x >= 0) x)."""
    b1, b2 = betas
    g = grad.double()
    m = b1 * exp_avg.double() + (1 - b1) * g
    v = b2 * exp_avg_sq.double() + (1 - b2) * g * g
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    update = m_hat / (v_hat.sqrt() + eps)
    w = param.double()
    mask = (update * w >= 0).double() if cautious else torch.ones_like(w)
    new = w - lr * (update + weight_decay * mask * w)
    return new, m, v
