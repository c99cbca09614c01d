"""Every Newton-Schulz form against the float64 reference, with bands from measurement.

Forms: direct and Gram in fp32, direct in bf16, each on wide, tall and square batches, with
and without a reused workspace. bf16 is held to the peer it replaces: torch.optim.Muon's
bf16 NS5, run through its public API on the same input.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from muonclip import MuonClip
from muonclip.optim import functional as muon_math
from muonclip.optim import ns_forms
from muonclip.optim.orthogonalizers import ORTHOGONALIZERS
from muonclip.optim.reference import ill_conditioned, reference_orthogonalize

NS5 = ORTHOGONALIZERS["ns5"].schedule(5)
SHAPES = [(3, 32, 96), (3, 96, 32), (4, 48, 48)]


def _conditioned(batch, n, m, log10_min, seed):
    """Matrices with singular values log-spaced from 1 to 10^log10_min (real gradients are
    far from Gaussian: a few directions dominate)."""
    return ill_conditioned(batch, n, m, log10_min, torch.Generator().manual_seed(seed)).float()


def _rel(got, ref):
    return float((got.double() - ref).norm() / ref.norm())


def _fast(G, impl, dtype, ws=None):
    X = ns_forms.newton_schulz_batch([G], NS5, impl, dtype, ws=ws)
    return X.float()


def _peer_torch_muon(G):
    """torch.optim.Muon's orthogonalised update, per matrix: momentum 0, lr 1, no decay, from
    a zero parameter, so the parameter ends at -scale * NS(G)."""
    outs = []
    for g in G:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        torch.optim.Muon([p], lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False).step()
        n, m = g.shape
        outs.append(-p.detach() / max(1.0, n / m) ** 0.5)
    return torch.stack(outs)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", ["direct", "gram"])
@pytest.mark.parametrize("workspace", [False, True])
def test_fp32_forms_match_float64_on_gaussian_and_ill_conditioned_inputs(shape, impl, workspace):
    """Measured on these shapes: fp32 direct 6e-7 to 2e-6 (Gaussian) and up to 7e-6
    (singular values down to 1e-6); fp32 Gram the same on Gaussian inputs but up to 4e-4 on
    ill-conditioned ones (its R = X X^T squares the condition number), 2e-4 on square ones."""
    ws = ns_forms.Workspace() if workspace else None
    for G, gram_band in ((torch.randn(shape), 2e-4), (_conditioned(*shape, -6, seed=1), 1e-3)):
        ref = reference_orthogonalize(G, expert_stack=True)
        band = gram_band if impl == "gram" else 2e-5
        assert _rel(_fast(G, impl, torch.float32, ws), ref) < band


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_direct_is_as_accurate_as_torch_optim_muon(shape):
    """bf16 direct against torch.optim.Muon on the same inputs: measured 0.74x to 1.01x the
    peer's distance to float64 NS5 (Gaussian 1.3e-2 to 1.7e-2; singular values to 1e-3:
    5e-2 to 9e-2; to 1e-6: 0.13 to 0.18)."""
    for G in (torch.randn(shape), _conditioned(*shape, -3, seed=2), _conditioned(*shape, -6, seed=3)):
        ref = reference_orthogonalize(G, expert_stack=True)
        ours = _rel(_fast(G, "direct", torch.bfloat16), ref)
        peer = _rel(_peer_torch_muon(G), ref)
        assert ours < 1.1 * peer, (ours, peer)


@pytest.mark.parametrize("impl,dtype", [("direct", torch.float32), ("gram", torch.float32),
                                        ("direct", torch.bfloat16)])
def test_a_reused_workspace_gives_the_same_bits(impl, dtype):
    """Buffers reused across calls (and shared between a wide and a tall batch whose small
    Gram matrices have the same shape) change nothing, bit for bit."""
    ws = ns_forms.Workspace()
    for shape in [(2, 24, 64), (2, 64, 24), (2, 24, 64)]:
        G = torch.randn(shape)
        fresh = ns_forms.newton_schulz_batch([G], NS5, impl, dtype)
        for _ in range(2):
            assert torch.equal(ns_forms.newton_schulz_batch([G], NS5, impl, dtype, ws=ws), fresh)
    assert ws.nbytes() > 0


def test_the_gram_form_is_refused_in_bf16_and_auto_never_picks_it():
    """Its output blows up on ill-conditioned inputs in bf16 (measured 0.7 to 1.9e4 from a
    float64 NS5; direct bf16 0.07 to 0.24): refused, with the reason, before any product."""
    with pytest.raises(ValueError, match="Gram form"):
        ns_forms.ns_form(256, 1024, "gram", dtype=torch.bfloat16)
    assert ns_forms.ns_form(256, 1024, "auto", dtype=torch.bfloat16) == "direct"
    assert ns_forms.ns_form(256, 1024, "auto", dtype=torch.float32) == "gram"
    assert ns_forms.ns_form(256, 256, "auto", dtype=torch.float32) == "direct"
    G = _conditioned(1, 32, 128, -3, seed=4)
    blown = ns_forms.quintic_gram(ns_forms.normalized_batch([G], torch.bfloat16), NS5)
    ref = reference_orthogonalize(G, expert_stack=True)
    assert _rel(blown, ref) > 0.5  # why it is refused: this is what it would return


def test_muonclip_refuses_gram_with_bf16_at_construction():
    p = torch.nn.Parameter(torch.randn(8, 32))
    with pytest.raises(ValueError, match="Gram form"):
        MuonClip([p], ns_impl="gram", ns_precision="bf16")
    MuonClip([p], ns_impl="gram", ns_precision="fp32")  # fp32 Gram is fine


@pytest.mark.parametrize("nesterov", [True, False])
def test_momentum_into_reused_buffers_equals_fresh_ones(nesterov):
    grads = [torch.randn(5, 7), torch.randn(3, 4)]
    bufs_a = [torch.randn(5, 7), torch.randn(3, 4)]
    bufs_b = [b.clone() for b in bufs_a]
    fresh = muon_math.muon_momentum_(bufs_a, grads, 0.95, nesterov)
    out = [torch.full_like(g, float("nan")) for g in grads]
    reused = muon_math.muon_momentum_(bufs_b, grads, 0.95, nesterov, out=out)
    for x, y in zip(fresh, reused, strict=True):
        assert torch.equal(x, y)
    for x, y in zip(bufs_a, bufs_b, strict=True):
        assert torch.equal(x, y)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(1, 40), batch=st.integers(1, 3), seed=st.integers(0, 1000))
def test_either_orientation_matches_the_reference(n, m, batch, seed):
    """Wide, tall and square batches are orthogonalised on their short side in their own
    layout; the result is the reference's, whatever the shape."""
    G = torch.randn((batch, n, m), generator=torch.Generator().manual_seed(seed))
    ref = reference_orthogonalize(G, expert_stack=True)
    for impl in ("direct", "auto"):
        torch.testing.assert_close(_fast(G, impl, torch.float32).double(), ref, rtol=0, atol=2e-5)
