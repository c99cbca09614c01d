"""MuonClip: Muon with exact QK-Clip, a CPU-scale training lab and a measured story."""
from .optim import (
    MuonClip,
    NonFiniteGradientError,
    QKClipLayerSpec,
    RowBlock,
    apply_qk_clip_,
    build_param_groups,
    describe_param_groups,
)

param_groups = build_param_groups  # short alias, e.g. muonclip.param_groups(hf_model)

__version__ = "0.1.0"
__all__ = [
    "MuonClip", "NonFiniteGradientError", "build_param_groups", "param_groups",
    "describe_param_groups", "apply_qk_clip_", "QKClipLayerSpec", "RowBlock", "__version__",
]
