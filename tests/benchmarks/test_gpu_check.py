"""The benchmarks run their code paths at toy size on CPU (gpu_check, ns_bf16_variants), so they cannot rot unseen."""
import json

import pytest


@pytest.fixture(scope="module")
def gpu_check(load_benchmark):
    return load_benchmark("gpu_check")


def test_toy_run_prints_one_json_line_with_every_row(gpu_check, capsys):
    result = gpu_check.main(["--toy", "--repeats", "1"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line) == result
    steps = result["optimizer"]["step_ms"]
    assert {"muonclip_auto", "muonclip_fp32", "muonclip_bf16", "adamw"} <= set(steps)
    assert all(ms > 0 for ms in steps.values())
    bounds = result["optimizer"]["ns5_bound_ms"]
    assert bounds["float32"] > 0 and bounds["bfloat16"] > 0
    attention = result["attention"]
    # tracking is exact: the tracked max equals the materialised one
    assert attention["max_logit_tracked"] == pytest.approx(attention["max_logit_materialised"], rel=1e-4)
    assert not [name for name, v in result.items() if isinstance(v, dict) and "error" in v]
    assert result["qk_clip"]["heads_clipped"] > 0
    assert result["qk_clip"]["clipped_after_max_rel_err"] < 1e-4 and result["qk_clip"]["unclipped_unchanged"]
    assert result["lab_resume"]["bit_exact"]
    assert result["correctness"]["ns5_rel_dist_to_fp64_fp32"] < 1e-4
    assert result["dragon"]["steps"] == gpu_check.TOY["dragon_steps"]
    assert result["dragon"]["loss_last"] < result["dragon"]["loss_first"]


def test_a_failing_section_is_recorded_and_the_rest_still_run(gpu_check):
    result = {}

    def broken():
        raise RuntimeError("no kernel for this input")

    gpu_check._section(result, "broken", broken)
    gpu_check._section(result, "fine", lambda: {"ok": 1})
    assert result == {"broken": {"error": "RuntimeError: no kernel for this input"}, "fine": {"ok": 1}}


def test_ns_bf16_variants_toy_run(load_benchmark):
    """benchmarks/ns_bf16_variants.py at toy size: every variant reported, fp32 near float64,
    bf16 variants visibly further, the Gram form cheaper than the direct one."""
    variants = load_benchmark("ns_bf16_variants").main(["--batch", "1", "--rows", "8", "--cols", "32"])["variants"]
    assert set(variants) == {"fp32_direct", "bf16_direct", "bf16_gram", "bf16_gram_restart_2", "bf16_gram_restart_3",
                             "bf16_then_fp32_last"}
    assert variants["fp32_direct"]["rel_dist_to_fp64_ns5"] < 1e-4
    assert min(v["rel_dist_to_fp64_ns5"] for k, v in variants.items() if k.startswith("bf16")) > 1e-3
    assert variants["bf16_gram"]["flops_vs_direct"] < variants["bf16_gram_restart_2"]["flops_vs_direct"] < 1.0
