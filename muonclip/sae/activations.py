"""Residual-stream activations of a trained lab run, collected deterministically and
buffered to disk (``activations.pt``, checksummed like a lab checkpoint).

The residual stream "after block L" is the output of ``model.blocks[L]`` (read with a
forward hook), before the final norm when L is the last block.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..lab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..lab.config import ConfigError, TrainConfig, config_hash, load_config
from ..lab.train import build_model, load_dataset

__all__ = ["load_run", "resolve_layer", "collect_activations", "ActivationBuffer", "build_buffer",
           "load_buffer", "residual_hook", "spliced_losses"]

_SEED_OFFSET = {"train": 1_000_003, "val": 2_000_029}


def load_run(run_dir: str | Path) -> tuple[TrainConfig, torch.nn.Module, Any, dict]:
    """``(cfg, model in eval mode, dataset, checkpoint info)`` of a finished or partial lab run.

    Raises :class:`ConfigError` when ``run_dir`` is not a run directory and
    :class:`CheckpointError` when it has no readable checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist (train one with `muonclip train --out DIR`)")
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir} has no config.json; is it a muonclip run directory?")
    cfg = load_config(run_dir / "config.json")
    state = load_checkpoint(run_dir / "checkpoint.pt")
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    model.track_max_logits = False
    dataset = load_dataset(cfg, run_dir)
    info = {"run_config_hash": config_hash(cfg), "run_step": int(state["step"]), "d_model": cfg.model.d_model,
            "n_layer": cfg.model.n_layer, "seq_len": cfg.model.seq_len, "data_fingerprint": dataset.fingerprint}
    return cfg, model, dataset, info


def resolve_layer(layer: int | None, n_layer: int) -> int:
    """``None`` -> ``n_layer // 2``; negative counts from the end; out of range -> ConfigError."""
    if layer is None:
        return n_layer // 2
    if not -n_layer <= layer < n_layer:
        raise ConfigError(f"layer {layer} is out of range: the model has {n_layer} blocks "
                          f"(valid: 0..{n_layer - 1}, or -{n_layer}..-1)")
    return layer % n_layer


@contextmanager
def residual_hook(model: torch.nn.Module, layer: int,
                  fn: Callable[[Tensor], Tensor | None]) -> Iterator[None]:
    """Call ``fn(resid)`` on the output of ``model.blocks[layer]``; a returned tensor replaces it."""
    handle = model.blocks[layer].register_forward_hook(lambda _m, _inp, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def collect_activations(model: torch.nn.Module, dataset: Any, layer: int, n_tokens: int, *,
                        seq_len: int, batch_size: int = 32, split: str = "train", seed: int = 0) -> Tensor:
    """``[n_tokens, d_model]`` float32 residual activations after block ``layer``.

    Sequences come from ``dataset.batch_at(i, ...)`` (a pure function of seed and index),
    every position is kept, and the tokens are shuffled with a seeded generator, so equal
    arguments give bit-identical buffers.
    """
    chunks: list[Tensor] = []
    got = 0

    def grab(resid: Tensor) -> None:
        chunks.append(resid.detach().reshape(-1, resid.shape[-1]).float().clone())

    was_training = model.training
    model.eval()
    try:
        with residual_hook(model, layer, grab):
            i = 0
            while got < n_tokens:
                x, _ = dataset.batch_at(i, batch_size, seq_len, split=split, seed=seed + _SEED_OFFSET[split])
                model(x)
                got += x.numel()
                i += 1
    finally:
        model.train(was_training)
    acts = torch.cat(chunks)[:n_tokens] if chunks else torch.empty(0)
    gen = torch.Generator().manual_seed(seed + 17)
    return acts[torch.randperm(acts.shape[0], generator=gen)].contiguous()


def _digest(t: Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


class ActivationBuffer:
    """Training and held-out activations (already multiplied by ``scale``) and their provenance."""

    def __init__(self, train: Tensor, eval: Tensor, scale: float, meta: dict[str, Any]) -> None:
        self.train = train
        self.eval = eval
        self.scale = float(scale)
        self.meta = meta

    @property
    def d_in(self) -> int:
        return int(self.train.shape[1])

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def batch_at(self, step: int, batch_size: int, seed: int) -> Tensor:
        """Batch of SAE step ``step``: slices of a per-epoch permutation, a pure function of
        ``(seed, step, batch_size)`` (resumes need no sampler state)."""
        n = self.train.shape[0]
        per_epoch = n // batch_size
        epoch, j = divmod(step, per_epoch)
        perm = self._perm(epoch, seed)
        return self.train[perm[j * batch_size:(j + 1) * batch_size]]

    def _perm(self, epoch: int, seed: int) -> Tensor:
        key = (epoch, seed)
        if getattr(self, "_perm_key", None) != key:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            self._perm_cache = torch.randperm(self.train.shape[0], generator=gen)
            self._perm_key = key
        return self._perm_cache


def build_buffer(run_dir: str | Path, path: str | Path, *, layer: int | None, n_tokens: int, n_eval_tokens: int,
                 seed: int = 0, batch_size: int = 32, normalize: bool = True,
                 log: Callable[[str], None] | None = None) -> ActivationBuffer:
    """Collect (or reuse, when ``path`` holds a buffer of the same request) the activations
    of ``run_dir`` at ``layer`` and save them to ``path``."""
    cfg, model, dataset, info = load_run(run_dir)
    layer = resolve_layer(layer, cfg.model.n_layer)
    request = {**info, "layer": layer, "n_tokens": n_tokens, "n_eval_tokens": n_eval_tokens, "seed": seed,
               "collect_batch_size": batch_size, "normalize": normalize}
    path = Path(path)
    if path.exists():
        try:
            buf = load_buffer(path)
            if {k: buf.meta.get(k) for k in request} == request:
                if log:
                    log(f"reusing activations in {path}")
                return buf
        except CheckpointError as exc:  # damaged, or refused as unsafe: collected afresh below, never unpickled
            if log:
                log(f"not reusing {path}: {exc}")
    if log:
        log(f"collecting {n_tokens} + {n_eval_tokens} activations after block {layer} of {run_dir}")
    seq_len = cfg.model.seq_len
    train = collect_activations(model, dataset, layer, n_tokens, seq_len=seq_len, batch_size=batch_size,
                                split="train", seed=seed)
    held = collect_activations(model, dataset, layer, n_eval_tokens, seq_len=seq_len, batch_size=batch_size,
                               split="val", seed=seed)
    scale = 1.0
    if normalize:
        # E||x||^2 = d_model after scaling (one scalar, so FVE and L0 are unaffected).
        scale = float((train.shape[1] / train.double().pow(2).sum(1).mean()).sqrt())
    meta = {**request, "scale": scale, "fingerprint": _digest(train) + _digest(held)}
    save_checkpoint(path, {"train": train, "eval": held, "meta": meta})
    return ActivationBuffer(train * scale, held * scale, scale, meta)


def load_buffer(path: str | Path) -> ActivationBuffer:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no activation buffer at {path}")
    state = load_checkpoint(path)
    s = state["meta"]["scale"]
    return ActivationBuffer(state["train"] * s, state["eval"] * s, s, state["meta"])


@torch.no_grad()
def spliced_losses(model: torch.nn.Module, dataset: Any, layer: int, reconstruct: Callable[[Tensor], Tensor],
                   mean: Tensor, *, n_batches: int, batch_size: int, seq_len: int) -> dict[str, float]:
    """Validation cross-entropy of the LM clean, with the residual after ``layer`` replaced
    by ``reconstruct(resid)``, and with it replaced by ``mean`` (mean ablation).
    ``loss_recovered = (ce_mean - ce_sae) / (ce_mean - ce_clean)`` (1 = perfect)."""
    batches = dataset.val_batches(n_batches, batch_size, seq_len)

    def ce(fn: Callable[[Tensor], Tensor | None]) -> float:
        total = 0.0
        with residual_hook(model, layer, fn):
            for x, y in batches:
                total += float(model(x, y)[1])
        return total / len(batches)

    model.eval()
    clean = ce(lambda r: None)
    sae = ce(lambda r: reconstruct(r.reshape(-1, r.shape[-1])).reshape(r.shape).to(r.dtype))
    ablate = ce(lambda r: mean.to(r.dtype).expand_as(r).clone())
    denom = ablate - clean
    return {"ce_clean": clean, "ce_sae": sae, "ce_mean_ablation": ablate,
            "loss_recovered": (ablate - sae) / denom if denom > 0 else float("nan")}
