"""Benchmark: causal attention with exact per-head max-logit tracking vs plain SDPA (CPU, fp32).

Times, interleaved in one process (median of many repeats):
  plain     -- F.scaled_dot_product_attention(is_causal=True), no tracking
  tracked   -- muonclip.models.attention.causal_attention(track=True), the model's path
  separate  -- plain SDPA + a separate materialised (scale * q @ k^T, masked) max pass
for two logit regimes: "init" (q, k ~ N(0, 1): flat logits of order 1, the worst case for
the lse candidate-row pruning, so the blocked full pass runs) and "large" (q, k ~ N(0, 9):
logits of order tens, the regime in which QK-Clip acts). Checks tracked == materialised
max. Also times a whole training forward+backward of the default GPT (d=128, 4 layers,
T=128, B=16) with tracking off and on, since that is the overhead a run actually pays.
Prints one JSON line.

    python benchmarks/attention_max_logit.py [--repeats 40] [--threads N] [--clock wall|cpu]

``--clock cpu`` runs single-threaded and times with the thread's CPU clock: on a shared,
oversubscribed machine wall-clock medians swing by several x (descheduled OpenMP threads
stall every parallel region), while CPU time only counts the work done.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from muonclip.models import GPT, GPTConfig
from muonclip.models.attention import causal_attention, materialised_logits

_CLOCK = time.perf_counter


def _time_interleaved(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up (allocator, kernels)
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved: machine noise hits every variant alike
            t = _CLOCK()
            fn()
            times[name].append(_CLOCK() - t)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def run(B: int, H: int, T: int, D: int, repeats: int, spread: float, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g) * spread
    k = torch.randn(B, H, T, D, generator=g) * spread
    v = torch.randn(B, H, T, D, generator=g)
    scale = 1.0 / math.sqrt(D)

    def plain():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    def tracked():
        return causal_attention(q, k, v, scale, track=True)

    def separate():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        return out, materialised_logits(q, k, scale).amax(dim=(0, 2, 3))

    with torch.no_grad():
        res = tracked()
        ref = separate()[1]
        assert torch.allclose(res.max_logit, ref, rtol=1e-5, atol=1e-6), (res.max_logit, ref)
        assert bool(res.max_logit_exact.all())
        assert torch.allclose(res.out, plain(), rtol=1e-5, atol=1e-6)
        ms = _time_interleaved({"plain": plain, "tracked": tracked, "separate": separate}, repeats)
    return {
        "plain_ms": round(ms["plain"], 3),
        "tracked_ms": round(ms["tracked"], 3),
        "separate_ms": round(ms["separate"], 3),
        "tracked_over_plain": round(ms["tracked"] / ms["plain"], 3),
        "separate_over_plain": round(ms["separate"] / ms["plain"], 3),
        "max_logit": round(float(ref.max()), 3),
    }


def run_train_step(repeats: int, qk_factor: float, batch: int = 16) -> dict:
    """Forward + backward of the default GPT, max-logit tracking off vs on."""
    torch.manual_seed(0)
    cfg = GPTConfig()
    model = GPT(cfg).train()
    with torch.no_grad():  # qk_factor > 1: trained-like large logits
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(qk_factor)
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=torch.Generator().manual_seed(1))

    def step(track: bool):
        def fn():
            model.track_max_logits = track
            model.zero_grad(set_to_none=True)
            _, loss = model(idx, idx.roll(-1, dims=1))
            loss.backward()
        return fn

    ms = _time_interleaved({"untracked": step(False), "tracked": step(True)}, repeats)
    model.track_max_logits = True
    model(idx)
    exact = [L.amax(dim=(0, 2, 3)) for L in model.attention_logits(idx)]
    for t, r in zip(model.max_logits(), exact, strict=False):
        assert torch.allclose(t, r, rtol=1e-5, atol=1e-6), (t, r)
    return {
        "untracked_ms": round(ms["untracked"], 3),
        "tracked_ms": round(ms["tracked"], 3),
        "tracked_over_untracked": round(ms["tracked"] / ms["untracked"], 3),
        "max_logit": round(float(torch.cat(exact).max()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args()
    global _CLOCK
    if args.clock == "cpu":
        _CLOCK = time.thread_time
        args.threads = 1  # the thread CPU clock sees only this thread's work
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = dict(B=args.batch, H=args.heads, T=args.seq, D=args.head_dim)
    out = {"shape": shape, "threads": torch.get_num_threads(), "clock": args.clock, "torch": torch.__version__}
    for regime, spread in (("init", 1.0), ("large", 3.0)):
        out[regime] = run(**shape, repeats=args.repeats, spread=spread)
    for regime, factor in (("init", 1.0), ("large", 12.0)):
        out[f"train_step_{regime}"] = run_train_step(max(5, args.repeats // 4), factor)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
