"""ns_precision="auto": the choice from FLOPs times rates (a pure function, rates injected), the
per-process probe and its JSON cache, and the plan recorded in the optimizer so a resumed run
stays bit-exact."""
import io
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from muonclip import MuonClip
from muonclip.optim import ns_auto, ns_forms, precision
from muonclip.optim.orthogonalizers import ORTHOGONALIZERS

NS5 = ORTHOGONALIZERS["ns5"].schedule(5)
WIDE, SQUARE, TALL = (256, 1024), (256, 256), (1024, 256)


@pytest.fixture(autouse=True)
def _fresh_rates(monkeypatch):
    """Each test starts with no cached rates and no pinned ones."""
    monkeypatch.setattr(ns_auto, "_rates", {})
    monkeypatch.delenv("MUONCLIP_NS_RATES", raising=False)
    monkeypatch.delenv("MUONCLIP_NS_RATES_CACHE", raising=False)


@pytest.mark.parametrize("rates,expected", [
    # Zen 4 (facts 5): bf16 2.4x fp32; bf16 Gram is not accepted, so bf16 direct everywhere
    ({"fp32": 174, "bf16": 410}, ["bf16:direct", "bf16:direct", "bf16:direct"]),
    # a Xeon capped below AMX (the issue): bf16 slower than fp32, so fp32, Gram where it saves FLOPs
    ({"fp32": 299, "bf16": 190}, ["fp32:direct", "fp32:gram", "fp32:gram"]),
    # a GPU: fp16 and bf16 tensor cores alike; fp16 is more accurate and runs the restarted Gram form
    ({"fp32": 50, "bf16": 700, "fp16": 700}, ["fp16:direct", "fp16:gram@2", "fp16:gram@2"]),
    # fp16 native but 1.2x slower than bf16: direct bf16 on square, fp16 Gram (60 vs 90 n^3) on wide
    ({"fp32": 50, "bf16": 840, "fp16": 700}, ["bf16:direct", "fp16:gram@2", "fp16:gram@2"]),
    # only fp32 (an AVX2-only CPU)
    ({"fp32": 100}, ["fp32:direct", "fp32:gram", "fp32:gram"]),
])
def test_choose_from_flops_times_rates(rates, expected):
    assert [ns_auto.choose(n, m, NS5, rates) for n, m in (SQUARE, WIDE, TALL)] == expected


def test_choose_honours_an_explicit_form():
    rates = {"fp32": 100, "bf16": 400, "fp16": 400}
    assert ns_auto.choose(*WIDE, NS5, rates, impl="direct") == "fp16:direct"
    assert ns_auto.choose(*WIDE, NS5, rates, impl="gram@") == "fp32:gram"  # unrestarted: fp32 only
    assert ns_auto.choose(*WIDE, NS5, {"fp32": 100, "bf16": 400}, impl="gram") == "fp32:gram"
    with pytest.raises(ValueError, match="no precision"):
        ns_auto.choose(*WIDE, NS5, {"bf16": 400}, impl="gram@")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 512), m=st.integers(1, 512), fp32=st.floats(1, 1e4),
       bf16=st.one_of(st.none(), st.floats(1, 1e4)), fp16=st.one_of(st.none(), st.floats(1, 1e4)))
def test_the_choice_is_the_cheapest_accepted_plan(n, m, fp32, bf16, fp16):
    rates = {k: v for k, v in {"fp32": fp32, "bf16": bf16, "fp16": fp16}.items() if v is not None}
    chosen = ns_auto.choose(n, m, NS5, rates)
    dtype, form = ns_auto.parse_plan(chosen)
    name = chosen.split(":")[0]
    assert form in ns_forms.accepted_forms(dtype) and name in rates

    def cost(p, f):
        return ns_forms.form_flops(n, m, f, NS5, ns_auto.PRECISION_DTYPES[p]) / rates[p]
    best = min(cost(p, f) for p in rates for f in ns_forms.accepted_forms(ns_auto.PRECISION_DTYPES[p]))
    assert cost(name, form) == best


def test_explicit_precisions_plan_what_they_always_ran():
    """fp32 (the reproduction presets' pin) keeps the FLOP rule it had: Gram without restarts
    where cheaper, direct on square matrices; bf16 runs direct."""
    assert ns_auto.plan(*WIDE, "fp32", "auto", NS5, "cpu") == "fp32:gram"
    assert ns_auto.plan(*SQUARE, "fp32", "auto", NS5, "cpu") == "fp32:direct"
    assert ns_auto.plan(*WIDE, "bf16", "auto", NS5, "cpu") == "bf16:direct"
    assert ns_auto.plan(*WIDE, "fp16", "auto", NS5, "cpu") == "fp16:gram@2"
    with pytest.raises(ValueError, match="ns_precision"):
        ns_auto.plan(*WIDE, "tf32", "auto", NS5, "cpu")


def test_candidates_follow_native_flags_and_caps(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert ns_auto.candidate_precisions("cpu") == ("fp32",)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512_bf16", "amx_fp16"}))
    assert ns_auto.candidate_precisions("cpu") == ("fp32", "bf16", "fp16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert ns_auto.candidate_precisions("cpu") == ("fp32",)
    assert ns_auto.candidate_precisions("cuda") == ("fp32", "bf16", "fp16")


def test_rates_are_probed_once_per_process_and_cached_in_a_json_file(monkeypatch, tmp_path):
    calls = []

    def fake_probe(dtypes, device):
        calls.extend(dtypes)
        return {d: {torch.float32: 100.0, torch.bfloat16: 250.0}[d] for d in dtypes}, 2
    monkeypatch.setattr(ns_auto, "probe_rates", fake_probe)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    cache = tmp_path / "sub" / "rates.json"
    monkeypatch.setenv("MUONCLIP_NS_RATES_CACHE", str(cache))
    assert ns_auto.measured_rates("cpu") == {"fp32": 100.0, "bf16": 250.0}
    assert ns_auto.measured_rates("cpu") == {"fp32": 100.0, "bf16": 250.0}
    assert calls == [torch.float32, torch.bfloat16]  # once per process
    data = json.loads(cache.read_text())
    assert list(data.values()) == [{"fp32": 100.0, "bf16": 250.0}]
    monkeypatch.setattr(ns_auto, "_rates", {})  # a new process on the same machine reads the file
    assert ns_auto.measured_rates("cpu") == {"fp32": 100.0, "bf16": 250.0} and len(calls) == 2
    cache.write_text("not json")  # an unreadable cache is measured again and rewritten
    monkeypatch.setattr(ns_auto, "_rates", {})
    assert ns_auto.measured_rates("cpu") == {"fp32": 100.0, "bf16": 250.0} and len(calls) == 4
    assert json.loads(cache.read_text())
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)  # other threads, other rates
    ns_auto.measured_rates("cpu")
    assert len(calls) == 6


@pytest.mark.parametrize("preempted", [False, True])
def test_the_probe_falls_back_to_one_thread_only_where_many_ran_slower(monkeypatch, preempted):
    """On a busy machine a parallel product waits for a descheduled thread, so both precisions
    come out near one time slice: the many-thread rates are then slower than one thread's, and
    the one-thread rates (whose ratio holds under load) are used. Quiet, nothing changes."""
    def fake_probe(dtypes, device, *args, **kwargs):
        one = torch.get_num_threads() == 1
        fp32, bf16 = (90.0, 190.0) if one else ((17.0, 17.0) if preempted else (200.0, 400.0))
        return {torch.float32: fp32, torch.bfloat16: bf16}
    monkeypatch.setattr(ns_auto, "probe_all", fake_probe)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rates, threads = ns_auto.probe_rates([torch.float32, torch.bfloat16], "cpu")
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    assert (threads, rates[torch.bfloat16] / rates[torch.float32]) == ((1, 190 / 90) if preempted else (2, 2.0))


def test_pinned_rates_are_checked(monkeypatch):
    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"bf16": 3}')
    with pytest.raises(ValueError, match="MUONCLIP_NS_RATES"):
        ns_auto.measured_rates("cpu")
    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 3, "fp16": 9}')
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset())
    assert ns_auto.measured_rates("cpu") == {"fp32": 3.0}  # fp16 is not native here: dropped


def test_the_probe_measures_a_positive_rate_per_dtype():
    rates = ns_auto.probe_all([torch.float32, torch.bfloat16], "cpu", repeats=1, budget_s=0.0)
    assert set(rates) == {torch.float32, torch.bfloat16} and min(rates.values()) > 0
    assert ns_auto.probe(torch.float32, "cpu", repeats=1) > 0


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in [(16, 64), (64, 16), (24, 24)]]


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def _run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        _grads(params, t)
        opt.step()


def test_the_plan_is_recorded_and_a_resumed_run_keeps_it_bit_for_bit(monkeypatch):
    """A run planned with fp16 fast (fp16 Gram on the wide and tall matrices), saved, loaded with
    torch.load(weights_only=True) in a process that measures fp32 fastest, goes on with the
    recorded plans and ends bit-identical to the uninterrupted run."""
    monkeypatch.setattr(ns_auto, "candidate_precisions", lambda device: ("fp32", "bf16", "fp16"))
    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 50, "bf16": 700, "fp16": 700}')
    whole = _model()
    opt = MuonClip(whole, lr=0.02)
    _run(opt, whole, 4)
    assert opt.param_groups[0]["ns_plans"] == ["fp16:gram@2", "fp16:gram@2", "fp16:direct"]
    assert opt.ns_plan() == {"group0.0": "fp16:gram@2", "group0.1": "fp16:gram@2", "group0.2": "fp16:direct"}

    first = _model()
    opt1 = MuonClip(first, lr=0.02)
    _run(opt1, first, 2)
    buf = io.BytesIO()
    torch.save({"opt": opt1.state_dict(), "params": [p.detach().clone() for p in first]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 5000, "bf16": 700, "fp16": 700}')
    resumed = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    opt2 = MuonClip(resumed, lr=0.02)
    assert opt2.ns_plan()["group0.0"] == "fp32:gram"  # what this process alone would pick
    opt2.load_state_dict(saved["opt"])
    assert opt2.ns_plan()["group0.0"] == "fp16:gram@2"
    _run(opt2, resumed, 2, start=2)
    for a, b in zip(whole, resumed, strict=True):
        assert torch.equal(a.detach(), b.detach())


def test_a_changed_request_is_planned_again(monkeypatch):
    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 100}')
    params = _model()
    opt = MuonClip(params, lr=0.02)
    _run(opt, params, 1)
    assert opt.param_groups[0]["ns_plans"] == ["fp32:gram", "fp32:gram", "fp32:direct"]
    opt.param_groups[0]["ns_precision"] = "bf16"
    _run(opt, params, 1, start=1)
    assert opt.param_groups[0]["ns_plans"] == ["bf16:direct"] * 3
    assert opt.param_groups[0]["ns_request"] == "bf16/auto"


def test_once_every_plan_is_recorded_a_step_plans_nothing(monkeypatch):
    """The hot path: after the first step, a step reads the recorded plans; it neither plans
    again nor replaces the recorded list."""
    from muonclip.optim import optimizer_state

    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 100}')
    params = _model()
    opt = MuonClip(params, lr=0.02)
    _run(opt, params, 1)
    recorded = opt.param_groups[0]["ns_plans"]

    def refuse(*args, **kwargs):
        raise AssertionError("planned again")

    monkeypatch.setattr(optimizer_state, "plan", refuse)
    _run(opt, params, 2, start=1)
    assert opt.param_groups[0]["ns_plans"] is recorded


def test_a_malformed_saved_plan_is_refused_and_nothing_changes(monkeypatch):
    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 100}')
    params = _model()
    opt = MuonClip(params, lr=0.02)
    _run(opt, params, 1)
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["param_groups"][0]["ns_plans"] = ["fp8:direct", "fp32:gram", "fp32:direct"]
    with pytest.raises(ValueError, match="plan"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["ns_plans"] == before["param_groups"][0]["ns_plans"]
