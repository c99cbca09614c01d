"""What a MuonClip param group may hold: option checks naming the parameter, and per-parameter views."""
from __future__ import annotations

from . import functional as muon_math
from .normuon import NORMUON_BETA2
from .orthogonalizers import resolve_orthogonalizer
from .precision import NS_PRECISIONS

__all__ = ["ALGORITHMS", "validate_group", "head_blocks", "expert_flags", "label"]

ALGORITHMS = ("muon", "adamw")


def validate_group(group: dict) -> None:
    """Raise ``ValueError`` (naming the option, and the parameter where one is at fault) unless
    ``group`` is a valid MuonClip param group."""
    algo = group.get("algorithm", "muon")
    if algo not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {algo!r} in param group; choose from {ALGORITHMS}")
    if group.get("ns_precision", "auto") not in NS_PRECISIONS:
        raise ValueError(f"Unknown ns_precision {group['ns_precision']!r}; choose from {NS_PRECISIONS}")
    _validate_options(group)
    names = group.get("param_names")
    if names is not None and len(names) != len(group["params"]):
        raise ValueError("param_names must name every parameter of its group")
    stacks = group.get("expert_stacks", False)
    if not isinstance(stacks, bool) and len(stacks) != len(group["params"]):
        raise ValueError("expert_stacks must be a bool or one bool per parameter of its group")
    for i, (p, stack) in enumerate(zip(group["params"], expert_flags(group), strict=False)):
        where = label(group, i)
        if p.is_complex():
            raise ValueError(f"MuonClip does not support complex parameters ({where})")
        if algo == "muon" and p.ndim < 2:
            raise ValueError(
                f"Muon needs >=2-D parameters but {where} has shape {tuple(p.shape)}; "
                "route 1-D tensors (norms, biases) to an 'adamw' group"
            )
        if algo == "muon" and stack and p.ndim != 3 and not isinstance(stacks, bool):
            raise ValueError(f"{where} is declared an expert stack but has shape {tuple(p.shape)}; "
                             "expert stacks are 3-D (experts, n, m)")
    head_blocks(group)  # raises, naming the parameter, when a layout does not tile it


def _validate_options(group: dict) -> None:
    """The group-level options, each checked with a message naming it."""
    resolve_orthogonalizer(group.get("orthogonalizer", "ns5"))  # ValueError names "orthogonalizer"
    steps = group.get("ns_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"Invalid ns_steps: {steps} (an int >= 1, or None for the schedule's own length)")
    if group.get("update_scale", "rms_match") not in muon_math.UPDATE_SCALES:
        raise ValueError(f"Unknown update_scale {group['update_scale']!r}; choose from {muon_math.UPDATE_SCALES}")
    for key in ("cautious_weight_decay", "normuon"):
        if not isinstance(group.get(key, False), bool):
            raise ValueError(f"{key} must be a bool, got {group[key]!r}")
    beta2 = group.get("normuon_beta2", NORMUON_BETA2)
    if isinstance(beta2, bool) or not isinstance(beta2, (int, float)) or not 0.0 <= beta2 < 1.0:
        raise ValueError(f"normuon_beta2 must be in [0, 1), got {beta2!r}")
    heads = group.get("heads_per_block", 1)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads_per_block must be an int >= 1, got {heads!r}")
    blocks = group.get("head_blocks")
    if blocks is not None:
        if group.get("algorithm", "muon") != "muon":
            raise ValueError("head_blocks applies to Muon groups only")
        if isinstance(blocks, (str, bytes)) or len(blocks) != len(group["params"]):
            raise ValueError("head_blocks must list one entry (None or (dim, head_width)) per parameter")


def head_blocks(group: dict) -> list[tuple[int, int] | None]:
    """Per parameter: the (dim, block width) it is orthogonalised in, or None (whole)."""
    blocks = group.get("head_blocks") or [None] * len(group["params"])
    out = []
    for i, (p, stack, block) in enumerate(zip(group["params"], expert_flags(group), blocks, strict=True)):
        if block is not None and (isinstance(block, (str, bytes)) or len(block) != 2):
            raise ValueError(f"head_blocks entry of {label(group, i)} must be None or (dim, head_width), "
                             f"got {block!r}")
        try:
            out.append(muon_math.effective_head_block(p.shape, stack, None if block is None else tuple(block),
                                                      group.get("heads_per_block", 1)))
        except ValueError as exc:
            raise ValueError(f"head_blocks of {label(group, i)}: {exc}") from None
    return out


def label(group: dict, i: int) -> str:
    """How an error message names parameter ``i`` of ``group``: its name, else its place and shape."""
    names = group.get("param_names")
    if names is not None:
        return f"parameter '{names[i]}'"
    p = group["params"][i]
    return f"parameter #{i} of shape {tuple(p.shape)} in a '{group.get('algorithm', 'muon')}' group"


def expert_flags(group: dict) -> list[bool]:
    """Per parameter: is it a declared stack of experts (orthogonalised per slice)?"""
    stacks = group.get("expert_stacks", False)
    if isinstance(stacks, bool):
        return [stacks and p.ndim == 3 for p in group["params"]]
    return [bool(s) for s in stacks]
