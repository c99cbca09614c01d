"""Pure tensor functions of the Muon update: orthogonalisers, update scales and the Muon step.

Nothing here keeps state or touches an optimizer: every function takes tensors and returns
tensors (the ``*_`` functions mutate their first argument in place, as torch does).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import Tensor

__all__ = [
    "NS5_COEFFS",
    "POLAR_EXPRESS_COEFFS",
    "ORTHOGONALIZERS",
    "UPDATE_SCALES",
    "RMS_MATCH_FACTOR",
    "newton_schulz",
    "orthogonalize",
    "update_scale",
    "as_matrix_batch",
    "muon_momentum_",
    "muon_update",
    "gram_is_cheaper",
    "ns_flops",
]

# Quintic Newton-Schulz coefficients (a, b, c) of p(x) = a x + b x^3 + c x^5, applied 5 times.
# Keller Jordan's Muon (2024), used unchanged by Moonlight (arXiv 2502.16982) and Kimi K2
# (arXiv 2507.20534, Alg. 1). They trade exactness for speed: singular values land in
# roughly [0.7, 1.2] instead of exactly 1, which is intended.
NS5_COEFFS: tuple[tuple[float, float, float], ...] = ((3.4445, -4.7750, 2.0315),) * 5

# Polar Express (Amsel et al., arXiv 2505.16932, Alg. 1): a different minimax-optimal quintic
# per iteration, each divided by a safety factor (1.01 on x, 1.01^3 on x^3, 1.01^5 on x^5) so
# round-off cannot push singular values past the fixed point. Five iterations reach a much
# tighter band around 1 than NS5 at the same cost.
_PE_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
)
_PE_SAFETY = 1.01
POLAR_EXPRESS_COEFFS: tuple[tuple[float, float, float], ...] = tuple(
    (a / _PE_SAFETY, b / _PE_SAFETY**3, c / _PE_SAFETY**5) for a, b, c in _PE_RAW
)

ORTHOGONALIZERS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "ns5": NS5_COEFFS,
    "polar_express": POLAR_EXPRESS_COEFFS,
}

# Moonlight (arXiv 2502.16982, Sec. 2.2): scale the orthogonalised update by
# 0.2 * sqrt(max(n, m)) so its RMS matches AdamW's typical ~0.2, letting AdamW's lr and
# weight decay carry over. Keller's original rule is sqrt(max(1, n/m)).
RMS_MATCH_FACTOR = 0.2
UPDATE_SCALES = ("rms_match", "original")

# Gram-NS (iterating on the n x n Gram matrix) computes the same polynomial with fewer FLOPs
# once m is large enough relative to n; see `gram_is_cheaper`.
_NORM_EPS = 1e-7


def update_scale(n: int, m: int, mode: str = "rms_match") -> float:
    """Scale applied to an orthogonalised (n x m) update."""
    if mode == "rms_match":
        return RMS_MATCH_FACTOR * math.sqrt(max(n, m))
    if mode == "original":
        return math.sqrt(max(1.0, n / m))
    raise ValueError(f"unknown update_scale {mode!r}; expected one of {UPDATE_SCALES}")


def as_matrix_batch(t: Tensor) -> Tensor:
    """View a Muon parameter/gradient as a batch of matrices (B, n, m).

    2-D -> (1, n, m); 3-D (E, n, m) stays (per-expert); >=4-D conv weights flatten to
    (1, out, in*kh*kw) so the update scale uses the true fan-in (KellerJordan/Muon #63).
    """
    if t.ndim == 2:
        return t.unsqueeze(0)
    if t.ndim == 3:
        return t
    if t.ndim >= 4:
        return t.reshape(1, t.shape[0], -1)
    raise ValueError(f"Muon needs a >=2-D tensor, got shape {tuple(t.shape)}")


def ns_flops(n: int, m: int, steps: int = 5, gram: bool = False) -> int:
    """FLOPs of `steps` quintic iterations on one matrix (n <= m after orientation)."""
    n, m = min(n, m), max(n, m)
    if gram:
        # R0 = X X^T and the final Q X0 (2 n^2 m each), then per iteration R^2, Q <- P Q and
        # R <- P R P (first Q is P itself; the last R update is skipped).
        n3_products = steps + (steps - 1) + 2 * (steps - 1)
        return 4 * n * n * m + 2 * n**3 * n3_products
    return steps * (4 * n * n * m + 2 * n**3)


def gram_is_cheaper(n: int, m: int, steps: int = 5) -> bool:
    return ns_flops(n, m, steps, gram=True) < ns_flops(n, m, steps, gram=False)


def _normalize(X: Tensor) -> Tensor:
    """Scale each matrix of a (B, n, m) batch to Frobenius norm <= 1.

    Dividing by the max-abs entry first keeps tiny gradients (1e-30) from underflowing when
    squared, which is how eps otherwise swamps the norm (NVIDIA Emerging-Optimizers #229).
    A zero matrix stays zero instead of becoming 0/0 = NaN (dion PR #24).
    """
    amax = X.abs().amax(dim=(-2, -1), keepdim=True)
    X = X / amax.clamp_min(torch.finfo(X.dtype).tiny)
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    return X / (norm + _NORM_EPS)


def _quintic_direct(X: Tensor, coeffs: Sequence[tuple[float, float, float]]) -> Tensor:
    """X <- a X + (b A + c A^2) X with A = X X^T; X is a wide batch (B, n, m), n <= m."""
    for a, b, c in coeffs:
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a, alpha=1.0)
    return X


def _quintic_gram(X0: Tensor, coeffs: Sequence[tuple[float, float, float]]) -> Tensor:
    """The same iteration carried out on the n x n Gram matrix (Gram Newton-Schulz).

    Every iterate is X_k = Q_k X_0 with Q_k a polynomial in R_0 = X_0 X_0^T, so
    X_k X_k^T = P R P-style updates stay n x n; only the first Gram product and the final
    Q X_0 touch the long dimension m. Exact in exact arithmetic; in fp32 it agrees with the
    direct form to round-off (tested against the float64 reference).
    """
    R = torch.bmm(X0, X0.mT)
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    Q = None
    last = len(coeffs) - 1
    for i, (a, b, c) in enumerate(coeffs):
        P = torch.baddbmm(R, R, R, beta=b, alpha=c).add_(eye, alpha=a)
        Q = P if Q is None else torch.bmm(P, Q)
        if i != last:
            R = torch.bmm(P, torch.bmm(R, P))
    return torch.bmm(Q, X0)


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    coeffs: Sequence[tuple[float, float, float]] | None = None,
    *,
    impl: str = "auto",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Approximately orthogonalise G (..., n, m) with quintic Newton-Schulz.

    Works on the wide orientation (transposes when n > m) and returns a tensor of G's shape
    in ``dtype`` (default float32; bf16 only makes sense on CUDA). ``impl`` picks the
    evaluation: ``"direct"`` (15 GEMMs for 5 steps), ``"gram"`` (Gram-NS, fewer FLOPs when
    m >= ~1.5 n) or ``"auto"`` (whichever needs fewer FLOPs). Both compute the same
    polynomial of G.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(G.shape)}")
    if coeffs is None:
        coeffs = NS5_COEFFS[:steps] if steps <= len(NS5_COEFFS) else (NS5_COEFFS[0],) * steps
    dtype = dtype or torch.float32
    shape = G.shape
    X = G.reshape(-1, shape[-2], shape[-1]).to(dtype)
    transposed = X.shape[-2] > X.shape[-1]
    if transposed:
        X = X.mT
    n, m = X.shape[-2:]
    use_gram = {"auto": gram_is_cheaper(n, m, len(coeffs)), "gram": True, "direct": False}.get(impl)
    if use_gram is None:
        raise ValueError(f"unknown impl {impl!r}; expected 'auto', 'gram' or 'direct'")
    X = _normalize(X)
    X = _quintic_gram(X, coeffs) if use_gram else _quintic_direct(X, coeffs)
    if transposed:
        X = X.mT
    return X.reshape(shape)


def orthogonalize(G: Tensor, method: str = "ns5", steps: int = 5, *, impl: str = "auto",
                  dtype: torch.dtype | None = None) -> Tensor:
    """Orthogonalise with a named method (``"ns5"`` or ``"polar_express"``)."""
    try:
        table = ORTHOGONALIZERS[method]
    except KeyError:
        raise ValueError(f"unknown orthogonaliser {method!r}; expected one of {tuple(ORTHOGONALIZERS)}") from None
    if method == "ns5":
        coeffs = (table[0],) * steps
    else:
        # Polar Express: tuned per-iteration polynomials; extra steps repeat the last one.
        coeffs = table[:steps] + (table[-1],) * max(0, steps - len(table))
    return newton_schulz(G, coeffs=coeffs, impl=impl, dtype=dtype)


def muon_momentum_(buf: Tensor, grad: Tensor, momentum: float, nesterov: bool) -> Tensor:
    """Update the momentum buffer in place and return the tensor to orthogonalise.

    buf <- mu * buf + g; returns g + mu * buf (Nesterov) or buf.
    """
    buf.mul_(momentum).add_(grad)
    return grad.add(buf, alpha=momentum) if nesterov else buf


def muon_update(
    grad: Tensor,
    momentum_buffer: Tensor,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    method: str = "ns5",
    ns_steps: int = 5,
    scale_mode: str = "rms_match",
) -> Tensor:
    """The scaled Muon direction for one parameter (not yet multiplied by -lr).

    Updates ``momentum_buffer`` in place. For a 3-D tensor every slice is a separate matrix;
    4-D conv weights are treated as (out, in*kh*kw). Returns a float32 tensor of grad's shape.
    """
    u = muon_momentum_(momentum_buffer, grad.float(), momentum, nesterov)
    mats = as_matrix_batch(u)
    n, m = mats.shape[-2:]
    O = orthogonalize(mats, method, ns_steps)
    return O.mul_(update_scale(n, m, scale_mode)).reshape(grad.shape)


def stack_same_shape(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate (B_i, n, m) batches along dim 0 (one batched NS call per shape)."""
    return torch.cat(list(tensors), dim=0)
