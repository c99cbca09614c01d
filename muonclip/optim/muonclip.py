"""The MuonClip optimizer: Muon for hidden matrices, AdamW for the rest, QK-Clip after the step."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import distributed as D
from . import functional as F
from .qk_clip import GQA_MODES, QKClipLayerSpec, apply_qk_clip_

__all__ = ["MuonClip", "NonFiniteGradientError", "QKClipStats"]

ALGORITHMS = ("muon", "adamw")
NONFINITE_POLICIES = ("raise", "skip")


class NonFiniteGradientError(FloatingPointError):
    """A gradient held NaN or Inf; the step was refused and nothing was modified."""


@dataclass
class QKClipStats:
    """What the last QK-Clip did: per-layer gamma (1 = untouched) and summary counts."""

    gammas: list[Tensor] = field(default_factory=list)
    n_clipped: int = 0
    min_gamma: float = 1.0
    max_logit: float = float("nan")


class MuonClip(Optimizer):
    r"""Muon with QK-Clip (Kimi K2, arXiv 2507.20534, Alg. 1), AdamW for non-matrix params.

    .. code-block:: text

        input: lr eta, momentum mu, weight decay lambda, threshold tau (optional)
        for each step t:
          for each Muon matrix W (n x m) with gradient G:
            M  <- mu M + G
            U  <- G + mu M                    (Nesterov; else U <- M)
            O  <- NS(U)                        (quintic Newton-Schulz, wide orientation)
            W  <- W (1 - eta lambda) - eta s(n, m) O,   s = 0.2 sqrt(max(n, m))  ("rms_match")
          for each AdamW param: torch.optim.AdamW's update (betas, eps, decoupled decay)
          if tau:                               (after the update, with this step's forward)
            for each attention head h with max logit S_h > tau:
              gamma_h <- tau / S_h; rescale q_h, k_h so that S_h becomes gamma_h S_h

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

    Notes:
      * The math runs in fp32 on CPU whatever the parameter dtype (bf16 parameters work;
        the update is cast back). ``ns_dtype=torch.bfloat16`` is allowed on CUDA only.
      * Muon's update ignores the gradient's scale (NS normalises it), so clipping the
        global gradient norm does not shrink Muon's step; it only affects AdamW groups and
        the momentum mix (DeepSpeed #8439).
      * A parameter whose ``grad`` is None is skipped (no state is created for it).

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
        are finite, so ranks never issue different collectives (KellerJordan/Muon #37).
      * QK-Clip all-reduces the max logits with MAX before computing gamma (ms-swift #9901)
        and scales the q/k rows each rank holds.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.1,
        ns_steps: int = 5,
        *,
        orthogonalizer: str = "ns5",
        update_scale: str = "rms_match",
        ns_impl: str = "auto",
        ns_dtype: torch.dtype | None = None,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        qk_clip_tau: float | None = None,
        qk_clip_spec: Sequence[QKClipLayerSpec] | None = None,
        max_logits_fn: Callable[[], Sequence[Tensor]] | None = None,
        gqa_mode: str = "exact",
        nonfinite: str = "raise",
        process_group=None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        if ns_steps < 1:
            raise ValueError(f"Invalid ns_steps: {ns_steps}")
        if orthogonalizer not in F.ORTHOGONALIZERS:
            raise ValueError(f"Unknown orthogonalizer {orthogonalizer!r}; choose from {tuple(F.ORTHOGONALIZERS)}")
        if update_scale not in F.UPDATE_SCALES:
            raise ValueError(f"Unknown update_scale {update_scale!r}; choose from {F.UPDATE_SCALES}")
        if ns_impl not in ("auto", "gram", "direct"):
            raise ValueError(f"Unknown ns_impl {ns_impl!r}; choose from ('auto', 'gram', 'direct')")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid betas: {betas}")
        if eps < 0.0:
            raise ValueError(f"Invalid eps: {eps}")
        if qk_clip_tau is not None and not qk_clip_tau > 0:
            raise ValueError(f"qk_clip_tau must be positive, got {qk_clip_tau}")
        if gqa_mode not in GQA_MODES:
            raise ValueError(f"Unknown gqa_mode {gqa_mode!r}; choose from {GQA_MODES}")
        if ns_dtype not in (None, torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise ValueError(f"Unsupported ns_dtype {ns_dtype}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"Unknown nonfinite policy {nonfinite!r}; choose from {NONFINITE_POLICIES}")

        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            ns_steps=ns_steps, orthogonalizer=orthogonalizer, update_scale=update_scale,
            betas=tuple(betas), eps=eps, algorithm="muon",
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._validate_group(group)
        if ns_dtype in (torch.bfloat16, torch.float16) and any(
            p.device.type == "cpu" for g in self.param_groups for p in g["params"]
        ):
            raise ValueError(
                f"ns_dtype={ns_dtype} is for CUDA; on CPU without native bf16 it is emulated and "
                "slow, so MuonClip runs Newton-Schulz in fp32 there (leave ns_dtype=None)"
            )

        self.ns_impl = ns_impl
        self.ns_dtype = ns_dtype
        self.qk_clip_tau = qk_clip_tau
        self.qk_clip_spec = list(qk_clip_spec) if qk_clip_spec is not None else None
        self.max_logits_fn = max_logits_fn
        self.gqa_mode = gqa_mode
        self.nonfinite = nonfinite
        self.process_group = process_group
        self.skipped_steps = 0
        self.last_qk_clip = QKClipStats()
        if qk_clip_tau is not None:
            if self.qk_clip_spec is None:
                raise ValueError("qk_clip_tau needs qk_clip_spec (e.g. model.qk_clip_spec())")
            names = self._params_by_name()
            missing = [n for s in self.qk_clip_spec for n in s.param_names() if n not in names]
            if missing:
                raise ValueError(
                    f"QK-Clip spec names parameters the optimizer does not hold: {missing[:5]}. "
                    "Build groups with muonclip.build_param_groups so groups carry 'param_names'."
                )

    # -- validation -----------------------------------------------------------------------
    def _validate_group(self, group: dict) -> None:
        algo = group.get("algorithm", "muon")
        if algo not in ALGORITHMS:
            raise ValueError(f"Unknown algorithm {algo!r} in param group; choose from {ALGORITHMS}")
        names = group.get("param_names")
        if names is not None and len(names) != len(group["params"]):
            raise ValueError("param_names must name every parameter of its group")
        for i, p in enumerate(group["params"]):
            label = self._label(group, i)
            if p.is_complex():
                raise ValueError(f"MuonClip does not support complex parameters ({label})")
            if algo == "muon" and p.ndim < 2:
                raise ValueError(
                    f"Muon needs >=2-D parameters but {label} has shape {tuple(p.shape)}; "
                    "route 1-D tensors (norms, biases) to an 'adamw' group"
                )

    @staticmethod
    def _label(group: dict, i: int) -> str:
        names = group.get("param_names")
        if names is not None:
            return f"parameter '{names[i]}'"
        p = group["params"][i]
        return f"parameter #{i} of shape {tuple(p.shape)} in a '{group.get('algorithm', 'muon')}' group"

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._validate_group(self.param_groups[-1])

    def _params_by_name(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for group in self.param_groups:
            for name, p in zip(group.get("param_names") or (), group["params"]):
                out[name] = p
        return out

    def _check_gradients(self) -> bool:
        """True if every gradient is finite; raises (or returns False) otherwise."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        for g in grads:
            if g.is_sparse:
                raise ValueError("MuonClip does not support sparse gradients")
        if not grads:
            return True
        flags = torch.stack([torch.isfinite(g).all() for g in grads])
        if bool(flags.all()):
            return True
        if self.nonfinite == "skip":
            self.skipped_steps += 1
            return False
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    raise NonFiniteGradientError(
                        f"non-finite gradient in {self._label(group, i)}; the step was refused "
                        "and parameters and optimizer state are unchanged "
                        "(pass nonfinite='skip' to skip such steps instead)"
                    )
        raise AssertionError("unreachable")

    # -- step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *,
             max_logits: Sequence[Tensor] | None = None):
        """One optimizer step, then QK-Clip when ``qk_clip_tau`` is set.

        ``max_logits`` (per layer, ``Tensor[n_head]``) overrides ``max_logits_fn``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ctx = D.context([p for g in self.param_groups for p in g["params"]], self.process_group)
        if ctx is not None:
            if not self._step_distributed(ctx):
                return loss
        else:
            if not self._check_gradients():
                return loss
            for group in self.param_groups:
                if group.get("algorithm", "muon") == "muon":
                    self._muon_group(group)
                else:
                    self._adamw_group(group)
        if self.qk_clip_tau is not None:
            if max_logits is None:
                if self.max_logits_fn is None:
                    raise ValueError("QK-Clip needs max_logits: pass step(max_logits=...) or max_logits_fn")
                max_logits = self.max_logits_fn()
            self.last_qk_clip = self._qk_clip(max_logits)
        return loss

    def _muon_group(self, group: dict) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        params, grads, bufs = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad.float())
            bufs.append(state["momentum_buffer"])
        if not params:
            return
        # buf <- mu buf + g ; u <- g + mu buf (Nesterov) -- batched with foreach kernels.
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, grads)
        updates = torch._foreach_add(grads, bufs, alpha=mu) if group["nesterov"] else bufs

        directions = self._orthogonalize(updates, [p.shape for p in params], group)

        # W <- W (1 - lr wd) - lr s O ; the decay uses the base lr (Moonlight Sec. 2.2).
        for p, d in zip(params, directions):
            _apply_update_(p, d, lr, wd)

    def _orthogonalize(self, updates: list[Tensor], shapes: list, group: dict) -> list[Tensor]:
        """Scaled Muon directions (fp32, shaped like ``shapes``); same-shape matrices are
        orthogonalised in one batched call."""
        by_shape: dict[tuple[int, int], list[int]] = {}
        mats = [F.as_matrix_batch(u) for u in updates]
        for i, mat in enumerate(mats):
            n, m = mat.shape[-2:]
            key = (min(n, m), max(n, m))
            by_shape.setdefault(key, []).append(i)
        directions: list[Tensor | None] = [None] * len(updates)
        method, steps = group["orthogonalizer"], group["ns_steps"]
        for idx in by_shape.values():
            wide = [mats[i] if mats[i].shape[-2] <= mats[i].shape[-1] else mats[i].mT for i in idx]
            batch = torch.cat(wide, dim=0) if len(wide) > 1 else wide[0]
            out = F.orthogonalize(batch, method, steps, impl=self.ns_impl, dtype=self.ns_dtype).float()
            start = 0
            for i in idx:
                count = mats[i].shape[0]
                o = out[start:start + count]
                start += count
                if mats[i].shape[-2] > mats[i].shape[-1]:
                    o = o.mT
                n, m = mats[i].shape[-2:]
                directions[i] = o.reshape(shapes[i]).mul_(F.update_scale(n, m, group["update_scale"]))
        return directions  # type: ignore[return-value]

    def _adamw_group(self, group: dict) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            _adamw_update_(p, p.grad, state["exp_avg"], state["exp_avg_sq"], state, group)

    # -- distributed ----------------------------------------------------------------------
    def init_state(self) -> None:
        """Create zero optimizer state for every parameter without stepping.

        ``torch.distributed.checkpoint.state_dict`` otherwise initialises state with a fake
        ``step()`` at lr 0, which would also run QK-Clip on stale max logits; call this on a
        fresh optimizer before ``get_optimizer_state_dict`` / ``set_optimizer_state_dict``.
        """
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if group.get("algorithm", "muon") == "muon":
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
                elif not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)

    def _step_distributed(self, ctx: "D.DistContext") -> bool:
        """Muon/AdamW update on data-parallel ranks; False when a non-finite step is skipped."""
        params = [p for g in self.param_groups for p in g["params"]]
        # One MIN all-reduce: which parameters have a gradient on every rank, and whether all
        # gradients are finite. Every rank then takes the same branches and issues the same
        # collectives, whatever its local `grad is None` pattern (KellerJordan/Muon #37).
        flags = torch.ones(len(params) + 1)
        bad = None
        for i, p in enumerate(params):
            if p.grad is None:
                flags[i] = 0.0
                continue
            if p.grad.is_sparse:
                raise ValueError("MuonClip does not support sparse gradients")
            if bad is None and not bool(torch.isfinite(D.local(p.grad)).all()):
                bad = i
        flags[-1] = 0.0 if bad is not None else 1.0
        D.all_reduce_(flags, "min", ctx)
        if flags[-1] < 1.0:
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return False
            where = "on another rank"
            if bad is not None:
                for group in self.param_groups:
                    for i, p in enumerate(group["params"]):
                        if p is params[bad]:
                            where = f"in {self._label(group, i)}"
            raise NonFiniteGradientError(
                f"non-finite gradient {where}; the step was refused on every rank and parameters "
                "and optimizer state are unchanged (pass nonfinite='skip' to skip such steps instead)")
        present = iter((flags[:-1] > 0.5).tolist())
        keep = [[next(present) for _ in g["params"]] for g in self.param_groups]
        self._muon_distributed(ctx, keep)
        for group, k in zip(self.param_groups, keep):
            if group.get("algorithm", "muon") != "muon":
                for p, ok in zip(group["params"], k):
                    if ok:
                        state = self.state[p]
                        if not state:
                            state["step"] = torch.tensor(0.0, dtype=torch.float32)
                            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                        _adamw_update_(D.local(p), D.local(p.grad), D.local(state["exp_avg"]),
                                       D.local(state["exp_avg_sq"]), state, group)
        return True

    def _muon_distributed(self, ctx: "D.DistContext", keep: list[list[bool]]) -> None:
        # Momentum on what each rank holds (replica or shard): M <- mu M + G, U <- G + mu M.
        items: list[tuple[dict, Tensor, Tensor]] = []
        for group, k in zip(self.param_groups, keep):
            if group.get("algorithm", "muon") != "muon":
                continue
            mu = group["momentum"]
            for p, ok in zip(group["params"], k):
                if not ok:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
                buf, g = D.local(state["momentum_buffer"]), D.local(p.grad).float()
                buf.mul_(mu).add_(g)
                items.append((group, p, g.add(buf, alpha=mu) if group["nesterov"] else buf))
        if not items:
            return
        costs = [D.matrix_cost(p.shape, g["ns_steps"], self.ns_impl) for g, p, _ in items]
        owners = D.partition_by_flops(costs, ctx.world_size)
        sharded = [j for j, (_, p, _) in enumerate(items) if D.is_row_sharded(p)]
        replicated = [j for j in range(len(items)) if not D.is_row_sharded(items[j][1])]
        # Full update matrices on their owners: replicas already hold them, shards are gathered.
        full = {j: items[j][2] for j in replicated if owners[j] == ctx.rank}
        if sharded:
            got = D.gather_to_owners([items[j][2] for j in sharded], [items[j][1].shape for j in sharded],
                                     [owners[j] for j in sharded], ctx)
            full.update({sharded[k]: u for k, u in got.items()})
        directions: dict[int, Tensor] = {}
        by_group: dict[int, list[int]] = {}
        for j in sorted(full):
            by_group.setdefault(id(items[j][0]), []).append(j)
        for js in by_group.values():
            outs = self._orthogonalize([full[j] for j in js], [items[j][1].shape for j in js], items[js[0]][0])
            directions.update(zip(js, outs))
        # Every rank gets the directions of what it holds, then applies them.
        local_dir: dict[int, Tensor] = {}
        if replicated:
            flat = D.all_gather_owned({k: directions[j] for k, j in enumerate(replicated) if j in directions},
                                      [owners[j] for j in replicated], [items[j][1].numel() for j in replicated], ctx)
            local_dir.update(zip(replicated, flat))
        if sharded:
            blocks = D.scatter_from_owners({k: directions[j] for k, j in enumerate(sharded) if j in directions},
                                           [items[j][1].shape for j in sharded], [owners[j] for j in sharded], ctx)
            local_dir.update(zip(sharded, blocks))
        for j, (group, p, _) in enumerate(items):
            p_local = D.local(p)
            _apply_update_(p_local, local_dir[j].view(p_local.shape), group["lr"], group["weight_decay"])

    def _qk_clip(self, max_logits: Sequence[Tensor]) -> QKClipStats:
        logits = [torch.as_tensor(s).detach().float() for s in max_logits]
        if len(logits) != len(self.qk_clip_spec):
            raise ValueError(f"got max logits for {len(logits)} layers, spec has {len(self.qk_clip_spec)}")
        logits = _all_reduce_max(logits, self.process_group)
        params = self._params_by_name()
        if _dist_initialized():
            params = D.shard_row_views(params)  # DTensor shards: scale the rows this rank holds
        gammas = apply_qk_clip_(params, self.qk_clip_spec, logits,
                                self.qk_clip_tau, gqa_mode=self.gqa_mode)
        flat = torch.cat(gammas)
        return QKClipStats(
            gammas=gammas,
            n_clipped=int((flat < 1).sum()),
            min_gamma=float(flat.min()),
            max_logit=float(torch.cat(logits).max()),
        )


def _apply_update_(p: Tensor, d: Tensor, lr: float, wd: float) -> None:
    """W <- W (1 - lr wd) - lr d, in fp32 whatever W's dtype."""
    if p.dtype == torch.float32:
        if wd:
            p.mul_(1.0 - lr * wd)
        p.add_(d, alpha=-lr)
    else:
        w = p.float()
        if wd:
            w.mul_(1.0 - lr * wd)
        w.add_(d, alpha=-lr)
        p.copy_(w)


def _adamw_update_(p: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, state: dict,
                   group: dict) -> None:
    """One AdamW step on (local) tensors; ``state["step"]`` is incremented."""
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    full = p.dtype in (torch.float32, torch.float64)
    w = p if full else p.float()
    grad = grad if full else grad.float()
    state["step"] += 1
    step = state["step"].item()
    # The same operations, in the same order, as torch.optim.AdamW (single-tensor).
    w.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
    w.addcdiv_(exp_avg, denom, value=-step_size)
    if not full:
        p.copy_(w)


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _all_reduce_max(logits: list[Tensor], group) -> list[Tensor]:
    """All-reduce max logits with MAX over data-parallel ranks, so every rank computes the
    same gamma (ranks otherwise drift apart, ms-swift #9901)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return logits
    sizes = [t.numel() for t in logits]
    flat = torch.cat(logits)
    dist.all_reduce(flat, op=dist.ReduceOp.MAX, group=group)
    nbytes = D.ring_all_reduce_bytes(4 * flat.numel(), dist.get_world_size(group))
    D.COMM.add("all_reduce", nbytes, nbytes)
    return list(flat.split(sizes))
