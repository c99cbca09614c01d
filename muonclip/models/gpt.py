"""A small nanoGPT-style decoder-only transformer (RoPE, RMSNorm, SwiGLU) with exact per-head max logits.

Shapes: B batch, T sequence, d = d_model, H query heads, Hkv key/value heads. Slightly over
~400 lines because GPTConfig (validated, documented field by field) lives here with the model,
as in nanoGPT; attention and the max-logit kernels are in their own modules.

Parameter names (stable, used by QK-Clip specs and param-group rules)::

    embed.weight                          [V, d]   (lm_head.weight is the same tensor when tied)
    blocks.{L}.attn_norm.weight           [d]
    blocks.{L}.attn.q_proj.weight/.bias   [H*hd, d]          MHA/GQA (bias with qk_bias)
    blocks.{L}.attn.k_proj.weight/.bias   [Hkv*hd, d]
    blocks.{L}.attn.v_proj.weight         [Hkv*hd, d]
    blocks.{L}.attn.q_norm.weight, k_norm.weight  [hd]       (qk_norm)
    blocks.{L}.attn.q_proj.weight         [H*(nope+rope), d] MLA without q_lora_rank, or
    blocks.{L}.attn.q_a_proj.weight, q_a_norm.weight, q_b_proj.weight  (MLA with q_lora_rank)
    blocks.{L}.attn.kv_a_proj.weight      [kv_lora_rank+rope, d]  MLA: [c_kv | shared k_rope]
    blocks.{L}.attn.kv_a_norm.weight      [kv_lora_rank]
    blocks.{L}.attn.kv_b_proj.weight      [H*(nope+v), kv_lora_rank]  per head [k_nope | v]
    blocks.{L}.attn.o_proj.weight         [d, H*v]
    blocks.{L}.mlp_norm.weight            [d]
    blocks.{L}.mlp.gate_proj/up_proj.weight [d_ff, d], down_proj.weight [d, d_ff]
    norm.weight                           [d]
    lm_head.weight                        [V, d]   (absent from named_parameters when tied)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional

from ..config import check, did_you_mean, validate_fields
from ..optim.qk_clip import QKClipLayerSpec
from .attention import CausalSelfAttention, MultiHeadLatentAttention, rope_cos_sin

__all__ = ["GPTConfig", "GPT", "Block", "SwiGLU"]

_ATTENTION = ("mha", "gqa", "mla")
_MAX_LOGIT_MODES = ("exact", "bound")


@dataclass(frozen=True)
class GPTConfig:
    """Model shape; also the ``model`` section of the lab's config (``--set model.X=...``).

    Validated on creation (:class:`~muonclip.config.ConfigError`, a ``ValueError``): every
    field against its annotation, then the shape rules. ``None`` fields are derived (see the
    properties). ``attention="gqa"`` is accepted as a synonym of ``"mha"``: grouping comes
    from ``n_kv_head < n_head`` (``n_kv_head=1`` is MQA).

    ``mlp_ratio`` is SwiGLU hidden / d_model, rounded up to a multiple of 8 (``d_ff``
    overrides it). The default 8/3 is LLaMA's: a three-matrix SwiGLU MLP of hidden 8/3 d has
    the parameters of a two-matrix 4 d MLP. The lab's presets set ``mlp_ratio=4.0``: that is
    what their measured runs were trained with.
    """

    _section = "model"  # names fields in error messages: model.d_model

    vocab_size: int = 256
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None
    head_dim: int | None = None
    seq_len: int = 128
    attention: Literal["mha", "gqa", "mla"] = "mha"
    mlp_ratio: float = 8 / 3
    d_ff: int | None = None
    tie_embeddings: bool = False
    qk_bias: bool = False
    qk_norm: bool = False
    logit_softcap: float | None = None
    rope_base: float = 10000.0
    # MLA (DeepSeek-V3 style)
    q_lora_rank: int | None = None
    kv_lora_rank: int = 64
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int = 16
    v_head_dim: int | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            check(ok, f"model.{msg}")

        need(self.attention in _ATTENTION, f"attention must be one of {_ATTENTION}, got {self.attention!r}"
             f"{did_you_mean(self.attention, _ATTENTION) if isinstance(self.attention, str) else ''}")
        validate_fields(self)
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "seq_len", "kv_lora_rank", "qk_rope_head_dim"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("n_kv_head", "head_dim", "d_ff", "q_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            v = getattr(self, name)
            need(v is None or v >= 1, f"{name} must be None or >= 1, got {v!r}")
        if self.head_dim is None:
            need(self.d_model % self.n_head == 0,
                 f"d_model={self.d_model} is not divisible by n_head={self.n_head}; set head_dim explicitly")
        need(self.mlp_ratio > 0, f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        need(self.rope_base > 0, f"rope_base must be > 0, got {self.rope_base}")
        need(self.logit_softcap is None or self.logit_softcap > 0,
             f"logit_softcap must be None or > 0, got {self.logit_softcap}")
        if self.attention == "mla":
            need(self.n_kv_head in (None, self.n_head),
                 f"n_kv_head: MLA has one decompressed key per head, so it must be None or n_head, "
                 f"got {self.n_kv_head}")
            need(self.qk_rope_head_dim % 2 == 0, f"qk_rope_head_dim must be even for RoPE, got {self.qk_rope_head_dim}")
            need(not self.qk_bias, "qk_bias is only supported for attention='mha'/'gqa'")
            need(not self.qk_norm, "qk_norm is only supported for attention='mha'/'gqa'")
        else:
            kv = self.kv_heads
            need(kv <= self.n_head and self.n_head % kv == 0,
                 f"n_kv_head={kv} must divide n_head={self.n_head} (n_head must be a multiple of n_kv_head)")
            need(self.head_size % 2 == 0, f"head_dim must be even for RoPE, got {self.head_size}")

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (MHA: n_head; GQA: fewer; MQA: 1)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_size(self) -> int:
        """Per-head width (MHA q/k/v; MLA default for nope and v dims)."""
        return self.d_model // self.n_head if self.head_dim is None else self.head_dim

    @property
    def nope_dim(self) -> int:
        """MLA non-rotary q/k width per head."""
        return self.head_size if self.qk_nope_head_dim is None else self.qk_nope_head_dim

    @property
    def v_dim(self) -> int:
        """Value width per head (MLA may differ from the q/k width)."""
        if self.attention != "mla":
            return self.head_size
        return self.head_size if self.v_head_dim is None else self.v_head_dim

    @property
    def qk_dim(self) -> int:
        """Width of the per-head q . k dot product."""
        return self.nope_dim + self.qk_rope_head_dim if self.attention == "mla" else self.head_size

    @property
    def rope_dim(self) -> int:
        """Channels rotated by RoPE per head."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_size

    @property
    def attn_scale(self) -> float:
        return 1.0 / math.sqrt(self.qk_dim)

    @property
    def hidden_dim(self) -> int:
        """SwiGLU hidden width."""
        if self.d_ff is not None:
            return self.d_ff
        return 8 * math.ceil(self.mlp_ratio * self.d_model / 8)


class SwiGLU(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.attn = MultiHeadLatentAttention(cfg) if cfg.attention == "mla" else CausalSelfAttention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.mlp = SwiGLU(cfg.d_model, cfg.hidden_dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, track: bool = False,
                tau: float | None = None, accumulate: bool = False) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, track=track, tau=tau, accumulate=accumulate)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Decoder-only LM. ``model(idx, targets=None) -> (logits [B, T, V], loss | None)``.

    Max-logit tracking: every forward in training mode (or any forward when
    ``model.track_max_logits = True``; ``False`` switches it off even in training) records
    each attention layer's exact per-head max pre-softmax logit (after RoPE, after QK-norm);
    read it with :meth:`max_logits`.

    Softcap and QK-Clip: with ``logit_softcap=c`` softmax sees ``c * tanh(s / c)``, but the
    reported max logit is the *raw, pre-cap* logit ``s``. QK-Clip's ``gamma = tau / S``
    rescales the raw logit linearly, so only on that scale does a clip land exactly on
    ``min(S, tau)`` (on the capped scale a clip with tau < c missed tau: c = 50, tau = 30 gave
    31-35). Clipping the raw logit to tau also bounds what softmax sees, by
    ``c * tanh(tau / c) < tau`` -- Kimi K2's clip bounds the raw logit too. The combination
    is therefore allowed rather than refused; the capped max is ``c * tanh(S / c)`` (the cap
    is monotone), and ``attention_logits(idx, capped=False)`` gives the raw logits.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_cos_sin(cfg.seq_len, cfg.rope_dim, cfg.rope_base)
        # not persistent: derived from the config, kept out of state_dict
        self.register_buffer("rope_cos", cos, persistent=False)  # [seq_len, rope_dim / 2]
        self.register_buffer("rope_sin", sin, persistent=False)
        # None: track in training mode only; True: always (also eval); False: never
        self.track_max_logits: bool | None = None
        # max over the tracked forwards of one window: a read (max_logits) closes the window
        self.accumulate_max_logits = False
        self._max_logits_read = False  # the current window was read: the next forward opens a new one
        # None: "exact" mode; a float tau: "bound" mode (see set_max_logit_mode)
        self.max_logit_threshold: float | None = None
        self.apply(self._init_weights)
        # nanoGPT/GPT-2: residual-branch output projections scaled by 1/sqrt(2 * n_layer) so
        # the residual stream's variance does not grow with depth
        resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("attn.o_proj.weight", "mlp.down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=resid_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ forward

    def _check_idx(self, idx: Tensor) -> None:
        if idx.dim() != 2:
            raise ValueError(f"idx must be [B, T] token ids, got shape {tuple(idx.shape)}")
        if idx.shape[1] > self.config.seq_len:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds config.seq_len={self.config.seq_len}")

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        self._check_idx(idx)
        track = self.training if self.track_max_logits is None else bool(self.track_max_logits)
        tau = self.max_logit_threshold
        # accumulate into the current window unless it was read (consumed) already
        accumulate = self.accumulate_max_logits and not self._max_logits_read
        if track:
            self._max_logits_read = False
        x = self.embed(idx)  # [B, T, d]
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin, track=track, tau=tau, accumulate=accumulate)
        logits = self.lm_head(self.norm(x))  # [B, T, V]
        loss = None
        if targets is not None:
            flat = logits.float().view(-1, logits.shape[-1])
            loss = functional.cross_entropy(flat, targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # ------------------------------------------------------------------ max logits

    def set_max_logit_mode(self, mode: str, tau: float | None = None) -> None:
        """``"exact"``: every head's max logit is exact (tau ignored).

        ``"bound"``: heads whose log-sum-exp upper bound is already <= ``tau`` skip the
        exact computation and report that bound (>= the true max, <= tau, so a QK-Clip with
        this tau is unaffected); other heads are exact. See :meth:`max_logits_exact`.
        """
        if mode not in _MAX_LOGIT_MODES:
            raise ValueError(f"max-logit mode must be one of {_MAX_LOGIT_MODES}, got {mode!r}")
        if mode == "bound" and (tau is None or not tau > 0):
            raise ValueError(f"mode='bound' needs a positive tau, got {tau!r}")
        self.max_logit_threshold = float(tau) if mode == "bound" else None

    @property
    def max_logit_mode(self) -> str:
        return "exact" if self.max_logit_threshold is None else "bound"

    def _attns(self) -> list[nn.Module]:
        return [b.attn for b in self.blocks]

    def _recorded(self) -> list[Tensor]:
        out = [a.max_logit for a in self._attns()]
        if any(m is None for m in out):
            raise RuntimeError(
                "no max logits recorded yet: run a forward in training mode (model.train(), with "
                "track_max_logits not False) or with model.track_max_logits = True first"
            )
        return out

    def max_logits(self) -> list[Tensor]:
        """Per layer, the detached fp32 ``Tensor[n_head]`` of max logits (with a softcap: of the
        raw, pre-cap logits; see the class docstring).

        Without accumulation: those of the latest tracked forward. With
        ``accumulate_max_logits = True``: the max over the tracked forwards since the previous
        read, and this read *closes* that window -- the next tracked forward starts a new max
        instead of folding into the one just consumed. So ``max_logits_fn=model.max_logits``
        in MuonClip consumes each step's accumulated maxima exactly once (a stale S would
        otherwise clip every later step again). Reads are idempotent until the next tracked
        forward, so a logging read before ``opt.step()`` sees the same values as the
        optimizer. Don't read between the micro-batches of one step (that splits the window);
        a step that MuonClip skips (``nonfinite="skip"``) does not read, so its forwards carry
        into the next step's max, which is conservative.
        """
        out = self._recorded()
        self._max_logits_read = True
        return out

    def pop_max_logits(self) -> list[Tensor]:
        """:meth:`max_logits`, then :meth:`reset_max_logits` (like the Hugging Face handle's
        ``pop_max_logits``): a second read before the next tracked forward raises."""
        out = self.max_logits()
        self.reset_max_logits()
        return out

    def max_logits_exact(self) -> list[Tensor]:
        """Per layer, bool ``Tensor[n_head]``: True where :meth:`max_logits` is exact (always, in
        "exact" mode). A read of the same window that does not close it."""
        self._recorded()  # same error when nothing is tracked yet
        return [a.max_logit_exact for a in self._attns()]

    def reset_max_logits(self) -> None:
        """Forget the recorded max logits; the next tracked forward starts a new window."""
        for a in self._attns():
            a.reset_max_logit()
        self._max_logits_read = False

    @torch.no_grad()
    def attention_logits(self, idx: Tensor, capped: bool = True) -> list[Tensor]:
        """Per layer, the full pre-softmax logits ``[B, n_head, T, T]`` (masked entries -inf).

        Materialised ``scale * q @ k^T`` -- an independent reference for the tracked maxima,
        and for pictures. Does not change the tracked max logits. With a softcap these are
        the capped logits softmax sees; ``capped=False`` gives the raw logits, the scale
        :meth:`max_logits` reports on (identical without a softcap).
        """
        self._check_idx(idx)
        out = []
        x = self.embed(idx)
        for block in self.blocks:
            out.append(block.attn.logits(block.attn_norm(x), self.rope_cos, self.rope_sin, capped=capped))
            x = block(x, self.rope_cos, self.rope_sin, track=False)
        return out

    # ------------------------------------------------------------------ optimizer plumbing

    def qk_clip_spec(self) -> list[QKClipLayerSpec]:
        """One :class:`QKClipLayerSpec` per layer, naming this model's own parameters."""
        return [block.attn.qk_clip_spec(f"blocks.{i}.attn") for i, block in enumerate(self.blocks)]

    def head_blocks(self, include_output: bool = False) -> dict[str, tuple[int, int]]:
        """Per-head layout for per-head Muon (``build_param_groups(head_blocks=...)``): name ->
        ``(dim, head width)``. q/k/v (MLA: q and kv_b, per head ``[nope | rope]`` and
        ``[k_nope | v]``) split rows; with ``include_output``, o_proj splits columns."""
        out = {}
        for i, block in enumerate(self.blocks):
            attn, prefix = block.attn, f"blocks.{i}.attn"
            if isinstance(attn, MultiHeadLatentAttention):
                rows = {attn.q_weight_name: attn.nope + attn.rope, "kv_b_proj": attn.nope + attn.v_dim}
                out_width = attn.v_dim
            else:
                rows = dict.fromkeys(("q_proj", "k_proj", "v_proj"), attn.head_dim)
                out_width = attn.head_dim
            out.update({f"{prefix}.{name}.weight": (0, width) for name, width in rows.items()})
            if include_output:
                out[f"{prefix}.o_proj.weight"] = (1, out_width)
        return out

    def param_roles(self) -> dict[str, str]:
        """``named_parameters()`` name -> role: "embedding", "lm_head", "norm", "bias" or "matrix".

        A tied lm_head is listed once, as ``embed.weight`` ("embedding"). Only "matrix"
        parameters are hidden matrices suitable for Muon.
        """
        roles = {}
        for name, p in self.named_parameters():
            if name == "embed.weight":
                roles[name] = "embedding"
            elif name == "lm_head.weight":
                roles[name] = "lm_head"
            elif name.endswith(".bias"):
                roles[name] = "bias"
            elif p.ndim == 1:
                roles[name] = "norm"
            else:
                roles[name] = "matrix"
        return roles

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        c = self.config
        if c.attention == "mla":
            attn = (f"MLA H={c.n_head} nope={c.nope_dim} rope={c.qk_rope_head_dim} v={c.v_dim} "
                    f"kv_lora={c.kv_lora_rank} q_lora={c.q_lora_rank}")
        else:
            kind = "MHA" if c.kv_heads == c.n_head else ("MQA" if c.kv_heads == 1 else "GQA")
            attn = f"{kind} H={c.n_head} Hkv={c.kv_heads} hd={c.head_size}"
        extras = [n for n, on in (("qk_bias", c.qk_bias), ("qk_norm", c.qk_norm), ("tied", c.tie_embeddings)) if on]
        if c.logit_softcap is not None:
            extras.append(f"softcap={c.logit_softcap}")
        return (f"GPT {self.num_params() / 1e6:.2f}M params: {c.n_layer} layers, d={c.d_model}, {attn}, "
                f"ffn={c.hidden_dim}, V={c.vocab_size}, T={c.seq_len}" + (f" [{', '.join(extras)}]" if extras else ""))
