"""Attention registration: muonclip_* implementations in transformers' AttentionInterface that record max logits.

``register_implementations`` registers, once per process, ``muonclip_eager``, ``muonclip_sdpa``
and ``muonclip_flex_attention`` with ``AttentionInterface.register`` (and the matching mask
functions with ``AttentionMaskInterface.register``). Each records the per-head max logit for the
modules a live handle tracks, then calls the original implementation, looked up on every call
where the model itself would look it up. ``switch_to_tracked`` points a model's config at them
with ``model.set_attn_implementation``; ``restore`` puts the original name back.
"""
from __future__ import annotations

import functools
import inspect
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .logits import LayerTracker

__all__ = [
    "LOCK", "SUPPORTED_ATTN_IMPLEMENTATIONS", "TRACKED_NAMES", "TRACKERS", "attention_configs", "check_implementations",
    "original_attention", "register_implementations", "restore", "switch_to_tracked",
]

#: Attention implementations whose calls are tracked (``config._attn_implementation``).
SUPPORTED_ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention")
#: The registered implementation a tracked model is switched to, per original implementation.
TRACKED_NAMES = {impl: f"muonclip_{impl}" for impl in SUPPORTED_ATTN_IMPLEMENTATIONS}
_UNTRACKED_NAMES = {tracked: impl for impl, tracked in TRACKED_NAMES.items()}

#: Guards TRACKERS, the registrations and the switched configs.
LOCK = threading.RLock()
#: The tracker of every attention module a live handle tracks; the wrappers pass straight
#: through for any other module (another model sharing the config, a deep copy).
TRACKERS: weakref.WeakKeyDictionary[nn.Module, LayerTracker] = weakref.WeakKeyDictionary()
_REGISTERED: set[str] = set()


# --------------------------------------------------------------------------------------------
# the registered implementations
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _modeling_module(cls: type) -> Any:
    """The modeling file an attention class dispatches from: the first module along its MRO
    that defines ``eager_attention_forward`` (a subclass in user code keeps its base's)."""
    for klass in cls.__mro__:
        mod = sys.modules.get(klass.__module__)
        if callable(getattr(mod, "eager_attention_forward", None)):
            return mod
    return sys.modules.get(cls.__module__)


@functools.lru_cache(maxsize=256)
def _eager_function(cls: type) -> Callable | None:
    """The eager attention function instances of ``cls`` call: the one named in the forward of
    the first class along its MRO that defines a forward (Llama4's vision attention names
    ``vision_eager_attention_forward``, its text attention ``eager_attention_forward``), else
    the modeling file's ``eager_attention_forward``. None when that forward names several."""
    for klass in cls.__mro__:
        forward = vars(klass).get("forward")
        if forward is None:
            continue
        code = getattr(inspect.unwrap(forward), "__code__", None)
        mod = sys.modules.get(klass.__module__)
        named = sorted({name for name in (code.co_names if code is not None else ())
                        if name.endswith("eager_attention_forward") and callable(getattr(mod, name, None))})
        if len(named) > 1:
            return None
        if named:
            return getattr(mod, named[0])
        break
    return getattr(_modeling_module(cls), "eager_attention_forward", None)


def original_attention(module: nn.Module, impl: str) -> Callable | None:
    """The function ``module`` would call for ``impl`` if it were not tracked: for eager, the
    eager function its class's forward names (transformers has no registry entry for eager),
    else its modeling file's ``ALL_ATTENTION_FUNCTIONS[impl]`` (a model may keep a local
    override there)."""
    if impl == "eager":
        return _eager_function(type(module))
    mod = _modeling_module(type(module))
    functions = getattr(mod, "ALL_ATTENTION_FUNCTIONS", None)
    if not isinstance(functions, AttentionInterface):
        functions = ALL_ATTENTION_FUNCTIONS
    return functions[impl]


@functools.lru_cache(maxsize=256)
def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return None


def _tracked_attention(impl: str) -> Callable:
    """The ``muonclip_<impl>`` attention function: record, then delegate to the original."""

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        orig = original_attention(module, impl)
        tracker = TRACKERS.get(module) if isinstance(module, nn.Module) else None
        if tracker is not None and tracker.wants(module):
            named = kwargs
            sig = _signature(orig) if args else None
            if sig is not None:  # transformers passes scaling by keyword; be safe anyway
                bound = sig.bind_partial(module, query, key, value, attention_mask, *args, **kwargs)
                named = {**bound.arguments, **kwargs}
            tracker.observe(impl, module, query, key, attention_mask, named)
        return orig(module, query, key, value, attention_mask, *args, **kwargs)

    attention.__name__ = attention.__qualname__ = f"{TRACKED_NAMES[impl]}_attention_forward"
    return attention


def register_implementations() -> None:
    """Register the ``muonclip_*`` attention and mask functions (idempotent). They stay
    registered for the life of the process: ``AttentionInterface`` has no public way to
    unregister, and they pass straight through for modules no handle tracks."""
    with LOCK:
        for impl, name in TRACKED_NAMES.items():
            if name in _REGISTERED:
                continue
            AttentionInterface.register(name, _tracked_attention(impl))
            # masking_utils builds masks only for names with a mask function; same masks as impl
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
            _REGISTERED.add(name)


# --------------------------------------------------------------------------------------------
# switching a model to them and back
# --------------------------------------------------------------------------------------------
@dataclass
class _Switched:
    config: Any
    original: str | None
    tracked: str
    users: int


#: id(config) -> its switch, counted over the handles that need it (models may share a config:
#: ``LlamaForCausalLM(config)`` twice, or ``_from_config``, keep the config object).
_SWITCHED: dict[int, _Switched] = {}


def attention_configs(model: nn.Module, modules: Sequence[nn.Module]) -> list[Any]:
    """The distinct config objects whose ``_attn_implementation`` the ``modules`` read."""
    default = getattr(model, "config", None)
    out: dict[int, Any] = {}
    for m in modules:
        config = getattr(m, "config", default)
        if config is not None:
            out.setdefault(id(config), config)
    return list(out.values())


def check_implementations(model: nn.Module, modules: Sequence[nn.Module]) -> None:
    """Raise ``ValueError`` unless the model's config and every module's config name a trackable
    implementation (or a ``muonclip_*`` one: a config another handle already switched) and, for
    eager, every module's modeling file has an ``eager_attention_forward`` to delegate to."""
    default = getattr(model, "config", None)
    for m in (None, *modules):
        config = default if m is None else getattr(m, "config", default)
        impl = getattr(config, "_attn_implementation", None)
        impl = _UNTRACKED_NAMES.get(impl, impl)
        if impl is not None and impl not in SUPPORTED_ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation {impl!r} is not supported; use one of {SUPPORTED_ATTN_IMPLEMENTATIONS}"
            )
        if m is not None and impl in (None, "eager") and original_attention(m, "eager") is None:
            raise ValueError(f"{type(m).__name__}: found no single eager attention function that it calls, so its "
                             "eager attention cannot be tracked; load the model with attn_implementation='sdpa'")


def _set_implementation(model: nn.Module | None, config: Any, name: str | None) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None and name is not None and getattr(model, "config", None) is config:
        setter({"": name})  # the dict form sets this config only, not a composite model's sub-configs
    if getattr(config, "_attn_implementation", None) != name:
        # No public setter reached this config: a model without set_attn_implementation, a class
        # that declines dynamic switching (it warns), a sub-config of a composite model, or
        # restoring None (the setter would pick a default). The attention modules read this
        # property on every call, so setting it switches them.
        config._attn_implementation = name


def switch_to_tracked(model: nn.Module, configs: Sequence[Any], keys: list[int]) -> None:
    """Point every config at its ``muonclip_*`` implementation, appending to ``keys`` as it goes
    (so a failure half-way can be undone by :func:`restore`)."""
    with LOCK:
        for config in configs:
            entry = _SWITCHED.get(id(config))
            if entry is not None and entry.config is config:
                entry.users += 1
                keys.append(id(config))
                continue
            impl = config._attn_implementation
            if impl in _UNTRACKED_NAMES:  # switched outside this registry (a deep copy): leave as is
                continue
            tracked = TRACKED_NAMES["eager" if impl is None else impl]  # None dispatches to eager
            _SWITCHED[id(config)] = _Switched(config, impl, tracked, 1)
            keys.append(id(config))
            _set_implementation(model, config, tracked)


def restore(keys: list[int], model: nn.Module | None) -> None:
    """Give back one handle's switches: a config no handle needs any more gets its original
    implementation again, unless someone set another one meanwhile."""
    with LOCK:
        for key in keys:
            entry = _SWITCHED.get(key)
            if entry is None:
                continue
            entry.users -= 1
            if entry.users > 0:
                continue
            del _SWITCHED[key]
            if getattr(entry.config, "_attn_implementation", None) == entry.tracked:
                _set_implementation(model, entry.config, entry.original)
        keys.clear()
