"""The trade-off experiment: does a low QK-Clip tau hurt a task that needs sharp attention?

The task is synthetic tool selection. A prompt is ``seq_len`` tokens: distractor words and
exactly one keyword, then a query marker ``?``. Keyword ``i`` means tool ``i``; at the marker
the model must output the tool token. Nothing but the keyword tells the answer, so the model
has to find it among the distractors by attention.

Two arms train the same tiny GPT from the same init on the same batches: MuonClip with a low
tau and vanilla Muon (no clip). At snapshot steps we measure, on fixed probe prompts, the
softmax attention from the marker position (``model.attention_logits`` softmaxed) to the
keyword and to each distractor, held-out accuracy, and the max logit. The conclusion is
whatever these numbers show; :func:`muonclip.reproduce.results.tradeoff_summary` states it.

Deterministic: seeded init, seeded batches, single-threaded math is not required. Results
are cached by config hash (``CACHE/tradeoff-HASH/result.json``) like the lab runs; the story
asks for them through :func:`ensure_tradeoff` and only draws them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional

from ..config import check, config_hash, validate_fields
from ..io import atomic_write_json
from ..models import GPT, GPTConfig
from ..optim import MuonClip, build_param_groups
from ..optim.precision import NsPrecision
from ..viz.style import fmt_g

__all__ = ["TradeoffConfig", "QUICK", "FULL", "SWEEP", "SWEEP_TAUS", "SWEEP_SEQ_LENS", "SWEEP_QUICK",
           "SWEEP_QUICK_TAUS", "SWEEP_QUICK_SEQ_LENS", "make_prompts", "run_arm",
           "run_tradeoff", "ensure_tradeoff", "sweep_plan", "run_sweep", "ensure_tradeoff_sweep", "sweep_dir",
           "tradeoff_dir"]


@dataclass(frozen=True)
class TradeoffConfig:
    """The task, the model, the training of both arms and what is measured; :meth:`hash` names the cache."""

    _section = "tradeoff"

    # the task
    n_tools: int = 8
    n_distractors: int = 48
    seq_len: int = 16           # prompt words before the "?" marker
    # the model
    d_model: int = 32
    n_layer: int = 2
    n_head: int = 4
    # training (both arms)
    batch_size: int = 64
    steps: int = 400
    # the optimizers: Muon for the hidden matrices, AdamW for the rest; QK-Clip in one arm
    lr: float = 0.02
    adamw_lr: float = 3e-3
    weight_decay: float = 0.0
    tau: float = 2.0            # the "low" tau of the clipped arm
    ns_precision: NsPrecision = "fp32"  # the same run on every CPU (auto: bf16 where native)
    # measurement
    snapshot_every: int = 20
    n_probe: int = 64
    n_eval: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        validate_fields(self)
        for name in ("n_tools", "n_distractors", "seq_len", "d_model", "n_layer", "n_head", "batch_size", "steps",
                     "snapshot_every", "n_probe", "n_eval"):
            check(getattr(self, name) > 0, f"tradeoff.{name} must be positive, got {getattr(self, name)}")
        check(self.tau > 0, f"tradeoff.tau must be positive, got {self.tau}")

    @property
    def vocab_size(self) -> int:
        return 1 + 2 * self.n_tools + self.n_distractors

    def hash(self) -> str:
        return config_hash(self)


FULL = TradeoffConfig()
QUICK = dataclasses.replace(FULL, steps=160, snapshot_every=10, n_eval=256)

# Token ids: 0 = "?" marker, then tools, keywords, distractors.
QUERY = 0


def token_names(cfg: TradeoffConfig) -> list[str]:
    names = ["?"] + [f"T{i}" for i in range(cfg.n_tools)] + [f"K{i}" for i in range(cfg.n_tools)]
    return names + [f"d{i}" for i in range(cfg.n_distractors)]


def make_prompts(cfg: TradeoffConfig, n: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(idx [n, seq_len+1], target tool token [n], keyword position [n])``."""
    first_d = 1 + 2 * cfg.n_tools
    words = torch.randint(first_d, first_d + cfg.n_distractors, (n, cfg.seq_len), generator=generator)
    tools = torch.randint(0, cfg.n_tools, (n,), generator=generator)
    pos = torch.randint(0, cfg.seq_len, (n,), generator=generator)
    words[torch.arange(n), pos] = 1 + cfg.n_tools + tools
    idx = torch.cat([words, torch.full((n, 1), QUERY, dtype=torch.long)], dim=1)
    return idx, 1 + tools, pos


def _build(cfg: TradeoffConfig, clip: bool):
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, seq_len=cfg.seq_len + 1))
    groups = build_param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, adamw_lr=cfg.adamw_lr)
    opt = MuonClip(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, ns_precision=cfg.ns_precision,
                   qk_clip_tau=cfg.tau if clip else None,
                   qk_clip_spec=model.qk_clip_spec() if clip else None,
                   max_logits_fn=model.max_logits if clip else None)
    return model, opt


@torch.no_grad()
def _measure(model, cfg: TradeoffConfig, probe, evalset) -> dict:
    was = model.training
    model.eval()
    try:
        idx, target, pos = evalset
        logits, _ = model(idx)
        pred = logits[:, -1, 1:1 + cfg.n_tools].argmax(-1) + 1
        accuracy = float((pred == target).float().mean())
        pidx, _, ppos = probe
        att_logits = model.attention_logits(pidx)  # per layer [B, H, T, T]
        rows = [torch.softmax(a[:, :, -1, :], dim=-1) for a in att_logits]  # [B, H, T] from the marker
        att = torch.stack(rows, dim=1)  # [B, L, H, T]
        B, L, H, T = att.shape
        kw = att[torch.arange(B), :, :, ppos]  # [B, L, H]
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[torch.arange(B), ppos] = False
        mask[:, -1] = False  # the marker itself is neither keyword nor distractor
        dist = (att * mask[:, None, None, :]).sum(-1) / mask.sum(-1)[:, None, None]  # mean per distractor
        kw_mean, dist_mean = kw.mean(0), dist.mean(0)  # [L, H]
        margin = kw_mean - dist_mean
        best = int(torch.argmax(margin.flatten()))
        layer, head = divmod(best, H)
        max_logit = max(float(a[torch.isfinite(a)].max()) for a in att_logits)
        eval_loss = float(functional.cross_entropy(logits[:, -1, :], target))
        return {
            "accuracy": accuracy,
            "eval_loss": eval_loss,
            "keyword_attention": float(kw_mean[layer, head]),
            "distractor_attention": float(dist_mean[layer, head]),
            "margin": float(margin[layer, head]),
            "best_head": [layer, head],
            "keyword_attention_by_head": kw_mean.tolist(),
            "probe_attention": att[0, layer, head].tolist(),
            "max_logit": max_logit,
        }
    finally:
        model.train(was)


def run_arm(cfg: TradeoffConfig, clip: bool, *, progress: Callable[[int], None] | None = None) -> dict:
    """Train one arm and return its snapshots (list of dicts, one per snapshot step)."""
    model, opt = _build(cfg, clip)
    g_eval = torch.Generator().manual_seed(cfg.seed + 1)
    evalset = make_prompts(cfg, cfg.n_eval, g_eval)
    probe = make_prompts(cfg, cfg.n_probe, torch.Generator().manual_seed(cfg.seed + 2))
    g_train = torch.Generator().manual_seed(cfg.seed + 3)
    snaps = [{"step": 0, "loss": None, "n_clipped": 0, **_measure(model, cfg, probe, evalset)}]
    clipped_steps = 0
    model.train()
    for step in range(1, cfg.steps + 1):
        idx, target, _ = make_prompts(cfg, cfg.batch_size, g_train)
        logits, _ = model(idx)
        loss = functional.cross_entropy(logits[:, -1, :], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats = getattr(opt, "last_qk_clip", None) if clip else None
        n_clipped = stats.n_clipped if stats else 0
        clipped_steps += bool(n_clipped)
        if step % cfg.snapshot_every == 0 or step == cfg.steps:
            snaps.append({"step": step, "loss": float(loss.detach()), "n_clipped": n_clipped,
                          **_measure(model, cfg, probe, evalset)})
        if progress:
            progress(1)
    return {"snapshots": snaps, "clipped_steps": clipped_steps}


def run_tradeoff(cfg: TradeoffConfig, *, progress: Callable[[int], None] | None = None) -> dict:
    """Both arms; a JSON-able result with the probe prompt 0 for pictures."""
    t0 = time.perf_counter()
    arms = []
    for clip, optimizer, label in ((True, "muonclip", f"MuonClip (tau = {fmt_g(cfg.tau)})"),
                                   (False, "muon", "Muon (no clip)")):
        arm = run_arm(cfg, clip, progress=progress)
        arms.append({"label": label, "optimizer": optimizer, "clip": clip, **arm})
    probe_idx, _, probe_pos = make_prompts(cfg, cfg.n_probe, torch.Generator().manual_seed(cfg.seed + 2))
    names = token_names(cfg)
    return {
        "config": dataclasses.asdict(cfg),
        "config_hash": cfg.hash(),
        "arms": arms,
        "probe_text": [names[int(t)] for t in probe_idx[0]],
        "probe_keyword_pos": int(probe_pos[0]),
        "seconds": time.perf_counter() - t0,
    }


# The sweep that looks for the edge: tau from very low to none (None = vanilla Muon) against
# difficulty, the number of words the keyword hides among (longer prompts need a sharper
# softmax: a share p of attention on one of L words needs a logit gap of ln(p (L - 1) / (1 - p))).
SWEEP_TAUS: tuple[float | None, ...] = (0.5, 1.0, 2.0, 4.0, None)
SWEEP_SEQ_LENS: tuple[int, ...] = (16, 32, 64)
# One snapshot at the end: the measurement passes, not training, dominate long prompts.
SWEEP = dataclasses.replace(FULL, steps=300, snapshot_every=300, n_eval=256, n_probe=32)
# --quick: two taus x two lengths, 80 steps each (a smoke test of the pipeline, not a finding)
SWEEP_QUICK = dataclasses.replace(FULL, steps=80, snapshot_every=80, n_eval=128, n_probe=16)
SWEEP_QUICK_TAUS: tuple[float | None, ...] = (0.5, None)
SWEEP_QUICK_SEQ_LENS: tuple[int, ...] = (16, 32)


def sweep_plan(quick: bool) -> tuple[TradeoffConfig, tuple[float | None, ...], tuple[int, ...]]:
    """``(config, taus, prompt lengths)`` of the sweep, full or ``--quick``."""
    if quick:
        return SWEEP_QUICK, SWEEP_QUICK_TAUS, SWEEP_QUICK_SEQ_LENS
    return SWEEP, SWEEP_TAUS, SWEEP_SEQ_LENS


def run_sweep(cfg: TradeoffConfig, taus=SWEEP_TAUS, seq_lens=SWEEP_SEQ_LENS, *,
              progress: Callable[[int], None] | None = None) -> dict:
    """One arm per (seq_len, tau) cell, same init and batch seeds; the last snapshot of each."""
    t0 = time.perf_counter()
    cells = []
    for seq_len in seq_lens:
        for tau in taus:
            cell_cfg = dataclasses.replace(cfg, seq_len=seq_len, tau=tau if tau is not None else cfg.tau)
            arm = run_arm(cell_cfg, clip=tau is not None, progress=progress)
            last = arm["snapshots"][-1]
            cells.append({"seq_len": seq_len, "tau": tau, "clipped_steps": arm["clipped_steps"],
                          **{k: last[k] for k in ("accuracy", "eval_loss", "keyword_attention",
                                                  "distractor_attention", "margin", "max_logit", "loss")}})
    return {"config": dataclasses.asdict(cfg), "config_hash": cfg.hash(), "taus": list(taus),
            "seq_lens": list(seq_lens), "cells": cells, "seconds": time.perf_counter() - t0}


def _read_cached(path: Path) -> dict | None:
    """A cached result, or None when absent or damaged (then it is computed again)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def sweep_dir(cfg: TradeoffConfig, cache_dir: str | Path, taus=SWEEP_TAUS, seq_lens=SWEEP_SEQ_LENS) -> Path:
    """Where :func:`ensure_tradeoff_sweep` caches this sweep (``result.json`` in it once computed)."""
    spec = json.dumps({"cfg": cfg.hash(), "taus": list(taus), "seq_lens": list(seq_lens)}, sort_keys=True)
    return Path(cache_dir) / f"tradeoff-sweep-{hashlib.sha256(spec.encode('utf-8')).hexdigest()[:12]}"


def tradeoff_dir(cfg: TradeoffConfig, cache_dir: str | Path) -> Path:
    """Where :func:`ensure_tradeoff` caches ``cfg``'s result (``result.json`` in it once computed)."""
    return Path(cache_dir) / f"tradeoff-{cfg.hash()}"


def ensure_tradeoff_sweep(cfg: TradeoffConfig, cache_dir: str | Path, taus=SWEEP_TAUS, seq_lens=SWEEP_SEQ_LENS, *,
                          git_sha: str | None = None,
                          progress: Callable[[int], None] | None = None) -> tuple[dict, Path]:
    """The cached sweep (``cache_dir/tradeoff-sweep-HASH/result.json``), computing it if absent."""
    run_dir = sweep_dir(cfg, cache_dir, taus, seq_lens)
    path = run_dir / "result.json"
    cached = _read_cached(path)
    if cached is not None:
        return cached, run_dir
    result = run_sweep(cfg, taus, seq_lens, progress=progress)
    result["run_id"] = run_dir.name
    result["git_sha"] = git_sha
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    return result, run_dir


def ensure_tradeoff(cfg: TradeoffConfig, cache_dir: str | Path, *, git_sha: str | None = None,
                    progress: Callable[[int], None] | None = None) -> tuple[dict, Path]:
    """The cached result for ``cfg`` (``cache_dir/tradeoff-HASH/result.json``), computing it if absent."""
    run_dir = tradeoff_dir(cfg, cache_dir)
    path = run_dir / "result.json"
    cached = _read_cached(path)
    if cached is not None:
        return cached, run_dir
    result = run_tradeoff(cfg, progress=progress)
    result["run_id"] = run_dir.name
    result["git_sha"] = git_sha
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    return result, run_dir

