"""Causal attention (MHA/GQA/MQA and DeepSeek-style MLA) with RoPE and exact per-head max logits.

The max logit of head h (Kimi K2, Sec. 2.1) is ``S_h = max over batch, query i, key j <= i of
scale * q_i . k_j``, taken after RoPE and QK-norm; with a logit softcap it is the raw, pre-cap
logit (the scale QK-Clip acts on). How it is tracked without a separate QK^T pass is in
:mod:`muonclip.models.max_logit`; this module runs the attention kernels that feed it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from ..optim.qk_clip import QKClipLayerSpec, RowBlock
from .max_logit import causal_mask, causal_max_logits, repeat_kv

__all__ = [
    "AttentionOutput",
    "rope_cos_sin",
    "apply_rope",
    "causal_attention",
    "materialised_logits",
    "CausalSelfAttention",
    "MultiHeadLatentAttention",
]


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


# ----------------------------------------------------------------------------- attention

def materialised_logits(q: Tensor, k: Tensor, scale: float, softcap: float | None = None) -> Tensor:
    """Full pre-softmax logits [B, H, T, T] = scale * q @ k^T (softcapped), masked entries -inf.

    The obviously-correct reference path: used for ``attention_logits`` and for softcap.
    With ``softcap=None`` these are the raw logits (the scale max logits are reported on).
    """
    k = repeat_kv(k, q.shape[1])
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    return s.masked_fill(causal_mask(q.shape[-2], q.device), float("-inf"))


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

    * Without softcap: SDPA. When tracking, the flash kernel variant that also returns the
      log-sum-exp (CPU flash; CUDA flash or memory-efficient) is called and
      ``causal_max_logits`` finishes the job without a separate q @ k^T pass.
    * With softcap the softmax sees ``c * tanh(s / c)``, which SDPA cannot apply, so an
      explicit materialised path is used. The reported max is the *raw, pre-cap* logit s
      (the scale QK-Clip's gamma acts on; see the module docstring); the capped max is
      ``c * tanh(max / c)``.
    """
    H = q.shape[1]
    if softcap is not None:
        raw = torch.matmul(q, repeat_kv(k, H).transpose(-1, -2)) * scale  # [B, H, T, T]
        mask = causal_mask(q.shape[-2], q.device)
        s = (softcap * torch.tanh(raw / softcap)).masked_fill(mask, float("-inf"))
        out = torch.matmul(torch.softmax(s.float(), dim=-1).to(v.dtype), repeat_kv(v, H))
        if not track:
            return AttentionOutput(out)
        m = raw.detach().float().masked_fill(mask, float("-inf")).amax(dim=(0, 2, 3))
        return AttentionOutput(out, m, torch.ones(H, dtype=torch.bool, device=q.device))

    Dqk, Dv = q.shape[-1], v.shape[-1]
    if not track:
        return AttentionOutput(
            functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=k.shape[1] != H))
    # The flash kernels need one head size for q, k and v (MLA has Dv != Dqk): pad with
    # zeros -- zero channels add nothing to q . k and zero value channels are sliced off.
    qa, ka, va = q, k, v
    if Dv < Dqk:
        va = functional.pad(v, (0, Dqk - Dv))
    elif Dv > Dqk:
        qa, ka = functional.pad(q, (0, Dv - Dqk)), functional.pad(k, (0, Dv - Dqk))
    kernel = _LSE_KERNELS.get(q.device.type)
    result = kernel(qa, ka, va, scale) if kernel is not None else None
    if result is None:
        # No kernel here returns the lse: plain SDPA plus the blocked exact pass.
        out = functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=k.shape[1] != H)
        m, exact = causal_max_logits(q.detach(), k.detach(), scale, None)
        return AttentionOutput(out, m, exact)
    out, lse = result
    if Dv < Dqk:
        out = out[..., :Dv]
    m, exact = causal_max_logits(q.detach(), k.detach(), scale, lse.detach(), tau)
    return AttentionOutput(out, m, exact)


# The public scaled_dot_product_attention drops the per-row log-sum-exp, so tracking calls the
# ATen backends it dispatches to, which return it (and have backward formulas). Each kernel
# takes q [B, H, T, D], k/v [B, Hkv, T, D] with one head size D and returns (out, lse [B, H, T]),
# or None when it cannot run this input.

def _lse_attention_cpu(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)


def _lse_attention_cuda(q: Tensor, k: Tensor, v: Tensor, scale: float, ops=None) -> tuple[Tensor, Tensor] | None:
    """FlashAttention-2 for fp16/bf16, memory-efficient attention otherwise (fp32 included).

    Not yet measured on a GPU: its logic (GQA expansion, lse padding) is tested on CPU by
    passing stand-in ``ops``. The efficient kernel pads the lse's row dimension to a multiple
    of 32, so it is cut back to T before the bounds are read.
    """
    ops = torch.ops.aten if ops is None else ops
    H, T = q.shape[1], q.shape[-2]
    k, v = repeat_kv(k, H), repeat_kv(v, H)  # the CUDA kernels take equal head counts
    try:
        if q.dtype in (torch.float16, torch.bfloat16):
            out, lse = ops._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False, scale=scale)[:2]
        else:
            out, lse = ops._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, True, scale=scale)[:2]
    except (RuntimeError, NotImplementedError):  # unsupported head size / dtype / arch
        return None
    return out, lse[..., :T]


_LSE_KERNELS = {"cpu": _lse_attention_cpu, "cuda": _lse_attention_cuda}


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
