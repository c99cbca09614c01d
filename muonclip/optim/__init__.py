"""MuonClip optimizer: Muon + QK-Clip, param-group builder, pure functions and a float64 reference."""
from .functional import muon_update, newton_schulz, orthogonalize
from .muonclip import MuonClip, NonFiniteGradientError, QKClipStats
from .param_groups import DEFAULT_RULES, Rule, assign_params, build_param_groups, describe_param_groups
from .precision import NS_PRECISIONS, cpu_has_native_bf16, resolve_ns_dtype
from .qk_clip import QKClipLayerSpec, RowBlock, apply_qk_clip_, qk_clip_scales

__all__ = [
    "MuonClip", "NonFiniteGradientError", "QKClipStats",
    "build_param_groups", "describe_param_groups", "assign_params", "Rule", "DEFAULT_RULES",
    "newton_schulz", "orthogonalize", "muon_update",
    "NS_PRECISIONS", "cpu_has_native_bf16", "resolve_ns_dtype",
    "QKClipLayerSpec", "RowBlock", "apply_qk_clip_", "qk_clip_scales",
]
