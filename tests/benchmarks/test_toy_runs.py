"""The benchmarks run their code paths at toy size on CPU, so they cannot rot unseen."""
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
    assert "muonclip_fp16" in steps and "fp32" in result["auto_rates"]
    forms = result["ns_forms"]
    assert set(forms) == set(gpu_check.NS_SHAPES)
    for row in forms.values():
        # no CUDA here: the Triton rows are left out, every other form is timed and measured
        assert set(row["forms"]) == {k for k, (_, _, triton) in gpu_check.NS_FORMS.items() if not triton}
        gpu_check.ns_auto.parse_plan(row["auto_plan"])
        for entry in row["forms"].values():
            assert entry["iterate_ms"] > 0 and entry["normalize_ms"] > 0 and entry["gflop"] > 0
        dist = {k: v["rel_dist_to_fp64"] for k, v in row["forms"].items()}
        assert max(dist["fp32_direct"].values()) < 1e-4
        # the restarted fp16 Gram form beats torch.optim.Muon's NS on the ill-conditioned input
        assert dist["fp16_gram_restart_2"]["log_1e-6"] < row["torch_muon"]["rel_dist_to_fp64"]["log_1e-6"]
        assert set(row["torch_muon_over_form"]) == set(row["forms"])
    # Gram forms run fewer FLOPs than the direct one on a wide shape (d x 4d)
    down = forms["1b_down"]["forms"]
    assert down["fp16_gram_restart_2"]["gflop"] < down["fp16_direct_torch"]["gflop"]
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
    bf16 variants visibly further, bf16x3 between them, the Gram form cheaper than the direct one;
    a tall shape is measured in its wide orientation."""
    results = load_benchmark("ns_bf16_variants").main(["--shape", "1x8x32", "--shape", "2x32x8"])["results"]
    assert [r["shape"] for r in results] == [[1, 8, 32], [2, 32, 8]]
    for variants in (r["variants"] for r in results):
        assert set(variants) == {"fp32_direct", "bf16_direct", "bf16_gram", "bf16_gram_restart_2",
                                 "bf16_gram_restart_3", "bf16_then_fp32_last", "bf16_direct_a_on_diagonal",
                                 "bf16_products_fp32_out_direct",
                                 "bf16_products_fp32_out_gram", "bf16x3_direct", "tf32_direct"}
        dist = {k: v["rel_dist_to_fp64_ns5"] for k, v in variants.items()}
        assert dist["fp32_direct"] < 1e-4
        single_bf16 = [v for k, v in dist.items() if k.startswith("bf16_")]
        assert min(single_bf16) > 1e-3
        # the split product recovers most of fp32's accuracy; TF32's 10-bit mantissa sits between
        assert dist["fp32_direct"] < dist["bf16x3_direct"] < min(single_bf16) / 10
        assert dist["bf16x3_direct"] < dist["tf32_direct"] < min(single_bf16)
        flops = {k: v["flops_vs_direct"] for k, v in variants.items()}
        assert flops["bf16_gram"] < flops["bf16_gram_restart_2"] < 1.0 == flops["bf16_direct"]
        assert flops["bf16x3_direct"] == 3.0
        assert flops["bf16_direct_a_on_diagonal"] == 1.0


def test_ns_bf16_variants_rejects_a_malformed_shape(load_benchmark, capsys):
    with pytest.raises(SystemExit):
        load_benchmark("ns_bf16_variants").main(["--shape", "4x256"])
    assert "BATCHxROWSxCOLS" in capsys.readouterr().err


def test_optimizer_step_toy_run(load_benchmark):
    """benchmarks/optimizer_step.py at toy size, children included: every form timed with its
    recorded plans, FLOPs and own bound; the ratios the speed targets read, each beside the CPU
    capability; accuracy of every form beside torch.optim.Muon's on four input classes, the bf16
    Gram forms measured but refused; the AVX2-capped child on fp32 plans only."""
    bench = load_benchmark("optimizer_step")
    result = bench.main(
        ["--d", "16", "--layers", "1", "--repeats", "2", "--slow-repeats", "1", "--matmul-n", "64",
         "--breakdown", "--threads", "1"])
    assert result["shape_set"] == {"d": 16, "layers": 1} and result["matrix_params"] == (4 + 2 * 4) * 16 * 16
    native = set(bench.ns_auto.candidate_precisions("cpu"))
    expected = {name for name, (prec, _) in bench.FORMS.items() if prec in native | {"auto"}}
    assert set(result["step_ms"]) == expected | {"adamw", "torch_muon"}
    assert all(ms > 0 for ms in result["step_ms"].values())
    forms = result["forms"]
    assert set(forms) == expected and set(result["not_timed"]) == set(bench.FORMS) - expected
    for form in forms.values():
        assert form["step_ms"] > 0 and form["own_bound_ms"] > 0 and form["over_own_bound"] > 0
        assert set(form["plans"]) == {"16x16", "16x64", "64x16"} and form["cpu_capability"]
    # the fp32 default takes the Gram form where it saves FLOPs; fp16 the restarted one
    assert forms["muonclip_fp32"]["plans"] == {"16x16": "fp32:direct", "16x64": "fp32:gram", "64x16": "fp32:gram"}
    if "muonclip_fp16" in forms:
        assert forms["muonclip_fp16"]["plans"]["16x64"] == "fp16:gram@2"
    assert forms["muonclip_fp32"]["ns_gflop"] <= forms["muonclip_fp32_direct"]["ns_gflop"]
    assert result["auto_plans"] == forms["muonclip_auto"]["plans"] and "fp32" in result["auto_rates"]
    assert result["cpu_capability"] and isinstance(result["native_bf16"], bool)
    ratios = result["ratios"]
    assert {"default_step", "avx2_only"} <= set(ratios)
    for row in ratios.values():
        assert row["cpu_capability"] and isinstance(row["met"], bool) and isinstance(row["fp32_met_own_bound"], bool)
        assert row["fp32_over_own_bound"] >= row["fp32_over_direct_bound"] > 0  # Gram: fewer FLOPs, lower bound
    accuracy = result["accuracy"]
    for inputs in ("gaussian", "log_1e-3", "log_1e-6", "power_-2"):
        assert set(accuracy[inputs]) == set(bench.ACCURACY_FORMS) | {
            "bf16_gram_refused", "bf16_gram_restart_2_4_refused", "torch_muon"}
        assert accuracy[inputs]["fp32_direct"] < 1e-4 < accuracy[inputs]["bf16_direct"]
        assert accuracy[inputs]["fp16_gram_restart_2"] < accuracy[inputs]["torch_muon"]
    # the reason the Gram form is refused in bf16: it blows up on an ill-conditioned input
    assert accuracy["log_1e-6"]["bf16_gram_refused"] > 10 * accuracy["log_1e-6"]["bf16_direct"]
    assert {"finite_check", "momentum", "normalize_fp32", "apply_fp32"} <= set(result["breakdown_ms"])
    child = result["avx2_only"]
    assert child["native_bf16"] is False and child["auto_precision"] == "float32"
    assert set(child["not_timed"]) == {"muonclip_bf16", "muonclip_fp16"}  # emulated there
    assert set(child["auto_plans"].values()) <= {"fp32:direct", "fp32:gram"} and list(child["auto_rates"]) == ["fp32"]
    assert child["torch_muon_over_muonclip_auto"] > 0


def test_auto_probe_reports_each_budget_quiet_and_loaded(load_benchmark, capsys):
    """The probe-steadiness benchmark at toy size: one JSON line, every budget under both
    conditions, positive rates for each candidate precision, ratios where a 16-bit one is a
    candidate."""
    result = load_benchmark("auto_probe").main(["--probes", "2", "--budgets", "0,0.005", "--load", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["candidates"][0] == "fp32" and result["cpu_capability"]
    for condition in ("quiet", "loaded"):
        assert set(result[condition]) == {"0", "0.005", "auto"}
        assert 0 <= result[condition]["auto"]["from_one_thread"] <= 2
        for block in result[condition].values():
            assert set(block["gflops"]) == set(result["candidates"])
            assert all(0 < s["min"] <= s["median"] <= s["max"] for s in block["gflops"].values())
            assert ("ratio" in block) == ("ratios" in block) == (len(result["candidates"]) > 1)
            assert all(len(r) == 2 for r in block.get("ratios", {}).values())
