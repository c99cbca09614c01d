"""Which bf16 Newton-Schulz variants keep fp32-class accuracy: distance to a float64 NS5, and FLOPs.

Prints one JSON line. For wide Gaussian matrices (default 4 x 256 x 1024, as the (d, 4d) weights
of the GPT-like shape set) and NS5's coefficients, each variant's output is compared with the
float64 NS5 of the same input (relative Frobenius distance), and its FLOPs are counted
against the direct form's:

* ``fp32_direct``: the fp32 path (the accuracy to aim for);
* ``bf16_direct``: what ``ns_precision="bf16"`` runs (products in bf16, normalisation in fp32);
* ``bf16_gram``: the Gram form in bf16 (n x n products only, then one n x m product);
* ``bf16_gram_restart_k``: the Gram form restarted after iteration k (X = Q X0 and a fresh Gram
  matrix), the Dao-lab remedy for its drift;
* ``bf16_then_fp32_last``: four bf16 iterations, the last in fp32.

A bf16x3 split product (hi*hi + hi*lo + lo*hi) needs bf16 products with fp32 outputs; torch's
CPU build has none (``torch.mm(..., out_dtype=torch.float32)`` is CUDA-only), so it is not here.
Accuracy does not depend on whether the CPU has native bf16 (the rounding is the same); time
does, so this script counts FLOPs and times nothing.
"""
from __future__ import annotations

import argparse
import json

import torch

from muonclip.optim import functional as muon_math
from muonclip.optim.orthogonalizers import ORTHOGONALIZERS
from muonclip.optim.reference import reference_orthogonalize

COEFFS = ORTHOGONALIZERS["ns5"].schedule(5)


def _step(X: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    """One quintic step with the library's fused products (one rounding per product)."""
    A = torch.bmm(X, X.mT)
    return torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)


def direct(X0: torch.Tensor, dtypes: list[torch.dtype]) -> torch.Tensor:
    X = X0
    for (a, b, c), dtype in zip(COEFFS, dtypes, strict=True):
        X = _step(X.to(dtype), a, b, c)
    return X.float()


def gram(X0: torch.Tensor, dtype: torch.dtype, restart_after: int | None = None) -> torch.Tensor:
    """The Gram form: iterate Q (n x n) on R = X X^T, and only apply Q X0 at the end, or at the restart."""
    X0 = X0.to(dtype)
    eye = torch.eye(X0.shape[-2], dtype=dtype)
    R, Q, base = torch.bmm(X0, X0.mT), None, X0
    for i, (a, b, c) in enumerate(COEFFS):
        P = torch.baddbmm(R, R, R, beta=b, alpha=c).add_(eye, alpha=a)
        Q = P if Q is None else torch.bmm(P, Q)
        if restart_after is not None and i + 1 == restart_after:
            base = torch.bmm(Q, base)  # X_k, computed from the start of this leg
            R, Q = torch.bmm(base, base.mT), None
        elif i + 1 < len(COEFFS):
            R = torch.bmm(P, torch.bmm(R, P))
    return (base if Q is None else torch.bmm(Q, base)).float()


def flops(n: int, m: int, variant: str) -> float:
    """Multiply-add FLOPs (2 per MAC) of one n x m matrix, n <= m."""
    direct_iter = 2 * n * n * m * 2 + 2 * n ** 3
    if variant in ("fp32_direct", "bf16_direct", "bf16_then_fp32_last"):
        return 5 * direct_iter
    gram_iter = 2 * n ** 3 * 4  # P = bR + cR^2, Q = P Q, R = P R P
    total = 2 * n * n * m + 5 * gram_iter + 2 * n * n * m
    if variant.startswith("bf16_gram_restart_"):
        total += 2 * (2 * n * n * m)  # X_k = Q X0 and its fresh Gram matrix
    return total


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=1024)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(1)
    G = torch.randn(args.batch, args.rows, args.cols, generator=g)
    ref = reference_orthogonalize(G, expert_stack=True)
    X0 = G / G.norm(dim=(-2, -1), keepdim=True)  # the fp32 normalisation every variant shares
    bf16, fp32 = torch.bfloat16, torch.float32
    outputs = {
        "fp32_direct": direct(X0, [fp32] * 5),
        "bf16_direct": muon_math.newton_schulz(G, dtype=bf16),
        "bf16_gram": gram(X0, bf16),
        "bf16_gram_restart_2": gram(X0, bf16, restart_after=2),
        "bf16_gram_restart_3": gram(X0, bf16, restart_after=3),
        "bf16_then_fp32_last": direct(X0, [bf16] * 4 + [fp32]),
    }
    base = flops(args.rows, args.cols, "bf16_direct")
    result = {
        "benchmark": "ns_bf16_variants", "torch": torch.__version__, "shape": [args.batch, args.rows, args.cols],
        "variants": {name: {"rel_dist_to_fp64_ns5": float(f"{float((o.double() - ref).norm() / ref.norm()):.3e}"),
                            "flops_vs_direct": round(flops(args.rows, args.cols, name) / base, 3)}
                     for name, o in outputs.items()},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
