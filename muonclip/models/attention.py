"""Causal attention (MHA/GQA/MQA and DeepSeek-style MLA) with RoPE and exact per-head max logits.

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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..optim.qk_clip import QKClipLayerSpec, RowBlock

__all__ = [
    "AttentionOutput",
    "rope_cos_sin",
    "apply_rope",
    "causal_attention",
    "causal_max_logits",
    "causal_dot_max",
    "materialised_logits",
    "CausalSelfAttention",
    "MultiHeadLatentAttention",
]

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


# ----------------------------------------------------------------------------- RoPE

def rope_cos_sin(seq_len: int, dim: int, base: float = 10000.0, device=None) -> tuple[Tensor, Tensor]:
    """cos/sin tables (each [seq_len, dim // 2], fp32) for rotate-half RoPE on ``dim`` channels."""
    if dim % 2:
        raise ValueError(f"RoPE needs an even number of channels, got {dim}")
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))
    angles = torch.arange(seq_len, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    # float64 angles: position * freq stays accurate at long context before rounding to fp32
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (c, c + dim/2) of x [..., T, dim] by position angle (GPT-NeoX/LLaMA layout)."""
    T = x.shape[-2]
    cos, sin = cos[:T].to(x.dtype), sin[:T].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# ----------------------------------------------------------------------------- logits and max

def _causal_mask(T: int, device) -> Tensor:
    """True where key j > query i (masked)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).triu(1)


def _repeat_kv(x: Tensor, n_head: int) -> Tensor:
    """[B, Hkv, T, D] -> [B, n_head, T, D]: query head h reads KV head h // (n_head / Hkv)."""
    group = n_head // x.shape[1]
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def materialised_logits(q: Tensor, k: Tensor, scale: float, softcap: float | None = None) -> Tensor:
    """Full pre-softmax logits [B, H, T, T] = scale * q @ k^T (softcapped), masked entries -inf.

    The obviously-correct reference path: used for ``attention_logits`` and for softcap.
    With ``softcap=None`` these are the raw logits (the scale max logits are reported on).
    """
    k = _repeat_kv(k, q.shape[1])
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    return s.masked_fill(_causal_mask(q.shape[-2], q.device), float("-inf"))


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
        _causal_mask(leaf, q.device), float("-inf")))
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
        qh, kh = q, _repeat_kv(k, q.shape[1])
    else:
        qh, kh = q[:, heads], k[:, heads // group]
    return causal_dot_max(qh, kh).amax(0) * scale


@dataclass
class AttentionOutput:
    """Attention result; ``max_logit``/``max_logit_exact`` are None when not tracked."""

    out: Tensor
    max_logit: Tensor | None = None
    max_logit_exact: Tensor | None = None


def causal_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, *,
    softcap: float | None = None, track: bool = False, tau: float | None = None,
) -> AttentionOutput:
    """Causal attention, optionally with the exact per-head max logit.

    q [B, H, T, Dqk], k [B, Hkv, T, Dqk], v [B, Hkv, T, Dv] -> out [B, H, T, Dv].

    * Without softcap: CPU flash attention. When tracking, the kernel variant that also
      returns the log-sum-exp is called and ``causal_max_logits`` finishes the job.
    * With softcap the softmax sees ``c * tanh(s / c)``, which SDPA cannot apply, so an
      explicit materialised path is used. The reported max is the *raw, pre-cap* logit s
      (the scale QK-Clip's gamma acts on; see the module docstring); the capped max is
      ``c * tanh(max / c)``.
    """
    H = q.shape[1]
    if softcap is not None:
        raw = torch.matmul(q, _repeat_kv(k, H).transpose(-1, -2)) * scale  # [B, H, T, T]
        mask = _causal_mask(q.shape[-2], q.device)
        s = (softcap * torch.tanh(raw / softcap)).masked_fill(mask, float("-inf"))
        out = torch.matmul(torch.softmax(s.float(), dim=-1).to(v.dtype), _repeat_kv(v, H))
        if not track:
            return AttentionOutput(out)
        m = raw.detach().float().masked_fill(mask, float("-inf")).amax(dim=(0, 2, 3))
        return AttentionOutput(out, m, torch.ones(H, dtype=torch.bool, device=q.device))

    Dqk, Dv = q.shape[-1], v.shape[-1]
    if not track or q.device.type != "cpu":
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=k.shape[1] != H)
        if not track:
            return AttentionOutput(out)
        m, exact = causal_max_logits(q.detach(), k.detach(), scale, None)
        return AttentionOutput(out, m, exact)
    # The flash kernel needs one head size for q, k and v (MLA has Dv != Dqk): pad with
    # zeros -- zero channels add nothing to q . k and zero value channels are sliced off.
    qa, ka, va = q, k, v
    if Dv < Dqk:
        va = F.pad(v, (0, Dqk - Dv))
    elif Dv > Dqk:
        qa, ka = F.pad(q, (0, Dv - Dqk)), F.pad(k, (0, Dv - Dqk))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        qa, ka, va, 0.0, True, scale=scale
    )
    if Dv < Dqk:
        out = out[..., :Dv]
    m, exact = causal_max_logits(q.detach(), k.detach(), scale, lse.detach(), tau)
    return AttentionOutput(out, m, exact)


# ----------------------------------------------------------------------------- modules

class _TrackedAttention(nn.Module):
    """Shared plumbing: run attention, remember the last tracked max logits."""

    n_head: int
    scale: float
    softcap: float | None

    def __init__(self) -> None:
        super().__init__()
        self.max_logit: Tensor | None = None  # fp32 [n_head], detached
        self.max_logit_exact: Tensor | None = None  # bool [n_head]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, track: bool, tau: float | None, accumulate: bool) -> Tensor:
        res = causal_attention(q, k, v, self.scale, softcap=self.softcap, track=track, tau=tau)
        if track:
            m, ex = res.max_logit, res.max_logit_exact
            if accumulate and self.max_logit is not None:
                # max over several tracked forwards (gradient accumulation): a head is exact
                # if the larger of its two values was exact
                take_new = m >= self.max_logit
                ex = torch.where(take_new, ex, self.max_logit_exact)
                m = torch.maximum(m, self.max_logit)
            self.max_logit, self.max_logit_exact = m, ex
        return res.out

    def reset_max_logit(self) -> None:
        self.max_logit = self.max_logit_exact = None


class CausalSelfAttention(_TrackedAttention):
    """Multi-head causal self-attention with RoPE; GQA/MQA when n_kv_head < n_head."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_size
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.softcap = cfg.logit_softcap
        self.qk_bias, self.qk_norm = cfg.qk_bias, cfg.qk_norm
        d, hd = cfg.d_model, self.head_dim
        self.q_proj = nn.Linear(d, self.n_head * hd, bias=cfg.qk_bias)
        self.k_proj = nn.Linear(d, self.n_kv_head * hd, bias=cfg.qk_bias)
        self.v_proj = nn.Linear(d, self.n_kv_head * hd, bias=False)
        self.o_proj = nn.Linear(self.n_head * hd, d, bias=False)
        if cfg.qk_norm:
            # one learnable gain per channel, shared by heads (as in OLMo-2 / Qwen3 style)
            self.q_norm = nn.RMSNorm(hd, eps=1e-6)
            self.k_norm = nn.RMSNorm(hd, eps=1e-6)

    def _qk(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        if self.qk_norm:  # before RoPE: the norm must not see position
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, track: bool = False,
                tau: float | None = None, accumulate: bool = False) -> Tensor:
        B, T, _ = x.shape
        q, k = self._qk(x, cos, sin)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        y = self._attend(q, k, v, track, tau, accumulate)  # [B, H, T, hd]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))

    def logits(self, x: Tensor, cos: Tensor, sin: Tensor, capped: bool = True) -> Tensor:
        """Pre-softmax logits [B, H, T, T], masked entries -inf (materialised reference).

        ``capped=False`` skips the softcap: the raw logits, on the scale of the max logits."""
        q, k = self._qk(x, cos, sin)
        return materialised_logits(q, k, self.scale, self.softcap if capped else None)

    def qk_clip_spec(self, prefix: str) -> QKClipLayerSpec:
        if self.qk_norm:
            raise ValueError(
                "QK-Clip is not defined for qk_norm=True: QK-norm already bounds the logits by the "
                "norm gains (it is the alternative to QK-Clip), and scaling q_proj/k_proj rows would "
                "be undone by the norm. Use qk_norm=False with QK-Clip."
            )
        hd = self.head_dim
        q = [RowBlock(f"{prefix}.q_proj.weight", hd)]
        k = [RowBlock(f"{prefix}.k_proj.weight", hd)]
        if self.qk_bias:  # a bias is part of q (resp. k): scaled with its weight rows
            q.append(RowBlock(f"{prefix}.q_proj.bias", hd))
            k.append(RowBlock(f"{prefix}.k_proj.bias", hd))
        layout = "gqa" if self.n_kv_head < self.n_head else "mha"
        return QKClipLayerSpec(n_head=self.n_head, n_kv_head=self.n_kv_head, q=tuple(q), k=tuple(k), layout=layout)


class MultiHeadLatentAttention(_TrackedAttention):
    """DeepSeek-V3 style multi-head latent attention (MLA) with a shared rotary key.

    Per head the query is ``[q_nope | q_rope]`` and the key ``[k_nope | k_rope]`` where
    ``k_nope`` (with ``v``) is decompressed from a normed low-rank latent ``c_kv`` and
    ``k_rope`` is a single rotary key shared by all heads.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.nope, self.rope, self.v_dim = cfg.nope_dim, cfg.qk_rope_head_dim, cfg.v_dim
        self.kv_lora_rank, self.q_lora_rank = cfg.kv_lora_rank, cfg.q_lora_rank
        self.scale = 1.0 / math.sqrt(self.nope + self.rope)
        self.softcap = cfg.logit_softcap
        d, H, qk = cfg.d_model, self.n_head, self.nope + self.rope
        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(d, H * qk, bias=False)  # per head [q_nope | q_rope]
        else:
            self.q_a_proj = nn.Linear(d, self.q_lora_rank, bias=False)
            self.q_a_norm = nn.RMSNorm(self.q_lora_rank, eps=1e-6)
            self.q_b_proj = nn.Linear(self.q_lora_rank, H * qk, bias=False)  # per head [q_nope | q_rope]
        self.kv_a_proj = nn.Linear(d, self.kv_lora_rank + self.rope, bias=False)  # [c_kv | k_rope]
        self.kv_a_norm = nn.RMSNorm(self.kv_lora_rank, eps=1e-6)
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, H * (self.nope + self.v_dim), bias=False)  # per head [k_nope | v]
        self.o_proj = nn.Linear(H * self.v_dim, d, bias=False)

    @property
    def q_weight_name(self) -> str:
        return "q_proj" if self.q_lora_rank is None else "q_b_proj"

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        H, nope, rope = self.n_head, self.nope, self.rope
        if self.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        q = q.view(B, T, H, nope + rope).transpose(1, 2)  # [B, H, T, nope + rope]
        q_nope, q_rope = q.split((nope, rope), dim=-1)
        c_kv, k_rope = self.kv_a_proj(x).split((self.kv_lora_rank, rope), dim=-1)  # [B, T, r], [B, T, rope]
        kv = self.kv_b_proj(self.kv_a_norm(c_kv)).view(B, T, H, nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split((nope, self.v_dim), dim=-1)  # [B, H, T, nope], [B, H, T, v]
        k_rope = apply_rope(k_rope.unsqueeze(1), cos, sin)  # [B, 1, T, rope]: one key for all heads
        q = torch.cat((q_nope, apply_rope(q_rope, cos, sin)), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(B, H, T, rope)), dim=-1)  # [B, H, T, nope + rope]
        return q, k, v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, track: bool = False,
                tau: float | None = None, accumulate: bool = False) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        y = self._attend(q, k, v, track, tau, accumulate)  # [B, H, T, v]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.v_dim))

    def logits(self, x: Tensor, cos: Tensor, sin: Tensor, capped: bool = True) -> Tensor:
        """Pre-softmax logits [B, H, T, T], masked entries -inf (materialised reference).

        ``capped=False`` skips the softcap: the raw logits, on the scale of the max logits."""
        q, k, _ = self._qkv(x, cos, sin)
        return materialised_logits(q, k, self.scale, self.softcap if capped else None)

    def qk_clip_spec(self, prefix: str) -> QKClipLayerSpec:
        qk, kv = self.nope + self.rope, self.nope + self.v_dim
        qw = f"{prefix}.{self.q_weight_name}.weight"
        return QKClipLayerSpec(
            n_head=self.n_head,
            n_kv_head=self.n_head,
            q=(RowBlock(qw, self.nope, 0, qk),),
            k=(RowBlock(f"{prefix}.kv_b_proj.weight", self.nope, 0, kv),),
            q_rope=(RowBlock(qw, self.rope, self.nope, qk),),
            shared_k=(f"{prefix}.kv_a_proj.weight",),
            layout="mla",
        )
