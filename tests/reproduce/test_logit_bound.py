"""The spectra-to-logits bridge: sigma_1(W_q) sigma_1(W_k) / sqrt(d) bounds every head's logit for unit inputs."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from muonclip.reproduce import results


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_head=st.integers(1, 4), head_dim=st.sampled_from([2, 4, 8]),
       d_model=st.integers(2, 24), scale=st.floats(0.01, 100.0))
def test_the_bound_holds_for_every_head(seed, n_head, head_dim, d_model, scale):
    """|x_i^T W_q,h^T W_k,h x_j| / sqrt(d) <= |x_i||x_j| sigma_1(W_q) sigma_1(W_k) / sqrt(d) for every
    head h (a block of rows of W_q and W_k) and every pair of inputs: what the report's bridge says."""
    rng = np.random.default_rng(seed)
    wq = rng.standard_normal((n_head * head_dim, d_model)) * scale
    wk = rng.standard_normal((n_head * head_dim, d_model))
    x = rng.standard_normal((6, d_model))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = {"blocks.0.attn.q_proj.weight|weight": np.linalg.svd(wq, compute_uv=False)[None],
         "blocks.0.attn.k_proj.weight|weight": np.linalg.svd(wk, compute_uv=False)[None]}
    q, k = (x @ wq.T).reshape(6, n_head, head_dim), (x @ wk.T).reshape(6, n_head, head_dim)
    logits = np.einsum("ihd,jhd->hij", q, k) / math.sqrt(head_dim)
    rows = [{"step": 5, "max_logits": [np.abs(logits).max(axis=(1, 2)).tolist()]}]
    out = results.logit_bound_series(s, [5], rows, head_dim)
    assert out["layers"] == [0] and out["steps"] == [5]
    assert out["measured"][0][0] <= out["bound"][0][0] * (1 + 1e-12)


def test_pairs_each_snapshot_with_its_steps_row_and_skips_untracked_layers():
    spectra = {
        "blocks.0.attn.q_proj.weight|weight": np.array([[2.0, 1.0], [4.0, 1.0], [9.0, 1.0]]),
        "blocks.0.attn.k_proj.weight|weight": np.array([[3.0, 1.0], [1.0, 5.0], [1.0, 1.0]]),
        "blocks.1.attn.q_proj.weight|weight": np.array([[1.0], [1.0], [1.0]]),  # no k_proj: skipped
        "blocks.0.mlp.up_proj.weight|weight": np.array([[7.0], [7.0], [7.0]]),
    }
    rows = [{"step": 1, "max_logits": [[0.5, 0.7], [9.0, 9.0]]}, {"step": 10, "max_logits": [[1.5, 0.2], [9.0, 9.0]]}]
    out = results.logit_bound_series(spectra, [1, 10, 20], rows, head_dim=4)  # no row for step 20
    assert out == {"steps": [1, 10], "layers": [0], "bound": [[3.0, 10.0]], "measured": [[0.7, 1.5]]}
