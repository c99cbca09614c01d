"""Build MuonClip param groups by parameter name: hidden matrices to Muon, the rest to AdamW."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "Rule", "DEFAULT_RULES", "EXPERT_STACK_PATTERN", "EXPERT_STACK_ATTR", "is_expert_stack",
    "assign_params", "build_param_groups", "describe_param_groups",
]


@dataclass(frozen=True)
class Rule:
    """Send parameters whose name matches ``pattern`` (re.search) to ``algorithm``."""

    pattern: str
    algorithm: str  # "muon" | "adamw"
    reason: str = ""


# Embeddings and output heads are not hidden matrices: Muon's orthogonalised update does
# not suit them (Moonlight Sec. 2; Megatron-LM #4641 routed a tied lm_head to Muon).
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(r"(^|\.)(lm_head|embed_out|output_layer|score)(\.|$)", "adamw", "output head"),
    Rule(r"(^|\.)(embed|embeds|embedding|embeddings|embed_tokens|wte|wpe|tok_embeddings|word_embeddings"
         r"|position_embeddings)(\.|$)", "adamw", "embedding"),
)


# How a 3-D parameter is declared a stack of MoE experts (E, n, m), orthogonalised per expert.
# Shape alone cannot tell it from a Conv1d weight (out, in, k), which must be flattened
# (KellerJordan/Muon #63), so the declaration comes from the model: a parameter attribute, or
# the naming convention of HF transformers 5, torchtitan and Megatron (``...experts...``).
EXPERT_STACK_ATTR = "muon_expert_stack"
EXPERT_STACK_PATTERN = r"(^|\.)experts(\.|$)"


def is_expert_stack(name: str, p: torch.Tensor, pattern: str | None = EXPERT_STACK_PATTERN) -> bool:
    """A 3-D parameter declared an expert stack: ``p.muon_expert_stack = True``, or a name that
    matches ``pattern`` (None: the attribute only). Never true for a conv module's weight."""
    if p.ndim != 3:
        return False
    declared = getattr(p, EXPERT_STACK_ATTR, None)
    if declared is not None:
        return bool(declared)
    return pattern is not None and re.search(pattern, name) is not None


def _special_params(model: nn.Module) -> dict[int, str]:
    """Parameters that must go to AdamW whatever their name: embedding tables (also when
    tied to the lm_head) and the model's declared input/output embeddings (HF API)."""
    special: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            special[id(module.weight)] = "embedding"
    for getter, why in (("get_input_embeddings", "input embedding"), ("get_output_embeddings", "output head")):
        fn = getattr(model, getter, None)
        if callable(fn):
            try:
                mod = fn()
            except (NotImplementedError, AttributeError):
                mod = None
            weight = getattr(mod, "weight", None)
            if isinstance(weight, torch.Tensor):
                special.setdefault(id(weight), why)
    return special


def assign_params(
    model: nn.Module, rules: Sequence[Rule] | None = None,
) -> list[tuple[str, torch.nn.Parameter, str, str]]:
    """Decide each trainable parameter's algorithm: ``(name, param, algorithm, reason)``.

    User ``rules`` are tried first (first match wins), then embeddings/heads by identity,
    then :data:`DEFAULT_RULES`, then the shape rule: >=2-D -> Muon, otherwise AdamW.
    ``named_parameters`` lists a tied weight once, so every parameter lands in exactly one group.
    """
    special = _special_params(model)
    out = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        algo = reason = None
        for rule in rules or ():
            if re.search(rule.pattern, name):
                algo, reason = rule.algorithm, rule.reason or f"rule {rule.pattern!r}"
                break
        if algo is None and id(p) in special:
            algo, reason = "adamw", special[id(p)]
        if algo is None:
            for rule in DEFAULT_RULES:
                if re.search(rule.pattern, name):
                    algo, reason = rule.algorithm, rule.reason
                    break
        if algo is None:
            algo, reason = ("muon", "hidden matrix") if p.ndim >= 2 else ("adamw", f"{p.ndim}-D tensor")
        if algo not in ("muon", "adamw"):
            raise ValueError(f"rule sent {name} to unknown algorithm {algo!r}")
        if algo == "muon" and p.ndim < 2:
            raise ValueError(f"rule sent {p.ndim}-D parameter {name} to Muon; Muon needs >=2-D tensors")
        out.append((name, p, algo, reason))
    return out


def build_param_groups(
    model: nn.Module,
    lr: float = 0.02,
    weight_decay: float = 0.1,
    *,
    rules: Sequence[Rule] | None = None,
    adamw_lr: float | None = None,
    adamw_weight_decay: float | None = None,
    expert_stacks: str | None = EXPERT_STACK_PATTERN,
    head_blocks: Mapping[str, tuple[int, int]] | None = None,
) -> list[dict]:
    """Param groups for :class:`MuonClip`, each with ``algorithm`` and ``param_names``.

    The Muon group also carries ``expert_stacks``, one bool per parameter: 3-D parameters
    declared stacks of experts (see :func:`is_expert_stack`; ``expert_stacks`` is the name
    pattern, None to rely on the ``muon_expert_stack`` attribute alone) are orthogonalised per
    expert. Every other >=3-D weight, such as a Conv1d's, is one flattened matrix.

    With the default ``update_scale="rms_match"`` Muon and AdamW share lr and weight decay
    (Moonlight); ``adamw_lr`` / ``adamw_weight_decay`` override them for the AdamW group.
    Empty groups are dropped. Print the assignment with :func:`describe_param_groups`.

    ``head_blocks`` (e.g. ``model.head_blocks()``) maps parameter names to their per-head
    layout ``(dim, head_width)``; the Muon group then carries ``head_blocks``, one entry per
    parameter (None for the others), and :class:`MuonClip` orthogonalises those per head (see
    its ``heads_per_block``). Every name must be a Muon parameter of ``model``.
    """
    plan = assign_params(model, rules)
    if head_blocks is not None:
        muon_names = {n for n, _, a, _ in plan if a == "muon"}
        stray = sorted(set(head_blocks) - muon_names)
        if stray:
            raise ValueError(f"head_blocks names parameters that are not Muon parameters of the model: {stray[:5]}")
    groups = []
    adamw_lr = lr if adamw_lr is None else adamw_lr
    adamw_weight_decay = weight_decay if adamw_weight_decay is None else adamw_weight_decay
    for algo, glr, gwd in (("muon", lr, weight_decay), ("adamw", adamw_lr, adamw_weight_decay)):
        members = [(n, p, r) for n, p, a, r in plan if a == algo]
        if not members:
            continue
        group = {
            "params": [p for _, p, _ in members],
            "param_names": [n for n, _, _ in members],
            "reasons": [r for _, _, r in members],
            "algorithm": algo,
            "lr": glr,
            "weight_decay": gwd,
        }
        if algo == "muon":
            group["expert_stacks"] = [is_expert_stack(n, p, expert_stacks) for n, p, _ in members]
            group["reasons"] = [f"{r} (expert stack, per expert)" if e else r
                                for r, e in zip(group["reasons"], group["expert_stacks"], strict=False)]
            if head_blocks is not None:
                group["head_blocks"] = [head_blocks.get(n) for n, _, _ in members]
                group["reasons"] = [f"{r} (per head: dim {b[0]}, width {b[1]})" if b else r
                                    for r, b in zip(group["reasons"], group["head_blocks"], strict=True)]
        groups.append(group)
    return groups


def describe_param_groups(groups: Iterable[dict]) -> str:
    """A table of every parameter, its shape, its group's algorithm and why it landed there."""
    lines = [f"{'parameter':48s} {'shape':>16s}  {'algorithm':9s} reason"]
    total = {"muon": 0, "adamw": 0}
    for group in groups:
        algo = group.get("algorithm", "muon")
        names = group.get("param_names") or [f"<unnamed {i}>" for i in range(len(group["params"]))]
        reasons = group.get("reasons") or [""] * len(names)
        for name, p, why in zip(names, group["params"], reasons, strict=False):
            total[algo] = total.get(algo, 0) + p.numel()
            lines.append(f"{name:48s} {str(tuple(p.shape)):>16s}  {algo:9s} {why}")
    lines.append("totals: " + ", ".join(f"{k} {v:,} params" for k, v in total.items()))
    return "\n".join(lines)
