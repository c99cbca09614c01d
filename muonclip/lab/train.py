"""The training loop of the lab: one run directory per run, metrics every step, exact resume.

A run directory holds:

* ``config.json``  -- the resolved :class:`TrainConfig`;
* ``run.json``     -- git sha, versions, seed, config hash;
* ``metrics.jsonl`` and ``tb/`` -- one row per step (schema in :mod:`muonclip.lab.metrics`);
* ``checkpoint.pt`` -- atomic, checksummed; ``--resume`` continues from it bit-exactly;
* ``spectra.npz``  -- singular values of tracked weights and of their applied updates;
* ``summary.json`` -- final figures, written when the run completes.
"""
from __future__ import annotations

import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import atomic_write_json, exclusive_lock, read_json, remove_named
from ..models import GPT
from ..optim import MuonClip, build_param_groups, precision
from . import distributed as lab_dist
from .checkpoint import CheckpointError, checkpoint_due, load_checkpoint, save_checkpoint
from .config import (
    ConfigError,
    TrainConfig,
    config_hash,
    orthogonalizer_spec,
    save_config,
)
from .data import TokenDataset, load_corpus
from .metrics import MetricsLog
from .resume import check_metrics_cover, model_hash
from .rundir import LOCK_FILE, METRICS_FILE, RUN_ARTIFACTS, SUMMARY_FILE, read_metrics
from .schedule import lr_multiplier
from .spectra import SpectraStore, effective_rank, singular_values, spectral_entropy
from .tokenizer import load_tokenizer, make_tokenizer

__all__ = ["train", "build_model", "build_optimizer", "load_dataset", "TRACKED_MATRICES"]

# A MuonClip step whose max logit is at least this share of tau re-reads its batch after the update
# (``max_logits_after``), as a clipping step does: one forward more, only near tau.
AFTER_PASS_NEAR = 0.9
# Matrices whose spectra are tracked in every layer (suffixes of parameter names).
TRACKED_MATRICES = ("attn.q_proj.weight", "attn.k_proj.weight", "attn.o_proj.weight", "mlp.up_proj.weight")


def build_model(cfg: TrainConfig) -> GPT:
    """The lab's GPT: the config's model section is its :class:`~muonclip.models.GPTConfig`."""
    return GPT(cfg.model)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``adamw``: torch.optim.AdamW on the same groups; ``muon``: MuonClip without clip;
    ``muonclip``: with ``qk_clip_tau``."""
    o = cfg.optim
    if o.optimizer == "adamw":
        groups = build_param_groups(model, lr=o.adamw_lr, weight_decay=o.weight_decay)
        if o.cautious_weight_decay:
            # torch.optim.AdamW has no cautious decay; MuonClip's AdamW groups do. The hidden
            # matrices keep their lab role (``hidden``) for the update-RMS metric.
            groups = [{k: v for k, v in g.items() if k not in ("expert_stacks", "head_blocks")}
                      | {"algorithm": "adamw", "hidden": g["algorithm"] == "muon"} for g in groups]
            return MuonClip(groups, lr=o.adamw_lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                            cautious_weight_decay=True)
        return torch.optim.AdamW(groups, lr=o.adamw_lr, betas=tuple(o.betas), eps=o.eps,
                                 weight_decay=o.weight_decay)
    head_blocks = model.head_blocks() if o.muon_heads_per_block else None
    groups = build_param_groups(model, lr=o.lr, weight_decay=o.weight_decay, adamw_lr=o.adamw_lr,
                                head_blocks=head_blocks)
    clip = o.optimizer == "muonclip"
    if clip and cfg.model.qk_norm:
        raise ConfigError("QK-norm and QK-Clip are alternatives: with model.qk_norm=true use "
                          "--optimizer muon (or adamw), or turn qk_norm off to compare against MuonClip")
    return MuonClip(
        groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay,
        orthogonalizer=orthogonalizer_spec(o.ns_method), update_scale=o.update_scale, betas=tuple(o.betas), eps=o.eps,
        qk_clip_tau=o.qk_clip_tau if clip else None,
        qk_clip_spec=model.qk_clip_spec() if clip else None,
        max_logits_fn=model.max_logits if clip else None,
        gqa_mode=o.gqa_mode, qk_clip_granularity=o.qk_clip_granularity, ns_precision=o.ns_precision,
        normuon=o.normuon, cautious_weight_decay=o.cautious_weight_decay,
        heads_per_block=max(1, o.muon_heads_per_block),
    )


def load_dataset(cfg: TrainConfig, run_dir: Path | None = None) -> TokenDataset:
    """Corpus -> tokenizer -> TokenDataset. A BPE tokenizer is trained once and saved in the run."""
    d = cfg.data
    text = load_corpus(d.source, hf_dataset=d.hf_dataset, hf_split=d.hf_split,
                       hf_text_field=d.hf_text_field, max_chars=d.max_chars)
    tok_path = run_dir / "tokenizer.json" if run_dir is not None else None
    if d.tokenizer == "bpe" and tok_path is not None and tok_path.exists():
        tokenizer = load_tokenizer(tok_path)
    else:
        tokenizer = make_tokenizer(d.tokenizer, text, d.bpe_vocab_size)
        if d.tokenizer == "bpe" and tok_path is not None:
            tokenizer.save(tok_path)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is {cfg.model.vocab_size}; "
            f"--set model.vocab_size={tokenizer.vocab_size}"
        )
    return TokenDataset.from_text(text, tokenizer, val_fraction=d.val_fraction, seed=cfg.run.seed)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_info(cfg: TrainConfig, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    info = {
        "git_sha": _git_sha(),
        "config_hash": config_hash(cfg),
        "seed": cfg.run.seed,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        # what decides the run's numerics beyond the config: the kernels and, with
        # ns_precision="auto", the Newton-Schulz dtype picked for this device
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_flags": list(precision.cpu_bf16_flags()),
        "ns_dtype": str(precision.resolve_ns_dtype(cfg.optim.ns_precision, cfg.run.device)).removeprefix("torch."),
        "argv": sys.argv,
    }
    if isinstance(optimizer, MuonClip):  # each matrix's Newton-Schulz precision and form (recorded on resume)
        info["ns_plan"] = optimizer.ns_plan()
    return info


def _tracked(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if n.endswith(TRACKED_MATRICES)}


def _hidden_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The hidden matrices (Muon group; the same group under AdamW runs)."""
    return [p for g in optimizer.param_groups if _is_hidden(g) for p in g["params"]]


def _is_hidden(group: dict) -> bool:
    """A group of hidden matrices: the Muon group, or (cautious AdamW runs) one marked ``hidden``."""
    return group.get("hidden", group.get("algorithm") == "muon")


def _grad_norm(params: list[torch.Tensor]) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches) -> float:
    was_training = model.training
    model.eval()
    try:
        losses = [float(model(x, y)[1]) for x, y in batches]
    finally:
        model.train(was_training)
    return sum(losses) / len(losses)


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir`` and return its summary.

    One process writes a run directory at a time: a second is refused (a lock file, taken
    over when its process has died). A fresh run first removes everything an earlier run left
    there (:data:`~muonclip.lab.rundir.RUN_ARTIFACTS`). Resuming checks that the metrics log
    covers the checkpoint; resuming a complete run changes nothing and returns its summary,
    and a ``run.steps`` below the checkpoint's step is refused. ``stop_after`` ends the
    session early after that many steps (for tests of resume); the run stays resumable.
    """
    run_dir = Path(run_dir)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if lab_dist.launched_rank() != 0:  # rank 0 writes the directory and holds its lock
        return _train(cfg, run_dir, resume, progress, log, stop_after)
    if resume and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} does not exist: there is no run to resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(run_dir / LOCK_FILE, f"run directory {run_dir}"):
        if not resume:
            remove_named(run_dir, RUN_ARTIFACTS)
        return _train(cfg, run_dir, resume, progress, log, stop_after)


def _train(cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool | None, log: Callable[[str], None],
           stop_after: int | None) -> dict[str, Any]:
    torch.manual_seed(cfg.run.seed)
    dctx = lab_dist.from_env()  # None unless launched by torchrun with WORLD_SIZE > 1
    try:
        return _train_joined(cfg, run_dir, resume, progress, log, stop_after, dctx)
    finally:
        # after an error before the training loop's own shutdown (a no-op once the group is left)
        lab_dist.shutdown(dctx, peers_done=False)


def _train_joined(cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool | None, log: Callable[[str], None],
                  stop_after: int | None, dctx: lab_dist.LabDist | None) -> dict[str, Any]:
    main = lab_dist.is_main(dctx)  # only rank 0 writes to run_dir
    device = lab_dist.resolve_device(cfg.run.device, dctx)
    model = build_model(cfg).to(device)  # built on the CPU first: the same init on every device
    dataset = lab_dist.rank0_first(lambda: load_dataset(cfg, run_dir), dctx)  # one BPE training
    optimizer = build_optimizer(model, cfg)
    start_step, tokens, prior_time = 0, 0, 0.0
    ckpt_path = run_dir / "checkpoint.pt"

    if resume:
        state = load_checkpoint(ckpt_path)
        if state["config_hash_model"] != model_hash(cfg):
            raise CheckpointError(f"{ckpt_path} was written for a different model/optimizer/data config")
        dataset.check_state_dict(state["data"])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start_step, tokens, prior_time = state["step"], state["tokens"], state["time"]
        if start_step > cfg.run.steps:
            raise ConfigError(f"{ckpt_path} is at step {start_step}, past run.steps={cfg.run.steps}: a run cannot "
                              f"end before its checkpoint (--set run.steps={start_step} or more)")
        check_metrics_cover(run_dir, start_step)  # on every rank, so all of them raise alike
        if start_step == cfg.run.steps:
            log(f"{run_dir} is complete at step {start_step}; nothing to train")
            lab_dist.shutdown(dctx)
            return _finished_summary(run_dir, cfg, tokens) if main else {}
        if isinstance(optimizer, MuonClip):
            optimizer.skipped_steps = state.get("skipped_steps", 0)
        log(f"resuming {run_dir} at step {start_step}/{cfg.run.steps}")
    if main:
        save_config(cfg, run_dir / "config.json")
        atomic_write_json(run_dir / "run.json", run_info(cfg, optimizer))

    metrics = MetricsLog(run_dir, resume_step=start_step if resume else None) if main else lab_dist.NullLog()
    spectra = SpectraStore.load(run_dir / "spectra.npz", start_step) if resume else SpectraStore()
    r, o, s = cfg.run, cfg.optim, cfg.schedule
    mult = lr_multiplier(s.kind, r.steps, s.warmup_steps, s.decay_fraction, s.min_lr_ratio)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    val_batches = ([(x.to(device), y.to(device)) for x, y in dataset.val_batches(r.eval_batches, r.batch_size,
                                                                                  cfg.model.seq_len)]
                   if r.eval_every else [])
    params = [p for g in optimizer.param_groups for p in g["params"]]
    hidden = _hidden_params(optimizer)
    tracked = _tracked(model)
    end_step = r.steps if stop_after is None else min(r.steps, start_step + stop_after)
    use_bar = (sys.stderr.isatty() if progress is None else progress) and main
    # a disabled tqdm is a no-op with the same methods, so the loop never checks for a bar
    bar = tqdm(total=r.steps, initial=start_step, desc=f"{o.optimizer}", unit="step", dynamic_ncols=True,
               disable=not use_bar)

    def checkpoint(step: int) -> None:
        if not main:
            return
        metrics.sync()
        if spectra.steps:
            spectra.save(run_dir / "spectra.npz")
        save_checkpoint(ckpt_path, {
            "step": step, "tokens": tokens, "time": prior_time + (time.perf_counter() - t_start),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(), "data": dataset.state_dict(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "config_hash_model": model_hash(cfg),
            "skipped_steps": getattr(optimizer, "skipped_steps", 0),
        })

    model.train()
    net = lab_dist.wrap_model(model, dctx)  # DDP when distributed, else the model itself
    world = dctx.world_size if dctx else 1
    t_start = time.perf_counter()
    row: dict[str, Any] = {}
    val_loss = None
    finished = False  # every step and the last checkpoint done: the ranks may wait for each other at the end
    try:
        for step in range(start_step, end_step):
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * mult(step)
            x, y = lab_dist.shard_batch(*dataset.batch_at(step, r.batch_size, cfg.model.seq_len), dctx)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            _, loss = net(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_logits = lab_dist.max_across([t.clone() for t in model.max_logits()], dctx)
            grad_norm = _grad_norm(params)
            if o.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
            clip_logits = (_window_max_logits(model, dataset, step, cfg, dctx, device, max_logits)
                            if o.optimizer == "muonclip" and o.qk_clip_window > 1 else None)
            spectra_step = bool(r.spectra_every) and ((step + 1) % r.spectra_every == 0 or step == 0
                                                      or step + 1 == r.steps)
            before = [p.detach().clone() for p in hidden]
            tracked_before = {n: p.detach().clone() for n, p in tracked.items()} if spectra_step else {}
            if clip_logits is None:
                optimizer.step()
            else:  # the window's maxima instead of this batch's (model.max_logits)
                optimizer.step(max_logits=clip_logits)
            lr_hidden = next((g["lr"] for g in optimizer.param_groups if _is_hidden(g)),
                             optimizer.param_groups[0]["lr"])
            with torch.no_grad():
                sq = sum(float((p - b).pow(2).sum()) for p, b in zip(hidden, before, strict=False))
                numel = sum(p.numel() for p in hidden)
                update_rms = math.sqrt(sq / max(1, numel)) / lr_hidden if lr_hidden > 0 else 0.0
            tokens += x.numel() * world
            dt = time.perf_counter() - t0
            clip_stats = getattr(optimizer, "last_qk_clip", None) if o.optimizer == "muonclip" else None
            max_logit = float(torch.cat(max_logits).max())
            # After a clip, or with a head within AFTER_PASS_NEAR of tau: the same batch again, so that
            # the next row's excess over tau splits into this update's growth and the next batch's variation.
            near_tau = max_logit >= AFTER_PASS_NEAR * o.qk_clip_tau
            after_clip = _read_max_logits(model, x, dctx) if clip_stats and (clip_stats.n_clipped or near_tau) \
                else None
            row = {
                "step": step + 1,
                "tokens": tokens,
                "loss": lab_dist.mean_across(float(loss.detach()), dctx),
                "lr": optimizer.param_groups[0]["lr"],
                "max_logit": max_logit,
                "max_logits": _logged(max_logits),
                "n_clipped": clip_stats.n_clipped if clip_stats else 0,
                "min_gamma": clip_stats.min_gamma if clip_stats else 1.0,
                "grad_norm": grad_norm,
                "update_rms": update_rms,
                "tokens_per_s": x.numel() * world / dt,
                "time": prior_time + (time.perf_counter() - t_start),
            }
            if after_clip is not None:
                row["max_logits_after"] = _logged(after_clip)
            if clip_logits is not None:  # what the clip acted on: the max over the window
                row["max_logits_clip"] = _logged(clip_logits)
            if spectra_step:
                summary = {}
                for name, p in tracked.items():
                    sw = singular_values(p)
                    su = singular_values(p.detach() - tracked_before[name])
                    spectra.add(step + 1, name, "weight", sw)
                    spectra.add(step + 1, name, "update", su)
                    summary[name] = {"w_entropy": spectral_entropy(sw), "w_erank": effective_rank(sw),
                                     "u_entropy": spectral_entropy(su), "u_erank": effective_rank(su)}
                row["spectra"] = summary
            if val_batches and ((step + 1) % r.eval_every == 0 or step + 1 == r.steps):
                val_loss = evaluate(model, val_batches)
                row["val_loss"] = val_loss
            metrics.write(row, tensorboard=bool(r.log_every) and (step + 1) % r.log_every == 0)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", max_logit=f"{row['max_logit']:.1f}",
                            tok_s=f"{row['tokens_per_s']:.0f}")
            if checkpoint_due(step, r.checkpoint_every, end_step):
                checkpoint(step + 1)
        checkpoint(end_step)
        finished = True
    finally:
        bar.close()
        metrics.close()
        del net  # the DDP wrapper holds the process group, whose threads must end before Python does
        lab_dist.shutdown(dctx, peers_done=finished)
    summary = _summary(run_dir, cfg, end_step, tokens, row, val_loss)
    if end_step == r.steps and main:
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def _summary(run_dir: Path, cfg: TrainConfig, steps: int, tokens: int, last_row: dict, val_loss: float | None) -> dict:
    return {
        "run_dir": str(run_dir), "steps": steps, "complete": steps == cfg.run.steps, "tokens": tokens,
        "final_loss": last_row.get("loss"), "final_val_loss": val_loss, "final_max_logit": last_row.get("max_logit"),
        "config_hash": config_hash(cfg),
    }


def _finished_summary(run_dir: Path, cfg: TrainConfig, tokens: int) -> dict:
    """The summary of a complete run: summary.json, or, when a kill came between the last
    checkpoint and writing it, rebuilt from the metrics log and written."""
    path = run_dir / SUMMARY_FILE
    if path.exists():
        return read_json(path, CheckpointError, "run summary")
    rows = read_metrics(run_dir / METRICS_FILE)
    val_losses = [r["val_loss"] for r in rows if "val_loss" in r]
    summary = _summary(run_dir, cfg, cfg.run.steps, tokens, rows[-1] if rows else {},
                       val_losses[-1] if val_losses else None)
    atomic_write_json(path, summary)
    return summary


def _logged(per_layer: list[torch.Tensor]) -> list[list[float]]:
    """Per-layer, per-head max logits as the metrics row keeps them (5 decimals; one copy to
    the host per layer)."""
    return [[round(v, 5) for v in t.tolist()] for t in per_layer]


@torch.no_grad()
def _window_max_logits(model: GPT, dataset, step: int, cfg: TrainConfig, dctx, device,
                       current: list[torch.Tensor]) -> list[torch.Tensor]:
    """The ablation ``optim.qk_clip_window = W > 1`` (K2's rule is W = 1): each head's max logit
    over this step's batch and the W-1 batches before it, the earlier ones read again with the
    weights this step's forward used. A clip on this batch alone misses token pairs that a batch
    of a few thousand tokens holds only now and then; the window shows how much of the cap's
    excess that is. The earlier batches come from ``dataset.batch_at``, so a resumed run reads
    the same ones. Costs W-1 forwards a step."""
    out = list(current)
    r = cfg.run
    for back in range(1, cfg.optim.qk_clip_window):
        if step - back < 0:
            break
        x, _ = lab_dist.shard_batch(*dataset.batch_at(step - back, r.batch_size, cfg.model.seq_len), dctx)
        out = [torch.maximum(a, b) for a, b in zip(out, _read_max_logits(model, x.to(device), dctx), strict=True)]
    return out


@torch.no_grad()
def _read_max_logits(model: GPT, x: torch.Tensor, dctx) -> list[torch.Tensor]:
    """Per-head max logits of the model's current weights on batch ``x`` (all ranks' maximum).

    After the update (``max_logits_after``, on clipping steps and steps near tau) it shows where
    the clip put each head. The clip's scale is computed from the forward before the update (as
    in K2), so a head lands on tau up to what that same step's update moved it, and, in deeper
    layers, what the layers below changed.
    """
    model(x)  # training mode: the forward tracks max logits (no dropout, no RNG use)
    return lab_dist.max_across([t.clone() for t in model.max_logits()], dctx)
