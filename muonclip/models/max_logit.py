"""Exact per-head max causal logits from the attention kernel's log-sum-exp, without a separate QK^T pass.

The max logit of head h (Kimi K2, Sec. 2.1) is

    S_h = max over batch b, query i, key j <= i of  scale * q_i . k_j

taken after RoPE and after QK-norm. With a logit softcap ``c`` (softmax sees
``c * tanh(s / c)``), S_h is the *raw, pre-cap* logit s: that is the scale QK-Clip acts on
(gamma_h = tau / S_h rescales q_h . k_h, i.e. s, linearly; reporting the capped value made a
clip with tau < c miss tau, e.g. c = 50, tau = 30 landed at 31-35). Clipping the raw logit
to tau also caps what softmax sees, at ``c * tanh(tau / c) < tau``; and since the cap is
monotone, the capped max is ``c * tanh(S_h / c)``. It is tracked cheaply, and exactly, like
this:

* CPU flash attention (``aten._scaled_dot_product_flash_attention_for_cpu``) returns the
  per-row log-sum-exp ``lse_i`` for free. For row i with n_i = i + 1 visible keys and
  row max m_i:  m_i <= lse_i <= m_i + ln(n_i).
* So ``L_h = max_i (lse_i - ln n_i)`` is a lower bound on S_h, and a row whose ``lse_i`` is
  below a lower bound of S_h cannot hold the head's maximum. Only the remaining *candidate
  rows* need exact row maxima (a small q_rows @ k^T). Rows are visited in decreasing lse
  order; after the first few the lower bound becomes an attained exact value, which
  prunes almost every row whenever logits are large (the regime where QK-Clip matters).
* When logits are small and flat (e.g. at initialisation) almost every row is a candidate.
  Then the head falls back to a blocked lower-triangular q @ k^T max pass that skips the
  masked half and never materialises the (T, T) matrix of a whole head at once.

The result is exact in both cases (up to the float round-off of the dot products); see
``causal_max_logits``. A "bound" mode (``tau`` given) skips the exact work for heads whose
upper bound ``max lse`` is already <= tau: they cannot need clipping, and their reported
value is that upper bound (flagged as not exact).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["causal_max_logits", "causal_dot_max", "causal_mask", "repeat_kv"]

# Slack on float comparisons between the flash kernel's lse and our own dot products: the
# two compute the same logits with different summation orders (and, for bf16/fp16 inputs,
# possibly in low precision). Being generous only makes a few more rows candidates; it
# never makes the result inexact.
_REL_MARGIN = 1e-3
_REL_MARGIN_LOW_PRECISION = 3e-2

# A head switches from candidate rows to the blocked full pass when some (batch, head)
# pair still has more than this fraction of its T rows as candidates (the full pass costs
# about T/2 rows' worth of work per pair, a dense candidate pass costs the max count).
_FALLBACK_FRACTION = 0.25
_LEAF = 32  # leaf block of the blocked lower-triangular pass


def causal_mask(T: int, device) -> Tensor:
    """True where key j > query i (masked)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).triu(1)


def repeat_kv(x: Tensor, n_head: int) -> Tensor:
    """[B, Hkv, T, D] -> [B, n_head, T, D]: query head h reads KV head h // (n_head / Hkv)."""
    group = n_head // x.shape[1]
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def causal_dot_max(q: Tensor, k: Tensor) -> Tensor:
    """Exact max over query i, key j <= i of q_i . k_j for every (batch, head): [B, H, T, D] x2 -> [B, H].

    Blocked lower triangle: at each level the second half of every 2s-block of queries
    sees the whole first half of keys (no mask needed); only diagonal leaf blocks are
    masked. This does half the flops of a full q @ k^T and keeps the blocks small.
    """
    B, H, T, D = q.shape
    leaf = min(_LEAF, T)
    n_leaf = -(-T // leaf)
    levels = max(0, math.ceil(math.log2(n_leaf)))
    Tp = leaf << levels
    if Tp != T:
        # Pad queries with copies of the last query and keys with copies of the first key:
        # every padded pair the blocks visit is then a real, allowed (query T-1, key j) pair,
        # so padding can never raise or lower the max.
        q = torch.cat((q, q[:, :, -1:].expand(B, H, Tp - T, D)), dim=2)
        k = torch.cat((k, k[:, :, :1].expand(B, H, Tp - T, D)), dim=2)
    BH = B * H
    qf = q.reshape(BH, Tp, D)
    kt = k.reshape(BH, Tp, D).transpose(1, 2)  # [BH, D, Tp] view; blocks below are copied
    parts = []
    s = Tp // 2
    while s >= leaf:
        n = Tp // (2 * s)
        # queries of the second half of every 2s-block, keys of the first half: all allowed.
        # Contiguous [BH*n, s, D] @ [BH*n, D, s] operands keep the batched GEMM on its fast path.
        qb = qf.view(BH, n, 2, s, D)[:, :, 1].reshape(BH * n, s, D)
        kb = kt.reshape(BH, D, n, 2, s)[:, :, :, 0].permute(0, 2, 1, 3).reshape(BH * n, D, s)
        parts.append(torch.bmm(qb, kb).view(BH, -1).amax(-1))
        s //= 2
    n = Tp // leaf
    qb = qf.reshape(BH * n, leaf, D)
    kb = kt.reshape(BH, D, n, leaf).permute(0, 2, 1, 3).reshape(BH * n, D, leaf)
    diag = torch.bmm(qb, kb)  # [BH * n, leaf, leaf] diagonal blocks
    # additive -inf mask: a vectorised broadcast add, cheaper than a broadcast masked_fill_
    diag.add_(torch.zeros(leaf, leaf, dtype=diag.dtype, device=q.device).masked_fill_(
        causal_mask(leaf, q.device), float("-inf")))
    parts.append(diag.view(BH, -1).amax(-1))
    return torch.stack(parts, dim=-1).amax(-1).view(B, H)


def _margin(x: Tensor, rel: float) -> Tensor:
    return rel * (1.0 + x.abs())


@torch.no_grad()
def causal_max_logits(
    q: Tensor, k: Tensor, scale: float, lse: Tensor | None = None, tau: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-head max causal logit ``max_{b, i, j<=i} scale * q_i . k_j``.

    Shapes: q [B, H, T, D], k [B, Hkv, T, D] (Hkv divides H; query head h reads KV head
    h // (H / Hkv)), lse [B, H, T] the log-sum-exp of each row's scaled logits (from the
    flash kernel). Returns ``(values, exact)``: fp32 [H] and bool [H].

    Without ``tau`` every value is exact. With ``tau``, heads whose upper bound
    ``max lse`` (plus a float margin) is <= tau report that bound instead (``exact``
    False): it is >= the true max and <= tau, so they cannot need clipping.
    Without ``lse`` the blocked full pass is used for every head.

    Why it is exact: the rows visited are all rows whose ``lse`` is at least a lower bound
    of S_h (minus a float margin); any other row has ``m_i <= lse_i < S_h`` and so cannot
    hold the maximum. The value returned is a max of exactly computed logits.
    """
    B, H, T, D = q.shape
    group = H // k.shape[1]
    all_heads = torch.arange(H, device=q.device)
    rel = _REL_MARGIN
    if q.dtype not in (torch.float32, torch.float64):  # low precision: take the max in fp32
        q, k = q.float(), k.float()
        rel = _REL_MARGIN_LOW_PRECISION
    if lse is None:
        return _heads_max(q, k, all_heads, group, scale).float(), torch.ones(H, dtype=torch.bool, device=q.device)
    lse = lse.float()
    top_lse, top_row = lse.max(dim=-1)  # [B, H]: the row most likely to hold the max
    upper = top_lse.amax(0)  # [H] upper bound of S_h
    log_n = torch.log(torch.arange(1, T + 1, device=q.device, dtype=torch.float32))
    lower = (lse - log_n).amax(dim=(0, 2))  # [H] lower bound: m_i >= lse_i - ln(i + 1)
    if not bool(torch.isfinite(upper).all() and torch.isfinite(lower).all()):
        # inf/nan logits: the full pass propagates them into the reported value
        return _heads_max(q, k, all_heads, group, scale).float(), torch.ones(H, dtype=torch.bool, device=q.device)
    need = torch.ones(H, dtype=torch.bool, device=q.device)
    if tau is not None:
        upper = upper + _margin(upper, rel)  # a safe bound despite kernel round-off
        need = upper > tau
    heads = need.nonzero().flatten()
    if heads.numel() == 0:
        return upper, need
    if heads.numel() < H:  # work on the heads that need it only; expand their KV heads
        q, k, lse = q[:, heads], k[:, heads // group], lse[:, heads]
        top_row, lower = top_row[:, heads], lower[heads]
        group = 1

    # 1. The top-lse row of every (b, h): an attained value, usually (nearly) the max,
    #    and a far tighter lower bound than lse - ln(n).
    attained = _rows_max(q, k, top_row.unsqueeze(-1), group) * scale  # [Hn]
    bound = torch.maximum(lower, attained)
    threshold = bound - _margin(bound, rel)
    # 2. Candidate rows: lse_i >= threshold (anything else has m_i <= lse_i < S_h).
    count = (lse >= threshold[None, :, None]).sum(-1).amax(0)  # [Hn] most candidates of any pair
    heavy = count > _FALLBACK_FRACTION * T
    if bool(heavy.any()):  # flat logits, most rows are candidates: blocked full pass
        idx = heavy.nonzero().flatten()
        attained[idx] = _heads_max(q, k, idx, group, scale)
        count = torch.where(heavy, torch.zeros_like(count), count)
    width = int(count.max())
    if width > 0:
        # the top-`width` rows of every pair by lse contain all of its candidates
        rows = lse.topk(width, dim=-1, sorted=False).indices  # [B, Hn, width]
        attained = torch.maximum(attained, _rows_max(q, k, rows, group) * scale)
    values = upper.clone()
    values[heads] = attained.to(values.dtype)
    return values, need


def _rows_max(q: Tensor, k: Tensor, rows: Tensor, group: int) -> Tensor:
    """Exact max of q_i . k_j over j <= i for the given query rows [B, H, C] -> [H] (unscaled)."""
    B, H, T, D = q.shape
    C = rows.shape[-1]
    q_rows = q.gather(2, rows.unsqueeze(-1).expand(B, H, C, D))  # [B, H, C, D]
    # GQA: the G query heads of a group share one matmul with their KV head, no k copy
    q_rows = q_rows.reshape(B, H // group, group * C, D)
    s = torch.matmul(q_rows, k.transpose(-1, -2)).view(B, H, C, T)  # [B, H, C, T]
    keys = torch.arange(T, device=q.device)
    s.masked_fill_(keys > rows.unsqueeze(-1), float("-inf"))
    return s.amax(dim=(0, 2, 3))


def _heads_max(q: Tensor, k: Tensor, heads: Tensor, group: int, scale: float) -> Tensor:
    """Blocked exact max (scaled) of the given query heads -> [len(heads)]."""
    if heads.numel() == q.shape[1]:
        qh, kh = q, repeat_kv(k, q.shape[1])
    else:
        qh, kh = q[:, heads], k[:, heads // group]
    return causal_dot_max(qh, kh).amax(0) * scale
