"""Training throughput (tokens/s) with exact max-logit tracking on against off.

Prints one JSON line. Both settings train the same model copy-for-copy in one process,
interleaved step by step, and the medians are compared (CPU timing noise is large).
Target: tracking costs at most 10% of tokens/s.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from muonclip.lab import apply_overrides, get_preset
from muonclip.lab.train import build_model, build_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="lab preset whose model and batch are timed")
    ap.add_argument("--optimizer", default="muon", choices=["adamw", "muon"],
                    help="same optimizer for both settings (the clip itself needs tracking, so it is not timed here)")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per setting")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = apply_overrides(get_preset(args.preset), [f"optim.optimizer={args.optimizer}"])
    torch.manual_seed(0)
    base = build_model(cfg)
    models = {"tracked": base, "untracked": copy.deepcopy(base)}
    models["tracked"].track_max_logits = True
    models["untracked"].track_max_logits = False
    opts = {name: build_optimizer(model, cfg) for name, model in models.items()}
    g = torch.Generator().manual_seed(0)
    B, T = cfg.run.batch_size, cfg.model.seq_len
    x = torch.randint(0, cfg.model.vocab_size, (B, T), generator=g)
    y = torch.randint(0, cfg.model.vocab_size, (B, T), generator=g)
    times: dict[str, list[float]] = {k: [] for k in models}

    def step(name: str) -> float:
        model, opt = models[name], opts[name]
        t0 = time.perf_counter()
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for name in models:  # warm-up
        step(name)
    for _ in range(args.steps):
        for name in models:
            times[name].append(step(name))
    tok_s = {k: B * T / statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "train_throughput", "preset": args.preset, "optimizer": args.optimizer,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_tokens": B * T,
        "tokens_per_s": {k: round(v, 1) for k, v in tok_s.items()},
        "tracked_over_untracked": round(tok_s["tracked"] / tok_s["untracked"], 3),
        "target_min_ratio": 0.9,
    }))


if __name__ == "__main__":
    main()
