"""``ns_precision="auto"``: Newton-Schulz's precision and form from FLOPs times the rate products run at here.

A *plan* is one plain string, ``"<precision>:<form>"`` (``"fp32:gram"``, ``"bf16:direct"``,
``"fp16:gram@2"``): what one matrix shape's Newton-Schulz runs. The optimizer records each
parameter's plan in its state, so a resumed run runs what the first one did, bit for bit,
whatever the new machine measures.

``auto`` chooses, per shape, the accepted (precision, form) pair
(:func:`.ns_forms.accepted_forms`: the 16-bit forms are those no further from a float64 NS5
than torch.optim.Muon's) with the least FLOPs / rate (:func:`choose`, a pure function). The
rates are those of this process's products, measured once by a small probe (a few ms) and
cached per process; ``MUONCLIP_NS_RATES_CACHE=<file>`` keeps them per machine in a JSON file,
``MUONCLIP_NS_RATES='{"fp32": 300, "bf16": 190}'`` pins them. A 16-bit precision the CPU does
not multiply natively (no AVX512-BF16 / AMX-BF16 for bf16, no AVX512-FP16 / AMX-FP16 for fp16,
or an ISA cap such as ``ONEDNN_MAX_CPU_ISA=AVX2``) is never probed nor picked: emulated it is
10-100x slower than fp32.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Mapping, Sequence

import torch

from . import precision as _precision
from .ns_forms import accepted_forms, form_flops, resolve_form
from .orthogonalizers import Coeffs

__all__ = ["PRECISION_DTYPES", "choose", "plan", "parse_plan", "candidate_precisions", "measured_rates", "probe",
           "probe_all", "probe_rates", "PROBE_BUDGET_S", "PROBE_MAX_ROUNDS"]

PRECISION_DTYPES = _precision.PRECISION_DTYPES
# On equal cost, the more accurate precision (fp16 has 3 more mantissa bits than bf16).
_ACCURACY_ORDER = ("fp32", "fp16", "bf16")
_FP16_FLAGS = ("avx512_fp16", "amx_fp16")
_RATES_ENV = "MUONCLIP_NS_RATES"
_CACHE_ENV = "MUONCLIP_NS_RATES_CACHE"
_rates: dict[str, dict[str, float]] = {}


def choose(n: int, m: int, coeffs: Sequence[Coeffs], rates: Mapping[str, float], impl: str = "auto") -> str:
    """The plan with the least ``FLOPs / rate`` for an n x m matrix, over the precisions in
    ``rates`` (GFLOP/s of their products) and the forms accepted in each (``impl`` other than
    ``"auto"``: that form, in the precisions that accept it). Ties go to the more accurate
    precision, then to the direct form."""
    options = []
    for name, rate in rates.items():
        if rate is None or not rate > 0:
            continue
        dtype = PRECISION_DTYPES[name]
        forms = accepted_forms(dtype) if impl == "auto" else [_accepted_or_none(n, m, impl, coeffs, dtype)]
        for form in forms:
            if form is not None:
                cost = form_flops(n, m, form, coeffs, dtype) / rate
                options.append((cost, _ACCURACY_ORDER.index(name), form != "direct", f"{name}:{form}"))
    if not options:
        raise ValueError(f"no precision among {sorted(rates)} runs the Newton-Schulz form {impl!r}")
    return min(options)[-1]


def _accepted_or_none(n: int, m: int, impl: str, coeffs: Sequence[Coeffs], dtype: torch.dtype) -> str | None:
    try:
        return resolve_form(n, m, impl, coeffs, dtype)
    except ValueError:
        return None


def parse_plan(text: str) -> tuple[torch.dtype, str]:
    """``"bf16:direct"`` -> (torch.bfloat16, "direct")."""
    name, _, form = text.partition(":")
    if name not in PRECISION_DTYPES or not form:
        raise ValueError(f"malformed Newton-Schulz plan {text!r}; expected '<fp32|bf16|fp16>:<form>'")
    return PRECISION_DTYPES[name], form


def plan(n: int, m: int, precision: str, impl: str, coeffs: Sequence[Coeffs], device: torch.device | str) -> str:
    """The plan for an n x m matrix: an explicit ``precision`` keeps its dtype and takes
    :func:`.ns_forms.resolve_form`'s form (so ``"fp32"`` runs what it always ran); ``"auto"``
    is :func:`choose` over this process's :func:`measured_rates`."""
    if precision == "auto":
        return choose(n, m, coeffs, measured_rates(device), impl)
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"unknown ns_precision {precision!r}; expected one of {_precision.NS_PRECISIONS}")
    return f"{precision}:{resolve_form(n, m, impl, coeffs, PRECISION_DTYPES[precision])}"


def candidate_precisions(device: torch.device | str) -> tuple[str, ...]:
    """The precisions worth probing on ``device``: fp32 always; on CUDA bf16 and fp16 (tensor
    cores); on a CPU a 16-bit one only where it is native and not capped (module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16")
    out = ["fp32"]
    if device.type == "cpu" and _precision.cpu_has_native_bf16():
        out.append("bf16")
    if device.type == "cpu" and _precision.cpu_matmul_flags(_FP16_FLAGS) and not _precision.isa_capped():
        out.append("fp16")
    return tuple(out)


def _key(device: torch.device) -> str:
    """What the rates depend on: the device, the threads, the ISA caps and the CPU's flags."""
    caps = ",".join(os.environ.get(k, "") for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"))
    if device.type == "cuda":
        where = f"cuda:{torch.cuda.get_device_name(device)}"
    else:
        where = f"{device.type}:{torch.backends.cpu.get_cpu_capability()}:{'+'.join(_precision.cpu_bf16_flags())}"
    return f"{where}|threads={torch.get_num_threads()}|caps={caps}|torch={torch.__version__}"


def measured_rates(device: torch.device | str) -> dict[str, float]:
    """GFLOP/s of each candidate precision's products on ``device``, probed once per process
    (per device, thread count and ISA cap), or pinned / cached as the module docstring says."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    pinned = os.environ.get(_RATES_ENV)
    if pinned:
        rates = json.loads(pinned)
        if not isinstance(rates, dict) or "fp32" not in rates or not all(
                k in PRECISION_DTYPES and isinstance(v, (int, float)) for k, v in rates.items()):
            raise ValueError(f"{_RATES_ENV} must be a JSON object of GFLOP/s per precision with 'fp32', got {pinned!r}")
        return {k: float(v) for k, v in rates.items() if k in candidate_precisions(device)}
    key = _key(device)
    if key not in _rates:
        _rates[key] = _cached_rates(key) or _probe_and_store(key, device)
    return dict(_rates[key])


def _cached_rates(key: str) -> dict[str, float] | None:
    path = os.environ.get(_CACHE_ENV)
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f).get(key)
    except (OSError, ValueError, AttributeError):
        return None  # an unreadable cache is re-measured, not trusted
    if isinstance(entry, dict) and all(k in PRECISION_DTYPES and isinstance(v, (int, float)) for k, v in entry.items()):
        return {k: float(v) for k, v in entry.items()}
    return None


def _probe_and_store(key: str, device: torch.device) -> dict[str, float]:
    rates, _ = probe_rates([PRECISION_DTYPES[name] for name in candidate_precisions(device)], device)
    rates = {name: rates[PRECISION_DTYPES[name]] for name in candidate_precisions(device)}
    path = os.environ.get(_CACHE_ENV)
    if path:
        _write_cache(path, key, rates)
    return rates


def _write_cache(path: str, key: str, rates: dict[str, float]) -> None:
    """Add this machine's entry to the JSON cache file atomically (write a temporary file, rename)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    data[key] = {k: round(v, 3) for k, v in rates.items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ns_rates.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)


def probe(dtype: torch.dtype, device: torch.device | str, repeats: int = 3) -> float:
    """GFLOP/s of a batched product in ``dtype`` on ``device``: :func:`probe_all` of one dtype,
    exactly ``repeats`` rounds."""
    return probe_all([dtype], device, repeats, budget_s=0.0)[dtype]


# How long the probe may go on drawing rounds: at least 5 rounds, more while under 15 ms (up to
# 25), once per process and thread count. A longer budget does not see through sustained load:
# benchmarks/auto_probe.py on a 2-core Zen 4 at 2 threads, both cores kept busy by two other
# processes, 60 probes each (docs/data/auto_probe-zen4-2026-12.json): a bf16/fp32 ratio below 1.3
# (quiet: 1.79-2.38, median 2.02) in 21 probes of 15 ms and 19 of 100 ms; probe_rates' one-thread
# fallback, in none (1.64-2.66, median 2.05; it fell back in 21, and in none of 60 quiet probes).
PROBE_BUDGET_S = 0.015
PROBE_MAX_ROUNDS = 25


def probe_rates(dtypes: Sequence[torch.dtype], device: torch.device | str) -> tuple[dict[torch.dtype, float], int]:
    """What ``auto`` plans from: :func:`probe_all` on this process's threads, and the thread
    count the rates are from.

    On a CPU with more than one thread it also probes on one thread. If some precision then ran
    slower on all threads than on one, the many-thread rounds were preempted (a parallel
    product waits for its slowest thread, so on a busy machine both precisions take about a
    time slice and their ratio comes out near 1, whatever it is), and the one-thread rates are
    used: their ratio, which is what decides, holds on a busy machine (on the Zen 4 of
    :data:`PROBE_BUDGET_S`'s note, 2.02-2.46 on one busy thread against 2.13 quiet, and 2.05 on
    two quiet threads). On a quiet machine many threads beat one and nothing changes.
    """
    device = torch.device(device)
    rates = probe_all(dtypes, device)
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        return rates, threads
    try:
        torch.set_num_threads(1)
        single = probe_all(dtypes, device)
    finally:
        torch.set_num_threads(threads)
    if any(rates[d] < single[d] for d in dtypes):
        return single, 1
    return rates, threads


def probe_all(dtypes: Sequence[torch.dtype], device: torch.device | str, repeats: int = 5,
              budget_s: float = PROBE_BUDGET_S, max_repeats: int = PROBE_MAX_ROUNDS) -> dict[torch.dtype, float]:
    """GFLOP/s of a batched product in each of ``dtypes`` on ``device``: the fastest of
    ``repeats`` or more rounds after a warm-up (the fastest, because a shared machine only ever
    slows a run down), the dtypes timed in turn within each round so that a change in load
    reaches all of them alike (only their ratio decides). Rounds go on while the probe has
    used less than ``budget_s`` (up to ``max_repeats``): on a loaded machine most rounds are
    preempted, and more of them make an undisturbed one likelier (:data:`PROBE_BUDGET_S`). The
    size is a Newton-Schulz-like 4 x (256 x 256) on a CPU (~0.13 GFLOP, about 1 ms at fp32
    rates) and 4 x (1024 x 1024) on a GPU."""
    device = torch.device(device)
    size = 1024 if device.type == "cuda" else 256
    g = torch.Generator(device=device).manual_seed(0)
    base = torch.randn(4, size, size, generator=g, device=device) / size**0.5
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    operands = {}
    for dtype in dtypes:
        a = base.to(dtype)
        operands[dtype] = (a, torch.empty_like(a))
        torch.bmm(a, a, out=operands[dtype][1])  # warm-up: kernels and their buffers
    sync()
    best = dict.fromkeys(dtypes, float("inf"))
    start = time.perf_counter()
    for i in range(max(repeats, max_repeats)):
        if i >= repeats and time.perf_counter() - start > budget_s:
            break
        for dtype, (a, out) in operands.items():
            t0 = time.perf_counter()
            torch.bmm(a, a, out=out)
            sync()
            best[dtype] = min(best[dtype], time.perf_counter() - t0)
    return {dtype: 2 * 4 * size**3 / max(t, 1e-9) / 1e9 for dtype, t in best.items()}
