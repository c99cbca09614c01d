"""Train a sparse autoencoder on buffered activations: metrics every step, exact resume.

An SAE directory holds:

* ``config.json``     -- the resolved :class:`~muonclip.sae.config.SAEConfig` (layer, d_sae filled in);
* ``sae.json``        -- where the activations came from (run dir, layer, buffer path, hashes);
* ``activations.pt``  -- the activation buffer (or, for ``--preset compare``, in the parent folder);
* ``metrics.jsonl`` and ``tb/`` -- one row per step, schema :data:`SAE_METRIC_FIELDS`;
* ``checkpoint.pt``   -- atomic, checksummed; ``--resume`` continues bit-exactly;
* ``summary.json``    -- final figures on held-out activations, written when training completes.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..io import atomic_write_json, remove_named
from ..lab.checkpoint import CheckpointError, checkpoint_due, load_checkpoint, save_checkpoint
from ..lab.config import ConfigError, apply_overrides
from ..lab.metrics import MetricsLog, read_metrics
from ..lab.schedule import lr_multiplier
from ..optim import MuonClip, Rule, build_param_groups
from .activations import ActivationBuffer, build_buffer, load_buffer, load_run, spliced_losses
from .config import (
    RESUMABLE_KEYS,
    SAEConfig,
    load_sae_config,
    sae_config_hash,
    sae_state_hash,
    sae_to_dict,
    save_sae_config,
)
from .model import SparseAutoencoder

__all__ = ["SAE_METRIC_FIELDS", "SUMMARY_FIELDS", "build_sae", "build_sae_optimizer", "train_sae", "run_sae",
           "resume_sae_config", "evaluate_sae", "load_sae", "clear_sae_dir"]

# Every metrics.jsonl row has exactly these keys (documented schema; tests check it).
SAE_METRIC_FIELDS = (
    "step",        # SAE optimizer steps completed (1-based); row k describes the batch of step k
    "tokens",      # activation vectors seen so far
    "loss",        # total loss of this batch: recon + l1_coeff * sparsity (recon only for topk)
    "recon",       # squared error per token, sum over dimensions, mean over the batch
    "mse",         # mean squared error per entry (recon / d_in), normalised units
    "fve",         # fraction of variance explained: 1 - SSE / sum ||x - mean_batch(x)||^2
    "l0",          # mean number of active (> 0) latents per token, measured before this step's update
    "sparsity",    # mean L1 norm of the latents per token
    "l1_coeff",    # sparsity coefficient used this step (ramps from 0 during warm-up; 0 for topk)
    "dead_frac",   # fraction of latents that have not fired in the last dead_window steps
    "lr",          # learning rate of the first param group (the matrices' for muon)
    "time",        # wall seconds since training started (excluding earlier sessions)
)

# summary.json keys (plus the config and provenance).
SUMMARY_FIELDS = ("steps", "complete", "optimizer", "kind", "d_sae", "layer", "l0_start", "l0_final",
                  "fve_final", "dead_frac_final", "eval_l0", "eval_fve", "eval_mse", "eval_dead_frac",
                  "loss_recovered", "ce_clean", "ce_sae", "ce_mean_ablation", "time")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``None``: unchanged), then restore."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_sae(cfg: SAEConfig, d_in: int) -> SparseAutoencoder:
    """A fresh SAE from ``cfg`` (resolved: ``d_sae`` set), initialised from ``cfg.seed``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    return SparseAutoencoder(d_in, cfg.d_sae or cfg.expansion * d_in, cfg.kind, cfg.k, generator=gen)


def build_sae_optimizer(sae: SparseAutoencoder, cfg: SAEConfig) -> torch.optim.Optimizer:
    """``adam``: torch.optim.Adam on every parameter. ``muon``: :class:`muonclip.MuonClip`
    (no QK-Clip) with the encoder/decoder matrices in a Muon group and the biases in an
    AdamW group, routed by parameter name with :func:`muonclip.build_param_groups`."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    rules = (Rule(r"^(encoder|decoder)\.weight$", "muon", "SAE dictionary matrix"),
             Rule(r"\.bias$", "adamw", "SAE bias"))
    groups = build_param_groups(sae, lr=cfg.muon_lr_resolved, weight_decay=cfg.weight_decay, rules=rules,
                                adamw_lr=cfg.lr)
    return MuonClip(groups, lr=cfg.muon_lr_resolved, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    betas=tuple(cfg.betas), ns_precision=cfg.ns_precision)


def _metrics(x: Tensor, x_hat: Tensor, z: Tensor) -> dict[str, float]:
    err = (x_hat - x).pow(2).sum()
    var = (x - x.mean(0, keepdim=True)).pow(2).sum()
    return {"recon": float(err) / x.shape[0], "mse": float(err) / x.numel(), "fve": 1.0 - float(err / var),
            "l0": float((z > 0).sum()) / x.shape[0], "sparsity": float(z.sum()) / x.shape[0]}


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, acts: Tensor, batch_size: int = 4096) -> dict[str, float]:
    """L0, FVE, MSE on ``acts`` and the fraction of latents that never fire on them."""
    err = var = l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    mean = acts.mean(0, keepdim=True)
    for chunk in acts.split(batch_size):
        x_hat, z = sae(chunk)
        err += float((x_hat - chunk).pow(2).sum())
        var += float((chunk - mean).pow(2).sum())
        l0 += float((z > 0).sum())
        fired |= (z > 0).any(0)
    n = acts.shape[0]
    return {"eval_l0": l0 / n, "eval_fve": 1.0 - err / var, "eval_mse": err / acts.numel(),
            "eval_dead_frac": 1.0 - float(fired.float().mean())}


def _check_resolved(cfg: SAEConfig) -> None:
    if cfg.layer is None or cfg.d_sae is None:
        raise ConfigError("the SAE config must be resolved (layer and d_sae set); use run_sae")


def train_sae(cfg: SAEConfig, sae_dir: str | Path, buffer: ActivationBuffer | None = None, *,
              resume: bool = False, progress: bool | None = None, log: Callable[[str], None] | None = None,
              stop_after: int | None = None, tensorboard: bool = True, threads: int | None = 1) -> dict[str, Any]:
    """Train (or resume) the SAE in ``sae_dir`` on ``buffer`` (default: the buffer named in
    ``sae.json``) and return its summary. ``stop_after`` ends the session early after that
    many steps; the SAE stays resumable.

    ``threads``: torch intra-op threads while training (default 1: the SAE's matrices are
    small, and on shared cores two threads measured ~15x slower per step than one). The
    previous setting is restored afterwards; ``None`` leaves it alone.
    """
    with torch_threads(threads):
        return _train_sae(cfg, sae_dir, buffer, resume=resume, progress=progress, log=log,
                          stop_after=stop_after, tensorboard=tensorboard)


def _train_sae(cfg: SAEConfig, sae_dir: str | Path, buffer: ActivationBuffer | None, *, resume: bool,
               progress: bool | None, log: Callable[[str], None] | None, stop_after: int | None,
               tensorboard: bool) -> dict[str, Any]:
    sae_dir = Path(sae_dir)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    _check_resolved(cfg)
    source = _read_source(sae_dir)
    if buffer is None:
        buffer = load_buffer(_buffer_path(sae_dir, source))
    torch.manual_seed(cfg.seed)
    sae = build_sae(cfg, buffer.d_in)
    sae.init_bias(buffer.train.mean(0))
    optimizer = build_sae_optimizer(sae, cfg)
    last_fired = torch.zeros(sae.d_sae, dtype=torch.long)
    start_step, prior_time = 0, 0.0
    ckpt_path = sae_dir / "checkpoint.pt"
    if resume:
        state = load_checkpoint(ckpt_path)
        if state["state_hash"] != sae_state_hash(cfg):
            raise CheckpointError(f"{ckpt_path} was written for a different SAE config")
        if state["buffer"] != buffer.fingerprint:
            raise CheckpointError(f"{ckpt_path} was trained on other activations than the buffer's")
        sae.load_state_dict(state["sae"])
        optimizer.load_state_dict(state["optimizer"])
        last_fired = state["last_fired"]
        start_step, prior_time = state["step"], state["time"]
        if start_step > cfg.steps:
            raise ConfigError(f"{ckpt_path} is at step {start_step}, past steps={cfg.steps}: an SAE cannot end "
                              f"before its checkpoint (--set steps={start_step} or more)")
        log(f"resuming {sae_dir} at step {start_step}/{cfg.steps}")
    else:
        sae_dir.mkdir(parents=True, exist_ok=True)
    save_sae_config(cfg, sae_dir / "config.json")

    metrics = MetricsLog(sae_dir, resume_step=start_step if resume else None, tensorboard=tensorboard)
    mult = lr_multiplier("wsd", cfg.steps, 0, cfg.lr_decay_fraction, 0.0)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    end_step = cfg.steps if stop_after is None else min(cfg.steps, start_step + stop_after)
    use_bar = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=cfg.steps, initial=start_step, desc=f"sae {cfg.optimizer}", unit="step", disable=not use_bar,
               dynamic_ncols=True)

    def checkpoint(step: int) -> None:
        metrics.sync()
        save_checkpoint(ckpt_path, {
            "step": step, "time": prior_time + (time.perf_counter() - t_start), "sae": sae.state_dict(),
            "optimizer": optimizer.state_dict(), "last_fired": last_fired.clone(),
            "state_hash": sae_state_hash(cfg), "buffer": buffer.fingerprint,
        })

    t_start = time.perf_counter()
    row: dict[str, Any] = {}
    try:
        for step in range(start_step, end_step):
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * mult(step)
            x = buffer.batch_at(step, cfg.batch_size, cfg.seed)
            x_hat, z = sae(x)
            recon = (x_hat - x).pow(2).sum(-1).mean()
            if cfg.kind == "l1":
                coeff = cfg.l1_coeff * (min(1.0, (step + 1) / cfg.l1_warmup_steps) if cfg.l1_warmup_steps else 1.0)
                loss = recon + coeff * z.sum(-1).mean()
            else:
                coeff, loss = 0.0, recon
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.project_grad:
                sae.project_decoder_grad_()
            optimizer.step()
            sae.normalize_decoder_()
            with torch.no_grad():
                last_fired[(z > 0).any(0)] = step + 1
                m = _metrics(x, x_hat.detach(), z.detach())
            row = {"step": step + 1, "tokens": (step + 1) * cfg.batch_size, "loss": float(loss.detach()), **m,
                   "l1_coeff": coeff,
                   "dead_frac": float(((step + 1 - last_fired) >= cfg.dead_window).float().mean()),
                   "lr": optimizer.param_groups[0]["lr"],
                   "time": prior_time + (time.perf_counter() - t_start)}
            metrics.write(row)
            bar.update(1)
            bar.set_postfix(l0=f"{m['l0']:.1f}", fve=f"{m['fve']:.3f}")
            if checkpoint_due(step, cfg.checkpoint_every, end_step):
                checkpoint(step + 1)
        checkpoint(end_step)
    finally:
        bar.close()
        metrics.close()

    rows = read_metrics(sae_dir / "metrics.jsonl")
    last = rows[-1] if rows else {}
    summary: dict[str, Any] = {
        "steps": end_step, "complete": end_step == cfg.steps, "optimizer": cfg.optimizer, "kind": cfg.kind,
        "d_sae": sae.d_sae, "layer": cfg.layer, "lr": cfg.lr, "muon_lr": cfg.muon_lr_resolved,
        "l1_coeff": cfg.l1_coeff, "k": cfg.k,
        "l0_start": rows[0]["l0"] if rows else None, "l0_final": last.get("l0"), "fve_final": last.get("fve"),
        "dead_frac_final": last.get("dead_frac"), "time": last.get("time"),
        "config_hash": sae_config_hash(cfg), "buffer": buffer.fingerprint,
    }
    if end_step == cfg.steps:
        summary.update(evaluate_sae(sae, buffer.eval))
        summary.update(_loss_recovered(sae, buffer, source, cfg, log))
        atomic_write_json(sae_dir / "summary.json", summary)
    return summary


def _loss_recovered(sae: SparseAutoencoder, buffer: ActivationBuffer, source: dict, cfg: SAEConfig,
                    log: Callable[[str], None]) -> dict[str, float]:
    """CE of the LM with the SAE spliced in (needs the run directory; skipped without it)."""
    run_dir = source.get("run_dir")
    if not run_dir or not Path(run_dir).is_dir():
        return {}
    try:
        run_cfg, model, dataset, info = load_run(run_dir)
    except (ConfigError, CheckpointError) as exc:
        log(f"skipping loss-recovered evaluation: {exc}")
        return {}
    trained_on = (source.get("run_config_hash"), source.get("run_step"))
    if trained_on != (info["run_config_hash"], info["run_step"]):
        # the run was retrained or continued since the activations were collected: splicing
        # this SAE into that model would measure a model it never saw
        log(f"skipping loss-recovered evaluation: {run_dir} is now config {info['run_config_hash']} at step "
            f"{info['run_step']}, but this SAE was trained on config {trained_on[0]} at step {trained_on[1]}")
        return {}
    s = buffer.scale
    mean = buffer.eval.mean(0) / s
    with torch.no_grad():
        def reconstruct(r: Tensor) -> Tensor:
            return sae(r.float() * s)[0] / s

        return spliced_losses(model, dataset, cfg.layer, reconstruct, mean, n_batches=4,
                              batch_size=run_cfg.run.batch_size, seq_len=run_cfg.model.seq_len)


def _read_source(sae_dir: Path) -> dict:
    path = sae_dir / "sae.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {}


def _buffer_path(sae_dir: Path, source: dict) -> Path:
    rel = source.get("activations", "activations.pt")
    return (sae_dir / rel).resolve() if not Path(rel).is_absolute() else Path(rel)


def resolve_sae_config(cfg: SAEConfig, buffer: ActivationBuffer) -> SAEConfig:
    """Fill in ``layer`` and ``d_sae`` from the buffer."""
    d_sae = cfg.d_sae or cfg.expansion * buffer.d_in
    if cfg.kind == "topk" and cfg.k > d_sae:
        raise ConfigError(f"sae.k={cfg.k} exceeds d_sae={d_sae}")
    return cfg.replace(layer=buffer.meta["layer"], d_sae=d_sae)


def run_sae(run_dir: str | Path, cfg: SAEConfig, sae_dir: str | Path, *, buffer_path: str | Path | None = None,
            progress: bool | None = None, log: Callable[[str], None] | None = None,
            stop_after: int | None = None, tensorboard: bool = True, threads: int | None = 1) -> dict[str, Any]:
    """Collect (or reuse) activations of ``run_dir`` and train a fresh SAE in ``sae_dir``.

    ``buffer_path`` (default ``sae_dir/activations.pt``) lets several SAEs share one buffer.
    ``threads``: torch threads for collection and training (see :func:`train_sae`).
    """
    with torch_threads(threads):
        return _run_sae(run_dir, cfg, sae_dir, buffer_path=buffer_path, progress=progress, log=log,
                        stop_after=stop_after, tensorboard=tensorboard)


def _run_sae(run_dir: str | Path, cfg: SAEConfig, sae_dir: str | Path, *, buffer_path: str | Path | None,
             progress: bool | None, log: Callable[[str], None] | None, stop_after: int | None,
             tensorboard: bool) -> dict[str, Any]:
    log = log or (lambda msg: print(msg, file=sys.stderr))
    sae_dir = Path(sae_dir)
    buffer_path = Path(buffer_path) if buffer_path is not None else sae_dir / "activations.pt"
    buffer = build_buffer(run_dir, buffer_path, layer=cfg.layer, n_tokens=cfg.n_tokens,
                          n_eval_tokens=cfg.n_eval_tokens, seed=cfg.seed, batch_size=cfg.collect_batch_size,
                          normalize=cfg.normalize, log=log)
    cfg = resolve_sae_config(cfg, buffer)
    sae_dir.mkdir(parents=True, exist_ok=True)
    try:
        rel = str(Path(buffer_path).resolve().relative_to(sae_dir.resolve()))
    except ValueError:
        try:
            rel = str(Path("..") / Path(buffer_path).resolve().relative_to(sae_dir.resolve().parent))
        except ValueError:
            rel = str(Path(buffer_path).resolve())
    atomic_write_json(sae_dir / "sae.json", {
        "run_dir": str(run_dir), "activations": rel, **{k: buffer.meta[k] for k in
                                                          ("layer", "run_config_hash", "run_step", "scale",
                                                           "fingerprint", "d_model")},
    })
    return train_sae(cfg, sae_dir, buffer, progress=progress, log=log, stop_after=stop_after,
                     tensorboard=tensorboard)


# What training an SAE (or a comparison) writes in its directory; ``--force`` removes these
# first, so a forced run that is killed cannot leave the earlier SAE's summary or checkpoint
# beside its own config. The activation buffer is kept: it is reused only when it matches.
SAE_ARTIFACTS = ("checkpoint.pt", "summary.json", "config.json", "sae.json", "metrics.jsonl", "tb", "l0.png",
                 "compare.json", "compare.md")


def clear_sae_dir(out: str | Path) -> None:
    """Remove :data:`SAE_ARTIFACTS` from ``out`` and from the SAE directories inside it (a
    comparison's ``adam/`` and ``muon/``); other files stay."""
    out = Path(out)
    if not out.is_dir():
        return
    for directory in [out, *(d for d in out.iterdir() if d.is_dir() and (d / "sae.json").is_file())]:
        remove_named(directory, SAE_ARTIFACTS)


def resume_sae_config(sae_dir: str | Path, overrides: list[str]) -> SAEConfig:
    """The saved config of ``sae_dir`` with the allowed overrides (steps, checkpoint_every)."""
    cfg = load_sae_config(Path(sae_dir) / "config.json")
    new = apply_overrides(cfg, overrides)
    old_d, new_d = sae_to_dict(cfg), sae_to_dict(new)
    bad = [k for k in new_d if new_d[k] != old_d[k] and k not in RESUMABLE_KEYS]
    if bad:
        raise ConfigError(f"cannot change {bad} when resuming an SAE (only {list(RESUMABLE_KEYS)})")
    return new


def load_sae(sae_dir: str | Path) -> tuple[SAEConfig, SparseAutoencoder]:
    """A trained SAE from its directory (config + checkpoint)."""
    sae_dir = Path(sae_dir)
    cfg = load_sae_config(sae_dir / "config.json")
    state = load_checkpoint(sae_dir / "checkpoint.pt")
    d_in = state["sae"]["decoder.bias"].shape[0]
    sae = build_sae(cfg, d_in)
    sae.load_state_dict(state["sae"])
    return cfg, sae
