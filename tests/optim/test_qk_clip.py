"""QK-Clip on hand-built attention layouts (independent of muonclip.models): exactness,
untouched heads bit-identical, shared keys never scaled, GQA balanced-mode drift."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from muonclip.optim.qk_clip import QKClipLayerSpec, RowBlock, apply_qk_clip_, qk_clip_scales


def rope(x):
    """Rotary embedding over the last dim of (T, ..., d); positions along dim 0."""
    T, d = x.shape[0], x.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv
    cos, sin = ang.cos(), ang.sin()
    shape = (T,) + (1,) * (x.ndim - 2) + (d // 2,)
    cos, sin = cos.reshape(shape), sin.reshape(shape)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2], out[..., 1::2] = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    return out


def causal_max(q, k, scale):
    """q (T, H, d), k (T, H, d) -> per-head max of masked logits (signed)."""
    logits = torch.einsum("ihd,jhd->hij", q, k) * scale
    T = q.shape[0]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    return logits.masked_fill(~mask, float("-inf")).amax(dim=(-1, -2))


def gqa_logits(p, x, H, KV, hd):
    q = (x @ p["q.weight"].T + p["q.bias"]).reshape(-1, H, hd)
    k = (x @ p["k.weight"].T + p["k.bias"]).reshape(-1, KV, hd)
    k = k.repeat_interleave(H // KV, dim=1)
    return causal_max(rope(q), rope(k), 1 / math.sqrt(hd))


def gqa_setup(H, KV, hd=8, d=16, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = {
        "q.weight": torch.randn(H * hd, d, generator=g, dtype=torch.float64),
        "q.bias": torch.randn(H * hd, generator=g, dtype=torch.float64),
        "k.weight": torch.randn(KV * hd, d, generator=g, dtype=torch.float64),
        "k.bias": torch.randn(KV * hd, generator=g, dtype=torch.float64),
    }
    x = torch.randn(T, d, generator=g, dtype=torch.float64)
    spec = QKClipLayerSpec(
        n_head=H, n_kv_head=KV,
        q=(RowBlock("q.weight", hd), RowBlock("q.bias", hd)),
        k=(RowBlock("k.weight", hd), RowBlock("k.bias", hd)),
    )
    return p, x, spec


def _tau_between(S):
    """A tau that some heads exceed and others do not."""
    s = S.sort().values
    return float((s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)


@pytest.mark.parametrize("H,KV", [(4, 4), (4, 2), (6, 1)], ids=["mha", "gqa", "mqa"])
def test_clip_is_exact_per_head_and_untouched_heads_are_bit_identical(H, KV):
    p, x, spec = gqa_setup(H, KV)
    S = gqa_logits(p, x, H, KV, 8)
    tau = _tau_between(S)
    before = {k: v.clone() for k, v in p.items()}
    gammas = apply_qk_clip_(p, [spec], [S], tau)
    S2 = gqa_logits(p, x, H, KV, 8)
    torch.testing.assert_close(S2, torch.clamp(S, max=tau), rtol=1e-5, atol=0)
    hd = 8
    for h in range(H):
        if S[h] <= tau:
            assert torch.equal(p["q.weight"][h * hd:(h + 1) * hd], before["q.weight"][h * hd:(h + 1) * hd])
    if KV < H:  # exact GQA never scales a shared key head
        assert torch.equal(p["k.weight"], before["k.weight"]) and torch.equal(p["k.bias"], before["k.bias"])
    assert torch.equal(gammas[0] < 1, S > tau)


def test_gqa_balanced_is_exact_but_grows_healthy_queries():
    H, KV, hd = 4, 2, 8
    p, x, spec = gqa_setup(H, KV, seed=3)
    S = gqa_logits(p, x, H, KV, hd)
    # Clip exactly one head of group 0; its partner is healthy.
    tau = float(S[0:2].max()) * 0.999 if S[0] != S[1] else float(S.max()) * 0.9
    tau = max(tau, float(S[0:2].min()) * 1.001)
    before = p["q.weight"].clone()
    apply_qk_clip_(p, [spec], [S], tau, gqa_mode="balanced")
    S2 = gqa_logits(p, x, H, KV, hd)
    torch.testing.assert_close(S2, torch.clamp(S, max=tau), rtol=1e-5, atol=0)
    healthy = int(torch.argmin(S[0:2]))
    grown = p["q.weight"][healthy * hd:(healthy + 1) * hd].norm() / before[healthy * hd:(healthy + 1) * hd].norm()
    assert grown > 1.0  # the documented drift of the balanced rule


def mla_setup(H=4, dn=6, dr=4, dv=5, d=16, r=10, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = {
        "q_proj.weight": torch.randn(H * (dn + dr), d, generator=g, dtype=torch.float64),
        "kv_a.weight": torch.randn(r + dr, d, generator=g, dtype=torch.float64),
        "kv_b.weight": torch.randn(H * (dn + dv), r, generator=g, dtype=torch.float64),
    }
    x = torch.randn(T, d, generator=g, dtype=torch.float64)
    spec = QKClipLayerSpec(
        n_head=H, n_kv_head=H, layout="mla",
        q=(RowBlock("q_proj.weight", dn, 0, dn + dr),),
        k=(RowBlock("kv_b.weight", dn, 0, dn + dv),),
        q_rope=(RowBlock("q_proj.weight", dr, dn, dn + dr),),
        shared_k=("kv_a.weight",),
    )
    dims = (H, dn, dr, dv, r)
    return p, x, spec, dims


def mla_logits(p, x, dims):
    H, dn, dr, dv, r = dims
    T = x.shape[0]
    q = (x @ p["q_proj.weight"].T).reshape(T, H, dn + dr)
    q_nope, q_rope = q[..., :dn], rope(q[..., dn:])
    kv_a = x @ p["kv_a.weight"].T
    c, k_rope = kv_a[:, :r], rope(kv_a[:, None, r:]).expand(T, H, dr)
    k_nope = (c @ p["kv_b.weight"].T).reshape(T, H, dn + dv)[..., :dn]
    qq, kk = torch.cat([q_nope, q_rope], -1), torch.cat([k_nope, k_rope], -1)
    return causal_max(qq, kk, 1 / math.sqrt(dn + dr))


def test_mla_clip_is_exact_and_shared_rotary_key_untouched():
    p, x, spec, dims = mla_setup()
    S = mla_logits(p, x, dims)
    tau = _tau_between(S)
    kv_a = p["kv_a.weight"].clone()
    apply_qk_clip_(p, [spec], [S], tau)
    torch.testing.assert_close(mla_logits(p, x, dims), torch.clamp(S, max=tau), rtol=1e-5, atol=0)
    assert torch.equal(p["kv_a.weight"], kv_a)


@given(seed=st.integers(0, 10_000), frac=st.floats(0.05, 0.95), layout=st.sampled_from(["mha", "gqa", "mla"]))
def test_after_clip_every_head_is_at_most_tau(seed, frac, layout):
    if layout == "mla":
        p, x, spec, dims = mla_setup(seed=seed)
        f = lambda: mla_logits(p, x, dims)  # noqa: E731
    else:
        H, KV = (4, 4) if layout == "mha" else (4, 2)
        p, x, spec = gqa_setup(H, KV, seed=seed)
        f = lambda: gqa_logits(p, x, H, KV, 8)  # noqa: E731
    S = f()
    lo, hi = float(S.min()), float(S.max())
    tau = max(lo + frac * (hi - lo), 1e-3)
    apply_qk_clip_(p, [spec], [S], tau)
    assert float(f().max()) <= tau * (1 + 1e-9)


def test_scales_and_errors():
    g = qk_clip_scales(torch.tensor([10.0, 50.0, -3.0, 100.0]), 50.0)
    assert g.tolist() == [1.0, 1.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="positive"):
        qk_clip_scales(torch.ones(2), 0.0)
    with pytest.raises(ValueError, match="finite"):
        qk_clip_scales(torch.tensor([float("nan")]), 1.0)
    p, _, spec = gqa_setup(4, 2)
    with pytest.raises(ValueError, match="layers"):
        apply_qk_clip_(p, [spec], [], 1.0)
    with pytest.raises(KeyError, match="unknown parameters"):
        apply_qk_clip_({}, [spec], [torch.ones(4)], 1.0)
    with pytest.raises(ValueError, match="n_kv_head"):
        QKClipLayerSpec(n_head=4, n_kv_head=3, q=())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bad_logit_in_a_later_layer_changes_nothing(bad):
    """A non-finite max logit in layer 1 used to raise only after layer 0 had been clipped in
    place (issue #12). Every input is now checked first: every weight stays bit-identical."""
    p0, _, spec0 = gqa_setup(4, 4, seed=1)
    p1, _, spec1 = gqa_setup(4, 4, seed=2)
    params = {**{f"l0.{k}": v for k, v in p0.items()}, **{f"l1.{k}": v for k, v in p1.items()}}
    specs = [QKClipLayerSpec(n_head=4, n_kv_head=4,
                             q=tuple(RowBlock(f"l{i}.{b.param}", b.width) for b in s.q),
                             k=tuple(RowBlock(f"l{i}.{b.param}", b.width) for b in s.k))
             for i, s in enumerate((spec0, spec1))]
    before = {k: v.clone() for k, v in params.items()}
    logits = [torch.tensor([100.0, 1.0, 1.0, 1.0]), torch.tensor([1.0, bad, 1.0, 1.0])]
    with pytest.raises(ValueError, match="finite"):
        apply_qk_clip_(params, specs, logits, 10.0)
    assert all(torch.equal(params[k], before[k]) for k in params)
    with pytest.raises(ValueError, match="expected 4 max logits"):
        apply_qk_clip_(params, specs, [logits[0], torch.ones(3)], 10.0)
    assert all(torch.equal(params[k], before[k]) for k in params)


def test_rows_past_the_weight_are_refused_before_any_change():
    p, _, spec = gqa_setup(4, 2)
    bad = QKClipLayerSpec(n_head=4, n_kv_head=2, q=spec.q, k=(RowBlock("k.weight", 8, offset=4),))
    before = {k: v.clone() for k, v in p.items()}
    with pytest.raises(ValueError, match="exceed dim 0"):
        apply_qk_clip_(p, [spec, bad], [torch.full((4,), 100.0)] * 2, 1.0)
    assert all(torch.equal(p[k], before[k]) for k in p)


@pytest.mark.parametrize("H,KV", [(4, 4), (4, 2)], ids=["mha", "gqa"])
def test_layer_granularity_shrinks_healthy_heads_and_head_does_not(H, KV):
    """The ablation: a per-layer clip scales every head by the layer's worst gamma, so heads
    that were under tau lose logit too; per head they stay bit-identical."""
    p, x, spec = gqa_setup(H, KV)
    S = gqa_logits(p, x, H, KV, 8)
    tau = _tau_between(S)
    healthy = S <= tau
    per_head = {k: v.clone() for k, v in p.items()}
    gammas = apply_qk_clip_(per_head, [spec], [S], tau)
    after_head = gqa_logits(per_head, x, H, KV, 8)
    per_layer = {k: v.clone() for k, v in p.items()}
    layer_gammas = apply_qk_clip_(per_layer, [spec], [S], tau, granularity="layer")
    after_layer = gqa_logits(per_layer, x, H, KV, 8)
    assert torch.allclose(layer_gammas[0], gammas[0].min().expand(H))
    torch.testing.assert_close(after_head[healthy], S[healthy], rtol=0, atol=0)
    # every healthy head shrinks by the layer's smallest gamma under the per-layer rule
    torch.testing.assert_close(after_layer[healthy], S[healthy] * gammas[0].min(), rtol=1e-9, atol=1e-12)
    assert (after_layer.max() <= tau * (1 + 1e-9)) and (after_head.max() <= tau * (1 + 1e-9))
    with pytest.raises(ValueError, match="granularity"):
        apply_qk_clip_(p, [spec], [S], tau, granularity="model")
