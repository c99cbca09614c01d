"""QK-Clip on the lab's models: exact per-head clipping from attention_logits, and the
one-step slack when clipping inside training (Kimi K2 Alg. 1 call path)."""
import pytest
import torch

from muonclip import MuonClip, apply_qk_clip_, build_param_groups
from muonclip.models import GPT, GPTConfig

VARIANTS = {
    "mha_bias": dict(attention="mha", n_head=4, qk_bias=True),
    "gqa_bias": dict(attention="mha", n_head=4, n_kv_head=2, qk_bias=True),
    "mqa": dict(attention="mha", n_head=4, n_kv_head=1),
    "mla": dict(attention="mla", n_head=4, kv_lora_rank=16, qk_rope_head_dim=4),
    "mla_qlora": dict(attention="mla", n_head=4, kv_lora_rank=16, qk_rope_head_dim=4, q_lora_rank=12),
}


def make(variant, n_layer=2, **extra):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, d_model=32, n_layer=n_layer, seq_len=16, **{**VARIANTS[variant], **extra})
    return GPT(cfg)


def batch(B=3, T=16, vocab=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def exact_max(model, idx):
    with torch.no_grad():
        return [L.amax(dim=(0, 2, 3)) for L in model.attention_logits(idx)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_clip_gives_min_of_S_and_tau_per_head(variant):
    """One layer, so a clip cannot change its own input (in deeper models a clip in layer l
    legitimately changes the residual stream that layers > l read)."""
    model = make(variant, n_layer=1)
    with torch.no_grad():  # grow the q/k weights so logits are spread out
        for name, p in model.named_parameters():
            if p.ndim == 2 and "attn" in name:
                p.mul_(4.0)
    idx = batch()
    S = exact_max(model, idx)
    flat = torch.cat(S).sort().values
    tau = float(flat[len(flat) // 2])  # about half the heads above tau
    shared_before = {n: p.detach().clone() for n, p in model.named_parameters()
                     for spec in model.qk_clip_spec() if n in spec.shared_k}
    untouched_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    gammas = apply_qk_clip_(params, model.qk_clip_spec(), S, tau)
    S2 = exact_max(model, idx)
    for s, s2 in zip(S, S2, strict=True):
        torch.testing.assert_close(s2, torch.clamp(s, max=tau), rtol=1e-5, atol=1e-6)
    for n, before in shared_before.items():  # MLA's shared rotary key: bit-identical
        assert torch.equal(params[n], before)
    # Weights outside the clipped heads' rows are bit-identical: compare everything except
    # the parameters the spec names, whose unclipped rows are checked through the logits.
    spec_names = {n for spec in model.qk_clip_spec() for n in spec.param_names()}
    for n, p in params.items():
        if n not in spec_names:
            assert torch.equal(p, untouched_before[n]), n
    assert sum(int((g < 1).sum()) for g in gammas) >= 1


@pytest.mark.parametrize("variant", ["mha_bias", "gqa_bias", "mla"])
def test_tracked_max_logits_match_attention_logits(variant):
    model = make(variant)
    idx = batch()
    model.train()
    model(idx)
    for tracked, ref in zip(model.max_logits(), exact_max(model, idx), strict=True):
        torch.testing.assert_close(tracked, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["mha_bias", "gqa_bias", "mla"])
def test_training_with_clip_slack_is_exactly_the_steps_own_growth(variant):
    """K2's call path: forward -> backward -> step (update, then clip with this forward's S).

    gamma_h = tau / S_h comes from the pre-update forward, so on the next forward of the same
    batch head h sits at gamma_h * S_h(post-update, unclipped): above tau by exactly the
    factor the step's own update grew that head's logit. We check that relation per head
    (one layer, so the clip cannot change its own input) and record the slack.
    """
    import copy

    model = make(variant, n_layer=1)
    idx = batch()
    tau = 0.5 * float(torch.cat(exact_max(model, idx)).max())
    opt = MuonClip(build_param_groups(model, lr=0.02, weight_decay=0.0), lr=0.02, qk_clip_tau=tau,
                   qk_clip_spec=model.qk_clip_spec(), max_logits_fn=model.max_logits)
    slacks, clipped_steps = [], 0
    model.train()
    for _ in range(6):
        _, loss = model(idx, idx.roll(-1, dims=1))
        opt.zero_grad()
        loss.backward()
        S_pre = model.max_logits()[0].clone()
        twin = copy.deepcopy(model)
        twin_opt = MuonClip(build_param_groups(twin, lr=0.02, weight_decay=0.0), lr=0.02)
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict shares tensors
        for p_twin, p in zip(twin.parameters(), model.parameters(), strict=True):
            p_twin.grad = p.grad.clone()
        twin_opt.step()  # the same update without the clip
        S_post = exact_max(twin, idx)[0]
        opt.step()
        S_after = exact_max(model, idx)[0]
        gamma = opt.last_qk_clip.gammas[0].float()
        assert torch.equal(gamma < 1, S_pre > tau)
        torch.testing.assert_close(S_after, gamma * S_post, rtol=1e-4, atol=1e-5)
        clipped_steps += int((gamma < 1).any())
        slacks.append(float(S_after.max()) / tau - 1)
    assert clipped_steps >= 3
    print(f"\n{variant}: slack over tau per step = {[round(x, 4) for x in slacks]}")


@pytest.mark.parametrize("variant", ["mha_bias", "gqa_bias", "mla"])
def test_accumulated_max_logits_are_consumed_once_per_step(variant):
    """Issue #12 (stale accumulated max logits): with ``accumulate_max_logits=True`` and
    ``max_logits_fn=model.max_logits`` (docs/distributed.md, gradient accumulation), the
    running max was never reset after the optimizer read it, so every later step clipped
    again with the stale S. At lr 0 nothing but the clip moves the weights: the first step
    clips the heads above tau to tau, and later steps must leave them there."""
    model = make(variant, n_layer=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "attn" in name:
                p.mul_(4.0)
    micro = [batch(seed=1), batch(seed=2)]
    both = torch.cat(micro)
    S0 = exact_max(model, both)[0]
    tau = 0.5 * float(S0.max())
    model.train()
    model.accumulate_max_logits = True
    opt = MuonClip(build_param_groups(model, lr=0.0, weight_decay=0.0), lr=0.0, qk_clip_tau=tau,
                   qk_clip_spec=model.qk_clip_spec(), max_logits_fn=model.max_logits)
    history, min_gammas = [], []
    for _ in range(4):
        opt.zero_grad()
        for idx in micro:  # two micro-batches per optimizer step
            _, loss = model(idx, idx.roll(-1, dims=1))
            (loss / len(micro)).backward()
        opt.step()
        history.append(exact_max(model, both)[0])
        min_gammas.append(opt.last_qk_clip.min_gamma)
    assert min_gammas[0] < 0.9  # the first step clips
    print(f"\n{variant}: tau={tau:.4f} top head per step = {[round(float(h.max()), 4) for h in history]}")
    for h in history:
        torch.testing.assert_close(h, S0.clamp(max=tau), rtol=1e-5, atol=1e-5)
    assert all(g > 1 - 1e-5 for g in min_gammas[1:]), min_gammas  # no re-clip with a stale S
