"""Data-parallel MuonClip on CPU (gloo): step time at 1 and 2 processes, bytes per step vs AdamW.

Prints ONE JSON line. For each setup (MuonClip under DDP, AdamW under DDP, MuonClip under
FSDP2) and each world size it spawns that many processes on this machine and times full
training steps (forward, backward with DDP/FSDP gradient sync, optimizer step, QK-Clip),
plus the optimizer step alone; medians over the timed steps, the slowest rank per step.

Bytes are per rank per step, counted from the collectives issued:
* optimizer collectives (MuonClip's flag all-reduce, update all_gather / all_to_all and the
  max-logit all-reduce) are *measured* by ``muonclip.optim.distributed.COMM``;
* gradient sync is counted *analytically* from the parameter sizes: DDP all-reduces every
  gradient once (ring: 2 (w-1)/w of the bytes sent per rank); FSDP2 all-gathers the
  parameters in forward and again in backward and reduce-scatters the gradients
  ((w-1)/w each).
AdamW under DDP issues no optimizer collective, so its total is the gradient all-reduce.

The default model is the facts §5 shape set (d=256, 4 layers, 4.2M Muon parameters with the
SwiGLU d_ff = 4d). Every process runs ``--threads-per-proc`` threads (default 1): on a
shared, oversubscribed 2-core box a 2-thread process spends most of its time in OpenMP
barriers (measured: 1 process x 2 threads was 10-40x slower than 2 processes x 1 thread
at load average ~17), so one thread per process is the comparison that measures the
algorithm rather than the contention.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

SETUPS = ("muonclip_ddp", "adamw_ddp", "muonclip_fsdp2")


def _model(args):
    from muonclip.models import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=256, d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head,
                         seq_len=args.seq_len, d_ff=4 * args.d_model))


def _worker(rank: int, world: int, setup: str, args, out: str) -> None:
    from muonclip.lab.distributed import join_process_group, leave_process_group

    torch.set_num_threads(args.threads_per_proc)
    join_process_group(backend="gloo", init_method=f"file://{out}.rdzv", rank=rank, world_size=world,
                       timeout=datetime.timedelta(seconds=300))
    _time_setup(rank, world, setup, args, out)  # its model, wrapper and optimizer are gone when it returns
    leave_process_group()


def _time_setup(rank: int, world: int, setup: str, args, out: str) -> None:
    import torch.distributed as dist

    from muonclip import MuonClip, build_param_groups
    from muonclip.optim import distributed as optim_dist

    model = _model(args)
    n_params = sum(p.numel() for p in model.parameters())
    if setup == "muonclip_fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))  # gloo: the default mesh would be CUDA's on a GPU machine
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        net = model
    else:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model)
    if setup == "adamw_ddp":
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    else:
        groups = build_param_groups(model, lr=0.02, weight_decay=0.1, adamw_lr=3e-3)
        opt = MuonClip(groups, lr=0.02, weight_decay=0.1, qk_clip_tau=args.tau,
                       qk_clip_spec=model.qk_clip_spec(), max_logits_fn=model.max_logits)
    per = args.batch // world
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 256, (args.batch, args.seq_len + 1), generator=g)
    x, y = data[rank * per:(rank + 1) * per, :-1], data[rank * per:(rank + 1) * per, 1:]
    step_t, opt_t, comm = [], [], []
    for i in range(args.warmup + args.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _, loss = net(x, y)
        loss.backward()
        optim_dist.COMM.reset()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if i >= args.warmup:
            step_t.append(t2 - t0)
            opt_t.append(t2 - t1)
            comm.append(optim_dist.COMM.sent)
    # slowest rank per step
    t = torch.tensor([step_t, opt_t], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        w = world
        grad_bytes = 4 * n_params
        if setup == "muonclip_fsdp2":
            sync = 3 * (w - 1) * grad_bytes // w  # all-gather fwd + bwd, reduce-scatter grads
        else:
            sync = optim_dist.ring_all_reduce_bytes(grad_bytes, w)
        res = {
            "step_ms": round(1e3 * statistics.median(t[0].tolist()), 1),
            "opt_step_ms": round(1e3 * statistics.median(t[1].tolist()), 1),
            "threads_per_proc": torch.get_num_threads(),
            "optimizer_bytes": int(statistics.median(comm)),
            "grad_sync_bytes": int(sync),
        }
        res["total_bytes"] = res["optimizer_bytes"] + res["grad_sync_bytes"]
        Path(out).write_text(json.dumps(res))


def run(setup: str, world: int, args) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.start_processes(_worker, args=(world, setup, args, out), nprocs=world, start_method="spawn")
        return json.loads(Path(out).read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="global batch (split over the processes)")
    ap.add_argument("--tau", type=float, default=30.0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads-per-proc", type=int, default=1)
    ap.add_argument("--worlds", default="1,2")
    ap.add_argument("--setups", default=",".join(SETUPS))
    args = ap.parse_args(argv)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    worlds = [int(w) for w in args.worlds.split(",")]
    results: dict = {}
    for setup in args.setups.split(","):
        results[setup] = {str(w): run(setup, w, args) for w in worlds}
    model = _model(args)
    from muonclip import build_param_groups

    muon_numel = sum(p.numel() for g in build_param_groups(model) if g.get("algorithm") == "muon"
                     for p in g["params"])
    summary = {"benchmark": "distributed_step", "backend": "gloo", "device": "cpu", "torch": torch.__version__,
               "model": {"d_model": args.d_model, "n_layer": args.n_layer, "n_head": args.n_head,
                         "seq_len": args.seq_len, "global_batch": args.batch,
                         "params": sum(p.numel() for p in model.parameters()), "muon_params": muon_numel},
               "results": results}
    # Noise-free view of the split: the busiest rank's share of the Newton-Schulz FLOPs.
    from muonclip.optim import distributed as optim_dist

    costs = [optim_dist.matrix_cost(p.shape) for g in build_param_groups(model) if g.get("algorithm") == "muon"
             for p in g["params"]]
    shares = {}
    for w in worlds:
        owners = optim_dist.partition_by_flops(costs, w)
        loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(w)]
        shares[str(w)] = round(max(loads) / sum(costs), 4)
    summary["ns_flops_busiest_rank_share"] = shares
    summary["load_average_1min"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    top = str(max(worlds))
    if "muonclip_ddp" in results and "adamw_ddp" in results and top != "1":
        m, a = results["muonclip_ddp"][top], results["adamw_ddp"][top]
        summary[f"bytes_ratio_muonclip_vs_adamw_ddp_w{top}"] = round(m["total_bytes"] / a["total_bytes"], 4)
    for setup in results:
        if "1" in results[setup] and top != "1":
            r1, rn = results[setup]["1"], results[setup][top]
            summary[f"speedup_{setup}_w{top}"] = {"step": round(r1["step_ms"] / rn["step_ms"], 3),
                                                  "opt_step": round(r1["opt_step_ms"] / rn["opt_step_ms"], 3)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
