"""GPT model: config validation, shapes and loss, parameter names, tying, init, causality, RoPE, GQA."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from muonclip.models import GPT, GPTConfig, apply_rope, rope_cos_sin


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=37, d_model=32, n_layer=2, n_head=4, seq_len=16, kv_lora_rank=16, qk_rope_head_dim=4)
    base.update(kw)
    return GPTConfig(**base)


CONFIGS = {
    "mha": {},
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "mla": dict(attention="mla"),
    "mla_qlora": dict(attention="mla", q_lora_rank=12, v_head_dim=6, qk_nope_head_dim=10),
    "mla_wide_v": dict(attention="mla", qk_nope_head_dim=4, v_head_dim=12),  # v wider than q . k
    "qk_bias": dict(qk_bias=True),
    "qk_norm": dict(qk_norm=True),
    "softcap": dict(logit_softcap=3.0),
    "tied": dict(tie_embeddings=True),
}


def batch(cfg: GPTConfig, B: int = 3, T: int | None = None, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (B, T or cfg.seq_len), generator=g)


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize("kw, match", [
    (dict(n_head=4, n_kv_head=3), "multiple of n_kv_head"),
    (dict(n_head=4, n_kv_head=8), "multiple of n_kv_head"),
    (dict(d_model=30, n_head=4), "not divisible"),
    (dict(head_dim=7), "even"),
    (dict(attention="mla", qk_rope_head_dim=5), "even"),
    (dict(attention="mla", qk_bias=True), "qk_bias"),
    (dict(attention="mla", qk_norm=True), "qk_norm"),
    (dict(attention="mla", n_kv_head=2), "n_kv_head"),
    (dict(attention="linear"), "attention must be"),
    (dict(logit_softcap=0.0), "logit_softcap"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(mlp_ratio=-1.0), "mlp_ratio"),
])
def test_config_rejects_bad_shapes(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_config_derived_sizes():
    c = GPTConfig()
    assert (c.kv_heads, c.head_size, c.qk_dim, c.hidden_dim) == (4, 32, 32, 344)  # 8/3 * 128 -> 344
    assert GPTConfig(d_ff=100).hidden_dim == 100
    m = GPTConfig(attention="mla", qk_nope_head_dim=24, qk_rope_head_dim=8, v_head_dim=20)
    assert (m.nope_dim, m.qk_dim, m.v_dim, m.rope_dim) == (24, 32, 20, 8)
    assert math.isclose(m.attn_scale, 1 / math.sqrt(32))
    assert GPTConfig(attention="gqa", n_kv_head=2).kv_heads == 2
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'd_model'"):
        c.d_model = 3


# --------------------------------------------------------------------------- forward

@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_shapes_and_initial_loss(name):
    cfg = tiny(**CONFIGS[name])
    model = GPT(cfg)
    idx, tgt = batch(cfg), batch(cfg, seed=2)
    logits, loss = model(idx, tgt)
    assert logits.shape == (3, cfg.seq_len, cfg.vocab_size)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # small init: near-uniform predictions
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.1
    logits2, none = model(idx[:, :5])
    assert none is None and logits2.shape == (3, 5, cfg.vocab_size)


def test_loss_ignores_minus_one_targets():
    cfg = tiny()
    model = GPT(cfg).eval()
    idx = batch(cfg)
    tgt = idx.clone()
    tgt[:, :8] = -1
    logits, loss = model(idx, tgt)
    ref = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, cfg.vocab_size), idx[:, 8:].reshape(-1))
    torch.testing.assert_close(loss, ref)


def test_too_long_sequence_raises():
    cfg = tiny()
    with pytest.raises(ValueError, match="seq_len"):
        GPT(cfg)(batch(cfg, T=cfg.seq_len + 1))


@pytest.mark.parametrize("name", ["mha", "gqa", "mla_qlora", "mla_wide_v", "qk_bias", "qk_norm", "softcap", "tied"])
def test_gradient_reaches_every_parameter(name):
    cfg = tiny(**CONFIGS[name])
    model = GPT(cfg)
    idx = batch(cfg)
    _, loss = model(idx, idx)
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", ["mha", "gqa", "mla", "mla_qlora", "mla_wide_v", "softcap"])
def test_tracked_and_untracked_forward_agree(name):
    """Tracking (flash kernel with lse, or the explicit path) must not change the outputs."""
    cfg = tiny(**CONFIGS[name])
    model = GPT(cfg).eval()
    idx = batch(cfg)
    plain, _ = model(idx)
    model.track_max_logits = True
    tracked, _ = model(idx)
    torch.testing.assert_close(tracked, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mha", "gqa", "mla_qlora", "softcap"])
def test_causal_future_tokens_do_not_leak(name):
    cfg = tiny(**CONFIGS[name])
    model = GPT(cfg).eval()
    idx = batch(cfg)
    idx2 = idx.clone()
    idx2[:, 9:] = (idx2[:, 9:] + 1) % cfg.vocab_size
    a, _ = model(idx)
    b, _ = model(idx2)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])
    la, lb = model.attention_logits(idx), model.attention_logits(idx2)
    for x, y in zip(la, lb, strict=False):
        torch.testing.assert_close(x[:, :, :9, :9], y[:, :, :9, :9])


# --------------------------------------------------------------------------- names, tying, init

def test_parameter_names_mha_with_bias_and_norm():
    names = set(dict(GPT(tiny(qk_bias=True, qk_norm=True)).named_parameters()))
    for L in range(2):
        p = f"blocks.{L}"
        for s in ("attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight", "attn.k_proj.bias",
                  "attn.v_proj.weight", "attn.o_proj.weight", "attn.q_norm.weight", "attn.k_norm.weight",
                  "attn_norm.weight", "mlp_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                  "mlp.down_proj.weight"):
            assert f"{p}.{s}" in names, s
    assert {"embed.weight", "lm_head.weight", "norm.weight"} <= names
    assert "blocks.0.attn.v_proj.bias" not in names and "blocks.0.attn.o_proj.bias" not in names


def test_parameter_names_and_shapes_mla():
    cfg = tiny(attention="mla", q_lora_rank=12, qk_nope_head_dim=10, v_head_dim=6)
    params = dict(GPT(cfg).named_parameters())
    H, d = cfg.n_head, cfg.d_model
    shapes = {
        "q_a_proj.weight": (12, d), "q_a_norm.weight": (12,), "q_b_proj.weight": (H * (10 + 4), 12),
        "kv_a_proj.weight": (16 + 4, d), "kv_a_norm.weight": (16,), "kv_b_proj.weight": (H * (10 + 6), 16),
        "o_proj.weight": (d, H * 6),
    }
    for s, shape in shapes.items():
        assert tuple(params[f"blocks.1.attn.{s}"].shape) == shape, s
    assert "blocks.0.attn.q_proj.weight" not in params
    plain = dict(GPT(tiny(attention="mla")).named_parameters())
    assert "blocks.0.attn.q_proj.weight" in plain and "blocks.0.attn.q_a_proj.weight" not in plain


def test_tied_embeddings_share_storage_and_are_listed_once():
    model = GPT(tiny(tie_embeddings=True))
    assert model.lm_head.weight is model.embed.weight
    assert model.lm_head.weight.data_ptr() == model.embed.weight.data_ptr()
    names = [n for n, _ in model.named_parameters()]
    assert "embed.weight" in names and "lm_head.weight" not in names
    untied = GPT(tiny())
    assert untied.lm_head.weight.data_ptr() != untied.embed.weight.data_ptr()


def test_param_roles():
    roles = GPT(tiny(qk_bias=True)).param_roles()
    assert roles["embed.weight"] == "embedding" and roles["lm_head.weight"] == "lm_head"
    assert roles["norm.weight"] == "norm" and roles["blocks.0.attn_norm.weight"] == "norm"
    assert roles["blocks.0.attn.q_proj.bias"] == "bias"
    assert roles["blocks.1.mlp.down_proj.weight"] == "matrix"
    assert set(GPT(tiny(tie_embeddings=True)).param_roles().values()) == {"embedding", "norm", "matrix"}


def test_init_statistics():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=8)  # default width so the sample std is accurate
    params = dict(GPT(cfg).named_parameters())
    assert abs(params["blocks.0.attn.q_proj.weight"].std().item() - 0.02) < 1e-3
    resid = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert abs(params["blocks.3.attn.o_proj.weight"].std().item() - resid) < 5e-4
    assert abs(params["blocks.3.mlp.down_proj.weight"].std().item() - resid) < 5e-4
    assert torch.equal(params["norm.weight"], torch.ones(cfg.d_model))


def test_rope_buffers_not_in_state_dict():
    sd = GPT(tiny()).state_dict()
    assert not any("rope" in k for k in sd)


# --------------------------------------------------------------------------- RoPE, GQA mapping

def test_rope_logits_depend_only_on_relative_position():
    torch.manual_seed(0)
    cos, sin = rope_cos_sin(32, 8)
    q, k = torch.randn(8), torch.randn(8)
    def logit(i, j):
        qs = torch.zeros(32, 8)
        ks = torch.zeros(32, 8)
        qs[i], ks[j] = q, k
        return (apply_rope(qs, cos, sin)[i] @ apply_rope(ks, cos, sin)[j]).item()
    for shift in (1, 5, 17):
        assert math.isclose(logit(7, 3), logit(7 + shift, 3 + shift), rel_tol=1e-4, abs_tol=1e-5)
    assert not math.isclose(logit(7, 3), logit(7, 4), rel_tol=1e-3)
    x = torch.randn(5, 8)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))  # a rotation


def test_gqa_equals_mha_with_repeated_kv_heads():
    """Query head h reads KV head h // (n_head / n_kv_head) -- the map QK-Clip assumes."""
    gqa = GPT(tiny(n_kv_head=2)).eval()
    mha = GPT(tiny()).eval()
    sd = gqa.state_dict()
    hd = 8
    for L in range(2):
        for w in ("k_proj", "v_proj"):
            W = sd[f"blocks.{L}.attn.{w}.weight"].view(2, hd, -1)
            sd[f"blocks.{L}.attn.{w}.weight"] = W.repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(sd)
    idx = batch(gqa.config)
    torch.testing.assert_close(mha(idx)[0], gqa(idx)[0], rtol=1e-5, atol=1e-5)


def test_describe_mentions_layout():
    assert "GQA" in GPT(tiny(n_kv_head=2)).describe()
    assert "MLA" in GPT(tiny(attention="mla")).describe()
