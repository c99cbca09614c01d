"""The optimizer factory: MuonClip with Hugging Face parameter groups (optionally per-head Muon) and a
QK-Clip handle in one call."""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ...optim.muonclip import MuonClip
from ...optim.param_groups import Rule, build_param_groups
from .handle import QKClipHandle, enable_qk_clip
from .specs import head_blocks_for

__all__ = ["make_muonclip_optimizer"]


def make_muonclip_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    qk_clip_tau: float | None = 100.0,
    *,
    rules: Sequence[Rule] | None = None,
    adamw_lr: float | None = None,
    adamw_weight_decay: float | None = None,
    allow_untested: bool = False,
    per_head_muon: int = 0,
    per_head_output: bool = False,
    **kwargs: Any,
) -> tuple[MuonClip, QKClipHandle | None]:
    """``(MuonClip, handle)`` for a transformers model: Muon on hidden matrices, AdamW on
    embeddings / lm_head (tied or not) / norms / biases, QK-Clip at ``qk_clip_tau`` after
    every step with the max logits of all micro-batches since the previous step, on the
    attention layers whose q/k weights train (frozen layers are neither tracked nor clipped).

    ``kwargs`` go to :class:`MuonClip` (momentum, gqa_mode, ...). With ``qk_clip_tau=None``
    no tracking is installed and the handle is None. Call ``handle.remove()`` when done.

    ``per_head_muon = g >= 1`` orthogonalises q/k/v (MLA: q_b_proj, kv_b_proj) per block of g
    neighbouring heads (:func:`head_blocks_for`; MuonClip's ``heads_per_block=g``), and o_proj's
    columns too with ``per_head_output``; 0 (default) orthogonalises whole matrices.
    """
    if isinstance(per_head_muon, bool) or not isinstance(per_head_muon, int) or per_head_muon < 0:
        raise ValueError(f"per_head_muon must be an int >= 0 (0: off, g: heads per block), got {per_head_muon!r}")
    head_blocks = None
    if per_head_muon:
        if "heads_per_block" in kwargs:
            raise ValueError("pass per_head_muon=g, not heads_per_block, to make_muonclip_optimizer")
        head_blocks = head_blocks_for(model, per_head_output, rules=rules, allow_untested=allow_untested)
        kwargs["heads_per_block"] = per_head_muon
    elif per_head_output:
        raise ValueError("per_head_output needs per_head_muon >= 1")
    groups = build_param_groups(model, lr, weight_decay, rules=rules, adamw_lr=adamw_lr,
                                adamw_weight_decay=adamw_weight_decay, head_blocks=head_blocks)
    if qk_clip_tau is None:
        return MuonClip(groups, lr=lr, weight_decay=weight_decay, **kwargs), None
    handle = enable_qk_clip(model, allow_untested=allow_untested, trainable_only=True)
    try:
        opt = MuonClip(groups, lr=lr, weight_decay=weight_decay, qk_clip_tau=qk_clip_tau,
                       qk_clip_spec=handle.spec(), max_logits_fn=handle.pop_max_logits, **kwargs)
    except BaseException:
        handle.remove()
        raise
    return opt, handle
