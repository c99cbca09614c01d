"""Param groups by name: every parameter in exactly one group, embeddings/heads to AdamW."""
import pytest
import torch
from torch import nn

from muonclip import MuonClip, build_param_groups, describe_param_groups
from muonclip.optim import functional as muon_math
from muonclip.optim.param_groups import Rule, assign_params


def _names(groups, algo):
    return [n for g in groups if g["algorithm"] == algo for n in g["param_names"]]


def test_routing_and_exactly_once(toy_lm):
    model = toy_lm(conv=True)
    groups = build_param_groups(model, lr=0.02, weight_decay=0.1)
    assert set(_names(groups, "muon")) == {"up.weight", "down.weight", "conv.weight"}
    assert set(_names(groups, "adamw")) == {"embed.weight", "up.bias", "norm.weight", "norm.bias", "lm_head.weight"}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_tied_embedding_and_lm_head_go_to_adamw(toy_lm):
    model = toy_lm(tie=True)
    assert model.lm_head.weight is model.embed.weight
    groups = build_param_groups(model)
    adamw_ids = {id(p) for g in groups if g["algorithm"] == "adamw" for p in g["params"]}
    assert id(model.embed.weight) in adamw_ids
    assert all(id(p) != id(model.embed.weight) for g in groups if g["algorithm"] == "muon" for p in g["params"])


def test_tied_head_listed_under_head_name_still_adamw():
    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = nn.Linear(4, 9, bias=False)
            self.hidden = nn.Linear(4, 4)
            self.tok = nn.Embedding(9, 4)
            self.tok.weight = self.lm_head.weight

    groups = build_param_groups(HeadFirst())
    assert _names(groups, "muon") == ["hidden.weight"]
    assert "lm_head.weight" in _names(groups, "adamw")


def test_user_rules_override_and_validate(toy_lm):
    model = toy_lm()
    groups = build_param_groups(model, rules=[Rule(r"^down\.", "adamw", "kept on AdamW")])
    assert "down.weight" in _names(groups, "adamw")
    with pytest.raises(ValueError, match="1-D"):
        build_param_groups(model, rules=[Rule(r"bias", "muon")])


def test_adamw_overrides_and_groups_feed_the_optimizer(toy_lm, toy_batch):
    model = toy_lm()
    groups = build_param_groups(model, lr=0.02, weight_decay=0.1, adamw_lr=3e-3, adamw_weight_decay=0.0)
    by_algo = {g["algorithm"]: g for g in groups}
    assert by_algo["adamw"]["lr"] == 3e-3 and by_algo["adamw"]["weight_decay"] == 0.0
    opt = MuonClip(groups, lr=0.02, ns_precision="fp32")  # the Muon check below is fp32-tight
    assert [(g["algorithm"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        (g["algorithm"], g["lr"], g["weight_decay"]) for g in groups]
    model(toy_batch()).sum().backward()
    names = {id(p): n for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    after = dict(model.named_parameters())

    # AdamW group: exactly torch.optim.AdamW's first step with the overridden lr / decay
    adamw_names = [names[id(p)] for p in by_algo["adamw"]["params"]]
    ref = {n: before[n].clone().requires_grad_(True) for n in adamw_names}
    for n in adamw_names:
        ref[n].grad = grads[n]
    torch.optim.AdamW(list(ref.values()), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0).step()
    for n in adamw_names:
        torch.testing.assert_close(after[n].detach(), ref[n].detach(), rtol=0, atol=1e-7, msg=n)
        assert not torch.equal(after[n], before[n]), n

    # Muon group: W (1 - lr wd) - lr * 0.2 sqrt(max(n, m)) * NS5(g), with lr 0.02 and wd 0.1
    # (the step may evaluate NS5 on the Gram matrix or batch same-shape matrices: ~3e-6 apart;
    # a missing weight decay would be off by up to lr * wd * |W| ~ 5e-4)
    muon_names = [names[id(p)] for p in by_algo["muon"]["params"]]
    assert sorted(muon_names) == ["down.weight", "up.weight"]
    for n in muon_names:
        g = grads[n]
        wide = g if g.shape[0] <= g.shape[1] else g.mT
        o = muon_math.orthogonalize(wide, "ns5", 5)
        o = o if g.shape[0] <= g.shape[1] else o.mT
        want = before[n] * (1 - 0.02 * 0.1) - 0.02 * muon_math.update_scale(*g.shape) * o
        torch.testing.assert_close(after[n].detach(), want, rtol=0, atol=2e-5, msg=n)


def test_assignment_can_be_printed(toy_lm):
    table = describe_param_groups(build_param_groups(toy_lm(tie=True)))
    assert "embed.weight" in table and "embedding" in table and "hidden matrix" in table
    assert "totals:" in table


def test_frozen_params_are_left_out(toy_lm):
    model = toy_lm()
    model.down.weight.requires_grad_(False)
    names = [n for n, *_ in assign_params(model)]
    assert "down.weight" not in names
