"""Which precision Newton-Schulz runs in: bf16 where the hardware multiplies bf16 natively, else fp32.

``ns_precision="auto"`` is decided from the device's capabilities, never from a timing:

* CUDA: bf16 (tensor cores; what every GPU Muon ships).
* CPU with AVX512-BF16 or AMX-BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and later):
  bf16, unless oneDNN or ATen is capped below those instruction sets by
  ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` (how an AVX2-only CPU is imitated).
* Anything else (AVX2-only x86, unknown CPUs): fp32. There bf16 matmuls are emulated and
  100x slower than fp32 (torch.optim.Muon's bf16 step is 30-60x slower than ours there).

Momentum, weights and the update scale stay fp32 in every mode; only the iteration's
matrix products change precision.
"""
from __future__ import annotations

import functools
import os
from typing import Literal, get_args

import torch

__all__ = ["NS_PRECISIONS", "NsPrecision", "cpu_bf16_flags", "cpu_has_native_bf16", "resolve_ns_dtype"]

NsPrecision = Literal["auto", "fp32", "bf16"]
NS_PRECISIONS: tuple[str, ...] = get_args(NsPrecision)

# CPU flags (as /proc/cpuinfo names them) that make bf16 matmuls native in oneDNN.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN ISA caps at or below which bf16 is emulated (oneDNN's dnnl_cpu_isa_t names).
_ONEDNN_NO_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_ATEN_NO_BF16 = {"default", "avx2", "zvector", "vsx"}


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The bf16 matmul flags this CPU reports (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return tuple(flag for flag in _BF16_FLAGS if flag in flags)
    except OSError:
        pass
    return ()


def cpu_has_native_bf16() -> bool:
    """True when this process multiplies bf16 matrices natively on the CPU.

    Reads the CPU's flags and honours the ISA caps of this process's environment, so a child
    started with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` reports False.
    """
    if not cpu_bf16_flags():
        return False
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_NO_BF16:
        return False
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in _ATEN_NO_BF16:
        return False
    return True


def resolve_ns_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype of Newton-Schulz's matrix products for ``precision`` on ``device``."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"unknown ns_precision {precision!r}; expected one of {NS_PRECISIONS}")
    device_type = torch.device(device).type
    if device_type == "cuda":
        return torch.bfloat16
    if device_type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32
