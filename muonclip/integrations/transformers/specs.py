"""QK-Clip specs per model family (MHA/GQA q_proj/k_proj, DeepSeek-V3 MLA) and attention-layer discovery."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ...optim.qk_clip import QKClipLayerSpec, RowBlock

__all__ = ["AttentionLayer", "attention_layers"]


@dataclass(frozen=True)
class AttentionLayer:
    """One attention module of a model, by name, with its QK-Clip spec."""

    name: str
    module: nn.Module
    spec: QKClipLayerSpec


def _is_mla(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("kv_b_proj", "kv_a_proj_with_mqa", "qk_nope_head_dim", "qk_rope_head_dim",
                                       "v_head_dim"))


def _is_qkv(m: nn.Module) -> bool:
    return (isinstance(getattr(m, "q_proj", None), nn.Linear) and isinstance(getattr(m, "k_proj", None), nn.Linear)
            and isinstance(getattr(m, "head_dim", None), int))


def _row_blocks(names: dict[int, str], lin: nn.Linear, width: int, offset: int = 0,
                stride: int | None = None) -> tuple[RowBlock, ...]:
    out = [RowBlock(names[id(lin.weight)], width, offset, stride)]
    if lin.bias is not None:
        out.append(RowBlock(names[id(lin.bias)], width, offset, stride))
    return tuple(out)


def _qkv_spec(name: str, m: nn.Module, names: dict[int, str], config: Any) -> QKClipLayerSpec:
    for attr in ("q_norm", "k_norm", "q_layernorm", "k_layernorm"):
        if isinstance(getattr(m, attr, None), nn.Module):
            raise NotImplementedError(
                f"{name} normalises q/k ({attr}); scaling q_proj/k_proj rows does not change its "
                "logits, so this QK-Clip spec would be wrong (QK-norm models rarely need QK-Clip)"
            )
    hd = m.head_dim
    q_out, k_out = m.q_proj.out_features, m.k_proj.out_features
    if q_out % hd or k_out % hd:
        raise ValueError(f"{name}: q/k projections ({q_out}, {k_out}) are not multiples of head_dim {hd}")
    n_head, n_kv = q_out // hd, k_out // hd
    cfg_heads = getattr(config, "num_attention_heads", None) or n_head
    cfg_kv = getattr(config, "num_key_value_heads", None) or cfg_heads
    if (n_head, n_kv) != (cfg_heads, cfg_kv):
        raise ValueError(f"{name}: projections give {n_head} q / {n_kv} kv heads but the config says "
                         f"{cfg_heads} / {cfg_kv}")
    return QKClipLayerSpec(
        n_head=n_head, n_kv_head=n_kv,
        q=_row_blocks(names, m.q_proj, hd), k=_row_blocks(names, m.k_proj, hd),
        layout="mha" if n_kv == n_head else "gqa",
    )


def _mla_spec(name: str, m: nn.Module, names: dict[int, str]) -> QKClipLayerSpec:
    """DeepSeek-V3 MLA. Per head, q_proj / q_b_proj rows are ``[q_nope | q_rope]`` and kv_b_proj
    rows are ``[k_nope | v]``; kv_a_proj_with_mqa ends with the shared rotary key (never scaled).
    RoPE (interleaved or not) and the q_a/kv_a RMSNorms act before/inside these row blocks
    linearly per head, so scaling a head's whole block by a scalar scales its logit term."""
    nope, rope, vdim = m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
    qk = nope + rope
    n_head = getattr(m, "num_heads", None) or m.config.num_attention_heads
    q_lin = m.q_proj if getattr(m, "q_lora_rank", None) is None else m.q_b_proj
    kv_b, kv_a = m.kv_b_proj, m.kv_a_proj_with_mqa
    if q_lin.out_features != n_head * qk:
        raise ValueError(f"{name}: q projection has {q_lin.out_features} rows, expected {n_head} x {qk}")
    if kv_b.out_features != n_head * (nope + vdim):
        raise ValueError(f"{name}: kv_b_proj has {kv_b.out_features} rows, expected {n_head} x {nope + vdim}")
    kv_lora = getattr(m, "kv_lora_rank", None)
    if kv_lora is not None and kv_a.out_features != kv_lora + rope:
        raise ValueError(f"{name}: kv_a_proj_with_mqa has {kv_a.out_features} rows, expected {kv_lora} + {rope}")
    shared = [names[id(kv_a.weight)]] + ([names[id(kv_a.bias)]] if kv_a.bias is not None else [])
    return QKClipLayerSpec(
        n_head=n_head, n_kv_head=n_head,  # kv_b_proj holds one k^C block per query head
        q=_row_blocks(names, q_lin, nope, 0, qk) if nope else (),
        k=_row_blocks(names, kv_b, nope, 0, nope + vdim) if nope else (),
        q_rope=_row_blocks(names, q_lin, rope, nope, qk) if rope else (),
        shared_k=tuple(shared),
        layout="mla",
    )


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every attention module of ``model`` whose q/k layout is known (DeepSeek MLA, or
    ``q_proj``/``k_proj`` with ``head_dim``), in model order, with its spec."""
    names = {id(p): n for n, p in model.named_parameters()}
    config = getattr(model, "config", None)
    layers = []
    for name, m in model.named_modules():
        if _is_mla(m):
            layers.append(AttentionLayer(name, m, _mla_spec(name, m, names)))
        elif _is_qkv(m):
            layers.append(AttentionLayer(name, m, _qkv_spec(name, m, names, getattr(m, "config", config))))
    return layers
