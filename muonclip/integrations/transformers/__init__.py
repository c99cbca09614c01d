"""Hugging Face transformers integration: exact per-head max logits, QK-Clip specs and a Trainer path.

Modules: ``logits`` (per-head max logit of one attention call), ``registration`` (the
``muonclip_*`` implementations in ``transformers.AttentionInterface`` and switching a model to
them), ``specs`` (per-head layouts per model family: QK-Clip specs, ``head_blocks_for`` for
per-head Muon, attention-layer discovery), ``handle`` (``enable_qk_clip``, ``QKClipHandle``),
``optimizer`` (``make_muonclip_optimizer``) and ``callback`` (``MuonClipCallback``).
"""
from __future__ import annotations

try:
    import transformers  # noqa: F401 - checked first, for a clear message without the extra
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        "muonclip.integrations.transformers needs Hugging Face transformers and accelerate: "
        "pip install 'muonclip[hf]'"
    ) from exc

from .callback import MuonClipCallback
from .handle import TESTED_MODEL_TYPES, QKClipHandle, enable_qk_clip
from .logits import per_head_max_logits
from .optimizer import make_muonclip_optimizer
from .registration import SUPPORTED_ATTN_IMPLEMENTATIONS
from .specs import head_blocks_for

__all__ = [
    "QKClipHandle",
    "enable_qk_clip",
    "head_blocks_for",
    "make_muonclip_optimizer",
    "MuonClipCallback",
    "per_head_max_logits",
    "SUPPORTED_ATTN_IMPLEMENTATIONS",
    "TESTED_MODEL_TYPES",
]
