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

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["RowBlock", "QKClipLayerSpec", "qk_clip_scales", "apply_qk_clip_"]

GQA_MODES = ("exact", "balanced")


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
