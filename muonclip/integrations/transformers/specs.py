"""Per-head layouts of attention modules (MHA/GQA, DeepSeek-V3 MLA) and what is read from them:
QK-Clip specs, per-head Muon blocks (``head_blocks_for``) and attention-layer discovery."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from torch import nn

from ...optim.param_groups import Rule, assign_params
from ...optim.qk_clip import QKClipLayerSpec, RowBlock

__all__ = ["TESTED_MODEL_TYPES", "AttentionLayer", "HeadLayout", "attention_layers", "check_model_type",
           "head_blocks_for", "head_layouts"]

#: ``config.model_type`` values covered by the tests; others need ``allow_untested=True``.
TESTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "deepseek_v3")


@dataclass(frozen=True)
class HeadLayout:
    """How one attention module's projections split into heads, checked against the config.
    Its QK-Clip spec and its per-head Muon blocks are both read from it.

    ``q``, ``k``, ``v``: ``(projection, rows per head)``. MHA/GQA: q_proj per query head, k_proj
    and v_proj per KV head. MLA: q_b_proj (q_proj without q_lora_rank) with rows
    ``[q_nope | q_rope]`` and kv_b_proj with rows ``[k_nope | v]``, both per query head; ``v``
    is None and ``mla_nope`` is the nope width. ``o``: o_proj and its input columns per query head.
    """

    n_head: int
    n_kv_head: int
    q: tuple[nn.Linear, int]
    k: tuple[nn.Linear, int]
    v: tuple[nn.Linear, int] | None
    o: tuple[nn.Linear, int] | None
    mla_nope: int | None = None

    def head_splits(self, include_output: bool = False) -> list[tuple[nn.Linear, int, int, int]]:
        """``(projection, dim, head width, heads)`` of each per-head split: q/k/v rows, and
        o_proj columns with ``include_output``."""
        out = [(self.q[0], 0, self.q[1], self.n_head), (self.k[0], 0, self.k[1], self.n_kv_head)]
        if self.v is not None:
            out.append((self.v[0], 0, self.v[1], self.n_kv_head))
        if include_output and self.o is not None:
            out.append((self.o[0], 1, self.o[1], self.n_head))
        return out


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


def _linear(m: nn.Module, attr: str, width: int) -> tuple[nn.Linear, int] | None:
    lin = getattr(m, attr, None)
    return (lin, width) if isinstance(lin, nn.Linear) else None


def _qkv_layout(name: str, m: nn.Module, config: Any) -> HeadLayout:
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
    return HeadLayout(n_head=n_head, n_kv_head=n_kv, q=(m.q_proj, hd), k=(m.k_proj, hd),
                      v=_linear(m, "v_proj", hd), o=_linear(m, "o_proj", hd) or _linear(m, "dense", hd))  # Phi: dense


def _mla_layout(name: str, m: nn.Module) -> HeadLayout:
    nope, rope, vdim = m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
    n_head = getattr(m, "num_heads", None) or m.config.num_attention_heads
    q_lin = m.q_proj if getattr(m, "q_lora_rank", None) is None else m.q_b_proj
    if q_lin.out_features != n_head * (nope + rope):
        raise ValueError(f"{name}: q projection has {q_lin.out_features} rows, expected {n_head} x {nope + rope}")
    if m.kv_b_proj.out_features != n_head * (nope + vdim):
        raise ValueError(f"{name}: kv_b_proj has {m.kv_b_proj.out_features} rows, expected {n_head} x {nope + vdim}")
    return HeadLayout(n_head=n_head, n_kv_head=n_head,  # kv_b_proj holds one k^C block per query head
                      q=(q_lin, nope + rope), k=(m.kv_b_proj, nope + vdim), v=None,
                      o=_linear(m, "o_proj", vdim), mla_nope=nope)


def head_layouts(model: nn.Module) -> Iterator[tuple[str, nn.Module, HeadLayout]]:
    """``(name, module, layout)`` of every attention module of ``model`` whose layout is known
    (DeepSeek MLA, or ``q_proj``/``k_proj`` with ``head_dim``), in model order."""
    config = getattr(model, "config", None)
    for name, m in model.named_modules():
        if _is_mla(m):
            yield name, m, _mla_layout(name, m)
        elif _is_qkv(m):
            yield name, m, _qkv_layout(name, m, getattr(m, "config", config))


def _row_blocks(names: dict[int, str], lin: nn.Linear, width: int, offset: int = 0,
                stride: int | None = None) -> tuple[RowBlock, ...]:
    out = [RowBlock(names[id(lin.weight)], width, offset, stride)]
    if lin.bias is not None:
        out.append(RowBlock(names[id(lin.bias)], width, offset, stride))
    return tuple(out)


# Submodules that normalise q or k after their projection, by the names transformers uses:
# q_norm/k_norm (Qwen3, Gemma3, OLMo2), q_layernorm (Persimmon), qk_norm (Llama 4),
# query_layernorm/key_layernorm (HunYuan), q_layer_norm, q_input_layernorm, k_ln, ...
_QK_NORM_NAME = re.compile(r"(q|k|qk|query|key)(_[a-z]+)*_?(norm|layernorm|ln)")
# Config flags that change q/k after the projection: QK-norm, and OLMo's clamp of q, k, v.
_QK_CONFIG_FLAGS = ("use_qk_norm", "qk_layernorm", "use_qk_layernorm", "qk_norm", "clip_qkv")


def _check_rows_scale_logits(name: str, m: nn.Module, config: Any) -> None:
    """Raise ``NotImplementedError`` where scaling q_proj/k_proj rows would not scale the logit
    by the same factor: a QK-norm, or a clamp of q/k, between the projection and the product.
    QK-Clip would then report heads as clipped while their logits barely moved."""
    for child, module in m.named_children():
        if _QK_NORM_NAME.fullmatch(child.lower()):
            raise NotImplementedError(
                f"{name} normalises q/k ({child}: {type(module).__name__}); scaling q_proj/k_proj rows does not "
                "change its logits, so QK-Clip cannot cap them (QK-norm models rarely need QK-Clip)")
    for flag in _QK_CONFIG_FLAGS:
        value = getattr(config, flag, None)
        if value is not None and value is not False:
            raise NotImplementedError(
                f"{name}: its config sets {flag}={value!r}, which acts on q/k after their projections, so "
                "scaling q_proj/k_proj rows does not scale the logits and QK-Clip cannot cap them")


def _qkv_spec(name: str, m: nn.Module, layout: HeadLayout, names: dict[int, str]) -> QKClipLayerSpec:
    return QKClipLayerSpec(
        n_head=layout.n_head, n_kv_head=layout.n_kv_head,
        q=_row_blocks(names, *layout.q), k=_row_blocks(names, *layout.k),
        layout="mha" if layout.n_kv_head == layout.n_head else "gqa",
    )


def _mla_spec(name: str, m: nn.Module, layout: HeadLayout, names: dict[int, str]) -> QKClipLayerSpec:
    """DeepSeek-V3 MLA. Per head, q_proj / q_b_proj rows are ``[q_nope | q_rope]`` and kv_b_proj
    rows are ``[k_nope | v]``; kv_a_proj_with_mqa ends with the shared rotary key (never scaled).
    RoPE (interleaved or not) and the q_a/kv_a RMSNorms act before/inside these row blocks
    linearly per head, so scaling a head's whole block by a scalar scales its logit term."""
    (q_lin, qk), (kv_b, kv_width), nope = layout.q, layout.k, layout.mla_nope
    rope = qk - nope
    kv_a = m.kv_a_proj_with_mqa
    kv_lora = getattr(m, "kv_lora_rank", None)
    if kv_lora is not None and kv_a.out_features != kv_lora + rope:
        raise ValueError(f"{name}: kv_a_proj_with_mqa has {kv_a.out_features} rows, expected {kv_lora} + {rope}")
    shared = [names[id(kv_a.weight)]] + ([names[id(kv_a.bias)]] if kv_a.bias is not None else [])
    return QKClipLayerSpec(
        n_head=layout.n_head, n_kv_head=layout.n_kv_head,
        q=_row_blocks(names, q_lin, nope, 0, qk) if nope else (),
        k=_row_blocks(names, kv_b, nope, 0, kv_width) if nope else (),
        q_rope=_row_blocks(names, q_lin, rope, nope, qk) if rope else (),
        shared_k=tuple(shared),
        layout="mla",
    )


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every attention module of ``model`` whose q/k layout is known, in model order, with its
    spec. Raises ``NotImplementedError`` for a q/k layout whose logits row scaling cannot cap."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for name, m, layout in head_layouts(model):
        if layout.mla_nope is not None:
            out.append(AttentionLayer(name, m, _mla_spec(name, m, layout, names)))
        else:
            _check_rows_scale_logits(name, m, getattr(m, "config", None) or getattr(model, "config", None))
            out.append(AttentionLayer(name, m, _qkv_spec(name, m, layout, names)))
    return out


def check_model_type(model: nn.Module, allow_untested: bool) -> None:
    """Raise unless ``model.config.model_type`` is tested or ``allow_untested``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TESTED_MODEL_TYPES and not allow_untested:
        raise ValueError(
            f"model_type {model_type!r} is not one of the tested {TESTED_MODEL_TYPES}; "
            "pass allow_untested=True if its attention follows the Llama (q_proj/k_proj) or "
            "DeepSeek-V3 (MLA) layout"
        )


def head_blocks_for(model: nn.Module, include_output: bool = False, *, rules: Sequence[Rule] | None = None,
                    allow_untested: bool = False) -> dict[str, tuple[int, int]]:
    """Per-head layout for per-head Muon, ``{parameter name: (dim, head width)}``, for
    ``build_param_groups(model, head_blocks=...)``.

    Llama/Mistral/Qwen2 (MHA/GQA): q_proj rows per query head, k_proj and v_proj rows per KV
    head, all ``head_dim`` wide. DeepSeek-V3 MLA (GLM-5's "Muon Split"): q_b_proj (q_proj
    without q_lora_rank) rows per head of ``qk_nope_head_dim + qk_rope_head_dim``, kv_b_proj rows
    per head of ``qk_nope_head_dim + v_head_dim``; the low-rank down-projections stay whole.
    ``include_output``: o_proj columns per query head too. Only weights that
    :func:`~muonclip.optim.param_groups.assign_params` sends to Muon under ``rules`` are listed.
    """
    check_model_type(model, allow_untested)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {n for n, _, algo, _ in assign_params(model, rules) if algo == "muon"}
    out: dict[str, tuple[int, int]] = {}
    found = False
    for name, _, layout in head_layouts(model):
        found = True
        if include_output and layout.o is None:
            raise ValueError(f"{name}: found no output projection (o_proj or dense) to split per head; "
                             "pass include_output=False")
        for lin, dim, width, heads in layout.head_splits(include_output):
            size = lin.weight.shape[dim]
            if size != heads * width:
                raise ValueError(f"{name}: {names[id(lin.weight)]} has {size} {('rows', 'columns')[dim]}, "
                                 f"expected {heads} heads x {width}")
            if names[id(lin.weight)] in muon:
                out[names[id(lin.weight)]] = (dim, width)
    if not found:
        raise ValueError(f"found no attention modules with a known head layout in {type(model).__name__}")
    return out
