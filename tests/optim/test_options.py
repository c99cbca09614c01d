"""The 2026 options of MuonClip: orthogonaliser schedules, Cautious Weight Decay, NorMuon and
per-head Muon -- each against the float64 reference, their validation and a bit-exact resume."""
import copy
import math

import pytest
import torch
from torch import nn

from muonclip import MuonClip, build_param_groups
from muonclip.models import GPT, GPTConfig
from muonclip.optim import functional as muon_math
from muonclip.optim import ns_forms, orthogonalizers
from muonclip.optim.reference import reference_adamw_step, reference_muon_step, reference_orthogonalize

NAMED = ["ns5", "polar_express", "newton_schulz_cubic", "you_6step", "cans", "deepseek_v4"]
CUSTOM = ((3.0, -3.2, 1.2), (2.0, -1.5, 0.5))


def _grads(shape, steps, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


def _run_muon(shape, group=None, **kw):
    """One parameter (fixed init) and a MuonClip over it with group options ``group``."""
    p = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(7)) * 0.1)
    kw.setdefault("ns_precision", "fp32")  # the float64 parity bands are fp32's (auto is bf16 on some CPUs)
    opt = MuonClip([{"params": [p], **(group or {})}], lr=0.02, **kw)
    return p, opt


# -- orthogonalisers -------------------------------------------------------------------------
def test_named_schedules_are_the_published_numbers():
    sched = orthogonalizers.ORTHOGONALIZERS
    assert sched["newton_schulz_cubic"].schedule() == ((1.5, -0.5, 0.0),) * 5
    you = sched["you_6step"].schedule()
    assert len(you) == 6 and you[0] == (3955 / 1024, -8306 / 1024, 5008 / 1024)
    assert you[-1] == (2172 / 1024, -1833 / 1024, 682 / 1024)
    ds = sched["deepseek_v4"].schedule()
    assert ds == ((3.4445, -4.7750, 2.0315),) * 8 + ((2.0, -1.5, 0.5),) * 2
    cans = sched["cans"].schedule()
    assert cans[0] == (8.4703, -25.1081, 18.6293) and cans[-1] == (2.2737, -1.6447, 0.4162)
    for name, spec in sched.items():
        assert spec.source and spec.steps == len(spec.schedule()), name


@pytest.mark.parametrize("method", NAMED + ["custom"])
@pytest.mark.parametrize("shape", [(24, 80), (80, 24), (32, 32)])
def test_each_schedule_matches_float64_reference(method, shape):
    spec = CUSTOM if method == "custom" else method
    G = torch.randn(shape)
    for impl in ("direct", "gram"):
        fast = muon_math.orthogonalize(G, spec, impl=impl)
        ref = reference_orthogonalize(G, spec, None)
        # deepseek_v4 runs 10 iterations; Gram-NS forced on squares amplifies fp32 round-off
        atol = 2e-4 if impl == "gram" and shape[0] == shape[1] else 3e-5
        torch.testing.assert_close(fast.double(), ref, rtol=0, atol=atol)


def test_cubic_newton_schulz_converges_to_the_polar_factor():
    G = torch.randn(16, 40, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh
    five = muon_math.orthogonalize(G, "newton_schulz_cubic", dtype=torch.float64)
    many = muon_math.orthogonalize(G, "newton_schulz_cubic", 40, dtype=torch.float64)
    assert (many - polar).norm() / polar.norm() < 1e-8  # converges exactly, no band
    assert (five - polar).norm() / polar.norm() > 0.05  # but five steps are far from it
    assert torch.linalg.svdvals(five).max() <= 1.0 + 1e-12  # monotone: never overshoots 1


@pytest.mark.parametrize("n,m", [(32, 96), (48, 48)])
def test_cubic_iterations_skip_the_fifth_power(n, m):
    """ns_flops with a schedule counts the FLOPs the kernels run, cubic (c = 0) steps included."""
    from torch.utils.flop_counter import FlopCounterMode

    coeffs = ((1.5, -0.5, 0.0), (3.4445, -4.7750, 2.0315), (1.5, -0.5, 0.0))
    X = torch.randn(1, n, m)
    for fn, gram in ((ns_forms.quintic_direct, False), (ns_forms.quintic_gram, True)):
        with FlopCounterMode(display=False) as counter:
            fn(X, coeffs)
        assert counter.get_total_flops() == muon_math.ns_flops(n, m, gram=gram, coeffs=coeffs)
    assert muon_math.ns_flops(n, m, coeffs=coeffs) < muon_math.ns_flops(n, m, steps=3)


@pytest.mark.parametrize("bad,match", [
    ((), "empty"), (((1.0, 2.0),), r"\(a, b, c\)"), (((1.0, float("nan"), 0.0),), "finite"),
    (((1.0, float("inf"), 0.0),), "finite"), (((True, 0.0, 0.0),), "finite"), ((("a", 0.0, 0.0),), "finite"),
    ("svd", "orthogonalizer"), (3, "orthogonalizer"),
])
def test_custom_coefficients_are_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        orthogonalizers.resolve_orthogonalizer(bad)
    with pytest.raises(ValueError, match=match):
        MuonClip([nn.Parameter(torch.zeros(4, 4))], orthogonalizer=bad)
    with pytest.raises(ValueError, match=match):  # as a group option too
        MuonClip([{"params": [nn.Parameter(torch.zeros(4, 4))], "orthogonalizer": bad}])


@pytest.mark.parametrize("method", ["you_6step", "deepseek_v4", CUSTOM])
def test_optimizer_runs_each_schedule_for_its_own_length(method):
    """ns_steps=None (default) runs the schedule's published length; the step matches the
    float64 reference with that many iterations."""
    shape = (24, 40)
    p, opt = _run_muon(shape, orthogonalizer=method, weight_decay=0.1)
    ref_p, buf = p.detach().double().clone(), torch.zeros(shape, dtype=torch.float64)
    for grad in _grads(shape, 4):
        p.grad = grad.clone()
        opt.step()
        ref_p, buf = reference_muon_step(ref_p, grad, buf, lr=0.02, weight_decay=0.1, method=method, steps=None)
    torch.testing.assert_close(p.detach().double(), ref_p, rtol=0, atol=2e-5)
    short = _run_muon(shape, orthogonalizer=method, ns_steps=3)
    short[0].grad = p.grad.clone()
    short[1].step()  # an explicit ns_steps truncates (or repeats the last entry)


def test_invalid_ns_steps():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="ns_steps"):
            MuonClip([nn.Parameter(torch.zeros(4, 4))], ns_steps=bad)


# -- Cautious Weight Decay -------------------------------------------------------------------
def test_cautious_decay_follows_the_papers_sign_rule():
    """Alg. 1 of arXiv 2510.12402: x <- x - lr (u + wd I(u x >= 0) x). Entries where the update
    and the weight agree in sign, or either is 0, decay; opposite signs do not."""
    w = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 2.0])
    d = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.3, 0.0])
    lr, wd = 0.1, 0.5
    got = w.clone()
    muon_math.apply_updates_([got], [d], lr, wd, cautious=True)
    decayed = torch.tensor([True, True, False, False, True, True])
    want = w - lr * d - lr * wd * w * decayed
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    plain = w.clone()
    muon_math.apply_updates_([plain], [d], lr, wd)
    assert not torch.equal(plain, got)


@pytest.mark.parametrize("shape,experts", [((16, 16), False), ((40, 12), False), ((3, 10, 20), True)])
def test_cautious_muon_matches_float64_reference(shape, experts):
    p, opt = _run_muon(shape, {"expert_stacks": experts}, weight_decay=0.5, cautious_weight_decay=True)
    ref_p, buf = p.detach().double().clone(), torch.zeros(shape, dtype=torch.float64)
    plain_p = ref_p.clone()
    plain_buf = buf.clone()
    for grad in _grads(shape, 10):
        p.grad = grad.clone()
        opt.step()
        ref_p, buf = reference_muon_step(ref_p, grad, buf, lr=0.02, weight_decay=0.5, expert_stack=experts,
                                         cautious=True)
        plain_p, plain_buf = reference_muon_step(plain_p, grad, plain_buf, lr=0.02, weight_decay=0.5,
                                                 expert_stack=experts)
    torch.testing.assert_close(p.detach().double(), ref_p, rtol=0, atol=1e-5)
    assert (ref_p - plain_p).abs().max() > 1e-4  # the mask really changed the run


def test_cautious_adamw_matches_float64_reference():
    p = nn.Parameter(torch.randn(7, 5))
    opt = MuonClip([{"params": [p], "algorithm": "adamw"}], lr=1e-2, weight_decay=0.5, cautious_weight_decay=True)
    ref = p.detach().double().clone()
    m, v = torch.zeros(7, 5, dtype=torch.float64), torch.zeros(7, 5, dtype=torch.float64)
    plain = ref.clone()
    pm, pv = m.clone(), v.clone()
    for step, grad in enumerate(_grads((7, 5), 10), start=1):
        p.grad = grad
        opt.step()
        ref, m, v = reference_adamw_step(ref, grad, m, v, step, lr=1e-2, weight_decay=0.5, cautious=True)
        plain, pm, pv = reference_adamw_step(plain, grad, pm, pv, step, lr=1e-2, weight_decay=0.5)
    torch.testing.assert_close(p.detach().double(), ref, rtol=0, atol=1e-6)
    assert (ref - plain).abs().max() > 1e-5


def test_cautious_weight_decay_must_be_bool():
    with pytest.raises(ValueError, match="cautious_weight_decay"):
        MuonClip([nn.Parameter(torch.zeros(4, 4))], cautious_weight_decay="yes")


# -- NorMuon ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,experts", [((16, 24), False), ((40, 12), False), ((8, 4, 3), False),
                                           ((3, 10, 20), True)])
def test_normuon_matches_float64_reference(shape, experts):
    p, opt = _run_muon(shape, {"expert_stacks": experts}, weight_decay=0.1, normuon=True, normuon_beta2=0.9)
    ref_p, buf = p.detach().double().clone(), torch.zeros(shape, dtype=torch.float64)
    v = torch.zeros((shape[0], shape[1], 1) if experts else (shape[0], 1), dtype=torch.float64)
    for grad in _grads(shape, 10):
        p.grad = grad.clone()
        opt.step()
        ref_p, buf, v = reference_muon_step(ref_p, grad, buf, lr=0.02, weight_decay=0.1, expert_stack=experts,
                                            normuon_v=v, normuon_beta2=0.9)
    state = opt.state[p]["normuon_second_moment"]
    assert state.shape == v.shape and state.dtype == torch.float32
    torch.testing.assert_close(p.detach().double(), ref_p, rtol=0, atol=2e-5)
    torch.testing.assert_close(state.double(), v, rtol=1e-4, atol=1e-9)


def test_normuon_keeps_the_frobenius_norm_and_equalises_rows():
    """One step from v = 0: v = (1 - b2) mean_cols(O^2), so every row of O / sqrt(v) has the
    same RMS; the result is rescaled to ||O||_F and then scaled like plain Muon."""
    shape = (24, 64)
    grad = torch.randn(shape) * torch.logspace(-1, 1, shape[0]).unsqueeze(1)  # rows of very different size
    outs = {}
    for normuon in (False, True):
        p = nn.Parameter(torch.zeros(shape))
        p.grad = grad.clone()
        MuonClip([p], lr=1.0, weight_decay=0.0, normuon=normuon, ns_precision="fp32").step()
        outs[normuon] = -p.detach().double()
    plain, normed = outs[False], outs[True]
    torch.testing.assert_close(normed.norm(), plain.norm(), rtol=1e-5, atol=0)
    row_rms = normed.pow(2).mean(dim=1).sqrt()
    assert row_rms.max() / row_rms.min() < 1.0 + 1e-4
    plain_rms = plain.pow(2).mean(dim=1).sqrt()
    assert plain_rms.max() / plain_rms.min() > 1.05  # NS alone leaves rows unequal


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.9"])
def test_invalid_normuon_beta2(bad):
    with pytest.raises(ValueError, match="normuon_beta2"):
        MuonClip([nn.Parameter(torch.zeros(4, 4))], normuon=True, normuon_beta2=bad)


def test_normuon_state_appears_when_a_group_turns_it_on():
    p = nn.Parameter(torch.randn(6, 8))
    opt = MuonClip([p], lr=0.02)
    p.grad = torch.randn(6, 8)
    opt.step()
    assert set(opt.state[p]) == {"momentum_buffer"}
    opt.param_groups[0]["normuon"] = True
    opt.step()
    assert opt.state[p]["normuon_second_moment"].abs().sum() > 0


# -- per-head Muon ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape,block,g", [((32, 24), (0, 8), 1), ((32, 24), (0, 8), 2), ((24, 32), (1, 8), 1),
                                           ((24, 32), (1, 8), 4), ((24, 40), (0, 6), 1)])
@pytest.mark.parametrize("scale_mode", ["rms_match", "original"])
def test_per_head_muon_matches_float64_reference(shape, block, g, scale_mode):
    p, opt = _run_muon(shape, {"head_blocks": [block]}, weight_decay=0.1, heads_per_block=g,
                       update_scale=scale_mode)
    eff = (block[0], block[1] * g)
    ref_p, buf = p.detach().double().clone(), torch.zeros(shape, dtype=torch.float64)
    for grad in _grads(shape, 6):
        p.grad = grad.clone()
        opt.step()
        ref_p, buf = reference_muon_step(ref_p, grad, buf, lr=0.02, weight_decay=0.1, head_block=eff,
                                         scale_mode=scale_mode)
    torch.testing.assert_close(p.detach().double(), ref_p, rtol=0, atol=1e-5)


def test_per_head_blocks_are_orthogonalised_independently_and_keep_rms():
    """rms_match: every block's update has RMS ~0.2 (so lr carries over); the blocks are
    each (near-)orthogonal, while the whole matrix is not."""
    hd, heads, d = 8, 4, 32
    grad = torch.randn(heads * hd, d)
    p = nn.Parameter(torch.zeros(heads * hd, d))
    p.grad = grad
    MuonClip([{"params": [p], "head_blocks": [(0, hd)]}], lr=1.0, weight_decay=0.0).step()
    update = -p.detach().double()
    for h in range(heads):
        block = update[h * hd:(h + 1) * hd]
        assert 0.14 <= float(block.pow(2).mean().sqrt()) <= 0.24
        s = torch.linalg.svdvals(block / (0.2 * math.sqrt(d)))
        assert s.min() > 0.6 and s.max() < 1.25
    whole = update / (0.2 * math.sqrt(d))
    cross = whole[:hd] @ whole[hd:2 * hd].T  # rows of different heads are not made orthogonal
    assert cross.abs().max() > 0.05


def test_original_scale_changes_under_column_blocks():
    """The documented lr consequence: o_proj (d, H hd) split into H column blocks gets
    sqrt(d / hd) under "original" (1 unsplit), the same 0.2 sqrt(d) under "rms_match"."""
    d, hd, heads = 32, 8, 4
    assert muon_math.direction_scale((d, heads * hd), mode="original") == 1.0
    assert muon_math.direction_scale((d, heads * hd), head_block=(1, hd), mode="original") == math.sqrt(d / hd)
    assert muon_math.direction_scale((d, heads * hd), head_block=(1, hd)) == pytest.approx(0.2 * math.sqrt(d))


@pytest.mark.parametrize("group,kw,match", [
    ({"head_blocks": [(0, 5)]}, {}, "does not divide"),
    ({"head_blocks": [(2, 4)]}, {}, "dim in"),
    ({"head_blocks": [(0, 4)]}, {"heads_per_block": 3}, "heads_per_block=3"),
    ({"head_blocks": [(0, 4), None]}, {}, "one entry"),
    ({"head_blocks": [(0,)]}, {}, "None or \\(dim, head_width\\)"),
    ({"head_blocks": [(0, 4)], "algorithm": "adamw"}, {}, "Muon groups only"),
    ({}, {"heads_per_block": 0}, "heads_per_block"),
])
def test_head_block_validation_names_the_parameter(group, kw, match):
    with pytest.raises(ValueError, match=match):
        MuonClip([{"params": [nn.Parameter(torch.zeros(16, 12))], "param_names": ["attn.q_proj.weight"],
                   **group}], **kw)


def test_heads_per_block_is_capped_at_the_head_count():
    """GQA: k_proj with 2 KV heads and heads_per_block = 4 is one block of both heads."""
    assert muon_math.effective_head_block((16, 32), False, (0, 8), 4) == (0, 16)
    with pytest.raises(ValueError, match="does not divide"):
        muon_math.effective_head_block((24, 32), False, (0, 8), 2)


@pytest.mark.parametrize("cfg,expect", [
    (dict(n_head=4), {"q_proj": (0, 8), "k_proj": (0, 8), "v_proj": (0, 8), "o_proj": (1, 8)}),
    (dict(n_head=4, n_kv_head=2), {"q_proj": (0, 8), "k_proj": (0, 8), "v_proj": (0, 8), "o_proj": (1, 8)}),
    (dict(attention="mla", n_head=4, kv_lora_rank=16, qk_rope_head_dim=4), None),
])
def test_gpt_declares_its_head_layout(cfg, expect):
    model = GPT(GPTConfig(vocab_size=32, d_model=32, n_layer=2, seq_len=8, **cfg))
    layout = model.head_blocks(include_output=True)
    params = dict(model.named_parameters())
    assert set(layout) <= set(params)
    if expect is not None:
        assert {k.split(".")[-2]: v for k, v in layout.items() if k.startswith("blocks.0.")} == expect
    assert not any("o_proj" in k for k in model.head_blocks())
    for name, (dim, width) in layout.items():
        assert params[name].shape[dim] % width == 0, name
    groups = build_param_groups(model, head_blocks=layout)
    muon = next(g for g in groups if g["algorithm"] == "muon")
    assert sum(b is not None for b in muon["head_blocks"]) == len(layout)
    MuonClip(groups, heads_per_block=2)  # validates: 4 heads in pairs
    with pytest.raises(ValueError, match="not Muon parameters"):
        build_param_groups(model, head_blocks={"embed.weight": (0, 8)})


# -- all options together: a bit-exact resume from state_dict --------------------------------
def _gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=41, d_model=32, n_layer=2, n_head=4, n_kv_head=2, seq_len=8))


def _optimizer(model):
    groups = build_param_groups(model, lr=0.02, weight_decay=0.1, adamw_lr=3e-3,
                                head_blocks=model.head_blocks(include_output=True))
    return MuonClip(groups, lr=0.02, weight_decay=0.1, orthogonalizer=CUSTOM, cautious_weight_decay=True,
                    normuon=True, heads_per_block=2)


def _train(model, opt, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 41, (2, 9), generator=g)
        opt.zero_grad(set_to_none=True)
        model(idx[:, :-1], idx[:, 1:])[1].backward()
        opt.step()


def test_state_dict_continuation_with_every_option_is_bit_exact():
    model = _gpt()
    opt = _optimizer(model)
    _train(model, opt, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 3, seed=1)
    assert any("normuon_second_moment" in s for s in saved_opt["state"].values())

    fresh = _gpt()
    fresh.load_state_dict(saved_model)
    opt2 = _optimizer(fresh)
    opt2.load_state_dict(saved_opt)
    _train(fresh, opt2, 3, seed=1)
    for (name, a), b in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b), name
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        for key, t in opt.state[p].items():
            assert torch.equal(t, opt2.state[q][key]), key


def test_state_dict_from_before_the_options_loads_with_defaults(toy_lm):
    """A checkpoint whose groups predate the new options resumes with their defaults."""
    model = toy_lm()
    opt = MuonClip(build_param_groups(model, lr=0.02), lr=0.02)
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        for key in ("cautious_weight_decay", "normuon", "normuon_beta2", "heads_per_block"):
            g.pop(key)
    opt2 = MuonClip(build_param_groups(model, lr=0.02), lr=0.02)
    opt2.load_state_dict(sd)
    assert all(g["normuon"] is False and g["heads_per_block"] == 1 for g in opt2.param_groups)
