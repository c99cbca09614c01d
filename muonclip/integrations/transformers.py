"""Hugging Face transformers integration: exact per-head max logits, QK-Clip specs and a Trainer path."""
from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

try:
    import transformers.modeling_utils as _hf_modeling_utils
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        "muonclip.integrations.transformers needs Hugging Face transformers and accelerate: "
        "pip install 'muonclip[hf]'"
    ) from exc

from ..optim.muonclip import MuonClip, QKClipStats
from ..optim.param_groups import Rule, build_param_groups
from ..optim.qk_clip import GQA_MODES, QKClipLayerSpec, RowBlock, apply_qk_clip_

__all__ = [
    "QKClipHandle",
    "enable_qk_clip",
    "make_muonclip_optimizer",
    "MuonClipCallback",
    "per_head_max_logits",
    "SUPPORTED_ATTN_IMPLEMENTATIONS",
    "TESTED_MODEL_TYPES",
]

#: Attention implementations whose calls are intercepted (``config._attn_implementation``).
SUPPORTED_ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention")
#: ``config.model_type`` values covered by the tests; others need ``allow_untested=True``.
TESTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "deepseek_v3")

# Attention functions are looked up by name on every call (``ALL_ATTENTION_FUNCTIONS`` for
# sdpa/flex, the modeling file's global ``eager_attention_forward`` for eager), so tracking
# wraps those entries. The wrappers pass straight through for modules no handle tracks.
_LOCK = threading.RLock()
_TRACKERS: "weakref.WeakKeyDictionary[nn.Module, _LayerTracker]" = weakref.WeakKeyDictionary()
_PATCHES: dict[tuple, list] = {}  # key -> [refcount, restore]


# --------------------------------------------------------------------------------------------
# exact per-head max logit of one attention call
# --------------------------------------------------------------------------------------------
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
    from torch.nn.attention.flex_attention import create_mask

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


def _observe(kind: str, module: nn.Module, query: Tensor, key: Tensor, mask: Any, args: dict,
             max_elements: int) -> Tensor:
    """The per-head max logit of one call of the ``kind`` attention function, with the mask
    semantics of that function in transformers."""
    q_len, k_len = query.shape[2], key.shape[2]
    scaling = args.get("scaling")
    if scaling is None:  # sdpa / flex default
        scaling = query.shape[-1] ** -0.5
    allowed, causal = None, False
    if mask is None:
        if kind == "sdpa":
            is_causal = args.get("is_causal")
            is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
            causal = bool(is_causal) and q_len > 1
        # eager and flex without a mask attend everywhere
    elif isinstance(mask, Tensor):
        allowed = _allowed_from_tensor(mask, k_len)
    else:  # flex BlockMask
        allowed = _allowed_from_block_mask(mask, q_len, k_len, query.device)
    return per_head_max_logits(query, key, float(scaling), allowed, causal=causal, max_elements=max_elements)


class _LayerTracker:
    """Running per-head max logit of one attention module since the last reset."""

    def __init__(self, handle: "QKClipHandle", index: int, max_elements: int) -> None:
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

    def observe(self, kind: str, module: nn.Module, query: Tensor, key: Tensor, mask: Any, args: dict) -> None:
        m = _observe(kind, module, query, key, mask, args, self.max_elements)
        self.value = m if self.value is None else torch.maximum(self.value, m)
        self.calls += 1


def _wrap_attention(orig: Callable, kind: str) -> Callable:
    try:
        sig = inspect.signature(orig)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        sig = None

    @functools.wraps(orig)
    def wrapper(module, query, key, value, attention_mask, *args, **kwargs):
        tracker = _TRACKERS.get(module) if isinstance(module, nn.Module) else None
        if tracker is not None and tracker.wants(module):
            named = kwargs
            if args and sig is not None:  # transformers passes scaling by keyword; be safe anyway
                bound = sig.bind_partial(module, query, key, value, attention_mask, *args, **kwargs)
                named = {**bound.arguments, **kwargs}
            tracker.observe(kind, module, query, key, attention_mask, named)
        return orig(module, query, key, value, attention_mask, *args, **kwargs)

    wrapper.__muonclip_wrapped__ = orig
    return wrapper


def _patch_module_attr(mod: Any, attr: str, kind: str) -> Callable[[], None]:
    orig = getattr(mod, attr)
    wrapper = _wrap_attention(orig, kind)
    setattr(mod, attr, wrapper)

    def restore() -> None:
        if getattr(mod, attr, None) is wrapper:
            setattr(mod, attr, orig)

    return restore


def _patch_interface(iface: Any, impl: str, kind: str) -> Callable[[], None]:
    local = getattr(iface, "_local_mapping", None)
    had_local = isinstance(local, dict) and impl in local
    prev_local = local[impl] if had_local else None
    orig = iface[impl]
    wrapper = _wrap_attention(orig, kind)
    iface[impl] = wrapper

    def restore() -> None:
        if isinstance(local, dict):
            if local.get(impl) is wrapper:
                if had_local:
                    local[impl] = prev_local
                else:
                    del local[impl]
        else:  # pragma: no cover - other interface implementations
            iface[impl] = orig

    return restore


def _acquire(key: tuple, install: Callable[[], Callable[[], None]]) -> tuple:
    entry = _PATCHES.get(key)
    if entry is None:
        _PATCHES[key] = [1, install()]
    else:
        entry[0] += 1
    return key


def _release(key: tuple) -> None:
    entry = _PATCHES.get(key)
    if entry is None:
        return
    entry[0] -= 1
    if entry[0] <= 0:
        del _PATCHES[key]
        entry[1]()


def _acquire_patches(attn_cls: type) -> list[tuple]:
    """Wrap the attention functions the modeling file of ``attn_cls`` dispatches to."""
    mod = sys.modules[attn_cls.__module__]
    keys = []
    if callable(getattr(mod, "eager_attention_forward", None)):
        keys.append(_acquire(("eager", mod.__name__),
                             lambda: _patch_module_attr(mod, "eager_attention_forward", "eager")))
    iface = getattr(mod, "ALL_ATTENTION_FUNCTIONS", None) or _hf_modeling_utils.ALL_ATTENTION_FUNCTIONS
    for impl, kind in (("sdpa", "sdpa"), ("flex_attention", "flex")):
        if impl in iface:
            keys.append(_acquire(("iface", id(iface), impl),
                                 lambda impl=impl, kind=kind: _patch_interface(iface, impl, kind)))
    return keys


# --------------------------------------------------------------------------------------------
# model inspection: attention layers and their QK-Clip specs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layer:
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


def _attention_layers(model: nn.Module) -> list[_Layer]:
    names = {id(p): n for n, p in model.named_parameters()}
    config = getattr(model, "config", None)
    layers = []
    for name, m in model.named_modules():
        if _is_mla(m):
            layers.append(_Layer(name, m, _mla_spec(name, m, names)))
        elif _is_qkv(m):
            layers.append(_Layer(name, m, _qkv_spec(name, m, names, getattr(m, "config", config))))
    return layers


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
class QKClipHandle:
    """Tracks the exact per-head max pre-softmax logit of every attention layer of a model.

    The value is a running max over all training forwards since the last :meth:`reset`
    (gradient accumulation: max over the micro-batches of one optimizer step). Forwards of a
    model in ``eval()`` mode, or inside :meth:`paused`, are not tracked. Pass
    :meth:`pop_max_logits` as MuonClip's ``max_logits_fn``: it returns the maxima and resets.
    """

    def __init__(self, model: nn.Module, layers: Sequence[_Layer], max_elements: int) -> None:
        self._model_ref = weakref.ref(model)
        self.layer_names: list[str] = [layer.name for layer in layers]
        self._specs = [layer.spec for layer in layers]
        self._modules = [weakref.ref(layer.module) for layer in layers]
        self._trackers = [_LayerTracker(self, i, max_elements) for i in range(len(layers))]
        self._finalizer: Any = None
        self.tracking = True
        self.removed = False

    def __repr__(self) -> str:
        state = "removed" if self.removed else ("tracking" if self.tracking else "paused")
        return f"QKClipHandle({len(self.layer_names)} attention layers, {state})"

    # -- values --------------------------------------------------------------------------
    @property
    def observed_forwards(self) -> int:
        """Attention calls seen per layer since the last reset (the minimum over layers)."""
        return min((t.calls for t in self._trackers), default=0)

    def max_logits(self) -> list[Tensor]:
        """Per layer (in model order) ``Tensor[n_head]``: max logit since the last reset.

        Raises ``RuntimeError`` if some layer recorded nothing (no training forward since the
        last reset, or an attention implementation that is not intercepted). A head that saw
        no visible key at all reports 0 (it cannot need clipping)."""
        missing = [n for n, t in zip(self.layer_names, self._trackers, strict=True) if t.value is None]
        if missing:
            impl = getattr(getattr(self._model_ref(), "config", None), "_attn_implementation", None)
            raise RuntimeError(
                f"no max logits recorded for {len(missing)} attention layer(s) (first: {missing[0]!r}). "
                "Run a forward with model.train() (tracking not paused) before the optimizer step; "
                f"the attention implementation must be one of {SUPPORTED_ATTN_IMPLEMENTATIONS} "
                f"(configured: {impl!r}) and the model must not be compiled."
            )
        out = []
        for t in self._trackers:
            v = t.value.detach().clone()
            out.append(torch.where(torch.isneginf(v), torch.zeros_like(v), v))
        return out

    def reset(self) -> None:
        """Forget the running maxima (start a new optimizer step)."""
        for t in self._trackers:
            t.value, t.calls = None, 0

    def pop_max_logits(self) -> list[Tensor]:
        """:meth:`max_logits`, then :meth:`reset` -- the ``max_logits_fn`` for MuonClip."""
        out = self.max_logits()
        self.reset()
        return out

    # -- spec ----------------------------------------------------------------------------
    def spec(self) -> list[QKClipLayerSpec]:
        """One :class:`QKClipLayerSpec` per attention layer, naming ``model.named_parameters()``."""
        return list(self._specs)

    def params_by_name(self) -> dict[str, Tensor]:
        model = self._model_ref()
        if model is None:
            raise RuntimeError("the model of this QKClipHandle no longer exists")
        return dict(model.named_parameters())

    # -- control -------------------------------------------------------------------------
    @contextlib.contextmanager
    def paused(self) -> Iterator["QKClipHandle"]:
        """Do not track forwards inside this block (e.g. a training-mode probe forward)."""
        old, self.tracking = self.tracking, False
        try:
            yield self
        finally:
            self.tracking = old

    def remove(self) -> None:
        """Stop tracking and restore transformers' attention functions once no handle needs them."""
        if self._finalizer is not None:
            self._finalizer()  # runs once; also runs if the handle is garbage-collected
        self.removed = True

    def __enter__(self) -> "QKClipHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def enable_qk_clip(model: nn.Module, *, allow_untested: bool = False, max_elements: int = 1 << 22) -> QKClipHandle:
    """Track exact per-head max logits of ``model``'s attention and describe its q/k rows.

    Works on Llama, Mistral, Qwen2 (GQA, q/k biases) and DeepSeek-V3 (MLA) causal LMs with
    ``attn_implementation`` eager, sdpa or flex_attention. The logits are the ones softmax
    sees apart from the mask: after RoPE, with the attention's own ``scaling`` (DeepSeek's
    yarn mscale included), over the entries the causal/padding/sliding-window mask leaves
    visible. ``max_elements`` caps the logits materialised at once (query rows are chunked).
    Other model types with the same module layout need ``allow_untested=True``.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in TESTED_MODEL_TYPES and not allow_untested:
        raise ValueError(
            f"model_type {model_type!r} is not one of the tested {TESTED_MODEL_TYPES}; "
            "pass allow_untested=True if its attention follows the Llama (q_proj/k_proj) or "
            "DeepSeek-V3 (MLA) layout"
        )
    impl = getattr(config, "_attn_implementation", None)
    if impl is not None and impl not in SUPPORTED_ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation {impl!r} is not supported; use one of {SUPPORTED_ATTN_IMPLEMENTATIONS}"
        )
    layers = _attention_layers(model)
    if not layers:
        raise ValueError(f"found no attention modules with a known q/k layout in {type(model).__name__}")
    handle = QKClipHandle(model, layers, max_elements)
    with _LOCK:
        taken = [layer.name for layer in layers if _live_tracker(layer.module) is not None]
        if taken:
            raise RuntimeError(f"QK-Clip tracking is already enabled on {taken[0]!r}; remove() the other handle first")
        keys: list[tuple] = []
        owned = [(weakref.ref(layer.module), t) for layer, t in zip(layers, handle._trackers, strict=True)]
        handle._finalizer = weakref.finalize(handle, _release_all, owned, keys)
        try:
            for cls in dict.fromkeys(type(layer.module) for layer in layers):
                keys += _acquire_patches(cls)
            for layer, tracker in zip(layers, handle._trackers, strict=True):
                _TRACKERS[layer.module] = tracker
        except BaseException:
            handle.remove()
            raise
    return handle


def _live_tracker(module: nn.Module) -> "_LayerTracker | None":
    tracker = _TRACKERS.get(module)
    handle = tracker.handle_ref() if tracker is not None else None
    return tracker if handle is not None and not handle.removed else None


def _release_all(owned: list, keys: list[tuple]) -> None:
    """Undo one handle's registration (called once, by remove() or garbage collection)."""
    with _LOCK:
        for ref, tracker in owned:
            mod = ref()
            if mod is not None and _TRACKERS.get(mod) is tracker:
                del _TRACKERS[mod]
        for key in keys:
            _release(key)
        keys.clear()


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
    **kwargs: Any,
) -> tuple[MuonClip, QKClipHandle | None]:
    """``(MuonClip, handle)`` for a transformers model: Muon on hidden matrices, AdamW on
    embeddings / lm_head (tied or not) / norms / biases, QK-Clip at ``qk_clip_tau`` after
    every step with the max logits of all micro-batches since the previous step.

    ``kwargs`` go to :class:`MuonClip` (momentum, gqa_mode, ...). With ``qk_clip_tau=None``
    no tracking is installed and the handle is None. Call ``handle.remove()`` when done.
    """
    groups = build_param_groups(model, lr, weight_decay, rules=rules, adamw_lr=adamw_lr,
                                adamw_weight_decay=adamw_weight_decay)
    if qk_clip_tau is None:
        return MuonClip(groups, lr=lr, weight_decay=weight_decay, **kwargs), None
    handle = enable_qk_clip(model, allow_untested=allow_untested)
    try:
        opt = MuonClip(groups, lr=lr, weight_decay=weight_decay, qk_clip_tau=qk_clip_tau,
                       qk_clip_spec=handle.spec(), max_logits_fn=handle.pop_max_logits, **kwargs)
    except BaseException:
        handle.remove()
        raise
    return opt, handle


def _all_reduce_max(logits: list[Tensor], group: Any) -> list[Tensor]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return logits
    sizes = [t.numel() for t in logits]
    flat = torch.cat(logits)
    dist.all_reduce(flat, op=dist.ReduceOp.MAX, group=group)
    return list(flat.split(sizes))


def _unwrap_optimizer(optimizer: Any) -> Any:
    """The optimizer inside accelerate's AcceleratedOptimizer (itself an Optimizer subclass)."""
    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer


class MuonClipCallback(TrainerCallback):
    """Trainer callback for QK-Clip.

    * ``MuonClipCallback()`` with a MuonClip optimizer that clips itself (``qk_clip_tau``
      set, e.g. from :func:`make_muonclip_optimizer`): only records and logs the clip
      statistics (``qk_clip_max_logit``, ``qk_clip_n_clipped``, ``qk_clip_min_gamma``).
    * ``MuonClipCallback(handle, tau=...)``: applies QK-Clip itself right after every
      optimizer step, for an optimizer without it (Trainer's AdamW, MuonClip without tau).
      Max logits are all-reduced with MAX when torch.distributed is initialised.

    ``history`` holds one dict per optimizer step with a clip: step, max_logit, n_clipped, min_gamma.
    """

    def __init__(self, handle: QKClipHandle | None = None, *, tau: float | None = None,
                 gqa_mode: str = "exact", process_group: Any = None) -> None:
        if tau is not None and handle is None:
            raise ValueError("MuonClipCallback(tau=...) needs the QKClipHandle from enable_qk_clip(model)")
        if tau is not None and not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if gqa_mode not in GQA_MODES:
            raise ValueError(f"unknown gqa_mode {gqa_mode!r}; expected one of {GQA_MODES}")
        self.handle, self.tau, self.gqa_mode, self.process_group = handle, tau, gqa_mode, process_group
        self.history: list[dict[str, float]] = []
        self._pending: QKClipStats | None = None
        self._last_seen: QKClipStats | None = None
        self._since_log: list[QKClipStats] = []

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        opt = _unwrap_optimizer(optimizer)
        if self.tau is not None and isinstance(opt, MuonClip) and opt.qk_clip_tau is not None:
            raise ValueError("the MuonClip optimizer already applies QK-Clip (qk_clip_tau is set); "
                             "use MuonClipCallback() without tau to only log, or drop qk_clip_tau")

    def _clip(self) -> QKClipStats:
        logits = _all_reduce_max([t.float() for t in self.handle.pop_max_logits()], self.process_group)
        gammas = apply_qk_clip_(self.handle.params_by_name(), self.handle.spec(), logits, self.tau,
                                gqa_mode=self.gqa_mode)
        flat = torch.cat(gammas)
        return QKClipStats(gammas=gammas, n_clipped=int((flat < 1).sum()), min_gamma=float(flat.min()),
                           max_logit=float(torch.cat(logits).max()))

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.tau is not None:
            self._pending = self._clip()
            return
        stats = getattr(_unwrap_optimizer(optimizer), "last_qk_clip", None)
        if isinstance(stats, QKClipStats) and stats.gammas and stats is not self._last_seen:
            self._pending = self._last_seen = stats

    def on_step_end(self, args, state, control, **kwargs):
        if self._pending is not None:
            s = self._pending
            self.history.append({"step": state.global_step, "max_logit": s.max_logit,
                                 "n_clipped": s.n_clipped, "min_gamma": s.min_gamma})
            self._since_log.append(s)
            self._pending = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self._since_log or not any(k in logs for k in ("loss", "train_loss")):
            return
        entry = {
            "qk_clip_max_logit": max(s.max_logit for s in self._since_log),
            "qk_clip_n_clipped": sum(s.n_clipped for s in self._since_log),
            "qk_clip_min_gamma": min(s.min_gamma for s in self._since_log),
        }
        self._since_log = []
        logs.update(entry)
        last = state.log_history[-1] if state.log_history else None
        if last is not None and all(last.get(k) == v for k, v in logs.items() if k in last):
            state.log_history[-1].update(entry)
