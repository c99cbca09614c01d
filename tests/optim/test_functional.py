"""Orthogonalisers and the pure Muon update: agreement with float64, bands, edge cases."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from muonclip.optim import functional as F
from muonclip.optim.reference import reference_orthogonalize

# Documented singular-value bands after 5 iterations, for directions whose singular value is
# at least 2e-3 of the input's Frobenius norm (smaller ones are, by design, not fully
# orthogonalised: NS5 multiplies them by at most 3.4445^5 ~ 487):
NS5_BAND = (0.68, 1.21)      # Keller's NS5 intentionally lands in ~[0.7, 1.2]
PE_BAND = (0.84, 1.13)       # Polar Express: tighter, same cost
BAND_FLOOR = 2e-3


def _svals(t):
    return torch.linalg.svdvals(t.double())


@pytest.mark.parametrize("shape", [(32, 32), (16, 64), (64, 16), (3, 8, 24), (5, 12, 12)])
@pytest.mark.parametrize("impl", ["direct", "gram", "auto"])
def test_fast_ns_matches_float64_reference(shape, impl):
    G = torch.randn(shape)
    fast = F.newton_schulz(G, impl=impl)
    ref = reference_orthogonalize(G)
    assert fast.dtype == torch.float32 and fast.shape == G.shape
    torch.testing.assert_close(fast.double(), ref, rtol=0, atol=2e-5)


def test_polar_express_matches_reference():
    G = torch.randn(24, 80)
    fast = F.orthogonalize(G, "polar_express", impl="gram")
    ref = reference_orthogonalize(G, F.POLAR_EXPRESS_COEFFS)
    torch.testing.assert_close(fast.double(), ref, rtol=0, atol=2e-5)


def _conditioned(n, m, log10_min, seed):
    g = torch.Generator().manual_seed(seed)
    k = min(n, m)
    U, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    S = torch.logspace(0, log10_min, k, dtype=torch.float64)
    return (U * S) @ V.T, S


@given(
    n=st.integers(2, 48), m=st.integers(2, 48), log10_min=st.floats(-3.0, 0.0),
    log10_scale=st.floats(-30.0, 10.0), seed=st.integers(0, 10_000),
    method=st.sampled_from(["ns5", "polar_express"]),
)
def test_singular_values_stay_in_band(n, m, log10_min, log10_scale, seed, method):
    """Random, badly conditioned and badly scaled inputs: every direction with singular value
    >= BAND_FLOOR of the Frobenius norm lands inside the method's band."""
    G, S = _conditioned(n, m, log10_min, seed)
    G = (G * 10.0**log10_scale).float()
    O = F.orthogonalize(G, method)
    assert torch.isfinite(O).all()
    s = _svals(O)
    lo, hi = NS5_BAND if method == "ns5" else PE_BAND
    assert s.max() <= hi
    assert s[S >= BAND_FLOOR * S.norm()].min() >= lo


@given(n=st.integers(3, 40), m=st.integers(3, 40), rank=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_rank_deficient_input(n, m, rank, seed):
    """A rank-r input gives r singular values in band and the rest ~0 (NS never invents directions)."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n, rank, generator=g) @ torch.randn(rank, m, generator=g)
    s = _svals(F.orthogonalize(G))
    r = min(rank, n, m)
    assert s[:r].max() <= NS5_BAND[1]
    assert s[r - 1] >= 0.3  # a rank-r Gaussian product can be mildly ill-conditioned
    if r < min(n, m):
        assert s[r:].max() < 1e-3


def test_zero_gradient_gives_zero_not_nan():
    O = F.newton_schulz(torch.zeros(8, 12))
    assert torch.equal(O, torch.zeros(8, 12))


def test_tiny_norm_gradient_still_orthogonalises():
    G = torch.randn(16, 32) * 1e-30
    s = _svals(F.newton_schulz(G))
    assert s.min() > NS5_BAND[0] and s.max() < NS5_BAND[1]


@pytest.mark.parametrize("mode,expected", [("rms_match", 0.2 * math.sqrt(64)), ("original", math.sqrt(64 / 16))])
def test_update_scale(mode, expected):
    assert F.update_scale(64, 16, mode) == pytest.approx(expected)
    with pytest.raises(ValueError):
        F.update_scale(4, 4, "bogus")


@given(n=st.integers(8, 64), m=st.integers(8, 64), seed=st.integers(0, 1000))
def test_rms_match_update_rms_is_about_0_2(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(n, m, generator=g)
    u = F.muon_update(grad, torch.zeros(n, m), nesterov=False)
    rms = u.pow(2).mean().sqrt().item()
    # O has min(n,m) singular values near 1, so RMS(O) ~ 1/sqrt(max(n,m)); NS5 leaves them in
    # ~[0.7, 1.2], hence the band around 0.2.
    assert 0.14 <= rms <= 0.24


def test_gram_saves_flops_for_wide_matrices():
    assert F.gram_is_cheaper(256, 1024)
    assert not F.gram_is_cheaper(256, 256)
    assert F.ns_flops(256, 1024, gram=True) < 0.6 * F.ns_flops(256, 1024)


def test_conv_weight_flattened_and_scaled_by_fan_in():
    grad = torch.randn(8, 4, 3, 3)
    u = F.muon_update(grad, torch.zeros_like(grad), nesterov=False)
    mat = reference_orthogonalize(grad).reshape(8, 36)
    torch.testing.assert_close(u.double().reshape(8, 36), mat * 0.2 * math.sqrt(36), atol=1e-5, rtol=0)


def test_rejects_vectors_and_bad_names():
    with pytest.raises(ValueError, match=">=2-D"):
        F.as_matrix_batch(torch.zeros(5))
    with pytest.raises(ValueError, match="orthogonaliser"):
        F.orthogonalize(torch.zeros(3, 3), "svd")
    with pytest.raises(ValueError, match="impl"):
        F.newton_schulz(torch.zeros(3, 3), impl="fast")
