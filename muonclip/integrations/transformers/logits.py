"""Max-logit tracking: the exact per-head max pre-softmax logit of one attention call, and its running max."""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import create_mask

if TYPE_CHECKING:  # the handle imports this module
    from .handle import QKClipHandle

__all__ = ["LayerTracker", "observe", "per_head_max_logits"]


def _allowed_from_tensor(mask: Tensor, k_len: int) -> Tensor:
    """Visible entries of a transformers attention mask: bool (True = attend) or additive
    float (0 where visible, the dtype's minimum or -inf where masked)."""
    mask = mask[..., :k_len]
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def _allowed_from_block_mask(block_mask: Any, q_len: int, k_len: int, device: torch.device) -> Tensor:
    b, h = block_mask.kv_num_blocks.shape[:2]
    return create_mask(block_mask.mask_mod, b, h, q_len, k_len, device=device)


@torch.no_grad()
def per_head_max_logits(
    query: Tensor,
    key: Tensor,
    scaling: float,
    allowed: Tensor | None = None,
    *,
    causal: bool = False,
    max_elements: int = 1 << 22,
) -> Tensor:
    """``max over batch, query i, visible key j of scaling * q_i . k_j`` for every query head.

    ``query`` is ``(B, H, Tq, D)``, ``key`` is ``(B, Hk, Tk, D)`` with ``H % Hk == 0`` (query
    head ``h`` reads key head ``h // (H // Hk)``, as ``repeat_kv``). ``allowed`` is a bool mask
    broadcastable to ``(B, H, Tq, Tk)``; ``causal`` adds ``j <= i`` (top-left aligned, like
    SDPA's ``is_causal``). Query rows are processed in blocks of at most ``max_elements``
    logits. Heads that see no visible entry report ``-inf``.
    """
    b, h, tq, d = query.shape
    hk, tk = key.shape[1], key.shape[2]
    if h % hk:
        raise ValueError(f"{h} query heads are not a multiple of {hk} key heads")
    rep = h // hk
    dtype = torch.promote_types(query.dtype, torch.float32)
    q = query.detach().to(dtype).reshape(b, hk, rep, tq, d)
    kt = key.detach().to(dtype).transpose(-1, -2).unsqueeze(2)  # (B, Hk, 1, D, Tk)
    a = None
    if allowed is not None:
        while allowed.dim() < 4:
            allowed = allowed.unsqueeze(0)
        bm, hm = allowed.shape[:2]
        if hm == 1:
            a = allowed.unsqueeze(2)
        elif hm == h:
            a = allowed.reshape(bm, hk, rep, *allowed.shape[2:])
        else:
            raise ValueError(f"mask has {hm} heads, expected 1 or {h}")
    rows = max(1, max_elements // max(1, b * h * tk))
    best = torch.full((h,), float("-inf"), dtype=dtype, device=query.device)
    k_idx = torch.arange(tk, device=query.device)
    for start in range(0, tq, rows):
        stop = min(tq, start + rows)
        logits = torch.matmul(q[..., start:stop, :], kt) * scaling  # (B, Hk, rep, rows, Tk)
        if a is not None:
            logits = logits.masked_fill(~(a if a.shape[-2] == 1 else a[..., start:stop, :]), float("-inf"))
        if causal:
            q_idx = torch.arange(start, stop, device=query.device)
            logits = logits.masked_fill(k_idx[None, :] > q_idx[:, None], float("-inf"))
        best = torch.maximum(best, logits.amax(dim=(0, 3, 4)).reshape(h))
    return best


def observe(impl: str, module: nn.Module, query: Tensor, key: Tensor, mask: Any, args: dict,
            max_elements: int) -> Tensor:
    """The per-head max logit of one call of transformers' ``impl`` attention function
    (``"eager"``, ``"sdpa"`` or ``"flex_attention"``), with that function's mask semantics."""
    q_len, k_len = query.shape[2], key.shape[2]
    scaling = args.get("scaling")
    if scaling is None:  # sdpa / flex default
        scaling = query.shape[-1] ** -0.5
    allowed, causal = None, False
    if mask is None:
        if impl == "sdpa":
            is_causal = args.get("is_causal")
            is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
            causal = bool(is_causal) and q_len > 1
        # eager and flex without a mask attend everywhere
    elif isinstance(mask, Tensor):
        allowed = _allowed_from_tensor(mask, k_len)
    else:  # flex BlockMask
        allowed = _allowed_from_block_mask(mask, q_len, k_len, query.device)
    return per_head_max_logits(query, key, float(scaling), allowed, causal=causal, max_elements=max_elements)


class LayerTracker:
    """Running per-head max logit of one attention module since the last reset."""

    def __init__(self, handle: QKClipHandle, index: int, max_elements: int) -> None:
        self.handle_ref = weakref.ref(handle)
        self.index = index
        self.max_elements = max_elements
        self.value: Tensor | None = None
        self.calls = 0

    def wants(self, module: nn.Module) -> bool:
        handle = self.handle_ref()
        if handle is None or not handle.tracking or not module.training:
            return False
        compiling = getattr(torch.compiler, "is_compiling", None)
        return not (compiling is not None and compiling())

    def observe(self, impl: str, module: nn.Module, query: Tensor, key: Tensor, mask: Any, args: dict) -> None:
        m = observe(impl, module, query, key, mask, args, self.max_elements)
        self.value = m if self.value is None else torch.maximum(self.value, m)
        self.calls += 1
