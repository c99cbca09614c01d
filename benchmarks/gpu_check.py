"""One JSON line of what MuonClip does on a CUDA device: step times, bounds, tracking cost, a short run.

On CUDA (the real check):
  * optimizer step ms on a 1B-class shape set (d=2048, 24 layers: q, k, v, o, up, down per
    layer) for MuonClip in each ns_precision, torch.optim.Muon and AdamW;
  * ``ns_forms``: every Newton-Schulz form (direct and Gram with restarts; bf16, fp16 and
    fp32; torch products and the Triton symmetric kernel) against torch.optim.Muon's own NS,
    on the 1B-class shapes and Kimi-K2-like ones (hidden 7168: the MLA projections and a
    batch of experts), each with its phases (normalisation, iteration), FLOPs, achieved rate,
    distance to a float64 NS5 (Gaussian and singular values log-spaced to 1e-6) and the plan
    ``ns_precision="auto"`` picks there;
  * the bf16 and fp32 NS5 FLOP bounds from measured 4096^3 matmul rates;
  * tracked-over-plain forward time of the lab GPT at T=2048 (exact per-head max logits);
  * 50 steps of the ``dragon`` preset on the device, with its max-logit growth;
  * correctness on the device: one MuonClip step against the same step on the CPU, NS
    accuracy per precision against float64 NS5, QK-Clip landing the clipped heads' logit on
    tau on the same batch, bf16 tracked max logits against the materialised ones, and a lab
    run (``run.device``) killed and resumed from its checkpoint.
Each section is isolated: one that fails records its error in the JSON and the rest still run.
On CPU it runs the same code paths at toy size (d=64, 2 layers, T=64, 4 steps) so the tests
keep it from rotting; those numbers say nothing about a GPU.

    python benchmarks/gpu_check.py            # CUDA if available, else the CPU toy run
    python benchmarks/gpu_check.py --toy      # force the toy sizes
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

from muonclip import MuonClip
from muonclip.optim import functional as muon_math
from muonclip.optim import ns_auto, ns_forms, triton_ns
from muonclip.optim.orthogonalizers import ORTHOGONALIZERS
from muonclip.optim.precision import cpu_has_native_bf16, resolve_ns_dtype

FULL = {"d": 2048, "layers": 24, "matmul_n": 4096, "seq_len": 2048, "attn_batch": 4, "dragon_steps": 50, "scale": 1}
TOY = {"d": 64, "layers": 2, "matmul_n": 256, "seq_len": 64, "attn_batch": 2, "dragon_steps": 4, "scale": 64}
NS5 = ORTHOGONALIZERS["ns5"].schedule(5)
# (batch, rows, cols) in torch's (out, in) layout. 1B class: d = 2048, 8 matrices of each
# shape (the optimizer batches same-shape matrices). Kimi K2 (hidden 7168, 64 heads, MLA with
# q rank 1536 and kv rank 512, head dims 128 + 64 rope, value 128; experts of width 2048).
NS_SHAPES = {
    "1b_square": (8, 2048, 2048), "1b_up": (8, 8192, 2048), "1b_down": (8, 2048, 8192),
    "k2_q_a": (1, 1536, 7168), "k2_q_b": (1, 12288, 1536), "k2_kv_a": (1, 576, 7168),
    "k2_kv_b": (1, 16384, 512), "k2_o": (1, 7168, 8192),
    "k2_expert_up": (8, 2048, 7168), "k2_expert_down": (8, 7168, 2048),
}
# name -> (dtype, form, Triton symmetric products on?); the bf16 Gram form is refused by the
# optimizer (it loses to torch.optim.Muon at small n) and timed here for the record.
NS_FORMS = {
    "bf16_direct_torch": (torch.bfloat16, "direct", False), "bf16_direct_triton": (torch.bfloat16, "direct", True),
    "fp16_direct_torch": (torch.float16, "direct", False), "fp16_direct_triton": (torch.float16, "direct", True),
    "fp16_gram_restart_2": (torch.float16, "gram@2", False),
    "bf16_gram_restart_2_4_refused": (torch.bfloat16, "gram@2,4", False),
    "fp32_gram": (torch.float32, "gram", False), "fp32_direct": (torch.float32, "direct", False),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def shape_set(d: int, layers: int) -> list[tuple[int, int]]:
    return [s for _ in range(layers) for s in [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)]]


def _params(shapes, device, seed=0):
    # drawn on the device itself: 1.2B CPU draws per optimizer would dominate the check
    g = torch.Generator(device=device).manual_seed(seed)
    params = [nn.Parameter(torch.randn(s, generator=g, device=device) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, device=device)
    return params


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def matmul_tflops(dtype: torch.dtype, n: int, device: torch.device) -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / (_median_ms(lambda: a @ b, device, 5) / 1e3) / 1e12


def optimizer_steps(sizes: dict, device: torch.device, repeats: int) -> dict:
    shapes = shape_set(sizes["d"], sizes["layers"])
    makers = {f"muonclip_{p}": (lambda ps, p=p: MuonClip(ps, lr=0.02, ns_precision=p))
              for p in ("auto", "fp32", "bf16", "fp16")}
    makers["adamw"] = lambda ps: torch.optim.AdamW(ps, lr=3e-3, weight_decay=0.1)
    if hasattr(torch.optim, "Muon"):
        makers["torch_muon"] = lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.1)
    step_ms = {}
    for name, make in makers.items():  # one at a time: five 1.2B-parameter sets at once need ~90 GB
        opt = make(_params(shapes, device))
        step_ms[name] = round(_median_ms(opt.step, device, repeats), 3)
        del opt
        _free(device)
    ns5_flops = sum(muon_math.ns_flops(n, m) for n, m in shapes)
    rates = {str(dt).replace("torch.", ""): matmul_tflops(dt, sizes["matmul_n"], device)
             for dt in (torch.float32, torch.bfloat16)}
    bounds = {k: round(ns5_flops / (r * 1e12) * 1e3, 3) for k, r in rates.items()}
    return {
        "matrix_params": sum(n * m for n, m in shapes),
        "ns5_tflop": round(ns5_flops / 1e12, 4),
        "matmul_tflops": {k: round(v, 2) for k, v in rates.items()},
        "ns5_bound_ms": bounds,
        "step_ms": step_ms,
        "bf16_over_bound": round(step_ms["muonclip_bf16"] / bounds["bfloat16"], 3),
        "fp32_over_bound": round(step_ms["muonclip_fp32"] / bounds["float32"], 3),
        "torch_muon_over_muonclip_auto": (round(step_ms["torch_muon"] / step_ms["muonclip_auto"], 2)
                                          if "torch_muon" in step_ms else None),
    }


def _log_spaced(batch: int, n: int, m: int, device: torch.device) -> torch.Tensor:
    """Singular values log-spaced from 1 to 1e-6 with random orthonormal bases, built on the device."""
    g = torch.Generator(device=device).manual_seed(3)
    k = min(n, m)
    U, _ = torch.linalg.qr(torch.randn(batch, n, k, generator=g, device=device))
    V, _ = torch.linalg.qr(torch.randn(batch, m, k, generator=g, device=device))
    return (U * torch.logspace(0, -6, k, device=device)) @ V.mT


def _run_form(X: torch.Tensor, dtype: torch.dtype, form: str, ws) -> torch.Tensor:
    return ns_forms.run_form(X, NS5, *ns_forms.parse_form(form), ws)


def _torch_muon_ns(G: torch.Tensor) -> torch.Tensor | None:
    """torch.optim.Muon's own Newton-Schulz (a private function of torch 2.9+), per matrix."""
    from torch.optim import _muon

    fn = getattr(_muon, "_zeropower_via_newtonschulz", None)
    if fn is None:
        return None
    return torch.stack([fn(g, (3.4445, -4.7750, 2.0315), 5, 1e-7) for g in G])


def _with_triton(on: bool, fn):
    """``fn()`` with the Triton symmetric kernel turned on or off (``MUONCLIP_TRITON``)."""
    import os

    previous = os.environ.get("MUONCLIP_TRITON")
    os.environ["MUONCLIP_TRITON"] = "1" if on else "0"
    try:
        return fn()
    finally:
        if previous is None:
            os.environ.pop("MUONCLIP_TRITON", None)
        else:
            os.environ["MUONCLIP_TRITON"] = previous


def _sig(x: float) -> float:
    """Four significant figures (toy sizes have tiny FLOP counts)."""
    return float(f"{x:.4g}")


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float(f"{float((got.double() - ref).norm() / ref.norm()):.3e}")


def _time_form(G: torch.Tensor, inputs: dict, refs: dict, dtype: torch.dtype, form: str,
               device: torch.device, repeats: int) -> dict:
    """One form on one batch: normalisation and iteration ms, and its distance per input class."""
    ws = ns_forms.Workspace()
    X0 = ns_forms.normalized_batch([G], dtype).clone()
    norm_ms = _median_ms(lambda: ns_forms.normalized_batch([G], dtype, 1.0, ws), device, repeats)

    def iterate():
        X = ws.get("x0", X0.shape, X0)
        X.copy_(X0)
        return _run_form(X, dtype, form, ws)
    iter_ms = _median_ms(iterate, device, repeats)
    dist = {k: _rel(_run_form(ns_forms.normalized_batch([x], dtype), dtype, form, None), refs[k])
            for k, x in inputs.items()}
    return {"normalize_ms": round(norm_ms, 3), "iterate_ms": round(iter_ms, 3),
            "total_ms": round(norm_ms + iter_ms, 3), "rel_dist_to_fp64": dist}


def _ns_shape_row(batch: int, rows: int, cols: int, device: torch.device, repeats: int) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    G = torch.randn(batch, rows, cols, generator=g, device=device)
    inputs = {"gaussian": G[:1], "log_1e-6": _log_spaced(1, rows, cols, device)}
    refs = {k: ns_forms.newton_schulz_batch([x], NS5, "direct", torch.float64) for k, x in inputs.items()}
    n, m = min(rows, cols), max(rows, cols)
    row: dict = {"shape": [batch, rows, cols],
                 "auto_plan": ns_auto.plan(rows, cols, "auto", "auto", NS5, device), "forms": {}}
    triton_ok = device.type == "cuda" and triton_ns.available()
    for name, (dtype, form, triton) in NS_FORMS.items():
        if triton and not triton_ok:
            continue
        entry = _with_triton(triton, lambda dtype=dtype, form=form: _time_form(G, inputs, refs, dtype, form,
                                                                                device, repeats))
        flops = batch * ns_forms.form_flops(n, m, form, NS5, dtype)
        entry.update(gflop=_sig(flops / 1e9), tflops=_sig(flops / (entry["iterate_ms"] / 1e3) / 1e12))
        row["forms"][name] = entry
    if _torch_muon_ns(G[:1]) is not None:
        peer_ms = _median_ms(lambda: _torch_muon_ns(G), device, repeats)
        row["torch_muon"] = {"total_ms": round(peer_ms, 3), "gflop": _sig(batch * ns_forms.ns_flops(n, m) / 1e9),
                             "rel_dist_to_fp64": {k: _rel(_torch_muon_ns(x), refs[k]) for k, x in inputs.items()}}
        row["torch_muon_over_form"] = {k: round(peer_ms / v["total_ms"], 2) for k, v in row["forms"].items()}
    return row


def ns_form_table(sizes: dict, device: torch.device, repeats: int) -> dict:
    """Each Newton-Schulz form on each shape: ms (normalisation, iteration, total), FLOPs, TFLOP/s,
    distance to a float64 NS5 on two input classes, beside torch.optim.Muon's NS; and auto's plan."""
    out: dict = {}
    for shape_name, (batch, rows, cols) in NS_SHAPES.items():
        rows, cols = max(rows // sizes["scale"], 4), max(cols // sizes["scale"], 4)
        out[shape_name] = _ns_shape_row(batch, rows, cols, device, repeats)
        _free(device)
    return out


def attention_tracking(sizes: dict, device: torch.device, repeats: int) -> dict:
    """Forward time of the lab GPT with exact max-logit tracking on vs off, same weights."""
    from muonclip.models import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=256, d_model=max(sizes["d"] // 2, 64), n_layer=2, n_head=8,
                    seq_len=sizes["seq_len"])
    model = GPT(cfg).to(device)
    idx = torch.randint(0, 256, (sizes["attn_batch"], sizes["seq_len"]), device=device)
    times = {}
    with torch.no_grad():
        for name, track in (("plain", False), ("tracked", True)):
            model.track_max_logits = track
            times[name] = _median_ms(lambda: model(idx), device, repeats)
    model.track_max_logits = True
    with torch.no_grad():
        model(idx)
        tracked = torch.stack([m.max() for m in model.max_logits()]).max()
        reference = max(float(lg.max()) for lg in model.attention_logits(idx, capped=False))
    return {"plain_ms": round(times["plain"], 3), "tracked_ms": round(times["tracked"], 3),
            "tracked_over_plain": round(times["tracked"] / times["plain"], 3),
            "max_logit_tracked": round(float(tracked), 5), "max_logit_materialised": round(reference, 5)}


def dragon_run(sizes: dict, device: torch.device) -> dict:
    """The first steps of the ``dragon`` preset (vanilla Muon, no decay) on ``device``."""
    import muonclip.reproduce  # noqa: F401  (registers the story's presets, dragon among them)
    from muonclip.lab.presets import get_preset
    from muonclip.lab.train import build_model, build_optimizer, load_dataset

    cfg = get_preset("dragon")
    torch.manual_seed(cfg.run.seed)
    dataset = load_dataset(cfg)
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    model.train()
    maxima, losses = [], []
    t0 = time.perf_counter()
    for step in range(sizes["dragon_steps"]):
        x, y = dataset.batch_at(step, cfg.run.batch_size, cfg.model.seq_len)
        _, loss = model(x.to(device), y.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        maxima.append(float(torch.stack([m.max() for m in model.max_logits()]).max()))
        losses.append(loss.item())
    _sync(device)
    return {"steps": sizes["dragon_steps"], "seconds": round(time.perf_counter() - t0, 2),
            "max_logit_first": round(maxima[0], 3), "max_logit_last": round(maxima[-1], 3),
            "growth": round(maxima[-1] / maxima[0], 2), "loss_first": round(losses[0], 4),
            "loss_last": round(losses[-1], 4)}


def correctness(sizes: dict, device: torch.device) -> dict:
    """The device computes what the CPU does: one MuonClip step, NS accuracy per precision."""
    from muonclip.optim.reference import reference_orthogonalize

    shapes = [(64, 64), (256, 64), (64, 256), (96, 32)]
    out: dict = {}
    for precision in ("fp32", "bf16"):
        cpu_params, dev_params = _params(shapes, torch.device("cpu")), []
        for p in cpu_params:
            q = nn.Parameter(p.detach().to(device))
            q.grad = p.grad.to(device)
            dev_params.append(q)
        for ps in (cpu_params, dev_params):
            MuonClip(ps, lr=0.02, weight_decay=0.1, ns_precision=precision).step()
        # compared in units of the update (lr 0.02 x RMS-matched scale), not of the weights
        diff = max(float((a.detach() - b.detach().cpu()).abs().max())
                   for a, b in zip(cpu_params, dev_params, strict=True))
        out[f"step_max_abs_diff_vs_cpu_{precision}"] = float(f"{diff:.3e}")
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(8, 256, 1024, generator=g)
    ref = reference_orthogonalize(batch, expert_stack=True)
    for precision in ("fp32", "bf16"):
        o = muon_math.newton_schulz(batch.to(device), dtype=resolve_ns_dtype(precision, device)).double().cpu()
        out[f"ns5_rel_dist_to_fp64_{precision}"] = float(f"{float((o - ref).norm() / ref.norm()):.2e}")
    return out


def qk_clip_landing(device: torch.device, tau: float = 3.0) -> dict:
    """After a clipping step, the clipped heads' max logit on the same batch is tau (the clip
    acts on the step's own logits), measured on the device."""
    from muonclip.models import GPT, GPTConfig

    torch.manual_seed(0)
    # one layer: a clipped first layer would change a second layer's inputs, hence its logits
    cfg = GPTConfig(vocab_size=256, d_model=64, n_layer=1, n_head=4, seq_len=64, mlp_ratio=4.0)
    model = GPT(cfg).to(device)
    with torch.no_grad():  # start above tau so the first step clips
        for block in model.blocks:
            block.attn.q_proj.weight.mul_(6.0)
            block.attn.k_proj.weight.mul_(6.0)
    from muonclip.optim import build_param_groups

    opt = MuonClip(build_param_groups(model, lr=0.0, weight_decay=0.0), lr=0.0, weight_decay=0.0, qk_clip_tau=tau,
                   qk_clip_spec=model.qk_clip_spec(), max_logits_fn=model.max_logits)
    x = torch.randint(0, 256, (4, 64), device=device)
    _, loss = model(x, x)
    loss.backward()
    before = torch.stack([m.detach().clone() for m in model.max_logits()])
    opt.step()  # lr 0: only the clip moves the weights
    with torch.no_grad():
        model(x, x)
    after = torch.stack(list(model.max_logits()))
    clipped = before > tau
    return {"tau": tau, "heads_clipped": int(clipped.sum()), "heads": int(clipped.numel()),
            "max_before": round(float(before.max()), 4),
            "clipped_after_max_rel_err": float(f"{float(((after[clipped] - tau).abs() / tau).max()):.2e}")
            if clipped.any() else None,
            "unclipped_unchanged": bool(torch.allclose(after[~clipped], before[~clipped], rtol=1e-5))}


def bf16_tracking(sizes: dict, device: torch.device) -> dict:
    """Exact per-head max logits from the bf16 flash route (CUDA) against the materialised logits."""
    from muonclip.models import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=256, d_model=128, n_layer=2, n_head=4, seq_len=min(sizes["seq_len"], 512))
    model = GPT(cfg).to(device=device, dtype=torch.bfloat16)
    idx = torch.randint(0, 256, (2, cfg.seq_len), device=device)
    with torch.no_grad():
        model(idx)
        tracked = torch.stack([m.float() for m in model.max_logits()])
        reference = torch.stack([lg.float().amax(dim=(0, 2, 3)) for lg in model.attention_logits(idx, capped=False)])
    return {"max_rel_diff": float(f"{float(((tracked - reference).abs() / reference.abs()).max()):.2e}")}


def lab_resume(device: torch.device) -> dict:
    """The lab's train loop on ``device`` (``run.device``): 20 steps in one go against 10, kill, resume 10."""
    import tempfile

    from muonclip.lab.config import apply_overrides
    from muonclip.lab.presets import get_preset
    from muonclip.lab.train import train

    cfg = apply_overrides(get_preset("tiny"), [f"run.device={device}", "run.steps=20", "run.checkpoint_every=10"])
    quiet = {"progress": False, "log": lambda _m: None}
    with tempfile.TemporaryDirectory() as tmp:
        whole = train(cfg, f"{tmp}/whole", **quiet)
        train(cfg, f"{tmp}/split", stop_after=10, **quiet)
        split = train(cfg, f"{tmp}/split", resume=True, **quiet)
    return {"final_loss_whole": whole["final_loss"], "final_loss_resumed": split["final_loss"],
            "bit_exact": whole["final_loss"] == split["final_loss"]}


def _section(result: dict, name: str, fn, *args) -> None:
    """Run one section; its failure is recorded, not fatal."""
    t0 = time.perf_counter()
    try:
        result[name] = fn(*args)
    except Exception as exc:  # noqa: BLE001 - the JSON must still come out
        result[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print(f"# {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", action="store_true", help="toy sizes even on CUDA")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per row (median reported)")
    ap.add_argument("--skip-dragon", action="store_true", help="skip the short dragon run")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = TOY if (args.toy or device.type != "cuda") else FULL
    result = {
        "benchmark": "gpu_check",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (toy sizes: not a GPU figure)",
        "torch": torch.__version__,
        "sizes": sizes,
        "auto_precision": str(resolve_ns_dtype("auto", device)).replace("torch.", ""),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "auto_rates": {k: round(v, 1) for k, v in ns_auto.measured_rates(device).items()},
    }
    _section(result, "correctness", correctness, sizes, device)
    _section(result, "qk_clip", qk_clip_landing, device)
    _section(result, "bf16_tracking", bf16_tracking, sizes, device)
    _section(result, "lab_resume", lab_resume, device)
    _section(result, "optimizer", optimizer_steps, sizes, device, args.repeats)
    _section(result, "ns_forms", ns_form_table, sizes, device, args.repeats)
    _section(result, "attention", attention_tracking, sizes, device, args.repeats)
    if not args.skip_dragon:
        _section(result, "dragon", dragon_run, sizes, device)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
