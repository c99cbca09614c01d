"""benchmarks/orthogonalizers.py at toy size: one JSON line with every schedule, and its figure."""
import json

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("orthogonalizers")


def test_toy_run_reports_every_schedule_and_draws(bench, capsys, tmp_path):
    from muonclip.optim.orthogonalizers import ORTHOGONALIZERS

    out = tmp_path / "fig.png"
    result = bench.main(["--toy", "--repeats", "1", "--slow-repeats", "1", "--out", str(out)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert set(result["schedules"]) == set(ORTHOGONALIZERS) and result["cpu_capability"]
    for name, row in result["schedules"].items():
        for case in ("fp32", "fp32_subset", "bf16"):
            cell = row[case]
            assert cell["ms"] > 0 and 0 <= cell["band"][0] <= cell["band"][1], (name, case)
            assert cell["dist_to_polar_mean"] <= cell["dist_to_polar_max"]
    # the schedules that converge to 1 land closest to the polar factor in fp32
    fp32 = {n: r["fp32"]["dist_to_polar_max"] for n, r in result["schedules"].items()}
    assert fp32["deepseek_v4"] < fp32["ns5"]
    assert out.stat().st_size > 0
    fig = bench.accuracy_vs_time_figure(result)
    assert len(fig.axes) == 2
