"""Named training presets: the registry (register/get/list) and the lab's own ``tiny`` and ``small``.

The lab knows no experiment: the reproduction's presets (``dragon``, ``guardrail``, ...) are
registered by :mod:`muonclip.reproduce` itself when it is imported (the CLI, which sits above
both, imports it before it looks a preset up).
"""
from __future__ import annotations

import re

from ..config import ConfigError, check, did_you_mean
from ..models import GPTConfig
from .config import OptimCfg, RunCfg, TrainConfig

__all__ = ["PRESETS", "PRESET_DESCRIPTIONS", "register_preset", "get_preset", "list_presets"]

PRESETS: dict[str, TrainConfig] = {}
PRESET_DESCRIPTIONS: dict[str, str] = {}


def register_preset(name: str, cfg: TrainConfig, description: str, *, overwrite: bool = False) -> TrainConfig:
    """Add a named preset. Names are lower-case identifiers (``[a-z][a-z0-9_-]*``);
    re-registering an existing name needs ``overwrite=True``."""
    check(isinstance(name, str) and bool(re.fullmatch(r"[a-z][a-z0-9_-]*", name)),
          f"preset name {name!r} must match [a-z][a-z0-9_-]*")
    check(isinstance(cfg, TrainConfig), f"preset {name!r} must be a TrainConfig, got {type(cfg).__name__}")
    check(isinstance(description, str) and bool(description.strip()), f"preset {name!r} needs a description")
    check(overwrite or name not in PRESETS, f"preset {name!r} is already registered (pass overwrite=True)")
    PRESETS[name] = cfg
    PRESET_DESCRIPTIONS[name] = description.strip()
    return cfg


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name``; :class:`ConfigError` lists the available ones."""
    if isinstance(name, str) and name in PRESETS:
        return PRESETS[name]
    raise ConfigError(f"unknown preset {name!r}{did_you_mean(str(name), PRESETS)}; "
                      f"available: {', '.join(sorted(PRESETS)) or '(none)'}")


def list_presets() -> list[tuple[str, str]]:
    """``(name, description)`` of every preset, sorted by name."""
    return [(n, PRESET_DESCRIPTIONS.get(n, "")) for n in sorted(PRESETS)]


# mlp_ratio=4.0 (not GPTConfig's 8/3): what these presets have always trained with.
register_preset(
    "tiny",
    TrainConfig(
        model=GPTConfig(d_model=32, n_layer=2, n_head=4, seq_len=32, mlp_ratio=4.0),
        run=RunCfg(steps=30, batch_size=8, eval_every=10, eval_batches=2, spectra_every=10, checkpoint_every=10),
    ),
    "Smoke test: 2 layers x d_model 32 (4 heads of 8), seq_len 32, batch 8, 30 steps of "
    "MuonClip on the byte-level default corpus; trains in seconds on CPU.",
)

register_preset(
    "small",
    TrainConfig(
        model=GPTConfig(d_model=128, n_layer=4, n_head=4, seq_len=128, mlp_ratio=4.0),
        optim=OptimCfg(lr=0.02, weight_decay=0.1),
        run=RunCfg(steps=600, batch_size=16, eval_every=50, eval_batches=8),
    ),
    "Facts-file probe: 4 layers x d_model 128 (4 heads of 32), seq_len 128, batch 16, "
    "600 steps of MuonClip (lr 0.02, weight decay 0.1) on the byte-level default corpus.",
)
