"""Optimizer step time on a GPT-like shape set: MuonClip vs torch.optim.Muon vs AdamW.

Prints one JSON line. Everything is measured in one process, interleaved, with medians,
because timing noise on small shared CPUs is large.

Shape set (facts §5): d=256, 4 layers, each layer 4x(d,d) + (4d,d) + (d,4d) = 3.1M params.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from muonclip import MuonClip
from muonclip.optim import functional as F


def shape_set(d: int = 256, n_layer: int = 4) -> list[tuple[int, int]]:
    return [s for _ in range(n_layer) for s in [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)]]


def make_params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def svd_range(O: torch.Tensor) -> list[float]:
    s = torch.linalg.svdvals(O.double())
    return [round(float(s.min()), 4), round(float(s.max()), 4)]


# Capping the ISA to AVX2 reproduces CPUs without native bf16 (the class in facts §5), where
# torch.optim.Muon's bf16 Newton-Schulz is emulated. Both oneDNN (matmul) and ATen honour these.
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="timed steps per optimizer (median reported)")
    ap.add_argument("--torch-muon-repeats", type=int, default=3,
                    help="timed torch.optim.Muon steps (~10 s each on CPUs without native bf16)")
    ap.add_argument("--skip-torch-muon", action="store_true")
    ap.add_argument("--no-avx2-regime", action="store_true",
                    help="skip the second measurement in a child process capped to AVX2 (no native bf16)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default); 1 avoids OpenMP thrashing on a shared machine")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    if not args.child and not args.no_avx2_regime:
        result["avx2_only"] = _avx2_child(args)
    print(json.dumps(result))


def _avx2_child(args) -> dict:
    import os
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats),
           "--torch-muon-repeats", str(args.torch_muon_repeats), "--threads", str(args.threads)]
    if args.skip_torch_muon:
        cmd.append("--skip-torch-muon")
    out = subprocess.run(cmd, env={**os.environ, **AVX2_ENV}, capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    keep = ("cpu_capability", "step_ms", "matmul_gflops", "ns5_fp32_bound_ms", "muonclip_over_bound",
            "torch_muon_over_muonclip", "muonclip_over_adamw")
    return {k: child[k] for k in keep}


def measure(args) -> dict:
    torch.manual_seed(0)
    shapes = shape_set()
    n_params = sum(n * m for n, m in shapes)

    ours = make_params(shapes)
    adamw_params = make_params(shapes)
    opts = {
        "muonclip": MuonClip(ours, lr=0.02, weight_decay=0.1),
        "muonclip_polar_express": MuonClip(make_params(shapes), lr=0.02, orthogonalizer="polar_express"),
        "muonclip_direct_ns5": MuonClip(make_params(shapes), lr=0.02, ns_impl="direct"),
        "adamw": torch.optim.AdamW(adamw_params, lr=3e-3, weight_decay=0.1),
    }
    has_torch_muon = hasattr(torch.optim, "Muon") and not args.skip_torch_muon
    if has_torch_muon:
        opts["torch_muon"] = torch.optim.Muon(make_params(shapes), lr=0.02, weight_decay=0.1)

    times: dict[str, list[float]] = {k: [] for k in opts}
    for opt in opts.values():  # warm-up
        opt.step()
    for r in range(args.repeats):
        for name, opt in opts.items():
            if name == "torch_muon" and r >= args.torch_muon_repeats:
                continue
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    rates = [matmul_gflops() for _ in range(3)]
    rate = statistics.median(rates)
    ms = {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items() if v}

    ns5_flops = sum(F.ns_flops(n, m) for n, m in shapes)
    bound_ms = ns5_flops / (rate * 1e9) * 1e3
    g = torch.Generator().manual_seed(1)
    gauss = torch.randn(256, 1024, generator=g)
    U, _ = torch.linalg.qr(torch.randn(256, 256, generator=g))
    V, _ = torch.linalg.qr(torch.randn(1024, 256, generator=g))
    ill = (U * torch.logspace(0, -3, 256)) @ V.T

    result = {
        "benchmark": "optimizer_step",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "matrix_params": n_params,
        "step_ms": ms,
        "matmul_gflops": round(rate, 1),
        "ns5_gflop": round(ns5_flops / 1e9, 2),
        "ns5_fp32_bound_ms": round(bound_ms, 1),
        "muonclip_over_bound": round(ms["muonclip"] / bound_ms, 3),
        "torch_muon_over_muonclip": round(ms["torch_muon"] / ms["muonclip"], 1) if "torch_muon" in ms else None,
        "muonclip_over_adamw": round(ms["muonclip"] / ms["adamw"], 2),
        "singular_values": {
            "ns5_gaussian": svd_range(F.orthogonalize(gauss, "ns5")),
            "ns5_ill_conditioned": svd_range(F.orthogonalize(ill, "ns5")),
            "polar_express_gaussian": svd_range(F.orthogonalize(gauss, "polar_express")),
            "polar_express_ill_conditioned": svd_range(F.orthogonalize(ill, "polar_express")),
        },
        "targets": {"torch_muon_over_muonclip_min": 50, "muonclip_over_bound_max": 1.0},
    }
    return result


if __name__ == "__main__":
    main()
