"""Bugs reported against other Muon / QK-Clip implementations, as tests MuonClip passes.

Each test names the peer issue it guards against. The 2-process runs go through
``dist_worker.py`` (gloo, file rendezvous, collectives time out after ``PG_TIMEOUT`` seconds)
in a subprocess with its own timeout, so a hang fails the test instead of blocking the suite.
"""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from muonclip import MuonClip, apply_qk_clip_, build_param_groups
from muonclip.models import GPT, GPTConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORKER = HERE / "dist_worker.py"
TIMEOUT = 180  # the whole 2-process run: spawn, import torch twice, both scenarios, on a busy box

_spec = importlib.util.spec_from_file_location("dist_worker", WORKER)
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


# -- Megatron-LM #7517: NaN weights from negative / mixed-sign max logits -------------------------
LAYOUTS = {
    "mha": dict(n_head=4),
    "gqa": dict(n_head=4, n_kv_head=2),
    "mla": dict(attention="mla", n_head=4, kv_lora_rank=16, qk_rope_head_dim=4),
}
TAU = 5.0
# Per layer: negative, zero (both signs), mixed-sign, exactly tau, and two heads above tau.
SIGNED_LOGITS = [
    torch.tensor([-7.5, 0.0, -0.0, 12.0]),
    torch.tensor([-3.0, -1e-30, -100.0, -0.5]),  # all negative: nothing to clip
    torch.tensor([-2.0, 8.0, TAU, 0.0]),
]


def _model(layout: str) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=32, d_model=32, n_layer=3, seq_len=8, **LAYOUTS[layout]))


def _expected_factors(layer, logits: torch.Tensor, gqa_mode: str) -> dict[tuple[str, int], float]:
    """(block kind, head) -> the factor its rows must be scaled by (1.0: untouched)."""
    s = logits.double()
    g = torch.where(s > TAU, TAU / s, torch.ones_like(s)).tolist()
    out: dict[tuple[str, int], float] = {}
    if not layer.grouped:
        for h in range(layer.n_head):
            out[("q", h)] = out[("k", h)] = math.sqrt(g[h])
            out[("q_rope", h)] = g[h]
        return out
    kv_of = layer.kv_map()
    for kv in range(layer.n_kv_head):
        members = [h for h in range(layer.n_head) if kv_of[h] == kv]
        root_min = math.sqrt(min(g[h] for h in members))
        if gqa_mode == "exact" or root_min == 1.0:
            out[("k", kv)] = 1.0
            for h in members:
                out[("q", h)] = out[("q_rope", h)] = g[h]
        else:
            out[("k", kv)] = root_min
            for h in members:
                out[("q", h)] = out[("q_rope", h)] = g[h] / root_min
    return out


def _check_rows(before: dict, after: dict, spec, logits, gqa_mode: str) -> int:
    """Every parameter finite; rows of heads whose factor is 1 bit-identical, others scaled.
    Returns the number of row blocks that were scaled."""
    for name, p in after.items():
        assert torch.isfinite(p).all(), name
    scaled = 0
    for layer, s in zip(spec, logits, strict=True):
        factors = _expected_factors(layer, s, gqa_mode)
        for kind, blocks in (("q", layer.q), ("k", layer.k), ("q_rope", layer.q_rope)):
            heads = layer.n_kv_head if kind == "k" else layer.n_head
            for block in blocks:
                for h in range(heads):
                    rows = block.rows(h)
                    old, new = before[block.param][rows], after[block.param][rows]
                    f = factors[(kind, h)]
                    if f == 1.0:
                        assert torch.equal(new, old), (block.param, h)
                    else:
                        torch.testing.assert_close(new, old * f, rtol=1e-6, atol=0)
                        scaled += 1
        for name in layer.shared_k:  # MLA's shared rotary key: never touched
            assert torch.equal(after[name], before[name]), name
    spec_names = {n for layer in spec for n in layer.param_names()}
    for name in after:
        if name not in spec_names:
            assert torch.equal(after[name], before[name]), name
    return scaled


@pytest.mark.parametrize("layout, gqa_mode", [("mha", "exact"), ("gqa", "exact"), ("gqa", "balanced"),
                                              ("mla", "exact")])
def test_negative_zero_and_mixed_sign_max_logits_give_finite_untouched_weights(layout, gqa_mode):
    """Megatron-LM #7517: a head whose max logit is negative (or mixed-sign across heads) got
    gamma = tau / S < 0, and sqrt(gamma) wrote NaN into its weights. Here heads with
    S <= tau (negative, +-0, exactly tau) keep their rows bit for bit; only heads with S > tau
    are scaled, by the layout's factor."""
    model = _model(layout)
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    spec = model.qk_clip_spec()
    gammas = apply_qk_clip_(params, spec, SIGNED_LOGITS, TAU, gqa_mode=gqa_mode)
    after = {n: p.detach().clone() for n, p in params.items()}
    assert _check_rows(before, after, spec, SIGNED_LOGITS, gqa_mode) >= 2
    for g, s in zip(gammas, SIGNED_LOGITS, strict=True):
        assert torch.isfinite(g).all() and (g > 0).all() and (g <= 1).all()
        assert torch.equal(g < 1, s > TAU)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_muonclip_step_with_signed_max_logits(layout):
    """The same through MuonClip.step (update at lr 0, so only the clip can move weights)."""
    model = _model(layout)
    idx = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(3))
    _, loss = model(idx, idx)
    loss.backward()
    opt = MuonClip(build_param_groups(model, lr=0.0, weight_decay=0.1), lr=0.0, qk_clip_tau=TAU,
                   qk_clip_spec=model.qk_clip_spec(), max_logits_fn=model.max_logits)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step(max_logits=SIGNED_LOGITS)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert _check_rows(before, after, model.qk_clip_spec(), SIGNED_LOGITS, "exact") >= 2
    stats = opt.last_qk_clip
    assert stats.n_clipped == 2 and 0 < stats.min_gamma < 1 and math.isfinite(stats.min_gamma)


def test_non_finite_max_logit_is_refused_before_any_weight_changes():
    """The other way to get NaN weights: a NaN max logit must raise, not reach a gamma."""
    model = _model("mha")
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    bad = [SIGNED_LOGITS[0], torch.tensor([1.0, float("nan"), 2.0, 3.0]), SIGNED_LOGITS[2]]
    with pytest.raises(ValueError, match="finite"):
        apply_qk_clip_(params, model.qk_clip_spec(), bad, TAU)
    for n, p in params.items():
        assert torch.equal(p, before[n]), n


# -- KempnerForge #183: the inner AdamW's gradients were never zeroed ----------------------------
def _toy(toy_lm):
    torch.manual_seed(0)
    return toy_lm(vocab=17, d=8)


def _groups(model, lr=0.02, adamw_lr=3e-3, wd=0.1):
    return build_param_groups(model, lr=lr, weight_decay=wd, adamw_lr=adamw_lr)


def test_zero_grad_clears_both_groups(toy_lm, toy_batch):
    """KempnerForge #183: a Muon wrapper zeroed its own parameters' grads but never its inner
    AdamW's, so embedding/head/norm gradients accumulated across steps. MuonClip's
    ``zero_grad`` must reach every parameter of both algorithms."""
    model = _toy(toy_lm)
    opt = MuonClip(_groups(model), lr=0.02)
    algos = {g["algorithm"] for g in opt.param_groups}
    assert algos == {"muon", "adamw"}
    idx = toy_batch()
    for set_to_none in (True, False):
        model(idx).square().mean().backward()
        opt.step()
        assert all(p.grad is not None for p in model.parameters())
        opt.zero_grad(set_to_none=set_to_none)
        for group in opt.param_groups:
            for name, p in zip(group["param_names"], group["params"], strict=True):
                if set_to_none:
                    assert p.grad is None, (group["algorithm"], name)
                else:
                    assert p.grad is not None and not p.grad.any(), (group["algorithm"], name)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters()}  # nothing left outside the optimizer


def _train(model, idx, step_fns, zero_fn, steps=3):
    for _ in range(steps):
        zero_fn()
        model(idx).square().mean().backward()
        for fn in step_fns:
            fn()


def test_two_group_run_with_zero_grad_matches_torch_adamw(toy_lm, toy_batch):
    """KempnerForge #183, end to end: 3 steps of MuonClip with ``opt.zero_grad()`` against a
    twin whose AdamW parameters are stepped by torch.optim.AdamW and whose Muon matrices by a
    Muon-only MuonClip, zeroed by ``Module.zero_grad``. Had AdamW gradients accumulated
    across steps, steps 2 and 3 would differ (checked: a twin that keeps them does)."""
    idx = toy_batch()
    model = _toy(toy_lm)
    opt = MuonClip(_groups(model), lr=0.02)
    _train(model, idx, [opt.step], opt.zero_grad)

    def twin(zero_adamw: bool):
        m = _toy(toy_lm)
        groups = _groups(m)
        muon = MuonClip([g for g in groups if g["algorithm"] == "muon"], lr=0.02)
        adamw_params = [p for g in groups if g["algorithm"] == "adamw" for p in g["params"]]
        (adamw_lr,) = {g["lr"] for g in groups if g["algorithm"] == "adamw"}
        adamw = torch.optim.AdamW(adamw_params, lr=adamw_lr, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=0.1, foreach=False)

        def zero():
            if zero_adamw:
                m.zero_grad(set_to_none=True)
            else:
                muon.zero_grad(set_to_none=True)
        _train(m, idx, [muon.step, adamw.step], zero)
        return m, {id(p) for p in adamw_params}

    ref, adamw_ids = twin(zero_adamw=True)
    names_adamw = [n for n, p in ref.named_parameters() if id(p) in adamw_ids]
    assert names_adamw  # the embedding, biases, norm and head
    got, want = dict(model.named_parameters()), dict(ref.named_parameters())
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-7, msg=n)
    stale, _ = twin(zero_adamw=False)
    stale_params = dict(stale.named_parameters())
    assert any(not torch.allclose(stale_params[n], want[n], rtol=1e-4, atol=1e-5) for n in names_adamw)


# -- dion #74 and dion #104/#109: FSDP2 runs in 2 processes ---------------------------------------
@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("peer_bugs")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run([sys.executable, str(WORKER), str(out), "2", "empty_shard,dcp_sched"], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"2-process FSDP2 run did not finish in {TIMEOUT} s (a hang)")
    if proc.returncode:
        pytest.fail(f"worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return out


def _load(out: Path, name: str) -> tuple[dict, dict]:
    return tuple(torch.load(out / f"{name}_rank{r}.pt", weights_only=False) for r in (0, 1))


def test_fsdp2_matrix_with_fewer_rows_than_ranks_does_not_hang(fsdp_runs):
    """dion #74: an FSDP2 parameter with fewer rows than ranks leaves some ranks an empty
    shard, and the optimizer hung there. A (1, 8) Muon matrix and a (1,) AdamW vector under
    2 ranks: the run finishes and matches one process on the full batch."""
    r0, r1 = _load(fsdp_runs, "empty_shard")
    assert r0["local_rows"]["thin.weight"] == 1 and r1["local_rows"]["thin.weight"] == 0
    assert r1["local_rows"]["shift"] == 0
    model = W.Thin()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    W.run_thin(model, W.thin_optimizer(model))
    for name, p in model.named_parameters():
        assert torch.equal(r0["params"][name], r1["params"][name]), name
        torch.testing.assert_close(r0["params"][name], p.detach(), rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(p, before[name]), name  # every parameter, the thin ones too, moved


def test_fsdp2_dcp_resume_continues_lr_schedule_and_adamw_steps(fsdp_runs):
    """dion #104 / #109: after a torch.distributed.checkpoint resume the LR schedule restarted
    (or the lr came back frozen as a tensor) and AdamW's step counters restarted at 0. Here an
    FSDP2 run with a LambdaLR (the lab's cosine) is saved after N steps and resumed into a fresh
    model, optimizer and scheduler: the lrs continue the schedule, the AdamW step counts go on
    from N, and the parameters after N + M steps equal the uninterrupted run's bit for bit."""
    mult = W._lr_schedule()
    for r in _load(fsdp_runs, "dcp_sched"):
        base = [lrs / mult(0) for lrs in r["first_lrs"][0]]
        want = [[b * mult(s) for b in base] for s in range(W.DCP_N, W.DCP_TOTAL)]
        for got_step, want_step in zip(r["continued_lrs"], want, strict=True):
            assert got_step == pytest.approx(want_step, rel=1e-12)
        assert r["resumed_lrs"] == r["continued_lrs"]  # the schedule continues, exactly
        assert len({tuple(s) for s in r["resumed_lrs"]}) == W.DCP_TOTAL - W.DCP_N  # and it moves
        assert r["resumed_lr_types"] == ["float"]
        assert r["resumed_last_epoch"] == W.DCP_TOTAL
        assert r["resumed_adamw_steps_at_load"] == W.DCP_N
        assert r["resumed_adamw_steps"] == r["continued_adamw_steps"] == W.DCP_TOTAL
        for name, p in r["continued"].items():
            assert torch.equal(p, r["resumed"][name]), name
