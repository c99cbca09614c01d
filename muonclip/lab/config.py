"""Training-lab configuration: frozen dataclasses, named presets, ``key=value`` overrides.

A :class:`TrainConfig` has five sections -- ``model``, ``data``, ``optim``, ``schedule``,
``run`` -- each a frozen dataclass whose annotations are the schema: overrides and
:func:`from_dict` parse and check values against them, and every section validates
itself on construction (raising :class:`ConfigError`).

Typical use::

    cfg = apply_overrides(get_preset("small"), ["steps=40", "optim.lr=0.01"])
    save_config(cfg, run_dir / "config.json")
    assert load_config(run_dir / "config.json") == cfg
    config_hash(cfg)  # short stable id, e.g. for run names

Override keys are dotted (``optim.lr``) or bare (``lr``) when the bare name is a field of
exactly one section. Values: ints, floats, ``true/false``, ``none``, strings, and tuples
written ``0.9,0.95`` (or ``(0.9, 0.95)``).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

from .io import atomic_write_text, read_json

__all__ = [
    "ConfigError",
    "ModelCfg",
    "DataCfg",
    "OptimCfg",
    "ScheduleCfg",
    "RunCfg",
    "TrainConfig",
    "SECTIONS",
    "PRESETS",
    "PRESET_DESCRIPTIONS",
    "register_preset",
    "get_preset",
    "list_presets",
    "apply_overrides",
    "parse_override",
    "to_dict",
    "from_dict",
    "to_json",
    "save_config",
    "load_config",
    "config_hash",
]

PathLike = Union[str, "os.PathLike[str]"]


class ConfigError(ValueError):
    """An invalid config, override, preset name or config file."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --------------------------------------------------------------------------- type checks
# A small interpreter for the annotations used below: int, float, bool, str, Literal[...],
# X | None, tuple[X, ...] and tuple[X, Y]. Shared by validation, from_dict and overrides.


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is Union or isinstance(tp, getattr(types, "UnionType", ()))


def _describe(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if _is_union(tp):
        return " | ".join(_describe(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple of {_describe(args[0])}"
        return "tuple (" + ", ".join(_describe(a) for a in args) + ")"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` (a Python/JSON value) against annotation ``tp``; return it in
    canonical form (ints accepted for floats, lists turned into tuples)."""
    if tp is Any:
        return value
    if tp is type(None):
        _check(value is None, f"{where}: expected None, got {value!r}")
        return None
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and all(type(value) is type(c) for c in choices if c == value):
            return value
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(c) for c in choices], n=3)
            if close:
                hint = f" (did you mean {' or '.join(map(repr, close))}?)"
        raise ConfigError(f"{where}: {value!r} is not {_describe(tp)}{hint}")
    if origin is tuple:
        args = typing.get_args(tp)
        _check(isinstance(value, (list, tuple)), f"{where}: expected {_describe(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        _check(len(value) == len(args), f"{where}: expected {len(args)} items ({_describe(tp)}), got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        _check(isinstance(value, bool), f"{where}: expected a bool, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an int, got {value!r}")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: expected a float, got {value!r}")
        value = float(value)
        _check(not math.isnan(value), f"{where}: NaN is not allowed")
        return value
    if tp is str:
        _check(isinstance(value, str), f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")  # pragma: no cover - schema bug


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _parse(text: str, tp: Any, where: str) -> Any:
    """Parse the string ``text`` of an override into a value of annotation ``tp``."""
    raw = text.strip()
    low = raw.lower()
    if _is_union(tp):
        args = typing.get_args(tp)
        if low in _NONE and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(raw, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: cannot parse {text!r} as {_describe(tp)}")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        value: Any = _unquote(raw)
        for c in choices:  # non-string literals (rare) by their text
            if not isinstance(c, str) and str(c).lower() == low:
                value = c
        return _coerce(value, tp, where)
    if origin is tuple:
        inner = raw
        if len(inner) >= 2 and inner[0] + inner[-1] in ("()", "[]"):
            inner = inner[1:-1]
        items = [s for s in (p.strip() for p in inner.split(",")) if s] if inner.strip() else []
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(s, args[0], f"{where}[{i}]") for i, s in enumerate(items))
        _check(len(items) == len(args),
               f"{where}: expected {len(args)} comma-separated items ({_describe(tp)}), got {text!r}")
        return tuple(_parse(s, a, f"{where}[{i}]") for i, (s, a) in enumerate(zip(items, args)))
    if tp is bool:
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{where}: cannot parse {text!r} as a bool (use true/false)")
    if tp is int:
        try:
            return int(raw.replace("_", ""), 10)
        except ValueError:
            pass
        try:
            f = float(raw)
        except ValueError:
            f = math.nan
        if math.isfinite(f) and f.is_integer():  # 1e3 -> 1000
            return int(f)
        raise ConfigError(f"{where}: cannot parse {text!r} as an int")
    if tp is float:
        try:
            value = float(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{where}: cannot parse {text!r} as a float") from None
        return _coerce(value, float, where)
    if tp is str:
        return _unquote(raw)
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")  # pragma: no cover - schema bug


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _validate_types(obj: Any) -> None:
    """Check (and canonicalise, e.g. list -> tuple, int -> float) every field of a frozen
    dataclass instance against its annotation."""
    hints = _hints(type(obj))
    section = getattr(obj, "_section", type(obj).__name__)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        new = _coerce(value, hints[f.name], f"{section}.{f.name}")
        if new is not value:
            object.__setattr__(obj, f.name, new)


# --------------------------------------------------------------------------- sections

Attention = Literal["mha", "gqa", "mla"]
Optimizer = Literal["muonclip", "muon", "adamw"]
TokenizerKind = Literal["byte", "bpe"]
ScheduleKind = Literal["constant", "cosine", "wsd"]
GqaMode = Literal["exact", "balanced"]


@dataclass(frozen=True)
class ModelCfg:
    """Decoder-only transformer shape.

    ``n_kv_head=None`` means ``n_head`` (MHA); fewer KV heads make it GQA.
    ``head_dim=None`` means ``d_model // n_head``. ``attention="mla"`` uses
    ``kv_lora_rank``, ``qk_rope_head_dim`` and ``q_lora_rank`` (None: full-rank
    queries); the other layouts ignore them. ``mlp_ratio`` is hidden size / d_model.
    """

    _section = "model"

    vocab_size: int = 256
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None
    head_dim: int | None = None
    seq_len: int = 128
    attention: Attention = "mha"
    tie_embeddings: bool = False
    qk_bias: bool = False
    qk_norm: bool = False
    logit_softcap: float | None = None
    kv_lora_rank: int = 64
    qk_rope_head_dim: int = 16
    q_lora_rank: int | None = None
    mlp_ratio: float = 4.0
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        _validate_types(self)
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "seq_len", "kv_lora_rank"):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1; got {getattr(self, name)}")
        for name in ("n_kv_head", "head_dim", "q_lora_rank"):
            v = getattr(self, name)
            _check(v is None or v >= 1, f"model.{name} must be >= 1 or None; got {v}")
        if self.head_dim is None:
            _check(self.d_model % self.n_head == 0,
                   f"model.d_model={self.d_model} is not divisible by n_head={self.n_head}; set head_dim explicitly")
        kv = self.kv_heads
        _check(kv <= self.n_head and self.n_head % kv == 0,
               f"model.n_kv_head={kv} must divide n_head={self.n_head}")
        if self.attention == "mha":
            _check(kv == self.n_head, f"model.attention='mha' needs n_kv_head == n_head; got {kv} (use attention=gqa)")
        _check(self.qk_rope_head_dim >= 0 and self.qk_rope_head_dim % 2 == 0,
               f"model.qk_rope_head_dim must be even and >= 0; got {self.qk_rope_head_dim}")
        _check(self.mlp_ratio > 0, f"model.mlp_ratio must be > 0; got {self.mlp_ratio}")
        _check(self.rope_theta > 0, f"model.rope_theta must be > 0; got {self.rope_theta}")
        _check(self.logit_softcap is None or self.logit_softcap > 0,
               f"model.logit_softcap must be > 0 or None; got {self.logit_softcap}")

    @property
    def kv_heads(self) -> int:
        """Resolved number of KV heads."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_size(self) -> int:
        """Resolved per-head dimension."""
        return self.d_model // self.n_head if self.head_dim is None else self.head_dim


@dataclass(frozen=True)
class DataCfg:
    """Corpus and tokenizer.

    ``source``: ``"default"`` (embedded stdlib-docs corpus) or a file/folder path.
    ``hf_dataset`` (a Hugging Face dataset name) takes precedence over ``source``.
    ``max_chars`` truncates the corpus (None: all). ``val_fraction``: the last part of
    the token stream kept for validation.
    """

    _section = "data"

    source: str = "default"
    hf_dataset: str | None = None
    hf_split: str = "train"
    hf_text_field: str = "text"
    max_chars: int | None = None
    tokenizer: TokenizerKind = "byte"
    bpe_vocab_size: int = 1024
    val_fraction: float = 0.05

    def __post_init__(self) -> None:
        _validate_types(self)
        _check(bool(self.source), "data.source must not be empty")
        _check(self.max_chars is None or self.max_chars >= 1, f"data.max_chars must be >= 1 or None; got {self.max_chars}")
        _check(self.bpe_vocab_size >= 256, f"data.bpe_vocab_size must be >= 256; got {self.bpe_vocab_size}")
        _check(0.0 < self.val_fraction < 1.0, f"data.val_fraction must be in (0, 1); got {self.val_fraction}")

    @property
    def tokenizer_vocab_size(self) -> int:
        """Upper bound on the tokenizer's vocabulary."""
        return 256 if self.tokenizer == "byte" else self.bpe_vocab_size


@functools.lru_cache(maxsize=1)
def _optimizer_choices() -> dict[str, tuple[str, ...]]:
    """Valid ``ns_method`` / ``update_scale`` values, read from the optimizer itself so
    the two never drift apart (empty -- no check -- if it cannot be imported)."""
    try:
        from ..optim import functional as F
    except Exception:  # pragma: no cover - optimizer package broken or absent
        return {}
    return {"ns_method": tuple(F.ORTHOGONALIZERS), "update_scale": tuple(F.UPDATE_SCALES)}


@dataclass(frozen=True)
class OptimCfg:
    """Optimizer. ``lr`` is the Muon(Clip) learning rate for matrix parameters;
    ``ns_method`` is the optimizer's ``orthogonalizer`` (``ns5``, ``polar_express``);
    ``adamw_lr`` is the rate of the AdamW groups (embeddings, norms, biases, head) and of
    the whole model when ``optimizer="adamw"``. ``qk_clip_tau`` matters only for
    ``muonclip``. ``grad_clip=None`` disables gradient-norm clipping."""

    _section = "optim"

    optimizer: Optimizer = "muonclip"
    lr: float = 0.02
    adamw_lr: float = 3e-3
    weight_decay: float = 0.1
    momentum: float = 0.95
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    ns_method: str = "ns5"
    update_scale: str = "rms_match"
    qk_clip_tau: float = 100.0
    gqa_mode: GqaMode = "exact"
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        _validate_types(self)
        _check(self.lr > 0 and self.adamw_lr > 0, f"optim.lr and optim.adamw_lr must be > 0; got {self.lr}, {self.adamw_lr}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0; got {self.weight_decay}")
        _check(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1); got {self.momentum}")
        _check(all(0 <= b < 1 for b in self.betas), f"optim.betas must be in [0, 1); got {self.betas}")
        _check(self.eps > 0, f"optim.eps must be > 0; got {self.eps}")
        _check(self.qk_clip_tau > 0, f"optim.qk_clip_tau must be > 0; got {self.qk_clip_tau}")
        _check(self.grad_clip is None or self.grad_clip > 0, f"optim.grad_clip must be > 0 or None; got {self.grad_clip}")
        for name, choices in _optimizer_choices().items():
            value = getattr(self, name)
            _check(value in choices, f"optim.{name}: {value!r} is not one of {', '.join(map(repr, choices))}"
                   f"{_close(value, choices)}")


@dataclass(frozen=True)
class ScheduleCfg:
    """Learning-rate multiplier over steps: linear warmup for ``warmup_steps``, then
    ``constant``; ``cosine`` decay to ``min_lr_ratio``; or ``wsd`` (warmup-stable-decay:
    flat, then linear decay to ``min_lr_ratio`` over the last ``decay_fraction`` of steps)."""

    _section = "schedule"

    kind: ScheduleKind = "constant"
    warmup_steps: int = 0
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        _validate_types(self)
        _check(self.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0; got {self.warmup_steps}")
        _check(0.0 <= self.decay_fraction <= 1.0, f"schedule.decay_fraction must be in [0, 1]; got {self.decay_fraction}")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"schedule.min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio}")


@dataclass(frozen=True)
class RunCfg:
    """Run length and cadence. ``*_every = 0`` turns that periodic action off (a loop may
    still evaluate/checkpoint once at the end). ``seed`` seeds init and batches."""

    _section = "run"

    seed: int = 0
    steps: int = 600
    batch_size: int = 16
    eval_every: int = 50
    eval_batches: int = 8
    spectra_every: int = 0
    checkpoint_every: int = 0
    log_every: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        _validate_types(self)
        _check(self.seed >= 0, f"run.seed must be >= 0; got {self.seed}")
        _check(self.steps >= 1, f"run.steps must be >= 1; got {self.steps}")
        _check(self.batch_size >= 1, f"run.batch_size must be >= 1; got {self.batch_size}")
        _check(self.eval_batches >= 1, f"run.eval_batches must be >= 1; got {self.eval_batches}")
        for name in ("eval_every", "spectra_every", "checkpoint_every", "log_every"):
            _check(getattr(self, name) >= 0, f"run.{name} must be >= 0; got {getattr(self, name)}")
        _check(bool(self.device), "run.device must not be empty")


SECTIONS: dict[str, type] = {
    "model": ModelCfg,
    "data": DataCfg,
    "optim": OptimCfg,
    "schedule": ScheduleCfg,
    "run": RunCfg,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a lab training run needs; checks cross-section consistency."""

    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    run: RunCfg = field(default_factory=RunCfg)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            _check(isinstance(getattr(self, name), cls), f"TrainConfig.{name} must be a {cls.__name__}")
        need = self.data.tokenizer_vocab_size
        _check(
            self.model.vocab_size >= need,
            f"model.vocab_size={self.model.vocab_size} is smaller than the {self.data.tokenizer} tokenizer's "
            f"vocabulary ({need}); also set model.vocab_size={need}",
        )
        _check(self.schedule.warmup_steps <= self.run.steps,
               f"schedule.warmup_steps={self.schedule.warmup_steps} exceeds run.steps={self.run.steps}")

    def replace(self, **sections: Any) -> "TrainConfig":
        """A copy with whole sections replaced, e.g. ``cfg.replace(run=...)``."""
        return dataclasses.replace(self, **sections)


# --------------------------------------------------------------------------- dict / JSON


def to_dict(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """Nested plain dict (tuples stay tuples; :func:`to_json` makes them lists)."""
    _check(isinstance(cfg, TrainConfig), f"expected a TrainConfig, got {type(cfg).__name__}")
    return {name: {f.name: getattr(getattr(cfg, name), f.name) for f in dataclasses.fields(cls)}
            for name, cls in SECTIONS.items()}


def _close(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from a (possibly partial) nested dict.

    Missing sections/fields take their defaults; unknown sections or fields raise
    :class:`ConfigError` (with close matches); values are type-checked.
    """
    _check(isinstance(data, Mapping), f"config must be a mapping of sections, got {type(data).__name__}")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}{_close(str(unknown[0]), list(SECTIONS))}; "
                          f"sections: {', '.join(SECTIONS)}")
    kwargs = {}
    for name, cls in SECTIONS.items():
        values = data.get(name, {})
        _check(isinstance(values, Mapping), f"config section {name!r} must be a mapping, got {values!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        bad = [k for k in values if k not in names]
        if bad:
            raise ConfigError(f"unknown field {name}.{bad[0]}{_close(str(bad[0]), names)}")
        kwargs[name] = cls(**values)
    return TrainConfig(**kwargs)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"cannot serialise non-finite float {obj!r} to JSON")
    return obj


def to_json(cfg: TrainConfig, *, indent: int | None = 2, canonical: bool = False) -> str:
    """JSON text of ``cfg``. ``canonical=True``: sorted keys, no whitespace (for hashing)."""
    data = _jsonable(to_dict(cfg))
    if canonical:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return json.dumps(data, indent=indent, allow_nan=False)


def config_hash(cfg: TrainConfig, length: int = 12) -> str:
    """Short sha256 of the canonical JSON: equal configs, equal hash, in any process."""
    return hashlib.sha256(to_json(cfg, canonical=True).encode("utf-8")).hexdigest()[:length]


def save_config(cfg: TrainConfig, path: PathLike) -> Path:
    """Write ``cfg`` as indented JSON, atomically (temp file in the same folder, then
    ``os.replace``). Returns the path."""
    return atomic_write_text(path, to_json(cfg) + "\n")


def load_config(path: PathLike) -> TrainConfig:
    """Read a config written by :func:`save_config` (or any partial JSON of the same shape)."""
    path = Path(path)
    data = read_json(path, ConfigError, "config")
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------- overrides


def _is_section(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _leaf_keys(obj: Any, prefix: str = "") -> list[str]:
    """Dotted paths of all non-dataclass fields below ``obj``."""
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = prefix + f.name
        if _is_section(value):
            keys.extend(_leaf_keys(value, path + "."))
        else:
            keys.append(path)
    return keys


def _resolve_key(cfg: Any, key: str) -> str:
    """Full dotted path for ``key`` (dotted, or a bare name unique across sections)."""
    key = key.strip()
    _check(bool(key), "empty override key")
    leaves = _leaf_keys(cfg)
    if key in leaves:
        return key
    if "." not in key:
        matches = [p for p in leaves if p.rsplit(".", 1)[-1] == key]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ConfigError(f"ambiguous override key {key!r}: matches {', '.join(matches)}; use the dotted name")
    if key in {f.name for f in dataclasses.fields(cfg)}:
        raise ConfigError(f"{key!r} is a config section, not a field; use {key}.<field>=<value>")
    bare = sorted({p.rsplit(".", 1)[-1] for p in leaves})
    candidates = leaves + bare
    raise ConfigError(f"unknown config key {key!r}{_close(key, candidates)}")


def parse_override(text: str) -> tuple[str, str]:
    """Split ``"key=value"`` (the value may itself contain ``=``)."""
    _check(isinstance(text, str) and "=" in text, f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    _check(bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key)),
           f"override key {key!r} is not a (dotted) identifier")
    return key, value


def _set_path(obj: Any, parts: list[str], value: Any) -> Any:
    """Copy of the nested frozen dataclass ``obj`` with ``parts`` set to ``value``
    (no validation happens here: see :func:`apply_overrides`)."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    head = parts[0]
    values[head] = value if len(parts) == 1 else _set_path(values[head], parts[1:], value)
    new = object.__new__(type(obj))
    for name, v in values.items():
        object.__setattr__(new, name, v)
    return new


def _rebuild(obj: Any) -> Any:
    """Reconstruct a nested dataclass bottom-up through its constructors (validation)."""
    values = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        values[f.name] = _rebuild(v) if _is_section(v) else v
    return type(obj)(**values)


def apply_overrides(cfg: Any, overrides: Sequence[str] | Mapping[str, Any]) -> Any:
    """A new config with ``key=value`` overrides applied (``cfg`` is not modified).

    ``overrides`` is a list of ``"key=value"`` strings (values parsed from text by the
    field's annotation) or a mapping ``{key: value}`` (strings are parsed the same way,
    other values type-checked). All overrides are applied first and the result is
    validated once, so their order never matters. Works for any nested frozen
    dataclass config, :class:`TrainConfig` in particular.
    """
    _check(_is_section(cfg), f"expected a config dataclass, got {type(cfg).__name__}")
    if isinstance(overrides, str):
        raise ConfigError("overrides must be a list of 'key=value' strings, not one string")
    items: list[tuple[str, Any, bool]] = []
    if isinstance(overrides, Mapping):
        items = [(str(k), v, isinstance(v, str)) for k, v in overrides.items()]
    else:
        for text in overrides:
            key, value = parse_override(text)
            items.append((key, value, True))
    out = cfg
    for key, value, is_text in items:  # a later override of the same key wins
        path = _resolve_key(cfg, key)
        parts = path.split(".")
        owner = cfg
        for p in parts[:-1]:
            owner = getattr(owner, p)
        tp = _hints(type(owner))[parts[-1]]
        parsed = _parse(value, tp, path) if is_text else _coerce(value, tp, path)
        out = _set_path(out, parts, parsed)
    if out is cfg:
        return cfg
    return _rebuild(out)


# --------------------------------------------------------------------------- presets

PRESETS: dict[str, TrainConfig] = {}
PRESET_DESCRIPTIONS: dict[str, str] = {}


def register_preset(name: str, cfg: TrainConfig, description: str, *, overwrite: bool = False) -> TrainConfig:
    """Add a named preset. Names are lower-case identifiers (``[a-z][a-z0-9_-]*``);
    re-registering an existing name needs ``overwrite=True``."""
    _check(isinstance(name, str) and bool(re.fullmatch(r"[a-z][a-z0-9_-]*", name)),
           f"preset name {name!r} must match [a-z][a-z0-9_-]*")
    _check(isinstance(cfg, TrainConfig), f"preset {name!r} must be a TrainConfig, got {type(cfg).__name__}")
    _check(isinstance(description, str) and bool(description.strip()), f"preset {name!r} needs a description")
    _check(overwrite or name not in PRESETS, f"preset {name!r} is already registered (pass overwrite=True)")
    PRESETS[name] = cfg
    PRESET_DESCRIPTIONS[name] = description.strip()
    return cfg


# Modules that register more presets; imported on the first lookup (not at import time,
# which would be circular: they import this module).
_PRESET_MODULES = ("muonclip.reproduce.presets",)
_preset_modules_loaded = False


def _load_preset_modules() -> None:
    global _preset_modules_loaded
    if _preset_modules_loaded:
        return
    _preset_modules_loaded = True
    import importlib

    for module in _PRESET_MODULES:
        importlib.import_module(module)


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name``; :class:`ConfigError` lists the available ones."""
    _load_preset_modules()
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        pass
    hint = _close(str(name), list(PRESETS))
    raise ConfigError(f"unknown preset {name!r}{hint}; available: {', '.join(sorted(PRESETS)) or '(none)'}")


def list_presets() -> list[tuple[str, str]]:
    """``(name, description)`` of every preset, sorted by name."""
    _load_preset_modules()
    return [(n, PRESET_DESCRIPTIONS.get(n, "")) for n in sorted(PRESETS)]


register_preset(
    "tiny",
    TrainConfig(
        model=ModelCfg(d_model=32, n_layer=2, n_head=4, seq_len=32),
        run=RunCfg(steps=30, batch_size=8, eval_every=10, eval_batches=2, spectra_every=10, checkpoint_every=10),
    ),
    "Smoke test: 2 layers x d_model 32 (4 heads of 8), seq_len 32, batch 8, 30 steps of "
    "MuonClip on the byte-level default corpus; trains in seconds on CPU.",
)

register_preset(
    "small",
    TrainConfig(
        model=ModelCfg(d_model=128, n_layer=4, n_head=4, seq_len=128),
        optim=OptimCfg(lr=0.02, weight_decay=0.1),
        run=RunCfg(steps=600, batch_size=16, eval_every=50, eval_batches=8),
    ),
    "Facts-file probe: 4 layers x d_model 128 (4 heads of 32), seq_len 128, batch 16, "
    "600 steps of MuonClip (lr 0.02, weight decay 0.1) on the byte-level default corpus.",
)
