"""Per-head attention entropy of a finished run, measured from its final checkpoint on validation batches."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io import atomic_write_json
from .checkpoint import load_checkpoint
from .config import load_config
from .train import build_model, load_dataset

__all__ = ["attention_entropy", "ENTROPY_FILE"]

ENTROPY_FILE = "attention_entropy.json"  # listed in rundir.RUN_ARTIFACTS


@torch.no_grad()
def _entropy(model, batches) -> list[list[float]]:
    """Mean over batches and query positions of each head's attention entropy (nats)."""
    total = None
    for x, _ in batches:
        per_layer = []
        for logits in model.attention_logits(x):  # [B, H, T, T], -inf above the diagonal
            p = torch.softmax(logits.float(), dim=-1)
            h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # [B, H, T]
            per_layer.append(h.mean(dim=(0, 2)))
        stacked = torch.stack(per_layer)
        total = stacked if total is None else total + stacked
    return (total / len(batches)).tolist()


def attention_entropy(run_dir: str | Path, *, n_batches: int = 4) -> list[list[float]]:
    """Per layer, per head attention entropy (nats) of the run's final weights on its first
    ``n_batches`` validation batches; ln(T) would be uniform attention over T keys. Cached in
    ``RUN_DIR/attention_entropy.json`` (keyed by the checkpoint's step and ``n_batches``)."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / "checkpoint.pt")
    cache = run_dir / ENTROPY_FILE
    key = {"step": int(state["step"]), "n_batches": n_batches}
    if cache.exists():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["entropy"]
    cfg = load_config(run_dir / "config.json")
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    dataset = load_dataset(cfg, run_dir)
    batches = dataset.val_batches(n_batches, cfg.run.batch_size, cfg.model.seq_len)
    entropy = _entropy(model, batches)
    atomic_write_json(cache, {"key": key, "entropy": entropy})
    return entropy
