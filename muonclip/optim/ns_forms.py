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

Which form runs in a given dtype is decided from FLOPs only (:func:`resolve_form`), never
from a timing (which dtype runs is :mod:`.ns_auto`'s question). The Gram form iterates on
R = X X^T, which squares the condition number: rounding R to bf16 puts a noise floor of
sqrt(2^-9) ~ 0.04 under every singular value, and the iteration multiplies noise in R's small
eigenvalues by a^2 ~ 12 per step. Measured against a float64 NS5: without restarts, on
ill-conditioned inputs (singular values log-spaced from 1 to 1e-3 or 1e-6, or decaying as
i^-2) its bf16 output blows up, 0.7 to 1.9e4, while the direct form stays at 0.07 to 0.24 as
torch.optim.Muon's does. *Restarts* (X <- Q X, R <- X X^T, Q <- I after an iteration) drop
that error: restarted after iteration 2, fp16 Gram is 4-10x closer to float64 than the peer;
bf16 Gram restarted after 2 and 4 is not (1.6x the peer on small Gaussian matrices). So in
bf16 only the direct form runs; in fp16 direct and Gram restarted after 2
(:data:`ACCEPTED_16BIT`, each held to the peer by tests/optim/test_ns_forms.py).
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch
from torch import Tensor

from . import triton_ns
from .orthogonalizers import Coeffs

__all__ = [
    "NS_IMPLS", "DEFAULT_RESTARTS", "ACCEPTED_16BIT", "check_impl", "parse_form", "form_name", "form_flops",
    "accepted_forms", "resolve_form", "ns_flops", "gram_is_cheaper",
    "Workspace", "normalized_batch", "quintic_direct", "quintic_gram", "newton_schulz_batch",
]

NS_IMPLS = ("auto", "gram", "direct")

# Inputs whose Frobenius norm is below this are first divided by their max-abs entry, so the
# squares inside the norm cannot underflow (1e-30 gradients; NVIDIA Emerging-Optimizers #229).
# The papers' "+ 1e-7" on the norm is not used: it only guards 0/0, and it swamps small inputs.
_SAFE_NORM = 1e-15
_FULL = (torch.float32, torch.float64)
_LOW_PRECISION = (torch.bfloat16, torch.float16)

# Where a plain "gram" restarts, per dtype: never in fp32 / fp64 (the form the reproduction
# presets were measured with); in fp16 after iteration 2, as the form's authors run it; in bf16
# (3 fewer mantissa bits) after iterations 2 and 4, the best bf16 schedule measured -- and
# still refused (below).
DEFAULT_RESTARTS: dict[torch.dtype, tuple[int, ...]] = {
    torch.float32: (), torch.float64: (), torch.bfloat16: (2, 4), torch.float16: (2,)}
# The 16-bit forms that are run: each is no further from a float64 NS5 than torch.optim.Muon's
# bf16 NS5 on Gaussian and on three ill-conditioned input classes, at every shape tested
# (tests/optim/test_ns_forms.py compares them side by side; that test is the rule). fp16's
# three extra mantissa bits make its forms 4-10x closer than the peer. bf16 Gram restarted
# after 2 and 4 passes at 256 x 1024 but not at 64 x 256, where on Gaussian inputs it is
# 1.6x the peer's distance (measured), so in bf16 only the direct form runs.
ACCEPTED_16BIT: dict[torch.dtype, tuple[str, ...]] = {
    torch.bfloat16: ("direct",), torch.float16: ("direct", "gram@2")}


def parse_form(form: str) -> tuple[str, tuple[int, ...] | None]:
    """``"direct"`` -> ("direct", ()); ``"gram"`` -> ("gram", None: the dtype's default restarts);
    ``"gram@2,4"`` -> ("gram", (2, 4)): restart after iterations 2 and 4; ``"gram@"``: none."""
    if form == "direct":
        return "direct", ()
    if form == "gram":
        return "gram", None
    if form.startswith("gram@"):
        tail = form[len("gram@"):]
        try:
            restarts = tuple(int(t) for t in tail.split(",")) if tail else ()
        except ValueError:
            restarts = None
        if restarts is not None and list(restarts) == sorted(set(restarts)) and all(r >= 1 for r in restarts):
            return "gram", restarts
    raise ValueError(f"unknown Newton-Schulz form {form!r}: expected 'auto', 'direct', 'gram' or "
                     "'gram@<iterations>' (restart after those iterations, increasing, e.g. 'gram@2,4'; 'gram@': none)")


def check_impl(impl: str) -> tuple[str, tuple[int, ...] | None] | None:
    """Raise ``ValueError`` unless ``ns_impl`` is ``"auto"`` (None) or a form :func:`parse_form`
    reads (its parse): the one check of the option's spelling (whether a precision runs the form
    is :func:`resolve_form`'s)."""
    if impl == "auto":
        return None
    try:
        return parse_form(impl)
    except ValueError as err:
        raise ValueError(f"ns_impl={impl!r}: {err}") from None


def form_name(kind: str, restarts: Sequence[int] = ()) -> str:
    """The canonical name of a form: ``"direct"``, ``"gram"`` (no restart) or ``"gram@2,4"``."""
    if kind == "direct":
        return "direct"
    return "gram@" + ",".join(str(r) for r in restarts) if restarts else "gram"


def ns_flops(n: int, m: int, steps: int = 5, gram: bool = False,
             coeffs: Sequence[Coeffs] | None = None, restarts: Sequence[int] = ()) -> int:
    """FLOPs of `steps` Newton-Schulz iterations on one n x m matrix (either orientation).

    ``coeffs`` (if given) sets the steps and marks cubic iterations (c = 0), which skip the
    A^2 (direct) or R^2 (Gram) product. ``restarts`` (Gram only): iterations after which the
    iterate is formed (X <- Q X, a long product) and its Gram matrix recomputed (R <- X X^T,
    another); that iteration's R update (two short products) and the next one's Q product are
    then not needed. Equal to the FLOPs torch counts in :func:`quintic_gram` (tested).
    """
    n, m = min(n, m), max(n, m)
    if coeffs is not None:
        steps = len(coeffs)
        quintic = sum(1 for _, _, c in coeffs if c != 0)
    else:
        quintic = steps
    if not gram:
        return steps * 4 * n * n * m + quintic * 2 * n**3
    restarts = [r for r in restarts if r < steps]  # a restart after the last iteration is the final Q X
    # Long products: the first R = X X^T and the final Q X, plus two per restart.
    long = 2 + 2 * len(restarts)
    # Short ones: R^2 per quintic iteration; a Q product in every iteration but the first of
    # each segment; R <- P R P (two) after every iteration that is neither last nor a restart.
    segments = len(restarts) + 1
    short = quintic + (steps - segments) + 2 * (steps - 1 - len(restarts))
    return long * 2 * n * n * m + short * 2 * n**3


def form_flops(n: int, m: int, form: str, coeffs: Sequence[Coeffs], dtype: torch.dtype = torch.float32) -> int:
    """FLOPs of ``form`` (a name :func:`parse_form` reads; ``"gram"`` restarts as the dtype's
    default) on one n x m matrix."""
    kind, restarts = parse_form(form)
    if restarts is None:
        restarts = DEFAULT_RESTARTS[dtype]
    return ns_flops(n, m, gram=kind == "gram", coeffs=coeffs, restarts=restarts)


def gram_is_cheaper(n: int, m: int, steps: int = 5, coeffs: Sequence[Coeffs] | None = None,
                    restarts: Sequence[int] = ()) -> bool:
    return ns_flops(n, m, steps, gram=True, coeffs=coeffs, restarts=restarts) < ns_flops(
        n, m, steps, gram=False, coeffs=coeffs)


def accepted_forms(dtype: torch.dtype) -> tuple[str, ...]:
    """The forms run in ``dtype``: in fp32 / fp64 direct and Gram (no restart); in 16-bit the
    measured ones of :data:`ACCEPTED_16BIT`."""
    if dtype in _LOW_PRECISION:
        return ACCEPTED_16BIT[dtype]
    return ("direct", "gram")


def resolve_form(n: int, m: int, impl: str = "auto", coeffs: Sequence[Coeffs] | None = None,
                 dtype: torch.dtype | None = None) -> str:
    """The canonical form (:func:`form_name`) ``impl`` runs on an n x m matrix in ``dtype``.

    ``"auto"``: of the forms accepted in ``dtype`` (:func:`accepted_forms`), the one with the
    fewest FLOPs (the direct form on a tie): in fp32 the Gram form without restarts once it is
    cheaper, as before restarts existed, so an fp32 run computes what it always did.
    ``"gram"`` restarts where the dtype's default says. A 16-bit form that is not accepted
    raises: without restarts the Gram form diverges on ill-conditioned inputs there (module
    docstring).
    """
    dtype = dtype or torch.float32
    steps_coeffs = coeffs if coeffs is not None else ((3.4445, -4.7750, 2.0315),) * 5
    if impl == "auto":
        options = accepted_forms(dtype)
        return min(options, key=lambda f: (form_flops(n, m, f, steps_coeffs, dtype), f != "direct"))
    kind, restarts = check_impl(impl)
    if restarts is None:
        restarts = DEFAULT_RESTARTS.get(dtype, ())
    name = form_name(kind, restarts)
    if dtype in _LOW_PRECISION and name not in ACCEPTED_16BIT[dtype]:
        raise ValueError(
            f"the Newton-Schulz form {name!r} is not run in {dtype}: only {ACCEPTED_16BIT[dtype]} are, the forms "
            "measured no further from a float64 NS5 than torch.optim.Muon on Gaussian and ill-conditioned inputs. "
            "The Gram form without restarts iterates on R = X X^T, which squares the condition number; its output "
            "blows up on ill-conditioned inputs (0.7 to 1.9e4 from a float64 NS5, measured). Use impl='auto', "
            "'direct' or 'gram' (default restarts), or an fp32 iteration")
    return name


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


def quintic_gram(X0: Tensor, coeffs: Sequence[Coeffs], ws: Workspace | None = None,
                 restarts: Sequence[int] = ()) -> Tensor:
    """The same iteration carried out on the small Gram matrix (Gram Newton-Schulz).

    Wide: X_k = Q_k X_0 with Q_k a polynomial in R_0 = X_0 X_0^T, so only the first Gram
    product and the final Q X_0 touch the long dimension; tall: X_k = X_0 Q_k with
    R_0 = X_0^T X_0. Per iteration Z = b R + c R^2, Q <- Q (a I + Z), R <- (a I + Z) R (a I + Z).
    ``restarts``: after each of these iterations X <- Q X, R <- X X^T, Q <- I (the form's
    authors restart after iteration 2 in fp16): R's accumulated rounding is dropped, at two
    long products each.

    fp32 / fp64 form P = a I + Z (the products fp32 runs have always run, bit for bit); 16-bit
    never rounds a into a 16-bit factor: Q <- Z Q + a Q and R Z + a R are one fused product each
    (rounding a I + Z to bf16 costs 2x the direct form's error, benchmarks/ns_bf16_variants.py).
    Exact in exact arithmetic; which dtype runs which restarts is :func:`resolve_form`'s rule.
    """
    tall = X0.shape[-2] > X0.shape[-1]
    k = min(X0.shape[-2:])
    small = (X0.shape[0], k, k)
    low = X0.dtype in _LOW_PRECISION
    R = _gram(X0, tall, _buffer(ws, "r0", small, X0))
    eye = torch.eye(k, dtype=R.dtype, device=R.device)
    X, x_slot, Q = X0, 0, None
    last = len(coeffs) - 1
    stops = {r - 1 for r in restarts if 1 <= r <= last}

    def times_q(Q: Tensor, X: Tensor) -> Tensor:  # X <- Q X (wide) or X Q (tall), a long product
        nonlocal x_slot
        x_slot = 1 - x_slot
        out = _buffer(ws, f"x{x_slot}", X.shape, X)
        return torch.bmm(X, Q, out=out) if tall else torch.bmm(Q, X, out=out)

    for i, (a, b, c) in enumerate(coeffs):
        r_next = _buffer(ws, f"r{(i + 1) % 2}", small, X0)
        if low:
            Z = _buffer(ws, "z", small, X0)
            if c != 0:
                torch.baddbmm(R, R, R, beta=b, alpha=c, out=Z)
            else:
                torch.mul(R, b, out=Z)
            q_out = _buffer(ws, f"q{i % 2}", small, X0)
            if Q is None:
                Q = torch.add(Z, eye, alpha=a, out=q_out)
            else:
                Q = torch.baddbmm(Q, Q, Z, beta=a, out=q_out) if tall else torch.baddbmm(Q, Z, Q, beta=a, out=q_out)
            if i != last and i not in stops:
                RZ = torch.baddbmm(R, R, Z, beta=a, out=_buffer(ws, "rp", small, X0))
                R = torch.baddbmm(RZ, Z, RZ, beta=a, out=r_next)
        else:
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
            if i != last and i not in stops:
                RP = torch.bmm(R, P, out=_buffer(ws, "rp", small, X0))
                R = torch.bmm(P, RP, out=r_next)
        if i in stops:  # restart: the iterate itself, and a fresh Gram matrix of it
            X = times_q(Q, X)
            R = _gram(X, tall, r_next)
            Q = None
    return times_q(Q, X)  # without restarts into "x1", as it always was


def newton_schulz_batch(mats: Sequence[Tensor], coeffs: Sequence[Coeffs], impl: str = "auto",
                        dtype: torch.dtype | None = None, norm_safety: float = 1.0,
                        ws: Workspace | None = None) -> Tensor:
    """Newton-Schulz of same-shape (b_i, n, m) batches, either orientation, stacked into one
    (sum b_i, n, m) batch and returned in the iteration's ``dtype`` (default float32); with a
    workspace the result lives in it (see :class:`Workspace`). ``impl``: ``"auto"``, a form
    name (``"direct"``, ``"gram"``, ``"gram@2,4"``; see :func:`resolve_form`)."""
    dtype = dtype or torch.float32
    n, m = mats[0].shape[-2:]
    kind, restarts = parse_form(resolve_form(n, m, impl, coeffs, dtype))
    if min(n, m) == 0:  # empty matrices (a zero-size layer) have empty directions
        return torch.zeros((sum(x.shape[0] for x in mats), n, m), dtype=dtype, device=mats[0].device)
    return run_form(normalized_batch(mats, dtype, norm_safety, ws), coeffs, kind, restarts, ws)


def run_form(X: Tensor, coeffs: Sequence[Coeffs], kind: str, restarts, ws: Workspace | None = None) -> Tensor:
    """The iteration of an already normalised batch ``X`` in the form ``(kind, restarts)`` that
    :func:`parse_form` returns (direct: with the Triton symmetric product where it applies)."""
    if kind == "gram":
        return quintic_gram(X, coeffs, ws, restarts or ())
    return quintic_direct(X, coeffs, ws, symmetric=triton_ns.symmetric_product_fn(X))
