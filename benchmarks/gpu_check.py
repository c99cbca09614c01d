"""One JSON line of what MuonClip does on a CUDA device: step times, bounds, tracking cost, a short run.

On CUDA (the real check):
  * optimizer step ms on a 1B-class shape set (d=2048, 24 layers: q, k, v, o, up, down per
    layer) for MuonClip in each ns_precision, torch.optim.Muon and AdamW;
  * the bf16 and fp32 NS5 FLOP bounds from measured 4096^3 matmul rates;
  * tracked-over-plain forward time of the lab GPT at T=2048 (exact per-head max logits);
  * 50 steps of the ``dragon`` preset on the device, with its max-logit growth.
On CPU it runs the same code paths at toy size (d=64, 2 layers, T=64, 4 steps) so the tests
keep it from rotting; those numbers say nothing about a GPU.

    python benchmarks/gpu_check.py            # CUDA if available, else the CPU toy run
    python benchmarks/gpu_check.py --toy      # force the toy sizes
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from muonclip import MuonClip
from muonclip.optim import functional as muon_math
from muonclip.optim.precision import cpu_has_native_bf16, resolve_ns_dtype

FULL = {"d": 2048, "layers": 24, "matmul_n": 4096, "seq_len": 2048, "attn_batch": 4, "dragon_steps": 50}
TOY = {"d": 64, "layers": 2, "matmul_n": 256, "seq_len": 64, "attn_batch": 2, "dragon_steps": 4}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def shape_set(d: int, layers: int) -> list[tuple[int, int]]:
    return [s for _ in range(layers) for s in [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)]]


def _params(shapes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter((torch.randn(s, generator=g) * 0.02).to(device)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(device)
    return params


def matmul_tflops(dtype: torch.dtype, n: int, device: torch.device) -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / (_median_ms(lambda: a @ b, device, 5) / 1e3) / 1e12


def optimizer_steps(sizes: dict, device: torch.device, repeats: int) -> dict:
    shapes = shape_set(sizes["d"], sizes["layers"])
    opts = {f"muonclip_{p}": MuonClip(_params(shapes, device), lr=0.02, ns_precision=p)
            for p in ("auto", "fp32", "bf16")}
    opts["adamw"] = torch.optim.AdamW(_params(shapes, device), lr=3e-3, weight_decay=0.1)
    if hasattr(torch.optim, "Muon"):
        opts["torch_muon"] = torch.optim.Muon(_params(shapes, device), lr=0.02, weight_decay=0.1)
    step_ms = {name: round(_median_ms(opt.step, device, repeats), 3) for name, opt in opts.items()}
    ns5_flops = sum(muon_math.ns_flops(n, m) for n, m in shapes)
    rates = {str(dt).replace("torch.", ""): matmul_tflops(dt, sizes["matmul_n"], device)
             for dt in (torch.float32, torch.bfloat16)}
    bounds = {k: round(ns5_flops / (r * 1e12) * 1e3, 3) for k, r in rates.items()}
    return {
        "matrix_params": sum(n * m for n, m in shapes),
        "ns5_tflop": round(ns5_flops / 1e12, 4),
        "matmul_tflops": {k: round(v, 2) for k, v in rates.items()},
        "ns5_bound_ms": bounds,
        "step_ms": step_ms,
        "bf16_over_bound": round(step_ms["muonclip_bf16"] / bounds["bfloat16"], 3),
        "fp32_over_bound": round(step_ms["muonclip_fp32"] / bounds["float32"], 3),
        "torch_muon_over_muonclip_auto": (round(step_ms["torch_muon"] / step_ms["muonclip_auto"], 2)
                                          if "torch_muon" in step_ms else None),
    }


def attention_tracking(sizes: dict, device: torch.device, repeats: int) -> dict:
    """Forward time of the lab GPT with exact max-logit tracking on vs off, same weights."""
    from muonclip.models import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=256, d_model=max(sizes["d"] // 2, 64), n_layer=2, n_head=8,
                    seq_len=sizes["seq_len"])
    model = GPT(cfg).to(device)
    idx = torch.randint(0, 256, (sizes["attn_batch"], sizes["seq_len"]), device=device)
    times = {}
    with torch.no_grad():
        for name, track in (("plain", False), ("tracked", True)):
            model.track_max_logits = track
            times[name] = _median_ms(lambda: model(idx), device, repeats)
    model.track_max_logits = True
    with torch.no_grad():
        model(idx)
        tracked = torch.stack([m.max() for m in model.max_logits()]).max()
        reference = max(float(lg.max()) for lg in model.attention_logits(idx, capped=False))
    return {"plain_ms": round(times["plain"], 3), "tracked_ms": round(times["tracked"], 3),
            "tracked_over_plain": round(times["tracked"] / times["plain"], 3),
            "max_logit_tracked": round(float(tracked), 5), "max_logit_materialised": round(reference, 5)}


def dragon_run(sizes: dict, device: torch.device) -> dict:
    """The first steps of the ``dragon`` preset (vanilla Muon, no decay) on ``device``."""
    from muonclip.lab.presets import get_preset
    from muonclip.lab.train import build_model, build_optimizer, load_dataset

    cfg = get_preset("dragon")
    torch.manual_seed(cfg.run.seed)
    dataset = load_dataset(cfg)
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    model.train()
    maxima, losses = [], []
    t0 = time.perf_counter()
    for step in range(sizes["dragon_steps"]):
        x, y = dataset.batch_at(step, cfg.run.batch_size, cfg.model.seq_len)
        _, loss = model(x.to(device), y.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        maxima.append(float(torch.stack([m.max() for m in model.max_logits()]).max()))
        losses.append(loss.item())
    _sync(device)
    return {"steps": sizes["dragon_steps"], "seconds": round(time.perf_counter() - t0, 2),
            "max_logit_first": round(maxima[0], 3), "max_logit_last": round(maxima[-1], 3),
            "growth": round(maxima[-1] / maxima[0], 2), "loss_first": round(losses[0], 4),
            "loss_last": round(losses[-1], 4)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", action="store_true", help="toy sizes even on CUDA")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per row (median reported)")
    ap.add_argument("--skip-dragon", action="store_true", help="skip the short dragon run")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = TOY if (args.toy or device.type != "cuda") else FULL
    result = {
        "benchmark": "gpu_check",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (toy sizes: not a GPU figure)",
        "torch": torch.__version__,
        "sizes": sizes,
        "auto_precision": str(resolve_ns_dtype("auto", device)).replace("torch.", ""),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "optimizer": optimizer_steps(sizes, device, args.repeats),
        "attention": attention_tracking(sizes, device, args.repeats),
    }
    if not args.skip_dragon:
        result["dragon"] = dragon_run(sizes, device)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
