"""Multi-process worker for tests/optim/test_distributed.py (not a test module itself).

usage: python dist_worker.py OUTDIR WORLD_SIZE SCENARIO[,SCENARIO...]

Spawns WORLD_SIZE processes (gloo, rendezvous through a file in OUTDIR, so no port has to be
picked), runs the scenarios in order on every rank and writes ``OUTDIR/{scenario}_rank{r}.pt``.
Collectives time out after PG_TIMEOUT seconds, so a hang becomes an error instead.

The model/optimizer/data helpers are also imported by the test to run the single-process
reference on the full batch.
"""
from __future__ import annotations

import datetime
import os
import sys
import traceback
from pathlib import Path

import torch
from torch import nn

from muonclip import MuonClip, build_param_groups
from muonclip.models import GPT, GPTConfig
from muonclip.optim import distributed as optim_dist

# Tiny GPT with odd row counts (uneven Shard(0) blocks) and 3 heads of 8 rows in a 24-row
# q_proj, so head 1 straddles the two ranks' row blocks under FSDP2.
CFG = dict(vocab_size=61, d_model=24, n_layer=2, n_head=3, seq_len=16, d_ff=45)
TAU = 0.04  # initial max logits are 0.03-0.05, so some heads are clipped at every step
STEPS = 5
BATCH = 4
PG_TIMEOUT = 30


def make_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**CFG))


def make_optimizer(model: GPT) -> MuonClip:
    groups = build_param_groups(model, lr=0.02, weight_decay=0.1, adamw_lr=3e-3)
    # fp32 pinned here and below: the parent compares with its own single-process run, and on a
    # native-bf16 CPU auto would mean bf16 (and a test's CPU-flag imitation stops at the spawn)
    return MuonClip(groups, lr=0.02, weight_decay=0.1, qk_clip_tau=TAU, ns_precision="fp32",
                    qk_clip_spec=model.qk_clip_spec(), max_logits_fn=model.max_logits)


# The 2026 options all at once (tests/optim/test_distributed.py): a custom two-iteration
# schedule, Cautious Weight Decay on both algorithms, NorMuon (its per-row state is sharded
# like the rows under FSDP2: gate/up have 45 rows, 23 + 22) and per-head q/k/v/o blocks.
VARIANT_COEFFS = ((3.0, -3.2, 1.2), (2.0, -1.5, 0.5))
VARIANT_STATE = "blocks.0.mlp.gate_proj.weight"


def make_variant_optimizer(model: GPT) -> MuonClip:
    groups = build_param_groups(model, lr=0.02, weight_decay=0.1, adamw_lr=3e-3,
                                head_blocks=model.head_blocks(include_output=True))
    return MuonClip(groups, lr=0.02, weight_decay=0.1, qk_clip_tau=TAU, qk_clip_spec=model.qk_clip_spec(),
                    max_logits_fn=model.max_logits, orthogonalizer=VARIANT_COEFFS, cautious_weight_decay=True,
                    normuon=True, normuon_beta2=0.9, ns_precision="fp32")


def _second_moment(model: GPT, opt: MuonClip) -> torch.Tensor:
    v = opt.state[dict(model.named_parameters())[VARIANT_STATE]]["normuon_second_moment"]
    return (v.full_tensor() if optim_dist.is_dtensor(v) else v).detach().clone()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    b = torch.randint(0, CFG["vocab_size"], (BATCH, CFG["seq_len"] + 1), generator=g)
    return b[:, :-1], b[:, 1:]


def run_steps(forward, opt: MuonClip, start: int, stop: int, rank: int = 0, world: int = 1,
              local_max: list | None = None) -> list[int]:
    """Steps [start, stop); rank r trains on the r-th block of BATCH // world rows of the full
    batch. Returns the number of clipped heads per step; appends this rank's own (not yet
    all-reduced) max logits to ``local_max``."""
    clipped = []
    per = BATCH // world
    for step in range(start, stop):
        x, y = batch(step)
        x, y = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        opt.zero_grad(set_to_none=True)
        _, loss = forward(x, y)
        loss.backward()
        if local_max is not None:
            local_max.append(torch.cat(opt.max_logits_fn()))
        opt.step()
        clipped.append(opt.last_qk_clip.n_clipped)
    return clipped


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.full_tensor() if optim_dist.is_dtensor(p) else p).detach().clone()
            for n, p in model.named_parameters()}


def reference() -> dict:
    """Single process, full batch: what every data-parallel run must reproduce."""
    model = make_model()
    opt = make_optimizer(model)
    clipped = run_steps(model, opt, 0, STEPS)
    return {"params": full_params(model), "clipped": clipped}


def reference_variants() -> dict:
    """The same for :func:`make_variant_optimizer`."""
    model = make_model()
    opt = make_variant_optimizer(model)
    clipped = run_steps(model, opt, 0, STEPS)
    return {"params": full_params(model), "clipped": clipped, "second_moment": _second_moment(model, opt)}


# -- scenarios ------------------------------------------------------------------------------
def scenario_ddp(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_model()
    ddp = DDP(model)
    opt = make_optimizer(model)
    local_max: list = []
    clipped = run_steps(ddp, opt, 0, STEPS, rank, world, local_max)
    return {"params": full_params(model), "clipped": clipped, "local_max": torch.stack(local_max)}


def cpu_mesh():
    """A CPU mesh over every rank: fully_shard's default mesh is CUDA's wherever a GPU is
    visible, which gloo cannot serve."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (torch.distributed.get_world_size(),))


def _fsdp(model: GPT) -> GPT:
    from torch.distributed.fsdp import fully_shard

    mesh = cpu_mesh()
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _resume_fsdp(make_opt, ckpt):
    """A differently initialised FSDP2 model and a fresh optimizer, loaded from a DCP checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model = _fsdp(make_model(seed=123))
    opt = make_opt(model)
    opt.init_state()
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(ckpt))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return model, opt


def scenario_fsdp(rank: int, world: int) -> dict:
    model = _fsdp(make_model())
    opt = make_optimizer(model)
    clipped = run_steps(model, opt, 0, STEPS, rank, world)
    buf = opt.state[model.blocks[0].mlp.gate_proj.weight]["momentum_buffer"]
    return {"params": full_params(model), "clipped": clipped, "momentum_is_dtensor": optim_dist.is_dtensor(buf),
            "momentum_placements": str(buf.placements) if optim_dist.is_dtensor(buf) else None,
            "local_q_rows": model.blocks[0].attn.q_proj.weight.to_local().shape[0]}


class _Partial(nn.Module):
    """``b`` (Muon) and ``c`` (AdamW) take part in the loss on rank 0 only."""

    def __init__(self, use_b: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 8, bias=False)
        self.b = nn.Linear(8, 8, bias=False)
        self.c = nn.Parameter(torch.zeros(8))
        self.use_b = use_b

    def forward(self, x):
        y = self.a(x)
        if self.use_b:
            y = self.b(y) + self.c
        return y.square().mean()


def scenario_none_grad(rank: int, world: int, outdir: Path) -> dict:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(rank))
    # 1. No DDP: grads of b and c exist on rank 0 only (a is averaged by hand) -> skipped on
    #    all ranks; the only Muon matrix left is `a`, so rank 1 owns no matrix.
    m = _Partial(use_b=rank == 0)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = MuonClip([{"params": [m.a.weight, m.b.weight], "algorithm": "muon"},
                    {"params": [m.c], "algorithm": "adamw"}], lr=0.02)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        m(x).backward()
        dist.all_reduce(m.a.weight.grad)
        m.a.weight.grad /= world
        opt.step()
    out["manual"] = {n: p.detach().clone() for n, p in m.named_parameters()}
    out["manual_before"] = before
    # b and c never stepped, so they have no state. The documented DCP recipe calls
    # init_state() before saving as well as before loading, so their (zero) state is saved and
    # the fresh optimizer's load finds every key it asks for.
    ckpt = outdir / "none_grad_ckpt"
    opt.init_state()
    msd, osd = get_state_dict(m, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(ckpt))
    dist.barrier()
    fresh = _Partial(use_b=rank == 0)
    opt_fresh = MuonClip([{"params": [fresh.a.weight, fresh.b.weight], "algorithm": "muon"},
                          {"params": [fresh.c], "algorithm": "adamw"}], lr=0.02)
    opt_fresh.init_state()
    msd, osd = get_state_dict(fresh, opt_fresh)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(ckpt))
    set_state_dict(fresh, opt_fresh, model_state_dict=state["model"], optim_state_dict=state["optim"])
    out["dcp_momentum"] = (opt.state[m.a.weight]["momentum_buffer"].clone(),
                           opt_fresh.state[fresh.a.weight]["momentum_buffer"].clone())
    # 2. DDP with find_unused_parameters=True and b unused on rank 1 (KellerJordan/Muon #37).
    m2 = _Partial(use_b=rank == 0)
    ddp = DDP(m2, find_unused_parameters=True)
    opt2 = MuonClip([{"params": [m2.a.weight, m2.b.weight], "algorithm": "muon"},
                     {"params": [m2.c], "algorithm": "adamw"}], lr=0.02)
    for _ in range(2):
        opt2.zero_grad(set_to_none=True)
        ddp(x).backward()
        opt2.step()
    out["ddp"] = {n: p.detach().clone() for n, p in m2.named_parameters()}
    # 3. A NaN gradient on rank 1 only: skipped (or refused) on every rank alike.
    from muonclip import NonFiniteGradientError

    m3 = _Partial(use_b=False)
    before3 = m3.a.weight.detach().clone()
    results = []
    for policy in ("skip", "raise"):
        opt3 = MuonClip([m3.a.weight], lr=0.02, nonfinite=policy)
        m3.a.weight.grad = torch.full((8, 8), float("nan") if rank == 1 else 1.0)
        try:
            opt3.step()
            results.append(("stepped", opt3.skipped_steps))
        except NonFiniteGradientError as exc:
            results.append(("raised", str(exc)))
    out["nonfinite"] = results
    out["nonfinite_unchanged"] = torch.equal(m3.a.weight.detach(), before3)
    return out


def scenario_dcp(rank: int, world: int, outdir: Path) -> dict:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    ckpt = outdir / "dcp_ckpt"
    model = _fsdp(make_model())
    opt = make_optimizer(model)
    run_steps(model, opt, 0, 3, rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(ckpt))
    dist.barrier()
    run_steps(model, opt, 3, STEPS, rank, world)
    continued = full_params(model)
    # Resume into a differently initialised model and a fresh optimizer.
    model2, opt2 = _resume_fsdp(make_optimizer, ckpt)
    run_steps(model2, opt2, 3, STEPS, rank, world)
    resumed = full_params(model2)
    m1 = opt.state[model.blocks[1].attn.q_proj.weight]["momentum_buffer"].full_tensor()
    m2 = opt2.state[model2.blocks[1].attn.q_proj.weight]["momentum_buffer"].full_tensor()
    return {"continued": continued, "resumed": resumed, "momentum": (m1, m2)}


# -- peer-bug scenarios (tests/optim/test_peer_bugs.py) ----------------------------------------
THIN_STEPS = 3


class Thin(nn.Module):
    """A (1, 8) Muon matrix and a (1,) AdamW vector: fewer rows than ranks, so under FSDP2
    rank 1's shards of both are empty (dion #74); plus an ordinary (8, 8) matrix."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wide = nn.Linear(8, 8, bias=False)
        self.thin = nn.Linear(8, 1, bias=False)
        self.shift = nn.Parameter(torch.full((1,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.thin(torch.tanh(self.wide(x))) + self.shift).square().mean()


def thin_optimizer(model: Thin) -> MuonClip:
    return MuonClip([
        {"params": [model.wide.weight, model.thin.weight], "param_names": ["wide.weight", "thin.weight"],
         "algorithm": "muon"},
        {"params": [model.shift], "param_names": ["shift"], "algorithm": "adamw", "lr": 1e-2},
    ], lr=0.02, weight_decay=0.1, ns_precision="fp32")


def thin_batch(step: int) -> torch.Tensor:
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(2000 + step))


def run_thin(model: nn.Module, opt: MuonClip, rank: int = 0, world: int = 1) -> None:
    per = 4 // world
    for step in range(THIN_STEPS):
        opt.zero_grad(set_to_none=True)
        model(thin_batch(step)[rank * per:(rank + 1) * per]).backward()
        opt.step()


def scenario_empty_shard(rank: int, world: int) -> dict:
    from torch.distributed.fsdp import fully_shard

    model = fully_shard(Thin(), mesh=cpu_mesh())
    opt = thin_optimizer(model)
    run_thin(model, opt, rank, world)
    return {"params": full_params(model),
            "local_rows": {n: optim_dist.local(p).shape[0] for n, p in model.named_parameters()}}


DCP_N, DCP_TOTAL = 3, 6  # save after DCP_N steps, train to DCP_TOTAL


def _lr_schedule():
    from muonclip.lab.schedule import lr_multiplier

    return lr_multiplier("cosine", DCP_TOTAL, warmup_steps=2, min_lr_ratio=0.1)


def _adamw_steps(model: GPT, opt: MuonClip) -> float:
    return float(opt.state[model.embed.weight]["step"])


def _train_scheduled(model: GPT, opt: MuonClip, sched, start: int, stop: int, rank: int, world: int) -> list:
    """Steps [start, stop), the scheduler stepped after each; returns each step's group lrs."""
    lrs = []
    for step in range(start, stop):
        lrs.append([g["lr"] for g in opt.param_groups])
        run_steps(model, opt, step, step + 1, rank, world)
        sched.step()
    return lrs


def scenario_dcp_sched(rank: int, world: int, outdir: Path) -> dict:
    """dion #104/#109: FSDP2 + an LR scheduler, saved and resumed with torch.distributed.checkpoint."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.optim.lr_scheduler import LambdaLR

    ckpt = outdir / "dcp_sched_ckpt"
    model = _fsdp(make_model())
    opt = make_optimizer(model)
    sched = LambdaLR(opt, _lr_schedule())
    first = _train_scheduled(model, opt, sched, 0, DCP_N, rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd, "sched": sched.state_dict()}, checkpoint_id=str(ckpt))
    dist.barrier()
    continued_lrs = _train_scheduled(model, opt, sched, DCP_N, DCP_TOTAL, rank, world)
    out = {"continued": full_params(model), "first_lrs": first, "continued_lrs": continued_lrs,
           "continued_adamw_steps": _adamw_steps(model, opt)}
    # Resume into a differently initialised model, a fresh optimizer and a fresh scheduler.
    model2 = _fsdp(make_model(seed=123))
    opt2 = make_optimizer(model2)
    sched2 = LambdaLR(opt2, _lr_schedule())
    opt2.init_state()
    msd2, osd2 = get_state_dict(model2, opt2)
    state = {"model": msd2, "optim": osd2, "sched": sched2.state_dict()}
    dcp.load(state, checkpoint_id=str(ckpt))
    set_state_dict(model2, opt2, model_state_dict=state["model"], optim_state_dict=state["optim"])
    sched2.load_state_dict(state["sched"])
    out["resumed_adamw_steps_at_load"] = _adamw_steps(model2, opt2)
    out["resumed_lr_types"] = sorted({type(g["lr"]).__name__ for g in opt2.param_groups})
    out["resumed_lrs"] = _train_scheduled(model2, opt2, sched2, DCP_N, DCP_TOTAL, rank, world)
    out["resumed"] = full_params(model2)
    out["resumed_adamw_steps"] = _adamw_steps(model2, opt2)
    out["resumed_last_epoch"] = sched2.last_epoch
    return out


def scenario_ddp_variants(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_model()
    ddp = DDP(model)
    opt = make_variant_optimizer(model)
    clipped = run_steps(ddp, opt, 0, STEPS, rank, world)
    return {"params": full_params(model), "clipped": clipped, "second_moment": _second_moment(model, opt)}


def scenario_fsdp_variants(rank: int, world: int, outdir: Path) -> dict:
    """FSDP2 with every option: 3 steps, a torch.distributed.checkpoint save, 2 more steps; then
    a fresh model and optimizer resume from the checkpoint and take the same 2 steps."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    ckpt = outdir / "dcp_variants_ckpt"
    model = _fsdp(make_model())
    opt = make_variant_optimizer(model)
    clipped = run_steps(model, opt, 0, 3, rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(ckpt))
    dist.barrier()
    clipped += run_steps(model, opt, 3, STEPS, rank, world)
    v = opt.state[dict(model.named_parameters())[VARIANT_STATE]]["normuon_second_moment"]
    out = {"params": full_params(model), "clipped": clipped, "second_moment": _second_moment(model, opt),
           "second_moment_placements": str(v.placements) if optim_dist.is_dtensor(v) else None,
           "second_moment_local_rows": optim_dist.local(v).shape[0]}
    model2, opt2 = _resume_fsdp(make_variant_optimizer, ckpt)
    run_steps(model2, opt2, 3, STEPS, rank, world)
    out["resumed"] = full_params(model2)
    out["resumed_second_moment"] = _second_moment(model2, opt2)
    return out


SCENARIOS = {"ddp": scenario_ddp, "fsdp": scenario_fsdp, "none_grad": scenario_none_grad, "dcp": scenario_dcp,
             "empty_shard": scenario_empty_shard, "dcp_sched": scenario_dcp_sched,
             "ddp_variants": scenario_ddp_variants, "fsdp_variants": scenario_fsdp_variants}
_NEEDS_OUTDIR = {"dcp", "dcp_sched", "fsdp_variants", "none_grad"}


def _worker(rank: int, world: int, outdir: str, scenarios: list[str]) -> None:
    import torch.distributed as dist

    from muonclip.lab.distributed import join_process_group, leave_process_group

    torch.set_num_threads(1)
    out = Path(outdir)
    # joined and left as the lab does, so gloo's threads end before the process does
    join_process_group(backend="gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=world,
                       timeout=datetime.timedelta(seconds=PG_TIMEOUT))
    finished = False
    try:
        for name in scenarios:
            fn = SCENARIOS[name]
            res = fn(rank, world, out) if name in _NEEDS_OUTDIR else fn(rank, world)
            torch.save(res, out / f"{name}_rank{rank}.pt")
            dist.barrier()
        finished = True
    except Exception:
        traceback.print_exc()
        raise
    finally:
        leave_process_group(peers_done=finished)


def main(argv: list[str]) -> int:
    import torch.multiprocessing as mp

    outdir, world, scenarios = argv[0], int(argv[1]), argv[2].split(",")
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.start_processes(_worker, args=(world, outdir, scenarios), nprocs=world, start_method="spawn")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
