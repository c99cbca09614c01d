"""MuonClip's state and checkpoints: what it keeps per parameter, how a saved state is checked and loaded.

Per Muon parameter: the momentum (fp32, or fp64 for an fp64 parameter), NorMuon's row second
moment; per AdamW parameter: step and moments. Per Muon group, the Newton-Schulz *plans*
(:mod:`.ns_auto`: ``"bf16:direct"``, ``"fp16:gram@2"``; ``ns_plans``, one per parameter, and
``ns_request``), plain strings in the group that ``torch.load(weights_only=True)`` reads: which
precision and form ``ns_precision`` / ``ns_impl`` resolved to the first time each parameter
stepped, so a resumed run computes what an uninterrupted one does even where the new process
would measure other rates. The optimizer class itself
(:mod:`.muonclip`) checks a step's inputs and dispatches the math.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import distributed
from . import functional as muon_math
from .group_options import expert_flags, head_blocks, label, validate_group
from .normuon import second_moment_shape
from .ns_auto import PRECISION_DTYPES, parse_plan, plan
from .ns_forms import check_impl, parse_form, resolve_form
from .orthogonalizers import resolve_orthogonalizer

__all__ = ["StateMixin", "check_plannable"]

# State MuonClip keeps in at least fp32 whatever the parameter's dtype (see ``_init_state``).
_WIDE_STATE = ("momentum_buffer", "normuon_second_moment", "exp_avg", "exp_avg_sq")


def _state_dtype(p: Tensor, key: str = "momentum_buffer") -> torch.dtype:
    """The dtype ``_init_state`` gives state ``key`` of ``p``: fp32 for fp32/bf16/fp16
    parameters, fp64 for fp64 ones (never narrower than fp32 nor than the parameter); the
    NorMuon second moment, a row statistic of fp32 directions, is always fp32."""
    if key == "normuon_second_moment":
        return torch.float32
    return muon_math._working_dtype(p.dtype)


def check_plannable(precision: str, impl: str) -> None:
    """Raise ``ValueError`` unless ``impl`` is a form name that ``precision`` runs (a 16-bit
    precision refuses the forms not measured as accurate as torch.optim.Muon's)."""
    if precision in PRECISION_DTYPES:
        resolve_form(1, 2, impl, None, PRECISION_DTYPES[precision])  # checks the spelling too
    else:
        check_impl(impl)


def _check_plans(group: dict) -> None:
    """A saved group's recorded plans: None or a plan string per parameter."""
    plans = group.get("ns_plans")
    if plans is None:
        return
    if not isinstance(plans, (list, tuple)) or len(plans) != len(group["params"]):
        raise ValueError("saved ns_plans must hold one entry per parameter of its group; nothing was loaded")
    for entry in plans:
        if entry is not None:
            dtype, form = parse_plan(entry)  # raises on a malformed plan
            parse_form(form)


class StateMixin(Optimizer):
    """State creation, the Newton-Schulz plans, and checked checkpoint loading for MuonClip."""

    @staticmethod
    def _fill_group_defaults(opt: "StateMixin") -> None:
        """After ``load_state_dict``: groups saved before an option existed get its default."""
        for group in opt.param_groups:
            for key, value in opt.defaults.items():
                group.setdefault(key, value)

    # -- checkpoints ----------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict) -> None:
        """``torch.optim.Optimizer.load_state_dict``, checked first, with fp32 state kept fp32.

        Every saved group (with this optimizer's parameters and defaults) and the shape of
        every saved state tensor are checked before anything changes, so a refused load
        leaves the optimizer as it was. torch casts floating state to each parameter's dtype;
        MuonClip keeps momentum and moments in fp32 whatever the parameter's dtype, so they
        are taken from the saved fp32 tensors instead, and a bf16 model's resumed run goes on
        exactly as an uninterrupted one.
        """
        id_to_param = self._check_loadable(state_dict)
        super().load_state_dict(state_dict)
        for param_id, entries in state_dict["state"].items():
            p = id_to_param.get(param_id)
            for key in _WIDE_STATE if p is not None else ():
                value = entries.get(key)
                if isinstance(value, Tensor) and value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, dtype=_state_dtype(p, key))

    def _check_loadable(self, state_dict: dict) -> dict:
        """Raise ``ValueError`` unless ``state_dict`` fits this optimizer; return saved id -> param.

        Group counts and sizes are left to torch's own check, which also raises before any
        change."""
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups):
            return {}
        pairs = list(zip(saved_groups, self.param_groups, strict=True))
        if any(len(saved["params"]) != len(group["params"]) for saved, group in pairs):
            return {}
        where: dict = {}
        for saved, group in pairs:
            candidate = {**self.defaults, **saved, "params": group["params"]}
            validate_group(candidate)
            _check_plans(candidate)
            for i, (param_id, stack) in enumerate(zip(saved["params"], expert_flags(candidate), strict=True)):
                where[param_id] = (candidate, i, stack)
        for param_id, entries in state_dict.get("state", {}).items():
            if param_id not in where:
                continue
            group, i, stack = where[param_id]
            p = group["params"][i]
            expected = {"momentum_buffer": p.shape, "exp_avg": p.shape, "exp_avg_sq": p.shape,
                        "normuon_second_moment": second_moment_shape(p.shape, stack)}
            for key, shape in expected.items():
                value = entries.get(key)
                if isinstance(value, Tensor) and tuple(value.shape) != tuple(shape):
                    raise ValueError(f"saved {key} of {label(group, i)} has shape {tuple(value.shape)}, expected "
                                     f"{tuple(shape)}: the state dict is not this model's; nothing was loaded")
        return {param_id: group["params"][i] for param_id, (group, i, _) in where.items()}

    # -- state ----------------------------------------------------------------------------
    def _init_state(self, p: Tensor, group: dict, expert_stack: bool = False) -> dict:
        """The state of ``p`` (created on first use: fp32, or fp64 for an fp64 ``p``; shaped and
        sharded like ``p``).

        Muon: ``momentum_buffer``, plus ``normuon_second_moment`` (per row of p, sharded like
        p's rows) in a NorMuon group -- also added later if a group turns NorMuon on.
        AdamW: ``step``, ``exp_avg``, ``exp_avg_sq``.
        """
        state = self.state[p]
        if group.get("algorithm", "muon") == "muon":
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p, dtype=_state_dtype(p))
            if group.get("normuon") and "normuon_second_moment" not in state:
                state["normuon_second_moment"] = distributed.zeros_rows_like(
                    p, second_moment_shape(p.shape, expert_stack))
        elif not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=_state_dtype(p))
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=_state_dtype(p))
        return state

    def init_state(self) -> None:
        """Create zero optimizer state for every parameter without stepping.

        ``torch.distributed.checkpoint.state_dict`` otherwise initialises state with a fake
        ``step()`` at lr 0, which would also run QK-Clip on stale max logits; call this on a
        fresh optimizer before ``get_optimizer_state_dict`` / ``set_optimizer_state_dict``, and
        before saving too, so that a parameter that never stepped (skipped on every rank) has
        state in the checkpoint: a load asks for every parameter's. Zero state is what a first
        step would create, so training goes on identically.
        """
        for group in self.param_groups:
            for p, stack in zip(group["params"], expert_flags(group), strict=True):
                self._init_state(p, group, stack)

    def _params_by_name(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for group in self.param_groups:
            for name, p in zip(group.get("param_names") or (), group["params"], strict=False):
                out[name] = p
        return out

    def _label_of(self, p: Tensor) -> str:
        for group in self.param_groups:
            for i, q in enumerate(group["params"]):
                if q is p:
                    return label(group, i)
        return "an unknown parameter"

    def _schedule(self, group: dict) -> tuple[tuple[float, float, float], ...]:
        """The group's Newton-Schulz coefficients, one triple per iteration."""
        return resolve_orthogonalizer(group["orthogonalizer"]).schedule(group.get("ns_steps"))

    def _ns_plans(self, group: dict, params: Sequence[Tensor], flags: Sequence[bool], blocks: Sequence,
                  record: bool = True) -> list[str]:
        """Each parameter's Newton-Schulz plan: the one recorded in the group (``ns_plans``,
        parallel to ``params``) when the group still asks for what it asked then
        (``ns_request``: ``ns_precision`` / ``ns_impl``), else planned now for its matrix (or
        head block) shape and, with ``record``, recorded. Distributed steps do not record (the
        plan is a per-process choice; see docs/performance.md)."""
        request = f"{group.get('ns_precision', 'auto')}/{self.ns_impl}"
        if group.get("ns_request") == request and len(group.get("ns_plans") or ()) == len(group["params"]):
            recorded = list(group["ns_plans"])
        elif record:
            recorded = [None] * len(group["params"])
        else:
            # not recorded, but kept for this process (the measured rates never change within it):
            # a distributed step need not plan every matrix again on every step
            unrecorded = self.__dict__.setdefault("_unrecorded_ns_plans", {})
            recorded = unrecorded.setdefault((id(group), request, len(group["params"])), [None] * len(group["params"]))
        index = {id(q): j for j, q in enumerate(group["params"])}
        coeffs = None  # resolved only when a plan is missing: once all are recorded, a step plans nothing
        plans = []
        for p, stack, block in zip(params, flags, blocks, strict=True):
            j = index[id(p)]
            if recorded[j] is None:
                if coeffs is None:
                    coeffs = self._schedule(group)
                _, n, m = muon_math.block_dims(p.shape, stack, block)
                recorded[j] = plan(n, m, group.get("ns_precision", "auto"), self.ns_impl, coeffs, p.device)
            plans.append(recorded[j])
        if record and coeffs is not None:  # something was planned: record it (a new request starts a new list)
            group["ns_plans"], group["ns_request"] = recorded, request
        return plans

    def ns_plan(self) -> dict[str, str]:
        """What Newton-Schulz runs for each Muon parameter (by name when groups carry
        ``param_names``, else ``"group<i>.<j>"``), e.g. ``{"h.0.attn.q_proj.weight": "bf16:direct"}``:
        the recorded plan, or the one the next step would choose. For run records."""
        out = {}
        for gi, group in enumerate(self.param_groups):
            if group.get("algorithm", "muon") != "muon":
                continue
            names = group.get("param_names") or [f"group{gi}.{j}" for j in range(len(group["params"]))]
            plans = self._ns_plans(group, group["params"], expert_flags(group), head_blocks(group), record=False)
            out.update(zip(names, plans, strict=True))
        return out
