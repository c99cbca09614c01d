"""The training lab's config: a :class:`TrainConfig` of five frozen sections checked by :mod:`muonclip.config`.

Sections: ``model`` (:class:`~muonclip.models.GPTConfig` itself), ``data``, ``optim``,
``schedule``, ``run``. Every field can be set with ``--set section.field=value`` (or the bare
field name); parsing, overrides, dict/JSON, atomic save/load and hashing are the generic ones
of :mod:`muonclip.config`. Named presets live in :mod:`muonclip.lab.presets`.

Config files written before the model section became ``GPTConfig`` name RoPE's base
``model.rope_theta``; loading one raises :class:`ConfigError` with the one-line migration:
rename the key to ``model.rope_base`` (every other field they hold is unchanged, and they
always hold ``mlp_ratio``, so the model they describe is the same).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from .. import config as typed
from ..config import (
    ConfigError,
    PathLike,
    apply_overrides,
    check,
    config_hash,
    did_you_mean,
    parse_override,
    to_dict,
    validate_fields,
)
from ..models import GPTConfig
from ..optim import NS_PRECISIONS
from ..optim import functional as optim_functional
from ..optim.qk_clip import GRANULARITIES

__all__ = [
    "ConfigError", "GPTConfig", "DataCfg", "OptimCfg", "ScheduleCfg", "RunCfg", "TrainConfig", "SECTIONS",
    "apply_overrides", "parse_override", "to_dict", "from_dict", "to_json", "save_config", "load_config",
    "config_hash",
]

Optimizer = Literal["muonclip", "muon", "adamw"]
TokenizerKind = Literal["byte", "bpe"]
ScheduleKind = Literal["constant", "cosine", "wsd"]
GqaMode = Literal["exact", "balanced"]


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
        validate_fields(self)
        check(bool(self.source), "data.source must not be empty")
        check(self.max_chars is None or self.max_chars >= 1,
              f"data.max_chars must be >= 1 or None; got {self.max_chars}")
        check(self.bpe_vocab_size >= 256, f"data.bpe_vocab_size must be >= 256; got {self.bpe_vocab_size}")
        check(0.0 < self.val_fraction < 1.0, f"data.val_fraction must be in (0, 1); got {self.val_fraction}")

    @property
    def tokenizer_vocab_size(self) -> int:
        """Upper bound on the tokenizer's vocabulary."""
        return 256 if self.tokenizer == "byte" else self.bpe_vocab_size


# Valid ns_method / update_scale values, read from the optimizer so the two never drift apart.
_OPTIMIZER_CHOICES = {
    "ns_method": tuple(optim_functional.ORTHOGONALIZERS),
    "update_scale": tuple(optim_functional.UPDATE_SCALES),
    "ns_precision": tuple(NS_PRECISIONS),
    "qk_clip_granularity": tuple(GRANULARITIES),
}


_CUSTOM_SEPARATOR = ","


def custom_coefficients(text: str) -> tuple[tuple[float, ...], ...]:
    """``"a,b,c;a,b,c"`` (one triple per Newton-Schulz iteration) as ``((a, b, c), ...)``, the
    optimizer's custom ``orthogonalizer``; ValueError on text that is not numbers."""
    try:
        return tuple(tuple(float(x) for x in part.split(_CUSTOM_SEPARATOR)) for part in text.split(";") if part.strip())
    except ValueError:
        raise ValueError("custom coefficients are numbers, 'a,b,c;a,b,c;...'") from None


def orthogonalizer_spec(ns_method: str):
    """The optimizer's ``orthogonalizer`` for ``optim.ns_method``: a schedule's name, or the
    custom coefficients ``"a,b,c;a,b,c;..."`` as triples."""
    return custom_coefficients(ns_method) if _CUSTOM_SEPARATOR in ns_method else ns_method


@dataclass(frozen=True)
class OptimCfg:
    """Optimizer. ``lr`` is the Muon(Clip) learning rate for matrix parameters;
    ``ns_method`` is the optimizer's ``orthogonalizer``: a schedule's name (``ns5``,
    ``polar_express``, ``cans``, ...) or custom coefficients ``"a,b,c;a,b,c;..."``, one triple
    per iteration;
    ``adamw_lr`` is the rate of the AdamW groups (embeddings, norms, biases, head) and of
    the whole model when ``optimizer="adamw"``. ``qk_clip_tau``, ``qk_clip_granularity``
    (``head``, K2's; ``layer``, the naive ablation) and ``qk_clip_window`` (1, K2's: this batch
    only; W > 1, an ablation: the max over the last W batches) matter only for ``muonclip``.
    ``grad_clip=None`` disables gradient-norm clipping. The field options of
    :class:`~muonclip.optim.MuonClip`: ``ns_precision`` (``auto`` picks bf16 where the device
    computes it natively), ``normuon``, ``cautious_weight_decay`` (Muon and AdamW groups alike)
    and ``muon_heads_per_block`` (0: whole matrices; g >= 1: q, k and v orthogonalised per
    group of g heads, from ``GPT.head_blocks()``)."""

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
    ns_precision: str = "auto"
    normuon: bool = False
    cautious_weight_decay: bool = False
    muon_heads_per_block: int = 0
    qk_clip_granularity: str = "head"
    # An ablation, not K2's rule: clip on the max over the last W batches (1: this batch only).
    # Added after runs were cached, so at its default it is left out of the config hash.
    qk_clip_window: int = field(default=1, metadata=typed.HASH_OMITS_DEFAULT)

    def __post_init__(self) -> None:
        validate_fields(self)
        check(self.lr > 0 and self.adamw_lr > 0,
              f"optim.lr and optim.adamw_lr must be > 0; got {self.lr}, {self.adamw_lr}")
        check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0; got {self.weight_decay}")
        check(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1); got {self.momentum}")
        check(all(0 <= b < 1 for b in self.betas), f"optim.betas must be in [0, 1); got {self.betas}")
        check(self.eps > 0, f"optim.eps must be > 0; got {self.eps}")
        check(self.qk_clip_tau > 0, f"optim.qk_clip_tau must be > 0; got {self.qk_clip_tau}")
        check(self.qk_clip_window >= 1,
              f"optim.qk_clip_window must be >= 1 (1: this batch only, K2's rule); got {self.qk_clip_window}")
        check(self.muon_heads_per_block >= 0,
              f"optim.muon_heads_per_block must be >= 0 (0: whole matrices); got {self.muon_heads_per_block}")
        check(self.grad_clip is None or self.grad_clip > 0,
              f"optim.grad_clip must be > 0 or None; got {self.grad_clip}")
        for name, choices in _OPTIMIZER_CHOICES.items():
            value = getattr(self, name)
            if name == "ns_method" and value not in choices and _CUSTOM_SEPARATOR in str(value):
                try:
                    optim_functional.resolve_orthogonalizer(custom_coefficients(value))
                except ValueError as exc:
                    raise ConfigError(f"optim.ns_method {value!r}: {exc}") from None
                continue
            check(value in choices, f"optim.{name}: {value!r} is not one of {', '.join(map(repr, choices))}"
                  f"{did_you_mean(value, choices)}")


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
        validate_fields(self)
        check(self.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0; got {self.warmup_steps}")
        check(0.0 <= self.decay_fraction <= 1.0,
              f"schedule.decay_fraction must be in [0, 1]; got {self.decay_fraction}")
        check(0.0 <= self.min_lr_ratio <= 1.0, f"schedule.min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio}")


@dataclass(frozen=True)
class RunCfg:
    """Run length and cadence. ``*_every = 0`` turns that periodic action off (a loop may
    still evaluate/checkpoint once at the end). ``log_every``: TensorBoard scalars every N steps
    (metrics.jsonl keeps one row per step, which the reports and resume read). ``seed`` seeds
    init and batches. ``device``: cpu,
    cuda or cuda:N (under torchrun, cuda is each rank's local GPU); the model is always initialised
    on the CPU, so every device starts from the same weights."""

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
        validate_fields(self)
        check(self.seed >= 0, f"run.seed must be >= 0; got {self.seed}")
        check(self.steps >= 1, f"run.steps must be >= 1; got {self.steps}")
        check(self.batch_size >= 1, f"run.batch_size must be >= 1; got {self.batch_size}")
        check(self.eval_batches >= 1, f"run.eval_batches must be >= 1; got {self.eval_batches}")
        for name in ("eval_every", "spectra_every", "checkpoint_every", "log_every"):
            check(getattr(self, name) >= 0, f"run.{name} must be >= 0; got {getattr(self, name)}")
        check(bool(re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device)),
              f"run.device must be cpu, cuda or cuda:N; got {self.device!r}")


SECTIONS: dict[str, type] = {
    "model": GPTConfig,
    "data": DataCfg,
    "optim": OptimCfg,
    "schedule": ScheduleCfg,
    "run": RunCfg,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a lab training run needs; checks cross-section consistency and the lab's
    own rule on the model: ``attention="mha"`` means ``n_kv_head == n_head`` (say ``gqa``)."""

    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    run: RunCfg = field(default_factory=RunCfg)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            check(isinstance(getattr(self, name), cls), f"TrainConfig.{name} must be a {cls.__name__}")
        m = self.model
        if m.attention == "mha":
            check(m.kv_heads == m.n_head,
                  f"model.attention='mha' needs n_kv_head == n_head; got {m.kv_heads} (use attention=gqa)")
        need = self.data.tokenizer_vocab_size
        check(
            m.vocab_size >= need,
            f"model.vocab_size={m.vocab_size} is smaller than the {self.data.tokenizer} tokenizer's "
            f"vocabulary ({need}); also set model.vocab_size={need}",
        )
        check(self.schedule.warmup_steps <= self.run.steps,
              f"schedule.warmup_steps={self.schedule.warmup_steps} exceeds run.steps={self.run.steps}")
        group = self.optim.muon_heads_per_block
        for what, heads in (("model.n_head", m.n_head), ("KV heads", m.kv_heads)):
            check(not group or heads % min(group, heads) == 0,
                  f"optim.muon_heads_per_block={group} does not divide the {heads} {what}; pick a divisor of it")

    def replace(self, **sections: Any) -> TrainConfig:
        """A copy with whole sections replaced, e.g. ``cfg.replace(run=...)``."""
        return dataclasses.replace(self, **sections)


# --------------------------------------------------------------------------- TrainConfig I/O

_RENAMED = {"rope_theta": "rope_base"}  # old model.X -> GPTConfig field (config files before GPTConfig)


def from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a (possibly partial) nested dict: missing fields take
    their defaults, unknown ones raise :class:`ConfigError` with close matches."""
    model = data.get("model") if isinstance(data, Mapping) else None
    for old, new in _RENAMED.items():
        if isinstance(model, Mapping) and old in model:
            raise ConfigError(
                f"model.{old} is now model.{new} (the model section is GPTConfig); this config was written "
                f"by an older muonclip: rename the key, e.g. sed -i 's/\"{old}\"/\"{new}\"/' config.json "
                f"(the model it describes is unchanged)"
            )
    return typed.from_dict(TrainConfig, data)


def to_json(cfg: TrainConfig, *, indent: int | None = 2, canonical: bool = False) -> str:
    """JSON text of ``cfg``. ``canonical=True``: sorted keys, no whitespace (for hashing)."""
    check(isinstance(cfg, TrainConfig), f"expected a TrainConfig, got {type(cfg).__name__}")
    return typed.to_json(cfg, indent=indent, canonical=canonical)


def save_config(cfg: TrainConfig, path: PathLike) -> Path:
    """Write ``cfg`` as indented JSON, atomically (temp file + rename). Returns the path."""
    check(isinstance(cfg, TrainConfig), f"expected a TrainConfig, got {type(cfg).__name__}")
    return typed.save_config(cfg, path)


def load_config(path: PathLike) -> TrainConfig:
    """Read a config written by :func:`save_config` (or any partial JSON of the same shape)."""
    return typed.load_config(TrainConfig, path, build=from_dict)


# The preset registry lives in muonclip.lab.presets. A few modules still import it from here;
# PEP 562 keeps that working (a top-level import would be circular: presets builds on this module).
