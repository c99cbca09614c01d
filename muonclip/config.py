"""Typed configs: frozen dataclasses checked by their annotations, ``key=value`` overrides, dict/JSON, save/load, hash.

A config is a frozen dataclass of ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``,
``X | None``, ``tuple[...]`` fields or nested configs (sections); its ``__post_init__`` calls
:func:`validate_fields` and raises :class:`ConfigError`; an optional ``_section`` class
attribute names it in messages. Override keys are dotted (``optim.lr``) or bare (``lr``) when
unique; unknown keys are rejected with their close matches. ``save_config`` writes atomically.
"""
from __future__ import annotations

import contextlib
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
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, TypeVar, Union

from .io import atomic_write_text, read_json

__all__ = [
    "ConfigError", "check", "did_you_mean", "field_types", "parse_value", "coerce_value", "validate_fields",
    "leaf_keys", "parse_override", "apply_overrides", "to_dict", "from_dict", "to_json", "save_config",
    "load_config", "config_hash", "HASH_OMITS_DEFAULT", "PathLike",
]

PathLike = Union[str, "os.PathLike[str]"]
Config = TypeVar("Config")


class ConfigError(ValueError):
    """An invalid config, override, preset name or config file."""


def check(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'a' or 'b'?)`` for the close matches of ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(dict.fromkeys(candidates)), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def _section_name(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return getattr(cls, "_section", cls.__name__)


def _is_config(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _is_config_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


# --------------------------------------------------------------------------- annotations


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is Union or isinstance(tp, types.UnionType)


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


def _first_member(union: Any, attempt: Callable[[Any], Any], error: str) -> Any:
    """``attempt(member)`` for the first non-None member of ``union`` that accepts the value."""
    for arg in typing.get_args(union):
        if arg is not type(None):
            with contextlib.suppress(ConfigError):
                return attempt(arg)
    raise ConfigError(error)


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config class (cached)."""
    return typing.get_type_hints(cls)


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` (a Python/JSON value) against annotation ``tp``; return it in
    canonical form (ints accepted for floats, lists turned into tuples)."""
    if tp is Any:
        return value
    if tp is type(None):
        check(value is None, f"{where}: expected None, got {value!r}")
        return None
    if _is_union(tp):
        if value is None and type(None) in typing.get_args(tp):
            return None
        return _first_member(tp, lambda arg: coerce_value(value, arg, where),
                             f"{where}: expected {_describe(tp)}, got {value!r}")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and all(type(value) is type(c) for c in choices if c == value):
            return value
        hint = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        raise ConfigError(f"{where}: {value!r} is not {_describe(tp)}{hint}")
    if origin is tuple:
        args = typing.get_args(tp)
        check(isinstance(value, (list, tuple)), f"{where}: expected {_describe(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        check(len(value) == len(args), f"{where}: expected {len(args)} items ({_describe(tp)}), got {len(value)}")
        return tuple(coerce_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if tp is bool:
        check(isinstance(value, bool), f"{where}: expected a bool, got {value!r}")
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an int, got {value!r}")
        return value
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool),
              f"{where}: expected a float, got {value!r}")
        value = float(value)
        check(math.isfinite(value), f"{where}: {'NaN' if math.isnan(value) else value} is not allowed "
                                    "(a finite number is needed)")
        return value
    if tp is str:
        check(isinstance(value, str), f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")  # pragma: no cover - schema bug


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _parse_int(raw: str, where: str, text: str) -> int:
    with contextlib.suppress(ValueError):
        return int(raw.replace("_", ""), 10)
    with contextlib.suppress(ValueError):
        number = float(raw)
        if math.isfinite(number) and number.is_integer():  # 1e3 -> 1000
            return int(number)
    raise ConfigError(f"{where}: cannot parse {text!r} as an int")


def parse_value(text: str, tp: Any, where: str) -> Any:
    """Parse the text of an override into a value of annotation ``tp``."""
    raw = text.strip()
    low = raw.lower()
    if _is_union(tp):
        if low in _NONE and type(None) in typing.get_args(tp):
            return None
        return _first_member(tp, lambda arg: parse_value(raw, arg, where),
                             f"{where}: cannot parse {text!r} as {_describe(tp)}")
    origin = typing.get_origin(tp)
    if origin is Literal:
        value: Any = _unquote(raw)
        for choice in typing.get_args(tp):  # non-string literals (rare) by their text
            if not isinstance(choice, str) and str(choice).lower() == low:
                value = choice
        return coerce_value(value, tp, where)
    if origin is tuple:
        inner = raw[1:-1] if len(raw) >= 2 and raw[0] + raw[-1] in ("()", "[]") else raw
        items = [s for s in (p.strip() for p in inner.split(",")) if s] if inner.strip() else []
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(s, args[0], f"{where}[{i}]") for i, s in enumerate(items))
        check(len(items) == len(args),
              f"{where}: expected {len(args)} comma-separated items ({_describe(tp)}), got {text!r}")
        return tuple(parse_value(s, a, f"{where}[{i}]") for i, (s, a) in enumerate(zip(items, args, strict=True)))
    if tp is bool:
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{where}: cannot parse {text!r} as a bool (use true/false)")
    if tp is int:
        return _parse_int(raw, where, text)
    if tp is float:
        try:
            value = float(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{where}: cannot parse {text!r} as a float") from None
        return coerce_value(value, float, where)
    if tp is str:
        return _unquote(raw)
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")  # pragma: no cover - schema bug


def validate_fields(obj: Any) -> None:
    """Check every field of a frozen dataclass against its annotation, canonicalising in
    place (list -> tuple, int -> float). Call it first in ``__post_init__``."""
    hints = field_types(type(obj))
    section = _section_name(obj)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        new = coerce_value(value, hints[f.name], f"{section}.{f.name}")
        if new is not value:
            object.__setattr__(obj, f.name, new)


# --------------------------------------------------------------------------- overrides


def leaf_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every settable (non-section) field of ``cfg``."""
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if _is_config(value):
            keys.extend(leaf_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def _resolve_key(cfg: Any, key: str) -> str:
    """Full dotted path for ``key`` (dotted, or a bare name unique across sections)."""
    key = key.strip()
    check(bool(key), "empty override key")
    leaves = leaf_keys(cfg)
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
    raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, leaves + bare)}")


def parse_override(text: str) -> tuple[str, str]:
    """Split ``"key=value"`` (the value may itself contain ``=``)."""
    check(isinstance(text, str) and "=" in text, f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    check(bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key)),
          f"override key {key!r} is not a (dotted) identifier")
    return key, value


def _set_path(obj: Any, parts: list[str], value: Any) -> Any:
    """Copy of the nested frozen dataclass ``obj`` with ``parts`` set to ``value``, built
    without its constructor (no validation yet: see :func:`apply_overrides`)."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    head = parts[0]
    values[head] = value if len(parts) == 1 else _set_path(values[head], parts[1:], value)
    new = object.__new__(type(obj))
    for name, v in values.items():
        object.__setattr__(new, name, v)
    return new


def _rebuild(obj: Any) -> Any:
    """Reconstruct a nested dataclass bottom-up through its constructors (validation)."""
    values = {f.name: _rebuild(v) if _is_config(v := getattr(obj, f.name)) else v for f in dataclasses.fields(obj)}
    return type(obj)(**values)


def apply_overrides(cfg: Config, overrides: Sequence[str] | Mapping[str, Any]) -> Config:
    """A new config with ``key=value`` overrides applied (``cfg`` is not modified).

    ``overrides`` is a list of ``"key=value"`` strings (values parsed by the field's
    annotation) or a mapping ``{key: value}`` (strings parsed the same way, other values
    type-checked). All overrides are applied first and the result is validated once, so
    their order never matters; a later override of the same key wins.
    """
    check(_is_config(cfg), f"expected a config dataclass, got {type(cfg).__name__}")
    if isinstance(overrides, str):
        raise ConfigError("overrides must be a list of 'key=value' strings, not one string")
    if isinstance(overrides, Mapping):
        items = [(str(k), v, isinstance(v, str)) for k, v in overrides.items()]
    else:
        items = [(*parse_override(text), True) for text in overrides]
    out = cfg
    for key, value, is_text in items:
        path = _resolve_key(cfg, key)
        parts = path.split(".")
        owner = cfg
        for part in parts[:-1]:
            owner = getattr(owner, part)
        tp = field_types(type(owner))[parts[-1]]
        parsed = parse_value(value, tp, path) if is_text else coerce_value(value, tp, path)
        out = _set_path(out, parts, parsed)
    return cfg if out is cfg else _rebuild(out)


# --------------------------------------------------------------------------- dict / JSON / files


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict of a config (tuples stay tuples; :func:`to_json` makes them lists)."""
    check(_is_config(cfg), f"expected a config dataclass, got {type(cfg).__name__}")
    return {f.name: to_dict(v) if _is_config(v := getattr(cfg, f.name)) else v for f in dataclasses.fields(cfg)}


def from_dict(cls: type[Config], data: Mapping[str, Any], *, where: str = "") -> Config:
    """Build a ``cls`` config from a (possibly partial) nested dict.

    Missing fields take their defaults; unknown keys raise :class:`ConfigError` with close
    matches; values are type-checked by the class itself."""
    check(isinstance(data, Mapping), f"config {where or _section_name(cls)!r} must be a mapping, got {data!r}")
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in names]
    if unknown:
        bad = str(unknown[0])
        if not where and all(_is_config_type(hints[n]) for n in names):
            raise ConfigError(f"unknown config section {bad!r}{did_you_mean(bad, names)}; sections: {', '.join(names)}")
        raise ConfigError(f"unknown field {where or _section_name(cls)}.{bad}{did_you_mean(bad, names)}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        kwargs[key] = from_dict(tp, value, where=f"{where}.{key}" if where else key) if _is_config_type(tp) else value
    return cls(**kwargs)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"cannot serialise non-finite float {obj!r} to JSON")
    return obj


def _canonical(data: Any) -> str:
    return json.dumps(_jsonable(data), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def to_json(cfg: Any, *, indent: int | None = 2, canonical: bool = False) -> str:
    """JSON text of ``cfg``. ``canonical=True``: sorted keys, no whitespace (for hashing)."""
    data = to_dict(cfg)
    return _canonical(data) if canonical else json.dumps(_jsonable(data), indent=indent, allow_nan=False)


# Field metadata of a field added after runs were cached: at its default it is left out of
# config_hash, so every run trained before the field existed keeps its hash (and its cache entry).
HASH_OMITS_DEFAULT = {"hash_omits_default": True}


def _hashed_dict(cfg: Any) -> dict[str, Any]:
    """:func:`to_dict` without the fields marked :data:`HASH_OMITS_DEFAULT` that hold their default."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("hash_omits_default") and value == f.default:
            continue
        out[f.name] = _hashed_dict(value) if _is_config(value) else value
    return out


def config_hash(cfg: Any, length: int = 12, *, exclude: Iterable[str] = ()) -> str:
    """Short sha256 of the canonical JSON: equal configs, equal hash, in any process.

    ``exclude`` names dotted keys (``"run.steps"``) left out, e.g. those a resumed run may
    change; an unknown key is a :class:`ConfigError`. Fields marked :data:`HASH_OMITS_DEFAULT`
    count only when they differ from their default."""
    check(_is_config(cfg), f"expected a config dataclass, got {type(cfg).__name__}")
    data = _hashed_dict(cfg)
    for key in exclude:
        *parents, name = key.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and name in node:
            del node[name]
        elif key not in leaf_keys(cfg):  # else: a field at its omitted default, already out
            raise ConfigError(f"config_hash: cannot exclude unknown key {key!r}{did_you_mean(key, leaf_keys(cfg))}")
    return hashlib.sha256(_canonical(data).encode("utf-8")).hexdigest()[:length]


def save_config(cfg: Any, path: PathLike) -> Path:
    """Write ``cfg`` as indented JSON, atomically (temp file + rename). Returns the path."""
    path = Path(path)
    atomic_write_text(path, to_json(cfg) + "\n")
    return path


def load_config(cls: type[Config], path: PathLike, *, what: str = "config", hint: str = "",
                build: Callable[[Any], Config] | None = None) -> Config:
    """Read a ``cls`` config written by :func:`save_config` (or any partial JSON of the same
    shape). Errors name ``what`` and the path; ``hint`` is appended when the file is missing.
    ``build`` turns the parsed JSON into the config (default: :func:`from_dict` of ``cls``)."""
    path = Path(path)
    data = read_json(path, ConfigError, what, hint)
    try:
        return build(data) if build is not None else from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
