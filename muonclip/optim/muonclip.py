"""The MuonClip optimizer: Muon for hidden matrices, AdamW for the rest, QK-Clip after the step.

Longer than ~400 lines because the class docstring (algorithm box, every option, the
distributed contract) is a fifth of it; the math lives in functional.py, normuon.py, shapes.py,
qk_clip.py and distributed.py, the group option checks in group_options.py, the state and
checkpoints in optimizer_state.py, and this class checks each step's inputs and dispatches.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from . import distributed
from . import functional as muon_math
from .group_options import expert_flags, head_blocks, validate_group
from .normuon import NORMUON_BETA2, normuon_directions_
from .ns_forms import Workspace, check_impl
from .optimizer_state import StateMixin, _state_dtype, check_plannable
from .orthogonalizers import OrthogonalizerSpec
from .qk_clip import (
    GQA_MODES,
    GRANULARITIES,
    QKClipLayerSpec,
    QKClipStats,
    check_qk_clip_params,
    qk_clip_gammas,
    scale_heads_,
)

__all__ = ["MuonClip", "NonFiniteGradientError", "QKClipStats"]

NONFINITE_POLICIES = ("raise", "skip")


class NonFiniteGradientError(FloatingPointError):
    """A gradient held NaN or Inf; the step was refused and nothing was modified."""


class MuonClip(StateMixin):
    r"""Muon with QK-Clip (Kimi K2, arXiv 2507.20534, Alg. 1), AdamW for non-matrix params.

    .. code-block:: text

        input: lr eta, momentum mu, weight decay lambda, threshold tau (optional)
        for each step t:
          check: every gradient finite, this step's max logits finite (else refuse; no change)
          for each Muon matrix W (n x m) with gradient G:
            M  <- mu M + G
            U  <- G + mu M                    (Nesterov; else U <- M)
            O  <- NS(U)                        (Newton-Schulz schedule "orthogonalizer", wide
                                                orientation; per head block if "head_blocks")
            if normuon:                         (NorMuon, arXiv 2510.05491; per output row i)
              v_i <- b2 v_i + (1 - b2) mean_j O_ij^2
              O   <- O / (sqrt(v) + 1e-10), rescaled to the Frobenius norm it had
            D  <- s(n', m') O,   s = 0.2 sqrt(max(n', m'))  ("rms_match"; n' x m' the block)
            W  <- W - eta (D + lambda c W)     c = 1, or c = [D W >= 0] entrywise when
                                                cautious_weight_decay (arXiv 2510.12402)
          for each AdamW param: torch.optim.AdamW's update (betas, eps, decoupled decay;
                                cautious: decay only where m_t W >= 0)
          if tau:                               (after the update, with this step's forward)
            for each attention head h with max logit S_h > tau:
              gamma_h <- tau / S_h; rescale q_h, k_h so that S_h becomes gamma_h S_h

    Group options (any param group may override the constructor's value):

    * ``orthogonalizer``: a name from :data:`muonclip.optim.orthogonalizers.ORTHOGONALIZERS`
      (``"ns5"`` default, ``"polar_express"``, ``"newton_schulz_cubic"``, ``"you_6step"``,
      ``"cans"``, ``"deepseek_v4"``) or custom coefficients ``((a, b, c), ...)``, one triple
      per iteration. ``ns_steps`` None runs the schedule's own length (5, 6 for you_6step, 10
      for deepseek_v4, the number of triples for custom); an explicit count truncates the
      schedule or repeats its last entry.
    * ``cautious_weight_decay`` (Muon and AdamW groups): decay only entries where the update
      and the weight agree in sign (``>= 0``, as the paper's Alg. 1).
    * ``normuon``, ``normuon_beta2`` (0.95, no bias correction): Muon groups; the per-row
      state ``normuon_second_moment`` is (out, 1), or (E, n, 1) for an expert stack.
    * ``head_blocks`` (Muon groups; one entry per parameter, None or ``(dim, head_width)``;
      :func:`muonclip.build_param_groups` fills it from ``head_blocks=model.head_blocks()``):
      orthogonalise each head's rows (dim 0: q/k/v) or columns (dim 1: o) on its own, and
      ``heads_per_block = g`` groups of g neighbouring heads (g = 2: head pairs). The scale
      is per block: with ``"rms_match"`` each block's update keeps RMS ~0.2, so the lr carries
      over unchanged; with ``"original"``, sqrt(max(1, n'/m')) changes (an o_proj split into
      H column blocks of (d, d/H) gets sqrt(H) instead of 1), so retune the lr.

    Param groups carry ``"algorithm": "muon" | "adamw"``. A plain iterable of tensors makes
    every tensor a Muon parameter. Build groups by name with
    :func:`muonclip.build_param_groups`, which also records ``"param_names"`` -- QK-Clip
    finds the q/k weights through those names.

    QK-Clip call path in a training loop::

        opt = MuonClip(groups, lr=..., qk_clip_tau=100.0,
                       qk_clip_spec=model.qk_clip_spec(), max_logits_fn=model.max_logits)
        loss = model(x, y)[1]; loss.backward()
        opt.step()            # Muon/AdamW update, then clip with this forward's max logits
        opt.zero_grad()

    ``opt.last_qk_clip`` holds the per-head gamma and the number of clipped heads.

    Shapes: a 2-D parameter is one matrix. Conv weights and any other >=3-D tensor are one
    flattened (out, in*k...) matrix, unless the group declares it a stack of MoE experts with
    ``"expert_stacks": True`` (every >=3-D tensor of the group) or a list of bools parallel to
    ``params``; :func:`muonclip.build_param_groups` fills that list from parameter names.
    Declared stacks (E, n, m) are orthogonalised per expert, batched.

    Precision and form (``ns_precision``, ``ns_impl``): ``"auto"`` (default) picks, per matrix
    shape, the precision (fp32, or a native bf16 / fp16) and form (direct, Gram, Gram with
    restarts) with the least FLOPs / measured product rate among the forms as accurate as
    torch.optim.Muon (:mod:`.ns_auto`); ``"fp32"``, ``"bf16"``, ``"fp16"`` force a precision,
    ``ns_impl`` (``"direct"``, ``"gram"``, ``"gram@2"``) a form. The choice is recorded per
    parameter in the state (``ns_plan``; :meth:`ns_plan` lists it), so a resumed run keeps it.
    Momentum, moments and the normalisation stay fp32 (fp64 for fp64 parameters); bf16/fp16
    parameters are updated in fp32 and cast back.

    Notes:
      * Muon's update ignores the gradient's scale (NS normalises it), so clipping the
        global gradient norm does not shrink Muon's step; it only affects AdamW groups and
        the momentum mix (DeepSpeed #8439).
      * ``qk_clip_granularity="layer"`` (an ablation) scales every head of a layer by the
        layer's smallest gamma, as a naive per-layer clip does; "head" (default) is K2's rule.
      * A parameter whose ``grad`` is None is skipped (no state is created for it).
      * A refused step (non-finite gradient or max logit, malformed max logits) raises before
        anything changes: parameters and optimizer state stay bit-identical.
      * ``torch.optim.lr_scheduler.OneCycleLR(cycle_momentum=True)`` cycles ``betas[0]`` (it
        finds ``betas`` in the defaults), which only AdamW groups use; Muon groups keep their
        ``momentum``. Pass ``cycle_momentum=False``, or set ``group["momentum"]`` yourself.

    Distributed (``torch.distributed`` initialised; see :mod:`muonclip.optim.distributed`):
      * DDP: gradients arrive averaged; each rank orthogonalises its FLOP-balanced share of
        the Muon matrices and one ``all_gather`` gives every rank every update, so replicas
        stay bit-identical. Momentum is kept (replicated) on every rank.
      * FSDP2 (``fully_shard``, ``Shard(0)`` DTensor parameters): the row blocks of each
        matrix go to its owner (``all_to_all``), which runs Newton-Schulz on the full matrix
        and sends the row blocks back; AdamW and the momentum work on the local shards, and
        optimizer state is sharded like the parameters (DTensors), so
        ``torch.distributed.checkpoint`` saves and loads it.
      * Every step starts with one MIN all-reduce that agrees on which parameters have a
        gradient on *every* rank (others are skipped on all ranks) and whether all gradients
        and max logits are finite, so ranks never issue different collectives
        (KellerJordan/Muon #37).
      * QK-Clip all-reduces the max logits with MAX before computing gamma (ms-swift #9901)
        and scales the q/k rows each rank holds.
      * NorMuon: owners send unscaled directions; each rank normalises the rows it holds, so
        DDP replicas keep identical state and under FSDP2 the state is a ``Shard(0)`` DTensor
        like the rows (one SUM all-reduce per group for the Frobenius rescale). Head blocks
        are cut on the owner, which holds the whole matrix.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.1,
        ns_steps: int | None = None,
        *,
        orthogonalizer: OrthogonalizerSpec = "ns5",
        update_scale: str = "rms_match",
        ns_impl: str = "auto",
        ns_precision: str = "auto",
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        cautious_weight_decay: bool = False,
        normuon: bool = False,
        normuon_beta2: float = NORMUON_BETA2,
        heads_per_block: int = 1,
        qk_clip_tau: float | None = None,
        qk_clip_spec: Sequence[QKClipLayerSpec] | None = None,
        max_logits_fn: Callable[[], Sequence[Tensor]] | None = None,
        gqa_mode: str = "exact",
        qk_clip_granularity: str = "head",
        nonfinite: str = "raise",
        process_group=None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        check_impl(ns_impl)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid betas: {betas}")
        if eps < 0.0:
            raise ValueError(f"Invalid eps: {eps}")
        if qk_clip_tau is not None and not qk_clip_tau > 0:
            raise ValueError(f"qk_clip_tau must be positive, got {qk_clip_tau}")
        if gqa_mode not in GQA_MODES:
            raise ValueError(f"Unknown gqa_mode {gqa_mode!r}; choose from {GQA_MODES}")
        if qk_clip_granularity not in GRANULARITIES:
            raise ValueError(f"Unknown qk_clip_granularity {qk_clip_granularity!r}; choose from {GRANULARITIES}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"Unknown nonfinite policy {nonfinite!r}; choose from {NONFINITE_POLICIES}")

        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            ns_steps=ns_steps, orthogonalizer=orthogonalizer, update_scale=update_scale,
            ns_precision=ns_precision, betas=tuple(betas), eps=eps, algorithm="muon",
            cautious_weight_decay=cautious_weight_decay, normuon=normuon, normuon_beta2=normuon_beta2,
            heads_per_block=heads_per_block,
        )
        self.ns_impl = ns_impl  # before super().__init__, whose add_param_group checks it
        super().__init__(params, defaults)
        self.register_load_state_dict_post_hook(MuonClip._fill_group_defaults)

        self.qk_clip_tau = qk_clip_tau
        self.qk_clip_spec = list(qk_clip_spec) if qk_clip_spec is not None else None
        self.max_logits_fn = max_logits_fn
        self.gqa_mode = gqa_mode
        self.qk_clip_granularity = qk_clip_granularity
        self.nonfinite = nonfinite
        self.process_group = process_group
        self.skipped_steps = 0
        # Reused Newton-Schulz buffers for CPU parameters (not optimizer state: never saved).
        self._workspace = Workspace()
        self.last_qk_clip = QKClipStats()
        if qk_clip_tau is not None:
            if self.qk_clip_spec is None:
                raise ValueError("qk_clip_tau needs qk_clip_spec (e.g. model.qk_clip_spec())")
            names = self._params_by_name()
            missing = [n for s in self.qk_clip_spec for n in s.param_names() if n not in names]
            if missing:
                raise ValueError(
                    f"QK-Clip spec names parameters the optimizer does not hold: {missing[:5]}. "
                    "Build groups with muonclip.build_param_groups so groups carry 'param_names'; it "
                    "leaves out frozen parameters (requires_grad=False), whose layers the spec must omit."
                )
            check_qk_clip_params(names, self.qk_clip_spec)

    # -- validation -----------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_group(group)
        if group.get("algorithm", "muon") == "muon" and group["params"]:
            # checked here, not in the step: a refused step must leave the momentum untouched
            check_plannable(group.get("ns_precision", "auto"), self.ns_impl)

    # -- step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *,
             max_logits: Sequence[Tensor] | None = None):
        """One optimizer step, then QK-Clip when ``qk_clip_tau`` is set.

        ``max_logits`` (per layer, ``Tensor[n_head]``) overrides ``max_logits_fn``. Every
        input is checked before anything changes; a refused step leaves parameters and
        optimizer state bit-identical.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"]]
        ctx = distributed.context(params, self.process_group)
        logits = self._read_max_logits(max_logits)
        present = self._agree_or_refuse(params, logits, ctx)
        if present is None:
            return loss
        if logits is not None:
            logits = distributed.all_reduce_max(logits, ctx.group if ctx else self.process_group)
            gammas = qk_clip_gammas(self.qk_clip_spec, logits, self.qk_clip_tau, self.qk_clip_granularity)

        keep = iter(present)
        active = [[next(keep) for _ in g["params"]] for g in self.param_groups]
        self._muon_step(active, ctx)
        for group, mask in zip(self.param_groups, active, strict=False):
            if group.get("algorithm", "muon") == "adamw":
                self._adamw_group(group, mask)

        if logits is not None:
            self.last_qk_clip = self._qk_clip(gammas, logits)
        return loss

    def _read_max_logits(self, max_logits: Sequence[Tensor] | None) -> list[Tensor] | None:
        """This step's per-layer max logits (fp32 copies), shape-checked; None without QK-Clip."""
        if self.qk_clip_tau is None:
            return None
        if max_logits is None:
            if self.max_logits_fn is None:
                raise ValueError("QK-Clip needs max_logits: pass step(max_logits=...) or max_logits_fn")
            max_logits = self.max_logits_fn()
        logits = [torch.as_tensor(s).detach().float().reshape(-1).cpu() for s in max_logits]
        if len(logits) != len(self.qk_clip_spec):
            raise ValueError(f"got max logits for {len(logits)} layers, spec has {len(self.qk_clip_spec)}")
        for i, (layer, t) in enumerate(zip(self.qk_clip_spec, logits, strict=False)):
            if t.numel() != layer.n_head:
                raise ValueError(f"layer {i}: expected {layer.n_head} max logits, got {t.numel()}")
        return logits

    def _agree_or_refuse(self, params: list[Tensor], logits: list[Tensor] | None,
                         ctx: distributed.DistContext | None) -> list[bool] | None:
        """Which parameters step (those with a gradient on every rank); None for a skipped step.

        One MIN all-reduce (when distributed) agrees on presence and on finiteness of every
        gradient and max logit, so every rank raises, skips or steps alike.
        """
        flags = torch.ones(len(params) + 2)
        bad = None
        for i, p in enumerate(params):
            if p.grad is None:
                flags[i] = 0.0
                continue
            if p.grad.is_sparse:
                raise ValueError("MuonClip does not support sparse gradients")
        grads = [distributed.local(p.grad) for p in params if p.grad is not None]
        # One fused pass: a NaN/Inf anywhere makes its tensor's norm non-finite (a finite but
        # overflowing norm only costs the exact per-tensor look below).
        if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()) and not all(
                bool(torch.isfinite(g).all()) for g in grads):
            flags[-2] = 0.0
            bad = next(i for i, p in enumerate(params)
                       if p.grad is not None and not bool(torch.isfinite(distributed.local(p.grad)).all()))
        if logits is not None and not all(bool(torch.isfinite(t).all()) for t in logits):
            flags[-1] = 0.0
        if ctx is not None:
            distributed.all_reduce_(flags, "min", ctx)
        if flags[-2] < 1.0:
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return None
            where = "on another rank" if bad is None else f"in {self._label_of(params[bad])}"
            raise NonFiniteGradientError(
                f"non-finite gradient {where}; the step was refused and parameters and optimizer "
                "state are unchanged (pass nonfinite='skip' to skip such steps instead)")
        if flags[-1] < 1.0:
            local_bad = logits is not None and not all(bool(torch.isfinite(t).all()) for t in logits)
            shown = [t.tolist() for t in logits] if local_bad else "on another rank"
            raise ValueError(f"max logits must be finite for QK-Clip, got {shown}; the step was refused "
                             "and parameters and optimizer state are unchanged")
        return (flags[:-2] > 0.5).tolist()

    def _muon_step(self, active: list[list[bool]], ctx: distributed.DistContext | None) -> None:
        """Momentum, orthogonalisation and the update for every Muon group.

        Single process: each group's matrices are orthogonalised where they are. Distributed:
        each matrix's owner orthogonalises it (shards are gathered to it first) and the
        directions travel back to every rank that holds the matrix; NorMuon then runs where
        the rows are (see :meth:`_normuon`).
        """
        work = []  # (group, params, local momentum-mixed updates, expert flags, head blocks)
        for group, mask in zip(self.param_groups, active, strict=True):
            if group.get("algorithm", "muon") != "muon":
                continue
            keep = [i for i, ok in enumerate(mask) if ok]
            if not keep:
                continue
            all_flags, all_blocks = expert_flags(group), head_blocks(group)
            params = [group["params"][i] for i in keep]
            flags = [all_flags[i] for i in keep]
            blocks = [all_blocks[i] for i in keep]
            bufs = [distributed.local(self._init_state(p, group, f)["momentum_buffer"])
                    for p, f in zip(params, flags, strict=True)]
            grads = [distributed.local(p.grad).to(_state_dtype(p)) for p in params]
            out = None
            if ctx is None and params[0].device.type == "cpu":  # reused buffers: no page faults
                out = [self._workspace.get(("update", id(p)), b.shape, b) for p, b in zip(params, bufs, strict=True)]
            updates = muon_math.muon_momentum_(bufs, grads, group["momentum"], group["nesterov"], out=out)
            work.append((group, params, updates, flags, blocks))
        if ctx is not None:
            if work:
                self._muon_distributed(work, ctx)
            return
        for group, params, updates, flags, blocks in work:
            # Directions stay in the iteration's dtype (bf16 on native-bf16 hardware) up to the
            # update, which adds them to fp32 weights: converting them first is one more pass.
            workspace = self._workspace if params[0].device.type == "cpu" else None
            directions = self._directions(group, params, updates, flags, blocks, workspace=workspace,
                                          keep_dtype=not group.get("normuon", False), record=True)
            self._apply(group, params, self._normuon(group, params, directions, flags, blocks, None))

    def _directions(self, group: dict, params: list[Tensor], updates: list[Tensor], flags: list[bool],
                    blocks: list, workspace: Workspace | None = None, keep_dtype: bool = False,
                    record: bool = False) -> list[Tensor]:
        """s NS(U) (or the unscaled NS(U) in a NorMuon group, scaled after the row normalisation),
        each parameter's in its plan's precision and form (:meth:`_ns_plans`; ``record``: kept in
        its state); fp32 unless ``keep_dtype`` (the iteration's dtype); with a workspace they are
        views of its buffers, to be applied before the next group's directions are computed."""
        plans = self._ns_plans(group, params, flags, blocks, record=record)
        return muon_math.muon_directions(
            updates, [p.shape for p in params], flags, method=group["orthogonalizer"],
            steps=len(self._schedule(group)), scale_mode=group["update_scale"], head_blocks=blocks,
            scaled=not group.get("normuon", False), workspace=workspace, plans=plans, keep_dtype=keep_dtype)

    def _normuon(self, group: dict, params: list[Tensor], directions: list[Tensor], flags: list[bool],
                 blocks: list, ctx: distributed.DistContext | None) -> list[Tensor]:
        """NorMuon and the update scale on (the local rows of) unscaled directions; identity
        outside NorMuon groups. Under FSDP2 the Frobenius sums of row-sharded matrices are summed
        over ranks (one all-reduce per group)."""
        if not group.get("normuon", False):
            return directions
        vs = [distributed.local(self._init_state(p, group, f)["normuon_second_moment"])
              for p, f in zip(params, flags, strict=True)]
        scales = [muon_math.direction_scale(p.shape, f, b, group["update_scale"])
                  for p, f, b in zip(params, flags, blocks, strict=True)]
        partial = [ctx is not None and distributed.is_row_sharded(p) and not f
                   for p, f in zip(params, flags, strict=True)]
        return normuon_directions_(directions, vs, flags, scales, group["normuon_beta2"], partial=partial,
                                   sum_over_ranks=lambda t: distributed.all_reduce_(t, "sum", ctx))

    @staticmethod
    def _apply(group: dict, params: list[Tensor], directions: list[Tensor]) -> None:
        locals_ = [distributed.local(p) for p in params]
        muon_math.apply_updates_(locals_, [d.view(t.shape) for d, t in zip(directions, locals_, strict=True)],
                                 group["lr"], group["weight_decay"], group.get("cautious_weight_decay", False))

    def _muon_distributed(self, work: list, ctx: distributed.DistContext) -> None:
        items = [(gi, p, u, f, b) for gi, (_, params, updates, flags, blocks) in enumerate(work)
                 for p, u, f, b in zip(params, updates, flags, blocks, strict=True)]
        groups = [w[0] for w in work]
        costs = [distributed.matrix_cost(p.shape, len(self._schedule(groups[gi])), self.ns_impl, f, b,
                                         self._schedule(groups[gi]))
                 for gi, p, _, f, b in items]
        owners = distributed.partition_by_flops(costs, ctx.world_size)
        sharded = [j for j, item in enumerate(items) if distributed.is_row_sharded(item[1])]
        replicated = [j for j, item in enumerate(items) if not distributed.is_row_sharded(item[1])]
        # Full update matrices on their owners: replicas already hold them, shards are gathered.
        full = {j: items[j][2] for j in replicated if owners[j] == ctx.rank}
        if sharded:
            got = distributed.gather_to_owners([items[j][2] for j in sharded], [items[j][1].shape for j in sharded],
                                               [owners[j] for j in sharded], ctx)
            full.update({sharded[k]: u for k, u in got.items()})
        directions: dict[int, Tensor] = {}
        for gi, group in enumerate(groups):
            js = [j for j in sorted(full) if items[j][0] == gi]
            if js:
                outs = self._directions(group, [items[j][1] for j in js], [full[j] for j in js],
                                        [items[j][3] for j in js], [items[j][4] for j in js])
                directions.update(zip(js, outs, strict=True))
        # Every rank gets the directions of what it holds, then applies them.
        local_dir: dict[int, Tensor] = {}
        if replicated:
            flat = distributed.all_gather_owned(
                {k: directions[j] for k, j in enumerate(replicated) if j in directions},
                [owners[j] for j in replicated], [items[j][1].numel() for j in replicated], ctx)
            local_dir.update(zip(replicated, flat, strict=True))
        if sharded:
            blocks = distributed.scatter_from_owners(
                {k: directions[j] for k, j in enumerate(sharded) if j in directions},
                [items[j][1].shape for j in sharded], [owners[j] for j in sharded], ctx)
            local_dir.update(zip(sharded, blocks, strict=True))
        for gi, group in enumerate(groups):
            js = [j for j in range(len(items)) if items[j][0] == gi]
            params = [items[j][1] for j in js]
            dirs = [local_dir[j].view(distributed.local(p).shape) for j, p in zip(js, params, strict=True)]
            dirs = self._normuon(group, params, dirs, [items[j][3] for j in js], [items[j][4] for j in js], ctx)
            self._apply(group, params, dirs)

    def _adamw_group(self, group: dict, mask: list[bool]) -> None:
        for p, ok in zip(group["params"], mask, strict=False):
            if not ok:
                continue
            state = self._init_state(p, group)
            state["step"] += 1
            muon_math.adamw_update_(
                distributed.local(p), distributed.local(p.grad), distributed.local(state["exp_avg"]),
                distributed.local(state["exp_avg_sq"]), state["step"].item(), lr=group["lr"],
                betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"],
                cautious=group.get("cautious_weight_decay", False))

    def _qk_clip(self, gammas: list[Tensor], logits: list[Tensor]) -> QKClipStats:
        params: dict = self._params_by_name()
        if any(distributed.is_dtensor(p) for p in params.values()):
            params = distributed.shard_row_views(params)  # DTensor shards: scale the rows this rank holds
        scale_heads_(params, self.qk_clip_spec, gammas, gqa_mode=self.gqa_mode)
        flat = torch.cat(gammas)
        return QKClipStats(
            gammas=gammas,
            n_clipped=int((flat < 1).sum()),
            min_gamma=float(flat.min()),
            max_logit=float(torch.cat(logits).max()),
        )
