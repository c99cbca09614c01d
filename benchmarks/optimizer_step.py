"""Optimizer step time on a GPT-like shape set: each MuonClip form vs torch.optim.Muon vs AdamW.

Prints one JSON line. Everything is measured in one process, in interleaved rounds, with
medians, because timing noise on small shared CPUs is large; the JSON names the CPU, its
bf16 flags and torch's CPU capability beside every figure.

Shape set (facts §5): d=256, 4 layers, each layer 4x(d,d) + (4d,d) + (d,4d) = 3.1M params
(``--d`` and ``--layers`` change it; the tests run it at toy size so it cannot rot).

Per MuonClip form (``forms``): step ms; the plans it ran (``plans``: precision and form per
matrix shape, as recorded in the optimizer; ``auto`` chooses them from FLOPs times the rates
its probe measured, ``auto_rates``); the FLOPs its Newton-Schulz runs (``ns_gflop``: Gram
forms need fewer than the direct one); ``own_bound_ms``, those FLOPs at the rate of one
1024^3 matmul in each plan's dtype measured in the same rounds, and ``over_own_bound``;
``over_direct_bound``, the step over the bound of the *direct* form's FLOPs in its dtype.
Under ``accuracy``: each form's relative distance to a float64 NS5 on the four input classes
of ``optim.reference.input_classes`` (worst matrix of 4), beside torch.optim.Muon's (run
through its public API). ``ratios`` gathers the acceptance figures, each with the CPU
capability it was measured under.

Children: the same measurement in a process capped to AVX2 (``avx2_only``: bf16 emulated,
as on CPUs without native bf16), and on a CPU with AMX one capped to AVX512-BF16
(``avx512_bf16_no_amx``: the bf16 kernels of e.g. AMD Zen 4). Where the CPU lacks native bf16,
a form forced into bf16 or fp16 is emulated (~100x slower than fp32) and not timed (``not_timed``;
``--time-emulated`` times it --slow-repeats times), and torch.optim.Muon's bf16 step is timed
--slow-repeats times only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

import muonclip
from muonclip import MuonClip
from muonclip.optim import functional as muon_math
from muonclip.optim import ns_auto, ns_forms
from muonclip.optim.orthogonalizers import ORTHOGONALIZERS
from muonclip.optim.precision import cpu_bf16_flags, cpu_has_native_bf16, resolve_ns_dtype
from muonclip.optim.reference import input_classes, reference_orthogonalize
from muonclip.reproduce.sections.base import cpu_model

# Capping the ISA reproduces other CPUs (facts §5); both oneDNN (matmul) and ATen honour these.
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
NO_AMX_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
NS5 = ORTHOGONALIZERS["ns5"].schedule(5)
# The issue #27 acceptance ratios, read by the "met" block: torch.optim.Muon over the default
# step >= 2.0 on a CPU with AMX, >= 1.5 on other native-bf16 CPUs (Zen 4) and in the AMX-off
# child, >= 50 in the AVX2 child; the fp32 step <= 1.0x its FLOP bound (reported against both
# the FLOPs it runs and the direct form's).
TARGETS = {"torch_muon_over_auto_min": {"amx": 2.0, "native_bf16": 1.5, "avx512_bf16_no_amx": 1.5,
                                        "avx2_only": 50.0},
           "fp32_over_bound_max": 1.0}
# name -> (ns_precision, ns_impl) of each MuonClip form timed
FORMS = {
    "muonclip_auto": ("auto", "auto"),
    "muonclip_fp32": ("fp32", "auto"),  # Gram for the (d, 4d) matrices, direct for the square ones
    "muonclip_fp32_direct": ("fp32", "direct"),
    "muonclip_bf16": ("bf16", "auto"),  # direct: the Gram form is not run in bf16
    "muonclip_fp16": ("fp16", "auto"),  # Gram restarted after iteration 2 on (d, 4d), direct on square
}
PRECISIONS = ("fp32", "bf16", "fp16")


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



def plan_gflop(shapes, plans: dict[str, str]) -> dict[str, float]:
    """GFLOP each precision's products run in one step, from the optimizer's recorded plans
    (``ns_plan()``, in parameter order)."""
    out: dict[str, float] = {}
    for (n, m), text in zip(shapes, plans.values(), strict=True):
        dtype, form = ns_auto.parse_plan(text)
        key = text.split(":")[0]
        out[key] = out.get(key, 0.0) + ns_forms.form_flops(n, m, form, NS5, dtype) / 1e9
    return out


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


def _worst(got: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest relative distance of one matrix of ``got`` to its float64 reference."""
    return max(float((o.double() - r).norm() / r.norm()) for o, r in zip(got, ref, strict=True))


# Every form accuracy is reported for: (precision, form name), run through ns_forms directly
ACCURACY_FORMS = {"fp32_direct": (torch.float32, "direct"), "fp32_gram": (torch.float32, "gram"),
                  "bf16_direct": (torch.bfloat16, "direct"), "fp16_direct": (torch.float16, "direct"),
                  "fp16_gram_restart_2": (torch.float16, "gram@2")}


def accuracy(d: int = 256, batch: int = 4) -> dict:
    """Worst relative distance to float64 NS5 over a (batch, d, 4d) batch of every form and of
    torch.optim.Muon, per input class; plus, to show why it is refused, bf16 Gram without
    restarts and with restarts after 2 and 4 (computed through :mod:`muonclip.optim.ns_forms`)."""
    out: dict = {}
    for name, G in input_classes(batch, d, 4 * d, seed=1).items():
        ref = reference_orthogonalize(G, expert_stack=True)
        forms = {k: ns_forms.newton_schulz_batch([G], NS5, f, dt) for k, (dt, f) in ACCURACY_FORMS.items()}
        X = ns_forms.normalized_batch([G], torch.bfloat16)
        forms["bf16_gram_refused"] = ns_forms.quintic_gram(X.clone(), NS5)
        forms["bf16_gram_restart_2_4_refused"] = ns_forms.quintic_gram(X.clone(), NS5, restarts=(2, 4))
        if hasattr(torch.optim, "Muon"):
            forms["torch_muon"] = _peer_torch_muon(G)
        out[name] = {k: float(f"{_worst(v, ref):.3e}") for k, v in forms.items()}
    return out


def _native(precision: str) -> bool:
    """Whether this process multiplies ``precision`` natively (auto's own candidate rule)."""
    return precision in ns_auto.candidate_precisions("cpu")


def measure(args) -> dict:
    torch.manual_seed(0)
    shapes = shape_set(args.d, args.layers)
    native = cpu_has_native_bf16()
    capability = torch.backends.cpu.get_cpu_capability()
    # A form forced into a 16-bit precision this CPU emulates is not timed (10-100x slower than
    # fp32, and auto never picks it): --time-emulated times it anyway.
    timed = {name: spec for name, spec in FORMS.items()
             if spec[0] in ("auto", "fp32") or _native(spec[0]) or args.time_emulated}
    opts: dict = {name: MuonClip(make_params(shapes), lr=0.02, weight_decay=0.1, ns_precision=prec, ns_impl=impl)
                  for name, (prec, impl) in timed.items()}
    opts["adamw"] = torch.optim.AdamW(make_params(shapes), lr=3e-3, weight_decay=0.1)
    if hasattr(torch.optim, "Muon") and not args.skip_torch_muon:
        opts["torch_muon"] = torch.optim.Muon(make_params(shapes), lr=0.02, weight_decay=0.1)
    # A 16-bit precision the CPU does not multiply natively is emulated (10-100x slower than
    # fp32): rows that run it are timed only --slow-repeats times.
    slow = {name for name, (prec, _) in timed.items() if prec != "auto" and prec != "fp32" and not _native(prec)}
    if not native:
        slow.add("torch_muon")

    times: dict[str, list[float]] = {k: [] for k in opts}
    rates: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for opt in opts.values():  # warm-up: state, plans, workspaces and oneDNN kernels are created here
        opt.step()
        opt.step()
    for r in range(args.repeats):
        # the matmul rates that define the bounds are sampled in the same rounds as the steps,
        # so a change in machine load moves both sides of each ratio alike
        for p in PRECISIONS:
            if _native(p) or r < args.slow_repeats:
                rates[p].append(matmul_gflops(resolve_ns_dtype(p, "cpu"), args.matmul_n,
                                              repeats=3 if _native(p) else 1))
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
    for name in timed:
        plans = opts[name].ns_plan()
        gflop = plan_gflop(shapes, plans)
        own = sum(g / rate[p] * 1e3 for p, g in gflop.items())
        main = max(gflop, key=gflop.get)  # the precision most of its FLOPs run in
        forms[name] = {"plans": dict(sorted({f"{n}x{m}": t for (n, m), t in zip(shapes, plans.values(),
                                                                                 strict=True)}.items())),
                       "step_ms": ms[name], "ns_gflop": round(sum(gflop.values()), 2),
                       "own_bound_ms": round(own, 2), "over_own_bound": round(ms[name] / own, 3),
                       "over_direct_bound": round(ms[name] / bound[main], 3), "cpu_capability": capability}
    auto = forms["muonclip_auto"]
    torch_ratio = round(ms["torch_muon"] / ms["muonclip_auto"], 2) if "torch_muon" in ms else None
    result = {
        "benchmark": "optimizer_step",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_capability": capability,
        "cpu_bf16_flags": list(cpu_bf16_flags()),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "native_bf16": native,
        "auto_rates": {k: round(v, 1) for k, v in ns_auto.measured_rates("cpu").items()},
        "auto_plans": auto["plans"],
        "auto_precision": str(resolve_ns_dtype("auto", "cpu")).removeprefix("torch."),
        "shape_set": {"d": args.d, "layers": args.layers},
        "matrix_params": sum(n * m for n, m in shapes),
        "matmul_n": args.matmul_n,
        "matmul_gflops": {k: round(v, 1) for k, v in rate.items()},
        "direct_ns5_gflop": round(direct_gflop, 2),
        "direct_ns5_bound_ms": {k: round(v, 2) for k, v in bound.items()},
        "step_ms": ms,
        "forms": forms,
        "not_timed": {name: f"{FORMS[name][0]} is emulated on this CPU" for name in FORMS if name not in timed},
        "torch_muon_over_muonclip_auto": torch_ratio,
        "muonclip_auto_over_adamw": round(ms["muonclip_auto"] / ms["adamw"], 2),
        "targets": TARGETS,
    }
    if not args.skip_accuracy:
        result["accuracy"] = accuracy(args.d)
    if args.breakdown:
        result["breakdown_ms"] = breakdown(args.repeats, [p for p in PRECISIONS if _native(p)], args.d, args.layers)
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
            form = ns_forms.resolve_form(*shape, "auto", NS5, dtype)
            kind, restarts = ns_forms.parse_form(form)

            def ns(x0=x0, ws=ws, kind=kind, restarts=restarts):
                x = ws.get("x0", x0.shape, x0)
                x.copy_(x0)
                return ns_forms.run_form(x, NS5, kind, restarts, ws)
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


_CHILD_KEYS = ("cpu_capability", "onednn_max_cpu_isa", "native_bf16", "auto_rates", "auto_plans", "auto_precision",
               "step_ms", "forms", "not_timed", "matmul_gflops", "direct_ns5_bound_ms", "torch_muon_over_muonclip_auto")


def _child(args, env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats), "--slow-repeats",
           str(args.slow_repeats), "--threads", str(args.threads), "--skip-accuracy", "--d", str(args.d),
           "--layers", str(args.layers), "--matmul-n", str(args.matmul_n)]
    if args.skip_torch_muon:
        cmd.append("--skip-torch-muon")
    if args.time_emulated:
        cmd.append("--time-emulated")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MUONCLIP_NS_RATES")}  # its own probe
    # the child imports the muonclip this process runs, wherever it was imported from
    root = os.path.dirname(os.path.dirname(os.path.abspath(muonclip.__file__)))
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, child_env.get("PYTHONPATH", "")) if p)
    out = subprocess.run(cmd, env={**child_env, **env}, capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: child[k] for k in _CHILD_KEYS}


def ratios(result: dict) -> dict:
    """The acceptance figures in one place, each beside the CPU capability it was measured
    under, and whether each target is met."""
    amx = "amx_bf16" in result["cpu_bf16_flags"] and not result["onednn_max_cpu_isa"]
    regime = "amx" if amx else ("native_bf16" if result["native_bf16"] else "avx2_only")
    rows = {"default_step": (result, regime)}
    for child in ("avx512_bf16_no_amx", "avx2_only"):
        if child in result:
            rows[child] = (result[child], child)
    out: dict = {}
    for name, (block, target_key) in rows.items():
        r = block["torch_muon_over_muonclip_auto"]
        target = TARGETS["torch_muon_over_auto_min"][target_key]
        fp32 = block["forms"]["muonclip_fp32"]
        out[name] = {"cpu_capability": block["cpu_capability"], "onednn_max_cpu_isa": block["onednn_max_cpu_isa"],
                     "auto_plans": block["auto_plans"],
                     "torch_muon_over_muonclip_auto": r, "target_min": target,
                     "met": r is not None and r >= target,
                     "form_over_own_bound": {k: v["over_own_bound"] for k, v in block["forms"].items()},
                     # "its bound": the FLOPs it runs (Gram on (d, 4d)), and the direct form's,
                     # which the earlier measurements used
                     "fp32_over_own_bound": fp32["over_own_bound"],
                     "fp32_over_direct_bound": fp32["over_direct_bound"],
                     "fp32_met_own_bound": fp32["over_own_bound"] <= TARGETS["fp32_over_bound_max"],
                     "fp32_met_direct_bound": fp32["over_direct_bound"] <= TARGETS["fp32_over_bound_max"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9, help="timed steps per optimizer (median reported)")
    ap.add_argument("--slow-repeats", type=int, default=2,
                    help="timed steps for rows with emulated bf16 (CPUs without native bf16; ~10 s each)")
    ap.add_argument("--skip-torch-muon", action="store_true")
    ap.add_argument("--time-emulated", action="store_true",
                    help="also time the forms forced into a 16-bit precision this CPU emulates (slow)")
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
    if not args.child:
        result["ratios"] = ratios(result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
