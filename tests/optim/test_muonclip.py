"""The MuonClip class: parity with float64 / torch AdamW, torch.optim behaviour, bad input."""
import copy

import pytest
import torch
from torch import nn

from muonclip import MuonClip, NonFiniteGradientError, build_param_groups
from muonclip.optim.reference import reference_adamw_step, reference_muon_step

SHAPES = {"square": (16, 16), "tall": (40, 12), "wide": (12, 40), "experts": (3, 10, 20), "conv1d": (8, 4, 3),
          "conv": (8, 4, 3, 3)}


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_muon_matches_float64_reference_over_10_steps(shape, nesterov, request):
    experts = "experts" in request.node.callspec.id
    p = nn.Parameter(torch.randn(shape) * 0.1)
    # fp32 pinned: on a CPU with native bf16, auto means bf16 (its own parity test has its own band)
    opt = MuonClip([{"params": [p], "expert_stacks": experts}], lr=0.02, nesterov=nesterov, weight_decay=0.1,
                   ns_precision="fp32")
    ref_p, ref_buf = p.detach().double().clone(), torch.zeros(shape, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        grad = torch.randn(shape, generator=g)
        p.grad = grad.clone()
        opt.step()
        ref_p, ref_buf = reference_muon_step(ref_p, grad, ref_buf, lr=0.02, nesterov=nesterov, weight_decay=0.1,
                                             expert_stack=experts)
    torch.testing.assert_close(p.detach().double(), ref_p, rtol=0, atol=1e-5)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"].double(), ref_buf, rtol=1e-6, atol=1e-6)


def test_float64_parameters_are_not_narrowed():
    """fp64 parameters used to crash an AdamW group (fp32 moments against an fp64 gradient,
    after part of the step was applied) and were rounded to fp32 on every Muon step, even at
    lr 0. State now follows the parameter when it is wider than fp32."""
    g = torch.Generator().manual_seed(7)
    w0, b0 = torch.randn(12, 20, dtype=torch.float64, generator=g), torch.randn(20, dtype=torch.float64, generator=g)
    w, b = nn.Parameter(w0.clone()), nn.Parameter(b0.clone())
    opt = MuonClip([{"params": [w]}, {"params": [b], "algorithm": "adamw"}], lr=0.0, weight_decay=0.0,
                   ns_precision="fp32")
    w.grad = torch.randn(12, 20, dtype=torch.float64, generator=g)
    b.grad = torch.randn(20, dtype=torch.float64, generator=g)
    opt.step()
    assert torch.equal(w.detach(), w0) and torch.equal(b.detach(), b0)
    assert {t.dtype for st in opt.state.values() for k, t in st.items() if k != "step"} == {torch.float64}


def test_float64_adamw_group_matches_torch_adamw_bit_for_bit():
    g = torch.Generator().manual_seed(8)
    b0 = torch.randn(20, dtype=torch.float64, generator=g)
    ours, theirs = nn.Parameter(b0.clone()), nn.Parameter(b0.clone())
    opt = MuonClip([{"params": [ours], "algorithm": "adamw"}], lr=1e-2, weight_decay=0.1)
    reference = torch.optim.AdamW([theirs], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), foreach=False)
    for _ in range(6):
        grad = torch.randn(20, dtype=torch.float64, generator=g)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt.step()
        reference.step()
    assert torch.equal(ours.detach(), theirs.detach())


def test_float64_muon_matches_float64_reference():
    g = torch.Generator().manual_seed(9)
    w = nn.Parameter(torch.randn(24, 40, dtype=torch.float64, generator=g) * 0.1)
    opt = MuonClip([w], lr=0.02, weight_decay=0.1, ns_precision="fp32")
    ref_w, ref_buf = w.detach().clone(), torch.zeros(24, 40, dtype=torch.float64)
    for _ in range(5):
        grad = torch.randn(24, 40, dtype=torch.float64, generator=g)
        w.grad = grad.clone()
        opt.step()
        ref_w, ref_buf = reference_muon_step(ref_w, grad, ref_buf, lr=0.02, weight_decay=0.1)
    torch.testing.assert_close(w.detach(), ref_w, rtol=0, atol=1e-5)  # NS itself runs in fp32
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], ref_buf, rtol=1e-12, atol=1e-12)


def _adamw_pair(toy_lm, **kw):
    torch.manual_seed(0)
    model = toy_lm()
    twin = copy.deepcopy(model)
    ours = MuonClip([{"params": list(model.parameters()), "algorithm": "adamw"}], **kw)
    theirs = torch.optim.AdamW(twin.parameters(), lr=kw["lr"], betas=kw.get("betas", (0.9, 0.95)),
                               eps=1e-8, weight_decay=kw["weight_decay"], foreach=False)
    return model, twin, ours, theirs


def test_adamw_groups_match_torch_adamw(toy_lm, toy_batch):
    model, twin, ours, theirs = _adamw_pair(toy_lm, lr=3e-3, weight_decay=0.1)
    idx = toy_batch()
    for _ in range(10):
        for m, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            m(idx).logsumexp(-1).mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=False):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_adamw_matches_float64_reference():
    p = nn.Parameter(torch.randn(7))
    opt = MuonClip([{"params": [p], "algorithm": "adamw"}], lr=1e-2, weight_decay=0.1)
    ref, m, v = p.detach().double().clone(), torch.zeros(7, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)
    for step in range(1, 11):
        grad = torch.randn(7)
        p.grad = grad
        opt.step()
        ref, m, v = reference_adamw_step(ref, grad, m, v, step, lr=1e-2, weight_decay=0.1)
    torch.testing.assert_close(p.detach().double(), ref, rtol=0, atol=1e-6)


def _train(model, opt, idx, steps, sched=None):
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model(idx).logsumexp(-1).mean().backward()
        opt.step()
        if sched is not None:
            sched.step()


def test_state_dict_continuation_is_bit_exact(toy_lm, toy_batch):
    idx = toy_batch()
    torch.manual_seed(0)
    model = toy_lm()
    resumed_model = copy.deepcopy(model)
    opt = MuonClip(build_param_groups(model, lr=0.02), lr=0.02)
    _train(model, opt, idx, 6)

    opt2 = MuonClip(build_param_groups(resumed_model, lr=0.02), lr=0.02)
    _train(resumed_model, opt2, idx, 3)
    saved_model, saved_opt = copy.deepcopy(resumed_model.state_dict()), copy.deepcopy(opt2.state_dict())
    torch.manual_seed(0)
    fresh = toy_lm()
    fresh.load_state_dict(saved_model)
    opt3 = MuonClip(build_param_groups(fresh, lr=0.02), lr=0.02)
    opt3.load_state_dict(saved_opt)
    _train(fresh, opt3, idx, 3)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=False):
        assert torch.equal(a, b)


def _bf16_params_and_groups(normuon: bool):
    torch.manual_seed(3)
    w = nn.Parameter(torch.randn(16, 8).bfloat16())
    b = nn.Parameter(torch.randn(8).bfloat16())
    return [w, b], [{"params": [w], "normuon": normuon}, {"params": [b], "algorithm": "adamw"}]


def _step_with_seeded_grads(params, opt, seeds):
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        opt.step()


@pytest.mark.parametrize("normuon", [False, True])
def test_bf16_model_resumes_bit_exactly_with_fp32_state(normuon):
    """torch's load_state_dict casts floating state to each parameter's dtype. MuonClip keeps
    momentum, moments and the NorMuon second moment in fp32, so a bf16 run resumed from its
    state dict must go on exactly as the uninterrupted one (it drifted when they became bf16)."""
    params, groups = _bf16_params_and_groups(normuon)
    opt = MuonClip(groups, lr=0.02)
    _step_with_seeded_grads(params, opt, range(6))

    first, first_groups = _bf16_params_and_groups(normuon)
    first_opt = MuonClip(first_groups, lr=0.02)
    _step_with_seeded_grads(first, first_opt, range(3))
    saved_state, saved_params = copy.deepcopy(first_opt.state_dict()), [p.detach().clone() for p in first]

    resumed, resumed_groups = _bf16_params_and_groups(normuon)
    with torch.no_grad():
        for p, saved in zip(resumed, saved_params, strict=True):
            p.copy_(saved)
    resumed_opt = MuonClip(resumed_groups, lr=0.02)
    resumed_opt.load_state_dict(saved_state)
    kept = {key: t.dtype for st in resumed_opt.state.values() for key, t in st.items()}
    assert set(kept.values()) == {torch.float32}, kept
    _step_with_seeded_grads(resumed, resumed_opt, range(3, 6))
    assert all(torch.equal(a, b) for a, b in zip(params, resumed, strict=True))


@pytest.mark.parametrize("corrupt,match", [
    ({"normuon_beta2": 1.5}, "normuon_beta2"),
    ({"momentum_buffer": torch.zeros(4, 8)}, r"momentum_buffer of parameter #0 .* shape \(4, 8\)"),
])
def test_refused_load_state_dict_changes_nothing(corrupt, match, assert_same_optimizer_state):
    """A state dict that does not fit (an invalid group option, a state tensor of another
    shape) is refused before anything is loaded: groups and state stay as they were."""
    p = nn.Parameter(torch.randn(8, 8))
    p.grad = torch.randn(8, 8)
    opt = MuonClip([p], lr=0.02)
    opt.step()
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(before)
    bad["param_groups"][0]["lr"] = 0.5
    for key, value in corrupt.items():
        (bad["state"][0] if torch.is_tensor(value) else bad["param_groups"][0])[key] = value
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert_same_optimizer_state(before, after)


def test_lr_scheduler_and_closure(toy_lm, toy_batch):
    model = toy_lm()
    opt = MuonClip(build_param_groups(model, lr=0.02), lr=0.02)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    idx = toy_batch()

    def closure():
        opt.zero_grad()
        loss = model(idx).logsumexp(-1).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss.ndim == 0
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_muon_update_ignores_gradient_scale():
    """Global-norm gradient clipping cannot shrink Muon's step (DeepSpeed #8439): NS normalises
    the momentum, so scaling every gradient by 1e-4 leaves the update unchanged."""
    g = torch.randn(16, 24)
    steps = []
    for scale in (1.0, 1e-4):
        p = nn.Parameter(torch.zeros(16, 24))
        p.grad = g * scale
        MuonClip([p], lr=0.1, weight_decay=0.0).step()
        steps.append(p.detach().clone())
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-4, atol=1e-6)
    assert steps[0].abs().max() > 0


def test_nonfinite_gradient_raises_names_param_and_changes_nothing(toy_lm, toy_batch, assert_same_optimizer_state):
    model = toy_lm()
    opt = MuonClip(build_param_groups(model, lr=0.02), lr=0.02)
    _train(model, opt, toy_batch(), 2)
    before_p = copy.deepcopy(model.state_dict())
    before_s = copy.deepcopy(opt.state_dict())
    model(toy_batch()).sum().backward()
    model.up.weight.grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteGradientError, match="up.weight"):
        opt.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_p[k])
    assert_same_optimizer_state(before_s, opt.state_dict())


def test_nonfinite_skip_policy_counts():
    p = nn.Parameter(torch.ones(4, 4))
    opt = MuonClip([p], lr=0.1, nonfinite="skip")
    p.grad = torch.full((4, 4), float("inf"))
    opt.step()
    assert opt.skipped_steps == 1 and torch.equal(p.detach(), torch.ones(4, 4))


def test_vector_in_muon_group_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="'norm.bias'"):
        MuonClip([{"params": [nn.Parameter(torch.zeros(3))], "param_names": ["norm.bias"], "algorithm": "muon"}])
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        MuonClip([nn.Parameter(torch.zeros(3))])


def test_sparse_and_complex_are_rejected():
    with pytest.raises(ValueError, match="complex"):
        MuonClip([nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64))])
    emb = nn.Embedding(10, 4, sparse=True)
    opt = MuonClip([{"params": list(emb.parameters()), "algorithm": "adamw"}])
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()


def test_zero_gradient_gives_zero_update_and_none_is_skipped():
    a, b = nn.Parameter(torch.randn(6, 6)), nn.Parameter(torch.randn(6, 6))
    a0, b0 = a.detach().clone(), b.detach().clone()
    opt = MuonClip([a, b], lr=0.1, weight_decay=0.0)
    a.grad = torch.zeros(6, 6)
    opt.step()
    assert torch.equal(a.detach(), a0) and torch.equal(b.detach(), b0)
    assert b not in opt.state and torch.isfinite(opt.state[a]["momentum_buffer"]).all()


def test_bf16_parameters_update_in_fp32():
    p32 = nn.Parameter(torch.randn(16, 16))
    p16 = nn.Parameter(p32.detach().to(torch.bfloat16))
    g = torch.randn(16, 16)
    for p in (p32, p16):
        p.grad = g.to(p.dtype)
        MuonClip([p], lr=0.05, weight_decay=0.0).step()
    assert p16.dtype == torch.bfloat16
    torch.testing.assert_close(p16.detach().float(), p32.detach(), rtol=2e-2, atol=2e-2)
    emb = nn.Parameter(torch.randn(5).to(torch.bfloat16))
    emb.grad = torch.ones(5, dtype=torch.bfloat16)
    MuonClip([{"params": [emb], "algorithm": "adamw"}], lr=0.1).step()
    assert emb.dtype == torch.bfloat16 and torch.isfinite(emb.float()).all()


def test_bf16_newton_schulz_runs_on_cpu_with_fp32_state():
    p = nn.Parameter(torch.randn(8, 24))
    p.grad = torch.randn(8, 24)
    opt = MuonClip([p], lr=0.02, ns_precision="bf16")
    opt.step()
    assert p.dtype == torch.float32 and opt.state[p]["momentum_buffer"].dtype == torch.float32
    assert torch.isfinite(p).all()


def test_same_shape_batching_equals_one_by_one():
    """In fp32 (pinned: in bf16 a batch of 3 and a batch of 1 may run different kernels, e.g.
    oneDNN's against ATen's below its size threshold, or AMX, and round differently)."""
    ps = [nn.Parameter(torch.randn(12, 20)) for _ in range(3)] + [nn.Parameter(torch.randn(20, 12))]
    solo = [nn.Parameter(p.detach().clone()) for p in ps]
    grads = [torch.randn(p.shape) for p in ps]
    for p, g in zip(ps, grads, strict=False):
        p.grad = g.clone()
    MuonClip(ps, lr=0.02, ns_precision="fp32").step()
    for p, g in zip(solo, grads, strict=False):
        p.grad = g.clone()
        MuonClip([p], lr=0.02, ns_precision="fp32").step()
    for a, b in zip(ps, solo, strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    ({"lr": -1}, "learning rate"), ({"momentum": 1.0}, "momentum"), ({"orthogonalizer": "svd"}, "orthogonalizer"),
    ({"update_scale": "x"}, "update_scale"), ({"qk_clip_tau": 0.0}, "qk_clip_tau"), ({"gqa_mode": "x"}, "gqa_mode"),
    ({"qk_clip_tau": 30.0}, "qk_clip_spec"), ({"nonfinite": "ignore"}, "nonfinite"),
    ({"ns_precision": "fp8"}, "ns_precision"), ({"ns_impl": "fast"}, "ns_impl"),
])
def test_invalid_options(kw, match):
    with pytest.raises(ValueError, match=match):
        MuonClip([nn.Parameter(torch.zeros(4, 4))], **kw)


def test_unknown_algorithm_rejected():
    with pytest.raises(ValueError, match="algorithm"):
        MuonClip([{"params": [nn.Parameter(torch.zeros(4, 4))], "algorithm": "sgd"}])


def _clip_setup(toy_lm):
    """A toy model whose `up` rows act as q and `down.T` as nothing: two fake one-head layers."""
    from muonclip.optim.qk_clip import QKClipLayerSpec, RowBlock

    model = toy_lm()
    spec = [QKClipLayerSpec(n_head=2, n_kv_head=2, q=(RowBlock("up.weight", 4),), k=(RowBlock("up.weight", 4, 8),)),
            QKClipLayerSpec(n_head=1, n_kv_head=1, q=(RowBlock("down.weight", 4),))]
    opt = MuonClip(build_param_groups(model, lr=0.02), lr=0.02, qk_clip_tau=5.0, qk_clip_spec=spec)
    return model, opt


@pytest.mark.parametrize("bad", [
    [torch.tensor([50.0, 1.0]), torch.tensor([float("nan")])],
    [torch.tensor([50.0, 1.0]), torch.tensor([float("inf")])],
    [torch.tensor([50.0, 1.0]), torch.tensor([1.0, 2.0])],
    [torch.tensor([50.0, 1.0])],
])
def test_refused_qk_clip_step_changes_nothing(toy_lm, toy_batch, bad, assert_same_optimizer_state):
    """Bad max logits are refused before the update: params and state are bit-identical
    (they used to be checked only after the update had been applied, issue #12)."""
    model, opt = _clip_setup(toy_lm)
    idx = toy_batch()
    model(idx).logsumexp(-1).mean().backward()
    opt.step(max_logits=[torch.tensor([50.0, 1.0]), torch.tensor([1.0])])  # state exists, one clip done
    opt.zero_grad()
    model(idx).logsumexp(-1).mean().backward()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError):
        opt.step(max_logits=bad)
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert_same_optimizer_state(state, opt.state_dict())


def test_refusal_for_another_ranks_nan_logit_says_so(toy_lm, toy_batch, monkeypatch):
    """When only rank 1's max logits are NaN, rank 0 refuses too, but its message used to show
    its own finite values as the culprit."""
    from muonclip.optim import distributed

    model, opt = _clip_setup(toy_lm)
    model(toy_batch()).logsumexp(-1).mean().backward()

    def min_with_a_nan_rank(flags, op, ctx):
        flags[-1] = 0.0  # the MIN all-reduce with a rank whose max logits are not finite
        return flags

    monkeypatch.setattr(distributed, "context", lambda params, group: object())
    monkeypatch.setattr(distributed, "all_reduce_", min_with_a_nan_rank)
    with pytest.raises(ValueError, match="must be finite for QK-Clip, got on another rank"):
        opt.step(max_logits=[torch.tensor([5.0, 1.0]), torch.tensor([1.0])])


def test_negative_and_mixed_sign_logits_never_clip(toy_lm, toy_batch):
    """Megatron-LM #7517 (NaN weights for negative max logits) through the optimizer."""
    model, opt = _clip_setup(toy_lm)
    model(toy_batch()).logsumexp(-1).mean().backward()
    opt.step(max_logits=[torch.tensor([-30.0, 0.0]), torch.tensor([-1e6])])
    assert opt.last_qk_clip.n_clipped == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("precision,tol", [("fp32", 2e-5), ("bf16", 5 * torch.finfo(torch.bfloat16).eps)])
def test_each_precision_matches_float64_reference(precision, tol):
    """One step per precision against the float64 reference; ``tol`` bounds the relative
    distance of the applied update: fp32 measured ~1e-6; bf16 1.3-1.8e-2, 1.7-2.3 bf16 eps
    (eps = 2^-7; five bf16 iterations of direct NS), so the band is 5 eps (3.9e-2)."""
    shapes = [(32, 96), (96, 32), (48, 48), (3, 16, 40)]
    g = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in shapes]
    grads = [torch.randn(s, generator=g) for s in shapes]
    before = [p.detach().double().clone() for p in params]
    for p, gr in zip(params, grads, strict=False):
        p.grad = gr.clone()
    opt = MuonClip([{"params": params, "expert_stacks": [False, False, False, True]}], lr=0.02,
                   weight_decay=0.0, ns_precision=precision)
    opt.step()
    for p, gr, w0, shape in zip(params, grads, before, shapes, strict=False):
        assert p.dtype == torch.float32 and opt.state[p]["momentum_buffer"].dtype == torch.float32
        ref, _ = reference_muon_step(w0, gr, torch.zeros(shape, dtype=torch.float64), lr=0.02,
                                     expert_stack=len(shape) == 3)
        rel = ((p.detach().double() - w0) - (ref - w0)).norm() / (ref - w0).norm()
        assert rel < tol, (shape, float(rel))
        assert rel > (1e-3 if precision == "bf16" else 0), "bf16 must really run in bf16"


def test_conv1d_from_param_groups_is_flattened(toy_lm):
    """Conv1d weights routed by build_param_groups get the flattened (out, in*k) update."""
    model = toy_lm(conv=True)
    groups = build_param_groups(model, lr=0.02, weight_decay=0.0)
    muon = next(g for g in groups if g["algorithm"] == "muon")
    i = muon["param_names"].index("conv.weight")
    assert not muon["expert_stacks"][i]
    p = model.conv.weight
    grad = torch.randn(p.shape)
    w0 = p.detach().double().clone()
    for q in model.parameters():
        q.grad = torch.zeros_like(q)
    p.grad = grad.clone()
    MuonClip(groups, lr=0.02, ns_precision="fp32").step()
    ref, _ = reference_muon_step(w0, grad, torch.zeros(p.shape, dtype=torch.float64), lr=0.02)
    torch.testing.assert_close(p.detach().double(), ref, rtol=0, atol=1e-5)
