"""ns_precision: explicit precisions, the CPU's native 16-bit flags and ISA caps that gate what "auto" may pick."""
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
def test_auto_follows_cpu_flags_where_bf16_is_faster(flags, monkeypatch, cpu_flags, expected):
    """With bf16 products measured 3x faster than fp32, auto picks bf16 exactly where the CPU
    multiplies it natively; without the flags bf16 is not a candidate at all."""
    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 300, "bf16": 1000}')
    flags(*cpu_flags)
    assert precision.resolve_ns_dtype("auto", "cpu") == expected


@pytest.mark.parametrize("env", [{"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"ATEN_CPU_CAPABILITY": "avx2"},
                                 {"ONEDNN_MAX_CPU_ISA": "avx512_core"}])
def test_isa_cap_makes_auto_fp32(flags, monkeypatch, env):
    flags("avx512_bf16", "amx_bf16")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not precision.cpu_has_native_bf16()
    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 300, "bf16": 1000}')
    assert precision.resolve_ns_dtype("auto", "cpu") == torch.float32


def test_forced_modes_and_cuda(flags):
    flags()
    assert precision.resolve_ns_dtype("bf16", "cpu") == torch.bfloat16
    assert precision.resolve_ns_dtype("fp16", "cpu") == torch.float16
    assert precision.resolve_ns_dtype("fp32", "cuda") == torch.float32
    with pytest.raises(ValueError, match="ns_precision"):
        precision.resolve_ns_dtype("tf32", "cpu")


def test_avx2_child_process_never_picks_a_16_bit_precision():
    """The benchmark's AVX2-only imitation: in a child with both caps set, auto's real probe and
    plans (square, wide, tall) run fp32 whatever the CPU; bf16 is not even probed there, and
    its probe says why."""
    code = ("from muonclip.optim import ns_auto; from muonclip.optim.orthogonalizers import ORTHOGONALIZERS as O\n"
            "c = O['ns5'].schedule(5)\n"
            "print(sorted(ns_auto.measured_rates('cpu')), [ns_auto.plan(n, m, 'auto', 'auto', c, 'cpu') "
            "for n, m in ((256, 256), (256, 1024), (1024, 256))])\n"
            "import torch; print(ns_auto.probe(torch.bfloat16, 'cpu', 1) < ns_auto.probe(torch.float32, 'cpu', 1))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUONCLIP_NS_RATES")}
    env.update({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    plans, emulated_is_slower = out.stdout.strip().splitlines()
    assert plans == "['fp32'] ['fp32:direct', 'fp32:gram', 'fp32:gram']"
    assert emulated_is_slower == "True"  # and were it probed, emulated bf16 would lose (~100x)


def test_flags_are_read_from_the_cpu():
    """On Linux the flags come from /proc/cpuinfo; whatever they are, they are bf16 flags only."""
    assert set(precision.cpu_bf16_flags()) <= {"avx512_bf16", "amx_bf16"}
