"""Every named Newton-Schulz schedule: accuracy against the exact polar factor, and its time.

Prints one JSON line. For each schedule of ``muonclip.optim.orthogonalizers.ORTHOGONALIZERS``
(at its own number of iterations) and each precision of the iteration's products:

* ``dist_to_polar``: relative Frobenius distance of the orthogonalised matrix to the exact polar
  factor U V^T of the input (float64 SVD), mean and max over the matrices of the shape set
  (Gaussian inputs, as a fresh momentum looks);
* ``band``: the smallest and largest singular value of the outputs over the shape set, and
  ``band_ill_conditioned`` on one 256x1024 input with singular values log-spaced over [1e-3, 1]
  (directions this small are, by design, only partly orthogonalised by the tuned schedules);
* ``ms``: the time of one optimizer-style call (``muon_directions``, batched by shape), median
  of interleaved rounds, so a change in machine load moves every schedule alike.

Shape set: GPT-like d=256, 4 layers of 4x(d,d) + (4d,d) + (d,4d) (as benchmarks/optimizer_step.py).
bf16 runs on one layer's three distinct shapes only (``--bf16-layers``): where the CPU has no
native bf16 (AVX2) its matmuls are emulated, ~100x slower than fp32; fp32 is also reported on
that subset (``fp32_subset``) so the two compare like for like.

``--out FILE.png`` saves :func:`accuracy_vs_time_figure` (accuracy against time per schedule).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optimizer_step import cpu_model, shape_set  # noqa: E402

from muonclip.optim import functional as muon_math  # noqa: E402
from muonclip.optim.orthogonalizers import ORTHOGONALIZERS  # noqa: E402
from muonclip.optim.precision import cpu_bf16_flags, cpu_has_native_bf16  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOY_SHAPES = [(16, 16), (16, 16), (64, 16), (16, 64)]


def bf16_subset(shapes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """One of each distinct shape (for GPT-like: (d, d), (4d, d), (d, 4d))."""
    return list(dict.fromkeys(shapes))


def gaussian_inputs(shapes, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


def ill_conditioned(n: int = 256, m: int = 1024, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    return ((U * torch.logspace(0, -3, n, dtype=torch.float64)) @ V.T).float()


def polar_factor(G: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh


def accuracy(name: str, inputs, polars, ill, ill_polar, dtype) -> dict:
    outs = [muon_math.orthogonalize(G, name, dtype=dtype) for G in inputs]
    dists = [float((o.double() - p).norm() / p.norm()) for o, p in zip(outs, polars, strict=True)]
    svals = torch.cat([torch.linalg.svdvals(o.double()) for o in outs])
    o_ill = muon_math.orthogonalize(ill, name, dtype=dtype).double()
    s_ill = torch.linalg.svdvals(o_ill)
    return {
        "dist_to_polar_mean": float(f"{statistics.fmean(dists):.3e}"),
        "dist_to_polar_max": float(f"{max(dists):.3e}"),
        "band": [round(float(svals.min()), 4), round(float(svals.max()), 4)],
        "band_ill_conditioned": [round(float(s_ill.min()), 4), round(float(s_ill.max()), 4)],
        "dist_to_polar_ill_conditioned": float(f"{float((o_ill - ill_polar).norm() / ill_polar.norm()):.3e}"),
    }


def timed(names, cases: dict, repeats: int) -> dict:
    """Median ms of one muon_directions call per (case, schedule), rounds interleaved."""
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(repeats + 1):  # round 0 warms up
        for case, (inputs, dtype) in cases.items():
            shapes = [G.shape for G in inputs]
            for name in names:
                t0 = time.perf_counter()
                muon_math.muon_directions(inputs, shapes, method=name, steps=None, dtype=dtype)
                if r:
                    times.setdefault((case, name), []).append(time.perf_counter() - t0)
    return {key: round(statistics.median(v) * 1e3, 2) for key, v in times.items()}


def measure(args) -> dict:
    shapes = TOY_SHAPES if args.toy else shape_set()
    subset = bf16_subset(shapes)
    names = list(ORTHOGONALIZERS)
    full_inputs, sub_inputs = gaussian_inputs(shapes), gaussian_inputs(subset, seed=2)
    full_polars, sub_polars = [polar_factor(G) for G in full_inputs], [polar_factor(G) for G in sub_inputs]
    ill = ill_conditioned(16, 64) if args.toy else ill_conditioned()
    ill_polar = polar_factor(ill)
    cases = {"fp32": (full_inputs, torch.float32), "fp32_subset": (sub_inputs, torch.float32),
             "bf16": (sub_inputs, torch.bfloat16)}
    ms = {("fp32", n): v for (c, n), v in timed(names, {"fp32": cases["fp32"]}, args.repeats).items()}
    ms.update(timed(names, {k: cases[k] for k in ("fp32_subset", "bf16")}, args.slow_repeats))
    rows = {}
    for name in names:
        spec = ORTHOGONALIZERS[name]
        coeffs = spec.schedule()
        row = {"source": spec.source, "steps": len(coeffs),
               "gflop_fp32_set": round(sum(muon_math.ns_flops(n, m, gram=muon_math.gram_is_cheaper(n, m, coeffs=coeffs),
                                                              coeffs=coeffs) for n, m in shapes) / 1e9, 3)}
        for case, (inputs, dtype) in cases.items():
            polars = full_polars if case == "fp32" else sub_polars
            row[case] = {"ms": ms[(case, name)], **accuracy(name, inputs, polars, ill, ill_polar, dtype)}
        rows[name] = row
    return {
        "benchmark": "orthogonalizers",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_flags": list(cpu_bf16_flags()),
        "native_bf16": cpu_has_native_bf16(),
        "shape_set": {"matrices": len(shapes), "params": sum(n * m for n, m in shapes),
                      "bf16_subset": [list(s) for s in subset]},
        "repeats": {"fp32": args.repeats, "subset": args.slow_repeats},
        "schedules": rows,
    }


def accuracy_vs_time_figure(result: dict):
    """A matplotlib Figure: distance to the polar factor (log) against time, one point per
    schedule; left fp32 on the whole shape set, right fp32 vs bf16 on the subset. No I/O."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    rows = result["schedules"]
    for ax, cases, title in ((left, ["fp32"], f"fp32, shape set ({result['shape_set']['matrices']} matrices)"),
                             (right, ["fp32_subset", "bf16"], "one layer's shapes: fp32 vs bf16")):
        for case, marker in zip(cases, ("o", "^"), strict=False):
            for i, (name, row) in enumerate(rows.items()):
                x, y = row[case]["ms"], row[case]["dist_to_polar_mean"]
                ax.scatter([x], [y], marker=marker, color=f"C{i}", label=f"{name} ({case})" if ax is right else name)
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("time per optimizer-style call (ms, median)")
        ax.set_ylabel("||O - UV^T||_F / ||UV^T||_F (mean)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    right.legend(fontsize=6, ncol=2)
    fig.suptitle(f"Newton-Schulz schedules on {result['cpu']} ({result['cpu_capability']}), torch {result['torch']}",
                 fontsize=9)
    return fig


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds on the whole shape set (fp32)")
    ap.add_argument("--slow-repeats", type=int, default=2, help="timed rounds on the bf16 subset")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--toy", action="store_true", help="tiny shapes (for tests)")
    ap.add_argument("--out", type=Path, default=None, help="save the accuracy-vs-time figure here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    print(json.dumps(result))
    if args.out is not None:
        accuracy_vs_time_figure(result).savefig(args.out, dpi=120)
    return result


if __name__ == "__main__":
    main()
