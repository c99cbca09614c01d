"""ns_precision="auto": decided from the CPU's flags and the process's ISA caps, never a timing."""
import os
import subprocess
import sys

import pytest
import torch

from muonclip.optim import precision


@pytest.fixture
def flags(monkeypatch):
    def set_flags(*names):
        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: tuple(names))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    return set_flags


@pytest.mark.parametrize("cpu_flags,expected", [
    ((), torch.float32), (("avx512_bf16",), torch.bfloat16), (("amx_bf16",), torch.bfloat16),
    (("avx512_bf16", "amx_bf16"), torch.bfloat16),
])
def test_auto_follows_cpu_flags(flags, cpu_flags, expected):
    flags(*cpu_flags)
    assert precision.resolve_ns_dtype("auto", "cpu") == expected


@pytest.mark.parametrize("env", [{"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"ATEN_CPU_CAPABILITY": "avx2"},
                                 {"ONEDNN_MAX_CPU_ISA": "avx512_core"}])
def test_isa_cap_makes_auto_fp32(flags, monkeypatch, env):
    flags("avx512_bf16", "amx_bf16")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not precision.cpu_has_native_bf16()
    assert precision.resolve_ns_dtype("auto", "cpu") == torch.float32


def test_forced_modes_and_cuda(flags):
    flags()
    assert precision.resolve_ns_dtype("bf16", "cpu") == torch.bfloat16
    assert precision.resolve_ns_dtype("fp32", "cuda") == torch.float32
    assert precision.resolve_ns_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="ns_precision"):
        precision.resolve_ns_dtype("tf32", "cpu")


def test_avx2_child_process_resolves_fp32():
    """The benchmark's AVX2-only imitation: a child with both caps set picks fp32 whatever the CPU."""
    code = "from muonclip.optim.precision import resolve_ns_dtype; print(resolve_ns_dtype('auto', 'cpu'))"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch.float32"


def test_flags_are_read_from_the_cpu():
    """On Linux the flags come from /proc/cpuinfo; whatever they are, they are bf16 flags only."""
    assert set(precision.cpu_bf16_flags()) <= {"avx512_bf16", "amx_bf16"}
