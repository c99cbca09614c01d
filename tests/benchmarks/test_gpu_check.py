"""benchmarks/gpu_check.py runs its CUDA code paths at toy size on CPU, so it cannot rot unseen."""
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
    assert result["dragon"]["steps"] == gpu_check.TOY["dragon_steps"]
    assert result["dragon"]["loss_last"] < result["dragon"]["loss_first"]
