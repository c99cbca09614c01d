"""Which low-precision Newton-Schulz variants keep fp32-class accuracy: distance to a float64 NS5, and FLOPs.

Prints one JSON line. For each shape (default 4 x 256 x 1024, the (d, 4d) weights of the
GPT-like shape set) of Gaussian or ill-conditioned matrices (``--input``) and NS5's
coefficients, each variant's output is compared with the float64 NS5 of the same input
(relative Frobenius distance), and its FLOPs are counted against the direct form's:

* ``fp32_direct``: the fp32 path (the accuracy to aim for);
* ``bf16_direct``: what ``ns_precision="bf16"`` runs (products in bf16, normalisation in fp32);
* ``bf16_gram``: the Gram form in bf16 (n x n products only, then one n x m product); the
  library refuses it (``--input log1e-3`` shows why: its output blows up);
* ``bf16_gram_restart_k``: the Gram form restarted after iteration k (X = Q X0 and a fresh Gram
  matrix), the Dao-lab remedy for its drift;
* ``bf16_then_fp32_last``: four bf16 iterations, the last in fp32;
* ``bf16_direct_a_on_diagonal``: X <- (a I + b A + c A^2) X, the ``a X`` term folded into the
  n x n factor's diagonal: it saves copying X into each product's output (a possible CPU
  saving), at the cost of rounding ``a`` into that bf16 factor;
* ``bf16_products_fp32_out_direct`` / ``_gram``: iterates kept in fp32, each product's inputs
  rounded to bf16 and accumulated and returned in fp32 -- what CUDA's
  ``torch.bmm(a, b, out_dtype=torch.float32)`` on bf16 inputs and oneDNN's bf16 fpmath mode
  (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``) compute;
* ``bf16x3_direct``: each fp32 product split as hi*hi + hi*lo + lo*hi of bf16 halves
  (hi = bf16(x), lo = bf16(x - hi)), each accumulated in fp32: three bf16 products per product;
* ``tf32_direct``: products on inputs rounded to TF32's 10-bit mantissa (CUDA's TF32 mode).

Rounding does not depend on whether the CPU has native bf16, so the last four are computed
here as fp32 products of the rounded inputs (exact: a product of two bf16 numbers fits in
fp32; only the order of the fp32 sums differs from a GPU kernel's). This script times nothing;
torch's CPU build has no bf16 product with fp32 output (``out_dtype`` is CUDA-only), so on a
CPU these variants have no fast kernel.
"""
from __future__ import annotations

import argparse
import json

import torch

from muonclip.optim import functional as muon_math
from muonclip.optim.orthogonalizers import ORTHOGONALIZERS
from muonclip.optim.reference import ill_conditioned, reference_orthogonalize

COEFFS = ORTHOGONALIZERS["ns5"].schedule(5)


def _step(X: torch.Tensor, a: float, b: float, c: float, a_on_diagonal: bool = False) -> torch.Tensor:
    """One quintic step with the library's fused products (one rounding per product);
    ``a_on_diagonal``: a X + B X computed as (B + a I) X."""
    A = torch.bmm(X, X.mT)
    B = torch.baddbmm(A, A, A, beta=b, alpha=c)
    if a_on_diagonal:
        B.diagonal(dim1=-2, dim2=-1).add_(a)
        return torch.bmm(B, X)
    return torch.baddbmm(X, B, X, beta=a)


def direct(X0: torch.Tensor, dtypes: list[torch.dtype], a_on_diagonal: bool = False) -> torch.Tensor:
    X = X0
    for (a, b, c), dtype in zip(COEFFS, dtypes, strict=True):
        X = _step(X.to(dtype), a, b, c, a_on_diagonal)
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


def _round_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def _round_tf32(t: torch.Tensor) -> torch.Tensor:
    """Round fp32 to TF32's 10-bit mantissa, to nearest with ties away from zero (as CUDA's
    cvt.rna.tf32.f32 does); the 13 dropped bits are zeroed."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _bf16_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.bmm(_round_bf16(a), _round_bf16(b))


def _bf16x3_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a_hi, b_hi = _round_bf16(a), _round_bf16(b)
    a_lo, b_lo = _round_bf16(a - a_hi), _round_bf16(b - b_hi)
    return torch.bmm(a_hi, b_hi) + (torch.bmm(a_hi, b_lo) + torch.bmm(a_lo, b_hi))


def _tf32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.bmm(_round_tf32(a), _round_tf32(b))


def fp32_iterates(X0: torch.Tensor, product, form: str = "direct") -> torch.Tensor:
    """NS5 with fp32 iterates and every matrix product done by ``product`` (the same polynomial
    as the library's direct or Gram form)."""
    if form == "direct":
        X = X0
        for a, b, c in COEFFS:
            A = product(X, X.mT)
            X = a * X + product(b * A + c * product(A, A), X)
        return X
    eye = torch.eye(X0.shape[-2])
    R, Q = product(X0, X0.mT), None
    for i, (a, b, c) in enumerate(COEFFS):
        P = b * R + c * product(R, R) + a * eye
        Q = P if Q is None else product(P, Q)
        if i + 1 < len(COEFFS):
            R = product(P, product(R, P))
    return product(Q, X0)


def flops(n: int, m: int, variant: str) -> float:
    """Multiply-add FLOPs (2 per MAC) of one n x m matrix, n <= m; bf16x3 counts its three
    bf16 products."""
    direct_iter = 2 * n * n * m * 2 + 2 * n ** 3
    if "gram" not in variant:
        return 5 * direct_iter * (3 if variant.startswith("bf16x3") else 1)
    gram_iter = 2 * n ** 3 * 4  # P = bR + cR^2, Q = P Q, R = P R P
    total = 2 * n * n * m + 5 * gram_iter + 2 * n * n * m
    if variant.startswith("bf16_gram_restart_"):
        total += 2 * (2 * n * n * m)  # X_k = Q X0 and its fresh Gram matrix
    return total


INPUTS = ("gaussian", "log1e-3", "log1e-6")


def test_batch(batch: int, rows: int, cols: int, kind: str = "gaussian", seed: int = 1) -> torch.Tensor:
    """A (batch, rows, cols) batch: Gaussian, or with singular values log-spaced from 1 to
    1e-3 / 1e-6 (``log1e-3``, ``log1e-6``; real gradients are ill-conditioned like these)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(batch, rows, cols, generator=g)
    if kind not in INPUTS:
        raise ValueError(f"unknown input {kind!r}; expected one of {INPUTS}")
    return ill_conditioned(batch, rows, cols, float(kind[3:]), g).float()


def variants(batch: int, rows: int, cols: int, seed: int = 1, kind: str = "gaussian") -> dict:
    """Distance to float64 NS5 and FLOPs of every variant on one (batch, rows, cols) test batch."""
    G = test_batch(batch, rows, cols, kind, seed)
    ref = reference_orthogonalize(G, expert_stack=True)
    X0 = G / G.norm(dim=(-2, -1), keepdim=True)  # the fp32 normalisation every variant shares
    if rows > cols:
        X0 = X0.mT
    bf16, fp32 = torch.bfloat16, torch.float32
    library_bf16 = muon_math.newton_schulz(G, dtype=bf16)
    outputs = {
        "fp32_direct": direct(X0, [fp32] * 5),
        "bf16_direct": library_bf16.mT if rows > cols else library_bf16,
        "bf16_gram": gram(X0, bf16),
        "bf16_gram_restart_2": gram(X0, bf16, restart_after=2),
        "bf16_gram_restart_3": gram(X0, bf16, restart_after=3),
        "bf16_then_fp32_last": direct(X0, [bf16] * 4 + [fp32]),
        "bf16_direct_a_on_diagonal": direct(X0, [bf16] * 5, a_on_diagonal=True),
        "bf16_products_fp32_out_direct": fp32_iterates(X0, _bf16_product),
        "bf16_products_fp32_out_gram": fp32_iterates(X0, _bf16_product, "gram"),
        "bf16x3_direct": fp32_iterates(X0, _bf16x3_product),
        "tf32_direct": fp32_iterates(X0, _tf32_product),
    }
    wide_ref = ref.mT if rows > cols else ref
    n, m = min(rows, cols), max(rows, cols)
    base = flops(n, m, "bf16_direct")
    return {name: {"rel_dist_to_fp64_ns5": float(f"{float((o.double() - wide_ref).norm() / wide_ref.norm()):.3e}"),
                   "flops_vs_direct": round(flops(n, m, name) / base, 3)}
            for name, o in outputs.items()}


def _shape(text: str) -> tuple[int, int, int]:
    try:
        batch, rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxROWSxCOLS such as 4x256x1024, got {text!r}") from None
    if min(batch, rows, cols) < 1:
        raise argparse.ArgumentTypeError(f"every size must be >= 1, got {text!r}")
    return batch, rows, cols


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=_shape, action="append", metavar="BxNxM",
                    help="batch x rows x cols of the test batch; repeat for several "
                         "(default: 4x256x1024)")
    ap.add_argument("--input", choices=INPUTS, action="append",
                    help="test matrices: Gaussian, or singular values log-spaced from 1 to 1e-3 or "
                         "1e-6; repeat for several (default: gaussian)")
    args = ap.parse_args(argv)
    shapes = args.shape or [(4, 256, 1024)]
    kinds = args.input or ["gaussian"]
    result = {
        "benchmark": "ns_bf16_variants", "torch": torch.__version__,
        "results": [{"shape": list(shape), "input": kind, "variants": variants(*shape, kind=kind)}
                    for shape in shapes for kind in kinds],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
