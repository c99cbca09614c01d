"""Exact per-head max logits: tracked value == max of the materialised logits, in every layout;
the mask, RoPE and softcap are respected; the "bound" mode; QK-Clip specs address the right rows."""
from __future__ import annotations

import math

import pytest
import torch

from muonclip.models import GPT, GPTConfig, causal_attention, causal_max_logits, materialised_logits
from muonclip.models.max_logit import causal_dot_max
from muonclip.optim.qk_clip import apply_qk_clip_

CONFIGS = {
    "mha": {},
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "mla": dict(attention="mla"),
    "mla_qlora": dict(attention="mla", q_lora_rank=12),
    "mla_odd_dims": dict(attention="mla", qk_nope_head_dim=10, v_head_dim=14, qk_rope_head_dim=6),
    "mla_wide_v": dict(attention="mla", qk_nope_head_dim=4, v_head_dim=12),
    "qk_bias": dict(qk_bias=True),
    "qk_norm": dict(qk_norm=True),
    "softcap": dict(logit_softcap=3.0),
    "odd_seq": dict(seq_len=19),
}
QK_WEIGHTS = ("q_proj", "k_proj", "q_a_proj", "q_b_proj", "kv_a_proj", "kv_b_proj", "q_norm", "k_norm")


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=37, d_model=32, n_layer=2, n_head=4, seq_len=16, kv_lora_rank=16, qk_rope_head_dim=4)
    base.update(kw)
    return GPTConfig(**base)


def batch(cfg: GPTConfig, B: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=g)


def model_with_logit_scale(cfg: GPTConfig, factor: float) -> GPT:
    """Grow the q/k weights: factor 1 gives flat init logits (~0), larger gives spiky ones."""
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(f".{w}." in name for w in QK_WEIGHTS):
                p.mul_(factor)
    return model


def reference_max(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """Max of the materialised logits on the scale the model reports (pre-softcap)."""
    return [L.amax(dim=(0, 2, 3)) for L in model.attention_logits(idx, capped=False)]


# --------------------------------------------------------------------------- model level

@pytest.mark.parametrize("factor", [1.0, 6.0, 30.0])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_tracked_max_equals_materialised_max(name, factor):
    cfg = tiny(**CONFIGS[name])
    model = model_with_logit_scale(cfg, factor).train()
    idx = batch(cfg)
    model(idx)
    tracked = model.max_logits()
    assert len(tracked) == cfg.n_layer
    for t, ref, ex in zip(tracked, reference_max(model, idx), model.max_logits_exact(), strict=True):
        assert t.dtype == torch.float32 and t.shape == (cfg.n_head,) and not t.requires_grad
        assert bool(ex.all())
        torch.testing.assert_close(t, ref, rtol=1e-5, atol=1e-6)


def test_max_logits_before_any_tracked_forward_raises():
    cfg = tiny()
    model = GPT(cfg).eval()
    model(batch(cfg))  # eval, not tracked
    with pytest.raises(RuntimeError, match="no max logits"):
        model.max_logits()
    model.train()
    model.track_max_logits = False  # off even in training
    model(batch(cfg))
    with pytest.raises(RuntimeError, match="no max logits"):
        model.max_logits()
    model.eval()
    model.track_max_logits = True  # on even in eval
    model(batch(cfg))
    assert len(model.max_logits()) == cfg.n_layer


def test_untracked_forward_keeps_last_tracked_values():
    cfg = tiny()
    model = model_with_logit_scale(cfg, 6.0).train()
    idx = batch(cfg)
    model(idx)
    before = [m.clone() for m in model.max_logits()]
    model.eval()
    model(batch(cfg, seed=5))
    for a, b in zip(before, model.max_logits(), strict=True):
        assert torch.equal(a, b)


def test_accumulate_takes_max_over_forwards_until_reset():
    cfg = tiny()
    model = model_with_logit_scale(cfg, 6.0).train()
    model.accumulate_max_logits = True
    a, b = batch(cfg, seed=1), batch(cfg, seed=2)
    model(a)
    model(b)
    both = torch.cat([a, b])
    for t, ref in zip(model.max_logits(), reference_max(model, both), strict=True):
        torch.testing.assert_close(t, ref, rtol=1e-5, atol=1e-6)
    model.reset_max_logits()
    with pytest.raises(RuntimeError):
        model.max_logits()


def test_accumulated_window_is_closed_by_a_read():
    """Issue #12 (stale accumulated max logits): a read closes the accumulation window, so
    the next tracked forward starts a new max instead of folding into the consumed one.
    Reads are idempotent until then (a logging read and the optimizer's read agree)."""
    cfg = tiny()
    model = model_with_logit_scale(cfg, 6.0).train()
    model.accumulate_max_logits = True
    a, b, c = batch(cfg, seed=1), batch(cfg, seed=2), batch(cfg, seed=3)
    model(a)
    model(b)
    first = [m.clone() for m in model.max_logits()]
    for t, ref in zip(first, reference_max(model, torch.cat([a, b])), strict=True):
        torch.testing.assert_close(t, ref, rtol=1e-5, atol=1e-6)
    for t, again in zip(first, model.max_logits(), strict=True):  # a second read of the same window
        assert torch.equal(t, again)
    model.eval()
    model(a)  # untracked: neither reopens nor changes the window
    for t, again in zip(first, model.max_logits(), strict=True):
        assert torch.equal(t, again)
    model.train()
    model(c)  # a new window: c alone, not max(a, b, c)
    for t, ref in zip(model.max_logits(), reference_max(model, c), strict=True):
        torch.testing.assert_close(t, ref, rtol=1e-5, atol=1e-6)
    model(a)  # that read closed c's window: a opens the next one
    model.max_logits_exact()  # the exactness flags are a read of the same window, not a consumer
    model(c)
    for t, ref in zip(model.max_logits(), reference_max(model, torch.cat([a, c])), strict=True):
        torch.testing.assert_close(t, ref, rtol=1e-5, atol=1e-6)


def test_pop_max_logits_returns_then_resets():
    cfg = tiny()
    model = model_with_logit_scale(cfg, 6.0).train()
    for accumulate in (False, True):
        model.accumulate_max_logits = accumulate
        idx = batch(cfg)
        model(idx)
        for t, ref in zip(model.pop_max_logits(), reference_max(model, idx), strict=True):
            torch.testing.assert_close(t, ref, rtol=1e-5, atol=1e-6)
        with pytest.raises(RuntimeError, match="no max logits"):
            model.max_logits()


def test_without_accumulation_every_tracked_forward_overwrites():
    cfg = tiny()
    model = model_with_logit_scale(cfg, 6.0).train()
    a, b = batch(cfg, seed=1), batch(cfg, seed=2)
    model(a)
    model(b)
    for t, ref in zip(model.max_logits(), reference_max(model, b), strict=True):
        torch.testing.assert_close(t, ref, rtol=1e-5, atol=1e-6)
    model(a)
    for t, ref in zip(model.max_logits(), reference_max(model, a), strict=True):
        torch.testing.assert_close(t, ref, rtol=1e-5, atol=1e-6)


def test_attention_logits_mask_and_shape():
    cfg = tiny(n_kv_head=2)
    model = GPT(cfg)
    logits = model.attention_logits(batch(cfg))
    T = cfg.seq_len
    upper = torch.ones(T, T, dtype=torch.bool).triu(1)
    for L in logits:
        assert L.shape == (3, cfg.n_head, T, T)
        assert torch.isneginf(L[..., upper]).all()
        assert torch.isfinite(L[..., ~upper]).all()


def test_softcap_reports_the_raw_pre_cap_logit():
    """With ``logit_softcap=c`` the tracked value is the raw logit s (the scale QK-Clip's
    gamma acts on); what softmax sees is c * tanh(s / c), monotone in s, so its max is
    c * tanh(S / c)."""
    c = 2.0
    cfg = tiny(logit_softcap=c)
    model = model_with_logit_scale(cfg, 30.0).train()
    idx = batch(cfg)
    model(idx)
    raw = [L.amax(dim=(0, 2, 3)) for L in model.attention_logits(idx, capped=False)]
    capped = [L.amax(dim=(0, 2, 3)) for L in model.attention_logits(idx)]
    for m, r, cm in zip(model.max_logits(), raw, capped, strict=True):
        assert (m > 3 * c).all()  # spiky raw logits, far beyond the cap
        torch.testing.assert_close(m, r, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c * torch.tanh(m / c), cm, rtol=1e-5, atol=1e-6)
        assert (cm <= c).all()


@pytest.mark.parametrize("name", ["mha", "gqa", "mla"])
def test_softcap_with_qk_clip_lands_on_min_of_S_and_tau(name):
    """Issue #12 (softcap with QK-Clip): with c = 50 and tau = 30 the clip used to land at
    31-35 because the model reported the capped logit c * tanh(s / c) while gamma = tau / S
    scales the raw logit s. On the reported (raw) scale the clip now gives exactly
    min(S, tau), and the capped logit softmax sees is then <= c * tanh(tau / c) < tau."""
    c, tau = 50.0, 30.0
    cfg = tiny(n_layer=1, logit_softcap=c, **CONFIGS[name])
    model = model_with_logit_scale(cfg, 30.0).train()
    idx = batch(cfg)
    model(idx)
    S = [s.clone() for s in model.max_logits()]
    assert int((S[0] > tau).sum()) >= 1  # some heads need clipping
    apply_qk_clip_(dict(model.named_parameters()), model.qk_clip_spec(), S, tau)
    model(idx)
    torch.testing.assert_close(model.max_logits()[0], S[0].clamp(max=tau), rtol=1e-5, atol=1e-5)
    seen = model.attention_logits(idx)[0].amax(dim=(0, 2, 3))
    assert (seen <= c * math.tanh(tau / c) + 1e-4).all()


def test_bound_mode_exact_above_tau_and_safe_below():
    cfg = tiny()
    model = model_with_logit_scale(cfg, 30.0).train()  # logits of order 10-100
    idx = batch(cfg)
    ref = reference_max(model, idx)
    tau = float(torch.cat(ref).median())
    model.set_max_logit_mode("bound", tau=tau)
    model(idx)
    n_bound = 0
    for t, ex, r in zip(model.max_logits(), model.max_logits_exact(), ref, strict=True):
        torch.testing.assert_close(t[ex], r[ex], rtol=1e-5, atol=1e-6)
        assert ex[r > tau].all()  # every head that needs clipping has its exact value
        # not exact => an upper bound that still cannot trigger a clip
        assert (t[~ex] >= r[~ex] - 1e-5).all() and (t[~ex] <= tau).all()
        n_bound += int((~ex).sum())
    assert n_bound > 0
    model.set_max_logit_mode("exact")
    model(idx)
    assert all(bool(e.all()) for e in model.max_logits_exact())
    with pytest.raises(ValueError):
        model.set_max_logit_mode("bound")
    with pytest.raises(ValueError):
        model.set_max_logit_mode("fast", tau=1.0)


# --------------------------------------------------------------------------- function level

def _spiky_qk(B, H, Hkv, T, D, seed=0, spread=4.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g) * spread
    k = torch.randn(B, Hkv, T, D, generator=g) * spread
    return q, k


@pytest.mark.parametrize("T", [1, 2, 31, 33, 64, 100])
def test_causal_dot_max_matches_brute_force(T):
    q, k = _spiky_qk(2, 3, 3, T, 8, seed=T)
    ref = materialised_logits(q, k, 1.0).amax(dim=(2, 3))
    torch.testing.assert_close(causal_dot_max(q, k), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spread", [0.3, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("H, Hkv, T", [(4, 4, 40), (4, 2, 64), (6, 1, 33), (2, 2, 128)])
def test_causal_attention_tracking_is_exact(H, Hkv, T, spread):
    q, k = _spiky_qk(3, H, Hkv, T, 16, seed=H * T, spread=spread)
    v = torch.randn(3, Hkv, T, 16)
    scale = 1 / math.sqrt(16)
    res = causal_attention(q, k, v, scale, track=True)
    ref = materialised_logits(q, k, scale).amax(dim=(0, 2, 3))
    torch.testing.assert_close(res.max_logit, ref, rtol=1e-5, atol=1e-6)
    plain = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=scale, enable_gqa=Hkv != H)
    torch.testing.assert_close(res.out, plain)


def test_future_spike_is_masked():
    """A huge logit at key j > i (masked) must not be reported (the GAD-cell bug)."""
    B, H, T, D = 1, 2, 12, 4
    q = torch.zeros(B, H, T, D)
    k = torch.zeros(B, H, T, D)
    q[0, 0, 3, 0] = 10.0
    k[0, 0, 9, 0] = 10.0  # q_3 . k_9 = 100, but 9 > 3
    k[0, 0, 2, 0] = 0.5  # allowed: q_3 . k_2 = 5
    lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, q, 0.0, True, scale=1.0)[1]
    vals, exact = causal_max_logits(q, k, 1.0, lse)
    assert vals.tolist() == [5.0, 0.0] and bool(exact.all())
    assert causal_max_logits(q, k, 1.0, None)[0].tolist() == [5.0, 0.0]


def test_rope_is_applied_before_the_max():
    """The same q, k at different positions give different logits under RoPE: the tracked max
    must follow the rotated logits, not q . k of the raw projections."""
    cfg = tiny(n_layer=1)
    model = model_with_logit_scale(cfg, 10.0).train()
    idx = batch(cfg)
    model(idx)
    attn = model.blocks[0].attn
    x = model.blocks[0].attn_norm(model.embed(idx))
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, 4, 8).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, 4, 8).transpose(1, 2)
    unrotated = materialised_logits(q, k, attn.scale).amax(dim=(0, 2, 3))
    tracked = model.max_logits()[0]
    torch.testing.assert_close(tracked, reference_max(model, idx)[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(tracked, unrotated, rtol=1e-3)


def test_nan_logits_propagate():
    q, k = _spiky_qk(1, 2, 2, 16, 4)
    q[0, 1, 5, 0] = float("nan")
    v = torch.randn(1, 2, 16, 4)
    res = causal_attention(q, k, v, 0.5, track=True)
    assert torch.isnan(res.max_logit[1]) and torch.isfinite(res.max_logit[0])


# --------------------------------------------------------------------------- QK-Clip specs

@pytest.mark.parametrize("name", ["mha", "gqa", "mqa", "mla", "mla_qlora", "mla_odd_dims", "qk_bias", "softcap"])
def test_qk_clip_spec_names_exist(name):
    model = GPT(tiny(**CONFIGS[name]))
    params = dict(model.named_parameters())
    spec = model.qk_clip_spec()
    assert len(spec) == model.config.n_layer
    for L, layer in enumerate(spec):
        assert layer.n_head == model.config.n_head
        for n in layer.param_names():
            assert n in params and n.startswith(f"blocks.{L}.attn."), n
        for block in layer.q + layer.k + layer.q_rope:
            heads = layer.n_head if block in layer.q + layer.q_rope else layer.n_kv_head
            assert block.rows(heads - 1).stop <= params[block.param].shape[0]
    if model.config.attention == "mla":
        assert spec[0].layout == "mla" and spec[0].shared_k == ("blocks.0.attn.kv_a_proj.weight",)


def test_qk_clip_spec_rejects_qk_norm():
    with pytest.raises(ValueError, match="QK-norm"):
        GPT(tiny(qk_norm=True)).qk_clip_spec()


def _first_layer_logits(model, idx):
    return model.attention_logits(idx)[0]


@pytest.mark.parametrize("name", ["mha", "gqa", "mqa", "qk_bias", "mla", "mla_qlora", "mla_odd_dims"])
def test_row_blocks_cover_exactly_one_heads_logits(name):
    """Scale the spec's rows of one head as QK-Clip would (q, k by sqrt(g), q_rope by g): that
    head's logits are scaled by exactly g and no other head's logits move."""
    cfg = tiny(n_layer=1, **CONFIGS[name])
    model = model_with_logit_scale(cfg, 4.0)
    idx = batch(cfg)
    before = _first_layer_logits(model, idx)
    layer = model.qk_clip_spec()[0]
    params = dict(model.named_parameters())
    h, g = 2, 0.5
    with torch.no_grad():
        if layer.grouped:  # shared KV head: scale the query head only, by the whole factor
            for b in layer.q + layer.q_rope:
                params[b.param][b.rows(h)] *= g
        else:
            for b in layer.q + layer.k:
                params[b.param][b.rows(h)] *= math.sqrt(g)
            for b in layer.q_rope:
                params[b.param][b.rows(h)] *= g
    after = _first_layer_logits(model, idx)
    others = [i for i in range(cfg.n_head) if i != h]
    torch.testing.assert_close(after[:, others], before[:, others], rtol=0, atol=0)
    finite = torch.isfinite(before[:, h])
    torch.testing.assert_close(after[:, h][finite], g * before[:, h][finite], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after[:, h][finite], before[:, h][finite])


@pytest.mark.parametrize("name", ["mha", "gqa", "qk_bias", "mla", "mla_qlora"])
@pytest.mark.parametrize("gqa_mode", ["exact", "balanced"])
def test_apply_qk_clip_with_tracked_max_gives_min_of_S_and_tau(name, gqa_mode):
    """Whole pipeline on one layer: tracked S -> apply_qk_clip_ -> new max = min(S, tau)."""
    cfg = tiny(n_layer=1, **CONFIGS[name])
    model = model_with_logit_scale(cfg, 6.0).train()
    idx = batch(cfg)
    model(idx)
    S = model.max_logits()
    tau = float(S[0].median())
    apply_qk_clip_(dict(model.named_parameters()), model.qk_clip_spec(), S, tau, gqa_mode=gqa_mode)
    model(idx)
    torch.testing.assert_close(model.max_logits()[0], S[0].clamp(max=tau), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_low_and_high_precision_models_report_fp32(dtype):
    cfg = tiny()
    model = model_with_logit_scale(cfg, 6.0).to(dtype).train()
    idx = batch(cfg)
    model(idx)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-6  # bf16 reference logits are rounded to bf16
    for t, ref in zip(model.max_logits(), reference_max(model, idx), strict=True):
        assert t.dtype == torch.float32
        torch.testing.assert_close(t, ref.float(), rtol=tol, atol=tol)


class _StandInCudaOps:
    """CPU stand-ins for the two CUDA attention kernels, with the CUDA kernels' conventions:
    equal head counts required, and the efficient kernel's lse padded to a multiple of 32 rows
    (filled with a huge value, so an unsliced lse would poison the bound)."""

    def __init__(self):
        self.calls = []

    def _check(self, q, k):
        assert q.shape[1] == k.shape[1], "CUDA kernels take equal head counts"

    def _scaled_dot_product_flash_attention(self, q, k, v, dropout, causal, debug, *, scale):
        self._check(q, k)
        self.calls.append("flash")
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.float(), k.float(), v.float(), dropout, causal, scale=scale)
        return out.to(q.dtype), lse, None, None, 0, 0, None, None, None

    def _scaled_dot_product_efficient_attention(self, q, k, v, bias, compute_lse, dropout, causal, *, scale):
        self._check(q, k)
        self.calls.append("efficient")
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout, causal, scale=scale)
        T = q.shape[-2]
        padded = torch.full((*lse.shape[:-1], -(-T // 32) * 32), 1e30)
        padded[..., :T] = lse
        return out, padded, None, None


@pytest.mark.parametrize("dtype,kernel", [(torch.float32, "efficient"), (torch.bfloat16, "flash")])
@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_cuda_lse_route_is_exact_with_stand_in_kernels(dtype, kernel, n_kv_head):
    """The CUDA path's logic (GQA expansion, lse padding cut back to T) on CPU."""
    from muonclip.models import attention

    g = torch.Generator().manual_seed(0)
    B, H, T, D = 2, 4, 40, 16
    q = (torch.randn(B, H, T, D, generator=g) * 3).to(dtype)
    k = (torch.randn(B, n_kv_head, T, D, generator=g) * 3).to(dtype)
    v = torch.randn(B, n_kv_head, T, D, generator=g).to(dtype)
    ops = _StandInCudaOps()
    out, lse = attention._lse_attention_cuda(q, k, v, 0.25, ops=ops)
    assert ops.calls == [kernel] and lse.shape == (B, H, T)
    m, exact = causal_max_logits(q, k, 0.25, lse)
    ref = materialised_logits(q.float(), k.float(), 0.25).amax(dim=(0, 2, 3))
    torch.testing.assert_close(m, ref, rtol=1e-5, atol=1e-5)
    assert exact.all()
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), is_causal=True, scale=0.25, enable_gqa=n_kv_head != H)
    torch.testing.assert_close(out.float(), sdpa, rtol=2e-2, atol=2e-2)
