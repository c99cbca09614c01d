"""QK-Clip: rescale query/key weights of heads whose max pre-softmax logit exceeds tau.

Kimi K2 report (arXiv 2507.20534), Alg. 1 and Sec. 2.1. After the optimizer update,
every head h with max logit S_h > tau gets gamma_h = tau / S_h, and the weights that
produce its logit are scaled so that the logit itself is scaled by exactly gamma_h.

The model and the optimizer meet only through parameter *names*: a model describes
where each head's rows live with a :class:`QKClipLayerSpec` per attention layer, and
this module never imports a model.

Layouts (how the factor gamma_h is split):

* MHA (``n_kv_head == n_head``): ``q_h *= sqrt(gamma_h)``, ``k_h *= sqrt(gamma_h)``.
* MLA: non-rotary ``q^C_h, k^C_h *= sqrt(gamma_h)``; rotary ``q^R_h *= gamma_h``;
  the shared rotary key ``k^R`` is never touched (it would couple heads).
* GQA (``n_kv_head < n_head``), ``gqa_mode="exact"`` (default): the shared key head is
  never scaled, like MLA's k^R, and ``q_h *= gamma_h``. Every head's logit is scaled by
  exactly its own gamma_h and no other head changes.
* GQA, ``gqa_mode="balanced"``: ``k_g *= sqrt(g_min)``, ``q_h *= gamma_h / sqrt(g_min)``
  where g_min is the smallest gamma in the group. Also exact per head, but it *grows*
  the q of healthy heads in a clipped group every time (documented drift).

Heads with ``S_h <= tau`` keep their weights bit for bit in every layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "RowBlock", "QKClipLayerSpec", "qk_clip_scales", "qk_clip_gammas", "check_qk_clip_params",
    "scale_heads_", "apply_qk_clip_", "QKClipStats",
]

GQA_MODES = ("exact", "balanced")
# "head": each head by its own gamma (K2). "layer": every head of a layer by the layer's smallest
# gamma, as a naive per-layer clip does -- an ablation that shrinks healthy heads too.
GRANULARITIES = ("head", "layer")


@dataclass(frozen=True)
class RowBlock:
    """Rows of one parameter (weight or bias, indexed along dim 0) that belong to each head.

    Head ``h`` owns rows ``offset + h * stride + [0, width)``. ``stride`` defaults to
    ``width`` (heads stacked contiguously). Interleaved layouts such as DeepSeek-V3's
    ``q_b_proj`` (per head: ``[nope | rope]``) use ``offset`` and ``stride``.
    """

    param: str
    width: int
    offset: int = 0
    stride: int | None = None

    def rows(self, head: int) -> slice:
        stride = self.width if self.stride is None else self.stride
        start = self.offset + head * stride
        return slice(start, start + self.width)


@dataclass(frozen=True)
class QKClipLayerSpec:
    """Where the logit-producing weights of one attention layer live, by parameter name.

    * ``q``: per *query* head blocks (MHA/GQA q projection and its bias; MLA q^C).
    * ``k``: per *KV* head blocks (MHA/GQA k projection and bias; MLA k^C).
    * ``q_rope``: per query head rotary query blocks (MLA q^R); scaled by the full gamma.
    * ``shared_k``: names of shared components (MLA k^R) -- listed for documentation and
      checks; never modified.
    * ``kv_head_of``: for each query head, the KV head it reads (GQA map). Defaults to
      ``h * n_kv_head // n_head``.
    """

    n_head: int
    n_kv_head: int
    q: tuple[RowBlock, ...]
    k: tuple[RowBlock, ...] = ()
    q_rope: tuple[RowBlock, ...] = ()
    shared_k: tuple[str, ...] = ()
    kv_head_of: tuple[int, ...] | None = None
    layout: str = "mha"

    def __post_init__(self) -> None:
        if self.n_head <= 0 or self.n_kv_head <= 0 or self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head ({self.n_head}) must be a positive multiple of n_kv_head ({self.n_kv_head})"
            )
        if self.kv_head_of is not None and len(self.kv_head_of) != self.n_head:
            raise ValueError("kv_head_of must list one KV head per query head")

    def kv_map(self) -> tuple[int, ...]:
        if self.kv_head_of is not None:
            return self.kv_head_of
        group = self.n_head // self.n_kv_head
        return tuple(h // group for h in range(self.n_head))

    @property
    def grouped(self) -> bool:
        return self.n_kv_head < self.n_head

    def param_names(self) -> tuple[str, ...]:
        blocks = self.q + self.k + self.q_rope
        return tuple(dict.fromkeys([b.param for b in blocks] + list(self.shared_k)))


@dataclass
class QKClipStats:
    """What the last QK-Clip did: per-layer gamma (1 = untouched) and summary counts."""

    gammas: list[Tensor] = field(default_factory=list)
    n_clipped: int = 0
    min_gamma: float = 1.0
    max_logit: float = float("nan")


def qk_clip_scales(max_logits: Tensor, tau: float) -> Tensor:
    """Per-head factor gamma_h = tau / S_h where S_h > tau, else exactly 1 (K2 Alg. 1)."""
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    s = max_logits.detach().double()  # gamma in double: exact to round-off for fp64 weights too
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"max logits must be finite to compute QK-Clip factors, got {s.tolist()}")
    return torch.where(s > tau, tau / s, torch.ones_like(s))


def qk_clip_gammas(spec: Sequence[QKClipLayerSpec], max_logits: Sequence[Tensor], tau: float,
                   granularity: str = "head") -> list[Tensor]:
    """Validate this step's max logits against ``spec`` and return each layer's gamma.

    Pure: raises ``ValueError`` on a wrong layer count, a wrong head count or a non-finite
    logit, before anything is modified anywhere. ``granularity="layer"`` gives every head of a
    layer the layer's smallest gamma (see :data:`GRANULARITIES`).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")
    if len(max_logits) != len(spec):
        raise ValueError(f"max_logits has {len(max_logits)} layers but the spec has {len(spec)}")
    for i, (layer, logits) in enumerate(zip(spec, max_logits, strict=False)):
        if logits.numel() != layer.n_head:
            raise ValueError(f"layer {i}: expected {layer.n_head} max logits, got {logits.numel()}")
    gammas = [qk_clip_scales(logits.reshape(-1), tau) for logits in max_logits]
    if granularity == "layer":
        gammas = [torch.full_like(g, float(g.min())) for g in gammas]
    return gammas


def check_qk_clip_params(params_by_name: Mapping[str, Tensor], spec: Sequence[QKClipLayerSpec]) -> None:
    """Every parameter the spec names exists and holds every head's rows (raises otherwise)."""
    missing = [n for layer in spec for n in layer.param_names() if n not in params_by_name]
    if missing:
        raise KeyError(f"QK-Clip spec names unknown parameters: {missing[:5]}")
    for layer in spec:
        for blocks, heads in ((layer.q + layer.q_rope, layer.n_head), (layer.k, layer.n_kv_head)):
            for block in blocks:
                rows = block.rows(heads - 1)
                n_rows = params_by_name[block.param].shape[0]
                if rows.stop > n_rows:
                    raise ValueError(f"{block.param}: head {heads - 1} rows {rows.start}:{rows.stop} "
                                     f"exceed dim 0 ({n_rows})")


def _scale_rows_(params: Mapping[str, Tensor], block: RowBlock, head: int, factor: float) -> None:
    params[block.param].data[block.rows(head)].mul_(factor)


@torch.no_grad()
def scale_heads_(
    params_by_name: Mapping[str, Tensor],
    spec: Sequence[QKClipLayerSpec],
    gammas: Sequence[Tensor],
    *,
    gqa_mode: str = "exact",
) -> None:
    """Scale, in place, the q/k rows of every head with gamma < 1 (inputs already validated)."""
    for layer, gamma in zip(spec, gammas, strict=False):
        clipped = [h for h in range(layer.n_head) if gamma[h] < 1]
        if not clipped:
            continue
        g = gamma.tolist()
        if not layer.grouped:
            for h in clipped:
                root = math.sqrt(g[h])
                for block in layer.q + layer.k:
                    _scale_rows_(params_by_name, block, h, root)
                for block in layer.q_rope:
                    _scale_rows_(params_by_name, block, h, g[h])
            continue
        kv_of = layer.kv_map()
        if gqa_mode == "exact":
            # Never scale a shared key head: each query head takes its whole factor.
            for h in clipped:
                for block in layer.q + layer.q_rope:
                    _scale_rows_(params_by_name, block, h, g[h])
            continue
        # balanced: k_g * sqrt(g_min), q_h * gamma_h / sqrt(g_min) for every head of group g.
        for kv in sorted({kv_of[h] for h in clipped}):
            members = [h for h in range(layer.n_head) if kv_of[h] == kv]
            root_min = math.sqrt(min(g[h] for h in members))
            for block in layer.k:
                _scale_rows_(params_by_name, block, kv, root_min)
            for h in members:
                for block in layer.q + layer.q_rope:
                    _scale_rows_(params_by_name, block, h, g[h] / root_min)


@torch.no_grad()
def apply_qk_clip_(
    params_by_name: Mapping[str, Tensor],
    spec: Sequence[QKClipLayerSpec],
    max_logits: Sequence[Tensor],
    tau: float,
    *,
    gqa_mode: str = "exact",
    granularity: str = "head",
) -> list[Tensor]:
    """Rescale, in place, the q/k rows of every head whose max logit exceeds ``tau``.

    Returns the per-layer gamma (``Tensor[n_head]``, 1 for untouched heads). After the call a
    forward on the same input gives ``S'_h = min(S_h, tau)`` for every head (exactly, up to
    round-off), and untouched heads' weights are bit-identical. Every input is checked before
    any weight changes: on error, nothing was modified.
    """
    if gqa_mode not in GQA_MODES:
        raise ValueError(f"unknown gqa_mode {gqa_mode!r}; expected one of {GQA_MODES}")
    check_qk_clip_params(params_by_name, spec)
    gammas = qk_clip_gammas(spec, max_logits, tau, granularity)
    scale_heads_(params_by_name, spec, gammas, gqa_mode=gqa_mode)
    return gammas
