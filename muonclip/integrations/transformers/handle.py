"""The handle: ``enable_qk_clip`` starts tracking a model, ``QKClipHandle`` holds its max logits and specs."""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from ...optim.qk_clip import QKClipLayerSpec
from .logits import LayerTracker
from .registration import (
    LOCK,
    TRACKED_NAMES,
    TRACKERS,
    attention_configs,
    check_implementations,
    register_implementations,
    restore,
    switch_to_tracked,
)
from .specs import TESTED_MODEL_TYPES, AttentionLayer, attention_layers, check_model_type

__all__ = ["QKClipHandle", "TESTED_MODEL_TYPES", "enable_qk_clip"]


class QKClipHandle:
    """Tracks the exact per-head max pre-softmax logit of every attention layer of a model.

    The value is a running max over all training forwards since the last :meth:`reset`
    (gradient accumulation: max over the micro-batches of one optimizer step). Forwards of a
    model in ``eval()`` mode, or inside :meth:`paused`, are not tracked. Pass
    :meth:`pop_max_logits` as MuonClip's ``max_logits_fn``: it returns the maxima and resets.
    """

    def __init__(self, model: nn.Module, layers: Sequence[AttentionLayer], max_elements: int) -> None:
        self._model_ref = weakref.ref(model)
        self.layer_names: list[str] = [layer.name for layer in layers]
        self._specs = [layer.spec for layer in layers]
        self._modules = [weakref.ref(layer.module) for layer in layers]
        self._trackers = [LayerTracker(self, i, max_elements) for i in range(len(layers))]
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
        last reset, or an attention implementation that is not tracked). A head that saw
        no visible key at all reports 0 (it cannot need clipping)."""
        missing = [n for n, t in zip(self.layer_names, self._trackers, strict=True) if t.value is None]
        if missing:
            impl = getattr(getattr(self._model_ref(), "config", None), "_attn_implementation", None)
            raise RuntimeError(
                f"no max logits recorded for {len(missing)} attention layer(s) (first: {missing[0]!r}). "
                "Run a forward with model.train() (tracking not paused) before the optimizer step; "
                f"while tracked, the attention implementation is one of {tuple(TRACKED_NAMES.values())} "
                f"(configured: {impl!r}; set_attn_implementation after enable_qk_clip stops tracking) "
                "and the model must not be compiled."
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
        """Stop tracking and give the model its original attention implementation back (once no
        other handle on a model sharing its config needs the ``muonclip_*`` one)."""
        if self._finalizer is not None:
            self._finalizer()  # runs once; also runs if the handle is garbage-collected
        self.removed = True

    def __enter__(self) -> "QKClipHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def enable_qk_clip(model: nn.Module, *, allow_untested: bool = False, max_elements: int = 1 << 22,
                   trainable_only: bool = False) -> QKClipHandle:
    """Track exact per-head max logits of ``model``'s attention and describe its q/k rows.

    Works on Llama, Mistral, Qwen2 (GQA, q/k biases) and DeepSeek-V3 (MLA) causal LMs with
    ``attn_implementation`` eager, sdpa or flex_attention; until :meth:`QKClipHandle.remove`
    the model runs ``muonclip_eager`` / ``muonclip_sdpa`` / ``muonclip_flex_attention``
    (registered with ``transformers.AttentionInterface``: the same attention, plus the record).
    The logits are the ones softmax sees apart from the mask: after RoPE, with the attention's
    own ``scaling`` (DeepSeek's yarn mscale included), over the entries the
    causal/padding/sliding-window mask leaves visible, and before a logit softcap (Gemma 2's
    ``attn_logit_softcapping``): the value scaling the q/k rows scales, so a clip lands it on
    tau, as in the lab's model. ``max_elements`` caps the logits materialised at once (query
    rows are chunked). ``trainable_only``: track only the layers whose q/k weights train (an
    optimizer cannot clip frozen ones); a layer with some of them frozen is refused.
    Other model types with the same module layout need ``allow_untested=True``.
    Models that change q/k after their projections (QK-norm, a clamp) are refused with
    ``NotImplementedError``: scaling the rows would not cap their logits.
    """
    check_model_type(model, allow_untested)
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"found no attention modules with a known q/k layout in {type(model).__name__}")
    if trainable_only:
        layers = _trainable_layers(model, layers)
    modules = [layer.module for layer in layers]
    check_implementations(model, modules)
    handle = QKClipHandle(model, layers, max_elements)
    with LOCK:
        taken = [layer.name for layer in layers if _live_tracker(layer.module) is not None]
        if taken:
            raise RuntimeError(f"QK-Clip tracking is already enabled on {taken[0]!r}; remove() the other handle first")
        switched: list[int] = []
        owned = [(weakref.ref(layer.module), t) for layer, t in zip(layers, handle._trackers, strict=True)]
        handle._finalizer = weakref.finalize(handle, _release_all, owned, switched, weakref.ref(model))
        try:
            register_implementations()
            for layer, tracker in zip(layers, handle._trackers, strict=True):
                TRACKERS[layer.module] = tracker
            switch_to_tracked(model, attention_configs(model, modules), switched)
        except BaseException:
            handle.remove()
            raise
    return handle


def _trainable_layers(model: nn.Module, layers: Sequence[AttentionLayer]) -> list[AttentionLayer]:
    """The layers whose q/k weights all require grad; a layer with only some frozen is refused,
    since QK-Clip scales q and k together."""
    trains = {name: p.requires_grad for name, p in model.named_parameters()}
    kept = []
    for layer in layers:
        frozen = [name for name in layer.spec.param_names() if not trains[name]]
        if not frozen:
            kept.append(layer)
        elif len(frozen) < len(layer.spec.param_names()):
            raise ValueError(f"{layer.name}: {frozen} are frozen but its other q/k weights train; QK-Clip scales q "
                             "and k together, so freeze or train them together")
    if not kept:
        raise ValueError(f"every attention layer of {type(model).__name__} has frozen q/k weights: nothing to clip "
                         "(pass qk_clip_tau=None)")
    return kept


def _live_tracker(module: nn.Module) -> LayerTracker | None:
    tracker = TRACKERS.get(module)
    handle = tracker.handle_ref() if tracker is not None else None
    return tracker if handle is not None and not handle.removed else None


def _release_all(owned: list, switched: list[int], model_ref: weakref.ref) -> None:
    """Undo one handle's registration (called once, by remove() or garbage collection)."""
    with LOCK:
        for ref, tracker in owned:
            mod = ref()
            if mod is not None and TRACKERS.get(mod) is tracker:
                del TRACKERS[mod]
        restore(switched, model_ref())
