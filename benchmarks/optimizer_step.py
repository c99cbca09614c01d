"""Optimizer step time on a GPT-like shape set: each MuonClip form vs torch.optim.Muon vs AdamW.

Prints one JSON line. Everything is measured in one process, in interleaved rounds, with
medians, because timing noise on small shared CPUs is large; the JSON names the CPU, its
bf16 flags and torch's CPU capability beside every figure.

Shape set (facts §5): d=256, 4 layers, each layer 4x(d,d) + (4d,d) + (d,4d) = 3.1M params
(``--d`` and ``--layers`` change it; the tests run it at toy size so it cannot rot).

Per MuonClip form (``forms``): step ms; the FLOPs its Newton-Schulz runs (``ns_gflop``: the
Gram form needs fewer than the direct one); ``own_bound_ms``, those FLOPs at the rate of one
1024^3 matmul in the form's dtype measured in the same rounds; ``over_direct_bound``, the step
over the bound of the *direct* form's FLOPs (the acceptance ratio); and, under ``accuracy``,
its relative distance to a float64 NS5 on Gaussian and on ill-conditioned inputs (singular
values log-spaced to 1e-3 and 1e-6), beside torch.optim.Muon's (run through its public API).

Children: the same measurement in a process capped to AVX2 (``avx2_only``: bf16 emulated,
as on CPUs without native bf16), and on a CPU with AMX one capped to AVX512-BF16
(``avx512_bf16_no_amx``: the bf16 kernels of e.g. AMD Zen 4). Where the CPU lacks native bf16,
bf16 rows are emulated (~100x slower than fp32) and timed --slow-repeats times only.
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
from muonclip.optim import ns_forms
from muonclip.optim.orthogonalizers import ORTHOGONALIZERS
from muonclip.optim.precision import cpu_bf16_flags, cpu_has_native_bf16, resolve_ns_dtype
from muonclip.optim.reference import ill_conditioned, reference_orthogonalize

# Capping the ISA reproduces other CPUs (facts §5); both oneDNN (matmul) and ATen honour these.
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
NO_AMX_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
NS5 = ORTHOGONALIZERS["ns5"].schedule(5)
# The issue #22 acceptance ratios, read by the "met" block.
TARGETS = {"native_bf16": {"torch_muon_over_muonclip_auto_min": 1.5, "auto_over_direct_bf16_bound_max": 1.15},
           "fp32_over_direct_fp32_bound_max": 1.0, "avx2_only_torch_muon_over_muonclip_auto_min": 50.0}
# name -> (ns_precision, ns_impl) of each MuonClip form timed
FORMS = {
    "muonclip_auto": ("auto", "auto"),
    "muonclip_fp32": ("fp32", "auto"),  # Gram for the (d, 4d) matrices, direct for the square ones
    "muonclip_fp32_direct": ("fp32", "direct"),
    "muonclip_bf16": ("bf16", "auto"),  # direct: the Gram form is not run in bf16
}


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


def form_gflop(shapes, precision: str, impl: str) -> float:
    """The FLOPs the form's Newton-Schulz actually runs on the shape set."""
    dtype = resolve_ns_dtype(precision, "cpu")
    return sum(ns_forms.ns_flops(n, m, gram=ns_forms.ns_form(n, m, impl, NS5, dtype) == "gram")
               for n, m in shapes) / 1e9


def _peer_torch_muon(G: torch.Tensor) -> torch.Tensor:
    """torch.optim.Muon's orthogonalised matrix through its public API: momentum 0, lr 1, no
    decay, from a zero parameter, so the parameter ends at -scale NS(G)."""
    outs = []
    for g in G:
        p = nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        torch.optim.Muon([p], lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False).step()
        outs.append(-p.detach() / max(1.0, g.shape[0] / g.shape[1]) ** 0.5)
    return torch.stack(outs)


def accuracy(d: int = 256) -> dict:
    """Relative distance to float64 NS5 of every form and of torch.optim.Muon, per input, plus
    the singular-value band on the Gaussian input. The bf16 Gram form is computed directly
    from :mod:`muonclip.optim.ns_forms` to show why the optimizer refuses it."""
    g = torch.Generator().manual_seed(1)
    inputs = {"gaussian": torch.randn(16, d, 4 * d, generator=g),
              "log1e-3": ill_conditioned(4, d, 4 * d, -3, g).float(),
              "log1e-6": ill_conditioned(4, d, 4 * d, -6, g).float()}
    out: dict = {}
    for name, G in inputs.items():
        ref = reference_orthogonalize(G, expert_stack=True)
        forms = {
            "fp32_direct": ns_forms.newton_schulz_batch([G], NS5, "direct", torch.float32),
            "fp32_gram": ns_forms.newton_schulz_batch([G], NS5, "gram", torch.float32),
        }
        forms["bf16_direct"] = ns_forms.newton_schulz_batch([G], NS5, "direct", torch.bfloat16)
        forms["bf16_gram_refused"] = ns_forms.quintic_gram(ns_forms.normalized_batch([G], torch.bfloat16), NS5)
        if hasattr(torch.optim, "Muon"):
            forms["torch_muon"] = _peer_torch_muon(G)
        out[name] = {k: float(f"{float((v.double() - ref).norm() / ref.norm()):.3e}") for k, v in forms.items()}
        if name == "gaussian":
            out["band_gaussian"] = {k: [round(float(s.min()), 4), round(float(s.max()), 4)]
                                    for k in ("fp32_direct", "bf16_direct") if k in forms
                                    for s in [torch.linalg.svdvals(forms[k][0].double())]}
    return out


def measure(args) -> dict:
    torch.manual_seed(0)
    shapes = shape_set(args.d, args.layers)
    native = cpu_has_native_bf16()
    opts: dict = {name: MuonClip(make_params(shapes), lr=0.02, weight_decay=0.1, ns_precision=prec, ns_impl=impl)
                  for name, (prec, impl) in FORMS.items()}
    opts["adamw"] = torch.optim.AdamW(make_params(shapes), lr=3e-3, weight_decay=0.1)
    if hasattr(torch.optim, "Muon") and not args.skip_torch_muon:
        opts["torch_muon"] = torch.optim.Muon(make_params(shapes), lr=0.02, weight_decay=0.1)
    # bf16 NS is emulated without native bf16: time those rows only --slow-repeats times.
    slow = {"torch_muon"} if not native else set()
    if not native:
        slow |= {name for name, (prec, _) in FORMS.items() if resolve_ns_dtype(prec, "cpu") == torch.bfloat16}

    times: dict[str, list[float]] = {k: [] for k in opts}
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for opt in opts.values():  # warm-up: state, workspaces and oneDNN kernels are created here
        opt.step()
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
    rate = {k: statistics.median(v) for k, v in rates.items()}
    ms = {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items() if v}
    direct_gflop = sum(muon_math.ns_flops(n, m) for n, m in shapes) / 1e9
    bound = {k: direct_gflop / rate[k] * 1e3 for k in rate}  # direct-form FLOPs at each rate

    forms = {}
    for name, (prec, impl) in FORMS.items():
        key = "bf16" if resolve_ns_dtype(prec, "cpu") == torch.bfloat16 else "fp32"
        gflop = form_gflop(shapes, prec, impl)
        forms[name] = {"ns_dtype": key, "step_ms": ms[name], "ns_gflop": round(gflop, 2),
                       "own_bound_ms": round(gflop / rate[key] * 1e3, 2),
                       "over_direct_bound": round(ms[name] / bound[key], 3)}
    auto = forms["muonclip_auto"]
    torch_ratio = round(ms["torch_muon"] / ms["muonclip_auto"], 2) if "torch_muon" in ms else None
    result = {
        "benchmark": "optimizer_step",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_flags": list(cpu_bf16_flags()),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "native_bf16": native,
        "auto_precision": auto["ns_dtype"],
        "shape_set": {"d": args.d, "layers": args.layers},
        "matrix_params": sum(n * m for n, m in shapes),
        "matmul_n": args.matmul_n,
        "matmul_gflops": {k: round(v, 1) for k, v in rate.items()},
        "direct_ns5_gflop": round(direct_gflop, 2),
        "direct_ns5_bound_ms": {k: round(v, 2) for k, v in bound.items()},
        "step_ms": ms,
        "forms": forms,
        "torch_muon_over_muonclip_auto": torch_ratio,
        "muonclip_auto_over_adamw": round(ms["muonclip_auto"] / ms["adamw"], 2),
        "targets": TARGETS,
    }
    if native:
        result["met"] = {
            "torch_muon_over_auto": torch_ratio is not None and torch_ratio >= TARGETS["native_bf16"][
                "torch_muon_over_muonclip_auto_min"],
            "auto_over_direct_bf16_bound": auto["over_direct_bound"] <= TARGETS["native_bf16"][
                "auto_over_direct_bf16_bound_max"],
            "fp32_over_direct_fp32_bound": forms["muonclip_fp32"]["over_direct_bound"] <= TARGETS[
                "fp32_over_direct_fp32_bound_max"],
        }
    if not args.skip_accuracy:
        result["accuracy"] = accuracy(args.d)
    if args.breakdown:
        result["breakdown_ms"] = breakdown(args.repeats, ["fp32", "bf16"] if native else ["fp32"], args.d, args.layers)
    return result


def breakdown(repeats: int, precisions: list[str], d: int = 256, layers: int = 4) -> dict:
    """Where one MuonClip step's time goes, per phase, on the same shape set (medians,
    interleaved), with the optimizer's own buffers: the finiteness check of every gradient,
    momentum (into reused buffers), normalisation, Newton-Schulz per precision and shape, the
    weight update; and the rate of the batched products NS5 runs on."""
    shapes = shape_set(d, layers)
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(s, generator=g) for s in shapes]
    bufs = [torch.zeros(s) for s in shapes]
    params = [torch.randn(s, generator=g) * 0.02 for s in shapes]
    outs = [torch.empty(s) for s in shapes]
    updates = muon_math.muon_momentum_(bufs, grads, 0.95, True, out=outs)
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    for u in updates:
        groups.setdefault(tuple(u.shape), []).append(u.unsqueeze(0))
    phases = {
        "finite_check": lambda: bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()),
        "momentum": lambda: muon_math.muon_momentum_(bufs, grads, 0.95, True, out=outs),
    }
    for p in precisions:
        dtype = resolve_ns_dtype(p, "cpu")
        ws = ns_forms.Workspace()
        phases[f"normalize_{p}"] = (lambda dtype=dtype, ws=ws: [ns_forms.normalized_batch(m, dtype, 1.0, ws)
                                                                for m in groups.values()])
        for shape, mats in groups.items():
            x0 = ns_forms.normalized_batch(mats, dtype).clone()
            form = ns_forms.ns_form(*shape, "auto", NS5, dtype)

            def ns(x0=x0, ws=ws, form=form):
                x = ws.get("x0", x0.shape, x0)
                x.copy_(x0)
                return ns_forms.quintic_gram(x, NS5, ws) if form == "gram" else ns_forms.quintic_direct(x, NS5, ws)
            phases[f"ns_{p}_{shape[0]}x{shape[1]}_{form}"] = ns
        low = [t.to(dtype) for t in updates]
        phases[f"apply_{p}"] = (lambda low=low: muon_math.apply_updates_(params, low, 0.02, 0.1))
    wide = torch.randn(8, d, 4 * d, generator=g)
    batched = {}
    for p in precisions:
        x = wide.to(resolve_ns_dtype(p, "cpu"))
        phases[f"bmm_{p}"] = (lambda x=x: torch.bmm(x, x.mT))
        batched[p] = 2 * 8 * d * d * 4 * d
    times: dict[str, list[float]] = {k: [] for k in phases}
    for fn in phases.values():
        fn()
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


_CHILD_KEYS = ("cpu_capability", "onednn_max_cpu_isa", "native_bf16", "auto_precision", "step_ms", "forms",
               "matmul_gflops", "direct_ns5_bound_ms", "torch_muon_over_muonclip_auto")


def _child(args, env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats), "--slow-repeats",
           str(args.slow_repeats), "--threads", str(args.threads), "--skip-accuracy", "--d", str(args.d),
           "--layers", str(args.layers), "--matmul-n", str(args.matmul_n)]
    if args.skip_torch_muon:
        cmd.append("--skip-torch-muon")
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: child[k] for k in _CHILD_KEYS}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9, help="timed steps per optimizer (median reported)")
    ap.add_argument("--slow-repeats", type=int, default=2,
                    help="timed steps for rows with emulated bf16 (CPUs without native bf16; ~10 s each)")
    ap.add_argument("--skip-torch-muon", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip the float64 accuracy comparison")
    ap.add_argument("--no-children", action="store_true",
                    help="skip the measurements in child processes capped to AVX2 and (on AMX CPUs) to AVX512-BF16")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default); the acceptance figures use 2")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the step's phases (checks, momentum, normalisation, NS per shape, update)")
    ap.add_argument("--d", type=int, default=256, help="model width of the shape set (default 256, facts §5)")
    ap.add_argument("--layers", type=int, default=4, help="layers of the shape set (default 4)")
    ap.add_argument("--matmul-n", type=int, default=1024,
                    help="size of the square matmul whose rate defines the bounds (default 1024)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if min(args.d, args.layers, args.repeats, args.matmul_n) < 1 or args.slow_repeats < 1 or args.threads < 0:
        ap.error("--d, --layers, --repeats, --slow-repeats and --matmul-n must be >= 1, --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    if not args.child and not args.no_children:
        result["avx2_only"] = _child(args, AVX2_ENV)
        if "amx_bf16" in cpu_bf16_flags() and not os.environ.get("ONEDNN_MAX_CPU_ISA"):
            result["avx512_bf16_no_amx"] = _child(args, NO_AMX_ENV)
        a2 = result["avx2_only"]["torch_muon_over_muonclip_auto"]
        result.setdefault("met", {})["avx2_only_torch_muon_over_auto"] = (
            a2 is not None and a2 >= TARGETS["avx2_only_torch_muon_over_muonclip_auto_min"])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
