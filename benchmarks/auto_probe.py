"""How steady `ns_precision="auto"`'s rate probe is: quiet, and with every core also busy.

Prints one JSON line. `auto` plans each matrix shape from the ratio of the product rates its
probe measures once per process (`muonclip.optim.ns_auto.probe_all`), so the ratio's spread
over repeated probes is what can flip a plan. For each probe budget (how long the probe may go
on drawing rounds; the default is `ns_auto.PROBE_BUDGET_S`), and for what `auto` runs
(`ns_auto.probe_rates`: on a CPU with several threads it falls back to one-thread rates when
many threads ran slower than one; `from_one_thread` counts those probes), this probes `--probes`
times on a quiet machine and again beside `--load` busy processes (default: one per core), and
reports per precision the rates' min / median / max and, where a 16-bit precision is a
candidate (native bf16 or fp16), its ratio to fp32 (spread, and every probe's, sorted). The
budgets are probed in turn. The CPU, its bf16 flags and torch's CPU capability are printed
beside the figures.

Run it with nothing else running: the "quiet" rows assume the machine is.
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

from muonclip.optim import ns_auto
from muonclip.optim.precision import cpu_bf16_flags
from muonclip.reproduce.sections.base import cpu_model


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2), "max": round(max(values), 2)}


def _summary(per: dict[str, list[float]], names: list[str]) -> dict:
    block = {"gflops": {n: _spread(v) for n, v in per.items()}}
    ratios = {n: [a / b for a, b in zip(per[n], per["fp32"], strict=True)] for n in names if n != "fp32"}
    if ratios:
        block["ratio"] = {f"{n}_over_fp32": _spread(r) for n, r in ratios.items()}
        block["ratios"] = {f"{n}_over_fp32": sorted(round(x, 2) for x in r) for n, r in ratios.items()}
    return block


def _probes(names: list[str], budgets: list[float], probes: int) -> dict:
    """``probes`` rounds of: one :func:`ns_auto.probe_all` per budget, then what ``auto`` runs
    (:func:`ns_auto.probe_rates`), in turn so that a change in load reaches each alike."""
    dtypes = [ns_auto.PRECISION_DTYPES[n] for n in names]
    rates = {f"{b:g}": {n: [] for n in names} for b in budgets}
    rates["auto"] = {n: [] for n in names}
    one_thread = 0
    for _ in range(probes):
        for budget in budgets:
            rounds = max(5, round(budget / ns_auto.PROBE_BUDGET_S * ns_auto.PROBE_MAX_ROUNDS))
            got = ns_auto.probe_all(dtypes, "cpu", budget_s=budget, max_repeats=rounds)
            for n, dtype in zip(names, dtypes, strict=True):
                rates[f"{budget:g}"][n].append(got[dtype])
        got, threads = ns_auto.probe_rates(dtypes, "cpu")
        one_thread += threads == 1
        for n, dtype in zip(names, dtypes, strict=True):
            rates["auto"][n].append(got[dtype])
    out = {key: _summary(per, names) for key, per in rates.items()}
    out["auto"]["from_one_thread"] = one_thread  # probes where auto fell back to its one-thread rates
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=int, default=10, help="probes per budget and condition (default 10)")
    ap.add_argument("--budgets", default=f"0.015,0.1,{ns_auto.PROBE_BUDGET_S:g}",
                    help="comma-separated probe budgets in seconds (default: the former 0.015, 0.1 and "
                         "today's default, ns_auto.PROBE_BUDGET_S)")
    ap.add_argument("--load", type=int, default=os.cpu_count() or 1,
                    help="busy processes beside the loaded probes (default: one per core)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of the probe")
    args = ap.parse_args(argv)
    budgets = sorted({float(b) for b in args.budgets.split(",") if b})
    if args.probes < 1 or not budgets or any(b < 0 for b in budgets) or args.load < 0:
        ap.error("--probes must be >= 1, --budgets non-negative numbers, --load >= 0")
    torch.set_num_threads(args.threads)
    names = list(ns_auto.candidate_precisions("cpu"))
    result = {
        "benchmark": "auto_probe", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_flags": list(cpu_bf16_flags()), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "candidates": names, "default_budget_s": ns_auto.PROBE_BUDGET_S, "probes": args.probes, "load": args.load,
    }
    result["quiet"] = _probes(names, budgets, args.probes)
    # busy processes: a Python loop each keeps one core busy until it is killed
    workers = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        time.sleep(0.5 if workers else 0.0)  # let them start spinning
        result["loaded"] = _probes(names, budgets, args.probes)
    finally:
        for w in workers:
            w.kill()
            w.wait()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
