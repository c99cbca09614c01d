"""Sparse-autoencoder configuration: one frozen dataclass on :mod:`muonclip.config`, and its presets.

Overrides, dict/JSON, atomic save/load and hashing are the generic ones of
:mod:`muonclip.config` (unknown keys are rejected with close matches)::

    cfg = apply_overrides(QUICK, ["optimizer=muon", "l1_coeff=3"])
    save_sae_config(cfg, sae_dir / "config.json")
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from ..config import PathLike, check, config_hash, from_dict, load_config, save_config, to_dict, validate_fields
from ..optim.precision import NsPrecision

__all__ = [
    "SAEConfig", "DEFAULT", "QUICK", "RESUMABLE_KEYS", "sae_to_dict", "sae_from_dict",
    "save_sae_config", "load_sae_config", "sae_config_hash", "sae_state_hash",
]

SAEKind = Literal["l1", "topk"]
SAEOptimizer = Literal["adam", "muon"]


@dataclass(frozen=True)
class SAEConfig:
    """A sparse autoencoder on one layer's residual stream, and how it is trained.

    Dictionary: ``d_sae`` latents (``None``: ``expansion * d_model``). ``layer`` is the
    block whose *output* residual stream is read (``None``: the middle block,
    ``n_layer // 2``; negative values count from the end); both are resolved against the
    run and saved resolved in ``config.json``.

    ``kind="l1"``: ReLU latents, loss = squared error + ``l1_coeff`` * sum of latents, the
    coefficient ramping linearly from 0 over ``l1_warmup_steps``. ``kind="topk"``: the
    ``k`` largest ReLU pre-activations per token are kept, no sparsity penalty.

    ``optimizer="adam"``: torch.optim.Adam at ``lr`` on everything. ``"muon"``: MuonClip
    (no clip) at ``muon_lr`` (``None``: ``lr``; the ``rms_match`` update scale makes Muon's
    per-entry step comparable to Adam's) on the encoder and decoder matrices, its AdamW
    group at ``lr`` on the biases; its Newton-Schulz runs in ``ns_precision`` (default fp32, so
    a run is the same on every CPU; ``auto`` picks bf16 where the CPU multiplies it natively).
    The lr decays linearly to 0 over the last
    ``lr_decay_fraction`` of steps.

    Data: ``n_tokens`` activations from the training split (shuffled once) are the
    training buffer; ``n_eval_tokens`` from the validation split are held out.
    ``normalize`` scales activations so that E||x||^2 = d_model (one scalar, from the
    training buffer). Decoder columns are kept at unit norm: the gradient component along
    each column is removed (``project_grad``) and columns are renormalised after each step.
    A latent is dead when it has not fired for ``dead_window`` steps. A checkpoint is saved
    every ``checkpoint_every`` steps (0: only at the end) and at the end.
    """

    _section = "sae"

    layer: int | None = None
    d_sae: int | None = None
    expansion: int = 8
    kind: SAEKind = "l1"
    k: int = 8
    l1_coeff: float = 1.0
    l1_warmup_steps: int = 200
    optimizer: SAEOptimizer = "adam"
    lr: float = 3e-3
    muon_lr: float | None = None
    momentum: float = 0.95
    ns_precision: NsPrecision = "fp32"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_decay_fraction: float = 0.2
    steps: int = 3000
    batch_size: int = 1024
    n_tokens: int = 262144
    n_eval_tokens: int = 8192
    collect_batch_size: int = 32
    normalize: bool = True
    project_grad: bool = True
    dead_window: int = 500
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        validate_fields(self)
        check(self.layer is None or isinstance(self.layer, int), "sae.layer must be an int or None")
        check(self.d_sae is None or self.d_sae >= 1, f"sae.d_sae must be >= 1 or None; got {self.d_sae}")
        for name in ("expansion", "k", "steps", "batch_size", "n_tokens", "n_eval_tokens",
                     "collect_batch_size", "dead_window"):
            check(getattr(self, name) >= 1, f"sae.{name} must be >= 1; got {getattr(self, name)}")
        check(self.l1_coeff >= 0, f"sae.l1_coeff must be >= 0; got {self.l1_coeff}")
        check(self.l1_warmup_steps >= 0, f"sae.l1_warmup_steps must be >= 0; got {self.l1_warmup_steps}")
        check(self.lr > 0, f"sae.lr must be > 0; got {self.lr}")
        check(self.muon_lr is None or self.muon_lr > 0, f"sae.muon_lr must be > 0 or None; got {self.muon_lr}")
        check(0 <= self.momentum < 1, f"sae.momentum must be in [0, 1); got {self.momentum}")
        check(all(0 <= b < 1 for b in self.betas), f"sae.betas must be in [0, 1); got {self.betas}")
        check(self.weight_decay >= 0, f"sae.weight_decay must be >= 0; got {self.weight_decay}")
        check(0 <= self.lr_decay_fraction <= 1,
              f"sae.lr_decay_fraction must be in [0, 1]; got {self.lr_decay_fraction}")
        check(self.checkpoint_every >= 0, f"sae.checkpoint_every must be >= 0; got {self.checkpoint_every}")
        check(self.seed >= 0, f"sae.seed must be >= 0; got {self.seed}")
        check(self.batch_size <= self.n_tokens,
               f"sae.batch_size={self.batch_size} exceeds the activation buffer n_tokens={self.n_tokens}")
        if self.d_sae is not None and self.kind == "topk":
            check(self.k <= self.d_sae, f"sae.k={self.k} exceeds d_sae={self.d_sae}")

    @property
    def muon_lr_resolved(self) -> float:
        return self.lr if self.muon_lr is None else self.muon_lr

    def replace(self, **changes: Any) -> "SAEConfig":
        return dataclasses.replace(self, **changes)


# lr 3e-3: on the 4-layer d_model-128 run it beats 1e-3 for both optimizers (held-out L0
# 14.5 -> 9.9 for Adam, 15.1 -> 8.5 for Muon, at equal or better FVE; docs/sae.md).
DEFAULT = SAEConfig()

# ``--quick``: sized so an SAE on the lab's ``tiny`` run trains in well under a minute on
# two shared CPU cores while L0 still falls by more than 10x from its start. With lr 3e-3
# rather than 1e-3, 600 steps on the 4-layer d_model-128 run end sparser *and* more faithful
# for both optimizers (Adam L0 45 -> 24, FVE 0.898 -> 0.913; Muon 58 -> 21, 0.893 -> 0.919).
QUICK = SAEConfig(steps=600, batch_size=512, n_tokens=65536, n_eval_tokens=4096,
                  l1_warmup_steps=100, dead_window=200, checkpoint_every=200)

# Keys a resumed SAE may change: how long it trains and how often it checkpoints.
RESUMABLE_KEYS = ("steps", "checkpoint_every")


def sae_to_dict(cfg: SAEConfig) -> dict[str, Any]:
    """Flat dict of ``cfg`` (what ``config.json`` holds; tuples stay tuples)."""
    return to_dict(cfg)


def sae_from_dict(data: Mapping[str, Any]) -> SAEConfig:
    """An :class:`SAEConfig` from a (possibly partial) flat dict; unknown keys are rejected."""
    return from_dict(SAEConfig, data)


def save_sae_config(cfg: SAEConfig, path: PathLike) -> Path:
    """Write ``config.json`` atomically."""
    return save_config(cfg, path)


def load_sae_config(path: PathLike) -> SAEConfig:
    """Read an SAE directory's ``config.json``."""
    return load_config(SAEConfig, path, what="SAE config", hint="; is it a `muonclip sae` directory?")


def sae_config_hash(cfg: SAEConfig, length: int = 12) -> str:
    """Short stable hash of the whole config (names the SAE cache directories)."""
    return config_hash(cfg, length)


def sae_state_hash(cfg: SAEConfig) -> str:
    """Hash of everything a checkpoint's tensors depend on (not how long training runs)."""
    return config_hash(cfg, 16, exclude=RESUMABLE_KEYS)
