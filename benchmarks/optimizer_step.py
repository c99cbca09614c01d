"""Optimizer step time on a GPT-like shape set: MuonClip per precision vs torch.optim.Muon vs AdamW.

Prints one JSON line. Everything is measured in one process, interleaved, with medians,
because timing noise on small shared CPUs is large. The JSON names the CPU and its bf16
capability beside every figure.

Shape set (facts §5): d=256, 4 layers, each layer 4x(d,d) + (4d,d) + (d,4d) = 3.1M params
(``--d`` and ``--layers`` change it; the tests run it at toy size so it cannot rot).
Bounds: the NS5 FLOPs of the shape set (15 GEMMs per matrix, direct form) at the rate of one
1024^3 matmul in fp32 and in bf16, measured here.
Accuracy per mode: relative Frobenius distance of the orthogonalised output to a float64 NS5
on a 16x256x1024 Gaussian batch, and the singular-value band on Gaussian and ill-conditioned
inputs.

Where the CPU lacks native bf16 (AVX2-only), bf16 matmuls are emulated (~100x slower than
fp32), so the bf16 rows are timed with --slow-repeats only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from muonclip import MuonClip
from muonclip.optim import functional as muon_math
from muonclip.optim.precision import cpu_bf16_flags, cpu_has_native_bf16, resolve_ns_dtype
from muonclip.optim.reference import reference_orthogonalize

# Capping the ISA to AVX2 reproduces CPUs without native bf16 (facts §5), where
# torch.optim.Muon's bf16 Newton-Schulz is emulated. Both oneDNN (matmul) and ATen honour these.
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def shape_set(d: int = 256, n_layer: int = 4) -> list[tuple[int, int]]:
    return [s for _ in range(n_layer) for s in [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)]]


def make_params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def matmul_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 7) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def accuracy(precisions: list[str]) -> dict:
    """Distance to float64 NS5 and singular-value bands, per precision."""
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(16, 256, 1024, generator=g)
    ref = reference_orthogonalize(batch, expert_stack=True)
    U, _ = torch.linalg.qr(torch.randn(256, 256, generator=g))
    V, _ = torch.linalg.qr(torch.randn(1024, 256, generator=g))
    ill = (U * torch.logspace(0, -3, 256)) @ V.T
    out = {}
    for precision in precisions:
        dtype = resolve_ns_dtype(precision, "cpu")
        o = muon_math.newton_schulz(batch, dtype=dtype)
        s_gauss = torch.linalg.svdvals(o[0].double())
        s_ill = torch.linalg.svdvals(muon_math.newton_schulz(ill, dtype=dtype).double())
        out[precision] = {
            "dtype": str(dtype).replace("torch.", ""),
            "rel_dist_to_fp64_ns5": float(f"{float((o.double() - ref).norm() / ref.norm()):.2e}"),
            "band_gaussian": [round(float(s_gauss.min()), 4), round(float(s_gauss.max()), 4)],
            "band_ill_conditioned": [round(float(s_ill.min()), 4), round(float(s_ill.max()), 4)],
        }
    return out


def measure(args) -> dict:
    torch.manual_seed(0)
    shapes = shape_set(args.d, args.layers)
    native = cpu_has_native_bf16()
    opts = {
        "muonclip_auto": MuonClip(make_params(shapes), lr=0.02, weight_decay=0.1),
        "muonclip_fp32": MuonClip(make_params(shapes), lr=0.02, weight_decay=0.1, ns_precision="fp32"),
        "muonclip_fp32_direct": MuonClip(make_params(shapes), lr=0.02, ns_precision="fp32", ns_impl="direct"),
        "muonclip_bf16": MuonClip(make_params(shapes), lr=0.02, weight_decay=0.1, ns_precision="bf16"),
        # not a default anywhere (2e-2 to 9e-2 from float64 NS5, docs/performance.md); timed so
        # a native-bf16 run shows what its 38% fewer FLOPs on the (d, 4d) matrices buy
        "muonclip_bf16_gram": MuonClip(make_params(shapes), lr=0.02, weight_decay=0.1, ns_precision="bf16",
                                       ns_impl="gram"),
        "adamw": torch.optim.AdamW(make_params(shapes), lr=3e-3, weight_decay=0.1),
    }
    if hasattr(torch.optim, "Muon") and not args.skip_torch_muon:
        opts["torch_muon"] = torch.optim.Muon(make_params(shapes), lr=0.02, weight_decay=0.1)
    # bf16 NS is emulated without native bf16: time those rows only --slow-repeats times.
    slow = {"torch_muon"} | (set() if native else {"muonclip_bf16", "muonclip_bf16_gram"})
    if not native and resolve_ns_dtype("auto", "cpu") == torch.bfloat16:
        slow.add("muonclip_auto")

    times: dict[str, list[float]] = {k: [] for k in opts}
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for opt in opts.values():  # warm-up
        opt.step()
    for r in range(args.repeats):
        # the matmul rates that define the bounds are sampled in the same rounds as the steps,
        # so a change in machine load moves both sides of each ratio alike
        rates["fp32"].append(matmul_gflops(torch.float32, args.matmul_n, repeats=3))
        if native or r < args.slow_repeats:
            rates["bf16"].append(matmul_gflops(torch.bfloat16, args.matmul_n, repeats=3 if native else 1))
        for name, opt in opts.items():
            if name in slow and r >= args.slow_repeats:
                continue
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    fp32_rate = statistics.median(rates["fp32"])
    bf16_rate = statistics.median(rates["bf16"])
    ms = {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items() if v}

    ns5_flops = sum(muon_math.ns_flops(n, m) for n, m in shapes)
    fp32_bound = ns5_flops / (fp32_rate * 1e9) * 1e3
    bf16_bound = ns5_flops / (bf16_rate * 1e9) * 1e3
    auto_dtype = resolve_ns_dtype("auto", "cpu")
    default_bound = bf16_bound if auto_dtype == torch.bfloat16 else fp32_bound
    result = {
        "benchmark": "optimizer_step",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_flags": list(cpu_bf16_flags()),
        "native_bf16": native,
        "auto_precision": str(auto_dtype).replace("torch.", ""),
        "shape_set": {"d": args.d, "layers": args.layers},
        "matrix_params": sum(n * m for n, m in shapes),
        "matmul_n": args.matmul_n,
        "step_ms": ms,
        "matmul_gflops": {"fp32": round(fp32_rate, 1), "bf16": round(bf16_rate, 1)},
        "ns5_gflop": round(ns5_flops / 1e9, 2),
        "ns5_bound_ms": {"fp32": round(fp32_bound, 1), "bf16": round(bf16_bound, 1)},
        "over_bound": {
            "fp32": round(ms["muonclip_fp32"] / fp32_bound, 3),
            "bf16": round(ms["muonclip_bf16"] / bf16_bound, 3),
            "bf16_gram": round(ms["muonclip_bf16_gram"] / bf16_bound, 3),
            "auto": round(ms["muonclip_auto"] / default_bound, 3),
        },
        "torch_muon_over_muonclip_auto": (round(ms["torch_muon"] / ms["muonclip_auto"], 2)
                                          if "torch_muon" in ms else None),
        "muonclip_auto_over_adamw": round(ms["muonclip_auto"] / ms["adamw"], 2),
        "targets": {"native_bf16": {"torch_muon_over_muonclip_auto_min": 2.0, "bf16_over_bound_max": 1.3},
                    "fp32_over_bound_max": 1.0, "avx2_only_torch_muon_over_muonclip_auto_min": 50.0},
    }
    if not args.skip_accuracy:
        result["accuracy"] = accuracy(["fp32", "bf16"])
    if args.breakdown:
        result["breakdown_ms"] = breakdown(args.repeats, ["fp32", "bf16"] if native else ["fp32"], args.d, args.layers)
    return result


def breakdown(repeats: int, precisions: list[str], d: int = 256, layers: int = 4) -> dict:
    """Where one MuonClip step's time goes, per phase, on the same shape set (medians, interleaved):
    the momentum update, the orthogonalisation per precision, the weight update, and the rate of
    the batched products NS5 runs on (the bound assumes the 1024^3 rate)."""
    shapes = shape_set(d, layers)
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(s, generator=g) for s in shapes]
    bufs = [torch.zeros(s) for s in shapes]
    params = [torch.randn(s, generator=g) * 0.02 for s in shapes]
    updates = muon_math.muon_momentum_(bufs, grads, 0.95, True)
    wide = torch.randn(8, d, 4 * d, generator=g)
    phases = {
        "momentum": lambda: muon_math.muon_momentum_(bufs, grads, 0.95, True),
        "apply": lambda: muon_math.apply_updates_(params, updates, 0.02, 0.1),
        **{f"ns_{p}": (lambda p=p: muon_math.muon_directions(updates, shapes, dtype=resolve_ns_dtype(p, "cpu")))
           for p in precisions},
    }
    batched = {}
    for p in precisions:
        x = wide.to(resolve_ns_dtype(p, "cpu"))
        phases[f"bmm_{p}"] = (lambda x=x: torch.bmm(x, x.mT))
        batched[p] = 2 * 8 * d * d * 4 * d
    times: dict[str, list[float]] = {k: [] for k in phases}
    for fn in phases.values():
        fn()
    for _ in range(repeats):
        for name, fn in phases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    out = {k: round(v, 2) for k, v in ms.items() if not k.startswith("bmm_")}
    out[f"batched_bmm_gflops_8x{d}x{4 * d}x{d}"] = {p: round(batched[p] / (ms[f"bmm_{p}"] / 1e3) / 1e9, 1)
                                                for p in precisions}
    return out


def _avx2_child(args) -> dict:
    cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats), "--slow-repeats",
           str(args.slow_repeats), "--threads", str(args.threads), "--skip-accuracy", "--d", str(args.d),
           "--layers", str(args.layers), "--matmul-n", str(args.matmul_n)]
    if args.skip_torch_muon:
        cmd.append("--skip-torch-muon")
    out = subprocess.run(cmd, env={**os.environ, **AVX2_ENV}, capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    keep = ("cpu_capability", "native_bf16", "auto_precision", "step_ms", "matmul_gflops", "ns5_bound_ms",
            "over_bound", "torch_muon_over_muonclip_auto")
    return {k: child[k] for k in keep}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="timed steps per optimizer (median reported)")
    ap.add_argument("--slow-repeats", type=int, default=2,
                    help="timed steps for rows with emulated bf16 (torch.optim.Muon always; ~10 s each "
                         "on CPUs without native bf16)")
    ap.add_argument("--skip-torch-muon", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip the float64 accuracy comparison")
    ap.add_argument("--no-avx2-regime", action="store_true",
                    help="skip the second measurement in a child process capped to AVX2 (no native bf16)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default); 1 avoids OpenMP thrashing on a shared machine")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the step's phases (momentum, NS per precision, update) and batched bmm rates")
    ap.add_argument("--d", type=int, default=256, help="model width of the shape set (default 256, facts §5)")
    ap.add_argument("--layers", type=int, default=4, help="layers of the shape set (default 4)")
    ap.add_argument("--matmul-n", type=int, default=1024,
                    help="size of the square matmul whose rate defines the bounds (default 1024)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if min(args.d, args.layers, args.repeats, args.matmul_n) < 1:
        ap.error("--d, --layers, --repeats and --matmul-n must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    if not args.child and not args.no_avx2_regime:
        result["avx2_only"] = _avx2_child(args)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
