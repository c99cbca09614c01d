"""Small decoder-only transformers (MHA/GQA/MQA/MLA) with exact per-head max-logit tracking."""
from .attention import (
    CausalSelfAttention,
    MultiHeadLatentAttention,
    apply_rope,
    causal_attention,
    materialised_logits,
    rope_cos_sin,
)
from .gpt import GPT, Block, GPTConfig, SwiGLU
from .max_logit import causal_max_logits

__all__ = [
    "GPT", "GPTConfig", "Block", "SwiGLU",
    "CausalSelfAttention", "MultiHeadLatentAttention",
    "causal_attention", "causal_max_logits", "materialised_logits", "apply_rope", "rope_cos_sin",
]
