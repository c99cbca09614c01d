"""Which precision Newton-Schulz runs in: the CPU's native 16-bit capabilities and ``ns_precision``'s names.

``ns_precision`` is ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"``. ``"auto"`` is decided per
matrix shape from FLOPs times measured product rates (:mod:`.ns_auto`), among the precisions
the device multiplies natively:

* CUDA: fp32, bf16 and fp16 (tensor cores).
* CPU: fp32; bf16 with AVX512-BF16 or AMX-BF16 (Intel Sapphire Rapids and later, AMD Zen 4
  and later), unless oneDNN or ATen is capped below those instruction sets by
  ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` (how an AVX2-only CPU is imitated); there
  bf16 matmuls are emulated and 100x slower than fp32.

Momentum, weights and the update scale stay fp32 in every mode; only the iteration's
matrix products change precision.
"""
from __future__ import annotations

import functools
import os
from typing import Literal, get_args

import torch

__all__ = ["NS_PRECISIONS", "PRECISION_DTYPES", "NsPrecision", "cpu_bf16_flags", "cpu_matmul_flags",
           "cpu_has_native_bf16", "isa_capped", "resolve_ns_dtype"]

NsPrecision = Literal["auto", "fp32", "bf16", "fp16"]
NS_PRECISIONS: tuple[str, ...] = get_args(NsPrecision)

# CPU flags (as /proc/cpuinfo names them) that make bf16 matmuls native in oneDNN.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN ISA caps at or below which bf16 is emulated (oneDNN's dnnl_cpu_isa_t names).
_ONEDNN_NO_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_ATEN_NO_BF16 = {"default", "avx2", "zvector", "vsx"}


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_flags() -> tuple[str, ...]:
    """The bf16 matmul flags this CPU reports (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    return cpu_matmul_flags(_BF16_FLAGS)


def cpu_matmul_flags(names: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``names`` this CPU reports."""
    flags = _cpu_flags()
    return tuple(flag for flag in names if flag in flags)


def isa_capped() -> bool:
    """True when this process caps oneDNN or ATen below the 16-bit instruction sets."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_NO_BF16
            or os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in _ATEN_NO_BF16)


def cpu_has_native_bf16() -> bool:
    """True when this process multiplies bf16 matrices natively on the CPU.

    Reads the CPU's flags and honours the ISA caps of this process's environment, so a child
    started with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` reports False.
    """
    return bool(cpu_bf16_flags()) and not isa_capped()


# The dtype of each explicit ``ns_precision``.
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_ns_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype of Newton-Schulz's matrix products for ``precision`` on ``device``; for
    ``"auto"``, the one it picks for a square 256 x 256 matrix here (other shapes may differ:
    ``MuonClip.ns_plan()`` names every parameter's)."""
    if precision in PRECISION_DTYPES:
        return PRECISION_DTYPES[precision]
    if precision != "auto":
        raise ValueError(f"unknown ns_precision {precision!r}; expected one of {NS_PRECISIONS}")
    from . import ns_auto  # here: ns_auto builds on this module
    from .orthogonalizers import ORTHOGONALIZERS

    return ns_auto.parse_plan(ns_auto.plan(256, 256, "auto", "auto", ORTHOGONALIZERS["ns5"].schedule(5), device))[0]
