"""The token-efficiency section: tokens each optimizer needs to reach AdamW's final validation loss.

Each optimizer's chosen lr (``EFFICIENCY_BEST``) runs on every seed, each seed against AdamW's
loss on the same seed; the lr sweep that chose it runs on the first seed only.
"""
from __future__ import annotations

import math

from ...viz import charts
from ...viz.style import DIGITS, fmt, fmt_g
from .. import presets, results
from ..runner import Arm, Run, Runner
from .base import Section, cell, curves_and_bands, first_seed, loss, seeds_of

__all__ = ["best_arm", "sweep_arm", "efficiency_arms", "section_efficiency"]


def best_arm(opt: str) -> Arm:
    lr = presets.EFFICIENCY_BEST[opt]
    return Arm(presets.efficiency_label(opt, lr), "efficiency", opt, tuple(presets.lr_override(opt, lr)))


def sweep_arm(opt: str, lr: float) -> Arm:
    return Arm(presets.efficiency_label(opt, lr), "efficiency", opt, tuple(presets.lr_override(opt, lr)),
               seeded=False)


def _sweep_lrs(opt: str, quick: bool) -> tuple[float, ...]:
    return (presets.EFFICIENCY_BEST[opt],) if quick else presets.EFFICIENCY_LRS[opt]


def efficiency_arms(quick: bool) -> list[Arm]:
    return ([best_arm(opt) for opt in presets.EFFICIENCY_BEST]
            + [sweep_arm(opt, lr) for opt in presets.EFFICIENCY_LRS for lr in _sweep_lrs(opt, quick)])


def _efficiency_sweep(rn: Runner, s: Section) -> list[tuple[str, float, float | None]]:
    """Every run of the LR sweep (quick: only the chosen lr), first seed; ``(optimizer, lr,
    final val loss)`` rows, with a note where the sweep now prefers another lr than the preset."""
    sweep_rows: list[tuple[str, float, float | None]] = []
    for opt in presets.EFFICIENCY_LRS:
        scored = []
        for lr in _sweep_lrs(opt, rn.quick):
            v = results.final_val_loss(rn.arm(sweep_arm(opt, lr))[0].rows)
            sweep_rows.append((opt, lr, v))
            scored.append((v if v is not None and math.isfinite(v) else math.inf, lr))
        best_lr = min(scored)[1]
        if best_lr != presets.EFFICIENCY_BEST[opt]:
            s.extra_md.append(f"Note: for {opt} the sweep's best lr is now {fmt_g(best_lr)}, "
                              f"not the preset's EFFICIENCY_BEST {fmt_g(presets.EFFICIENCY_BEST[opt])}.")
    return sweep_rows


def section_efficiency(rn: Runner) -> Section:
    s = Section("efficiency", "Token efficiency: tokens to reach AdamW's final validation loss")
    sweep_rows = _efficiency_sweep(rn, s)
    best: dict[str, list[Run]] = {opt: rn.arm(best_arm(opt)) for opt in presets.EFFICIENCY_BEST}
    s.commands.extend(rn.command(runs[0]) for runs in best.values())
    adamw = best["adamw"]
    total_tokens = adamw[0].rows[-1]["tokens"]
    s.table.append(("AdamW final val loss (the target; each seed against its own)",
                    cell(adamw, results.final_val_loss, DIGITS["loss"])))
    ratios: dict[str, list[float | None]] = {}
    for opt, runs in best.items():
        if opt == "adamw":
            continue
        ratios[opt] = [results.efficiency_ratio(r.rows, a.rows) for r, a in zip(runs, adamw, strict=True)]
        sp = results.spread(ratios[opt])
        tokens = results.spread([None if x is None else int(round(x * total_tokens)) for x in ratios[opt]])
        s.table.append((f"{opt}: tokens to reach AdamW's final val loss",
                        f"{tokens.text()} of {fmt(total_tokens)} ({sp.text(DIGITS['ratio'])}x)"))
    s.checks.extend(results.efficiency_targets(ratios, seeds=seeds_of(adamw)))
    mc = best["muonclip"]
    s.table.append(("muonclip: steps with a clip / heads ever clipped in that run (tau "
                    f"{fmt_g(mc[0].tau)}; with no clip it is the Muon run step for step)",
                    f"{cell(mc, lambda rows: len(results.clip_steps(rows)))} / "
                    f"{cell(mc, lambda rows: len(results.heads_ever_clipped(rows, mc[0].tau)))}"))
    for opt, runs in best.items():
        s.table.append((f"{opt}: final val loss", cell(runs, results.final_val_loss, DIGITS["loss"])))
    sweep_md = ["| optimizer | lr | final val loss |", "|---|---|---|"]
    sweep_md += [f"| {o} | {fmt_g(lr)} | {loss(v)} |" for o, lr, v in sweep_rows]
    s.extra_md.insert(0, first_seed("LR sweep", adamw) + " (same preset; AdamW sweeps `optim.adamw_lr`, "
                      "Muon/MuonClip sweep `optim.lr` of the hidden matrices with the AdamW groups at 3e-3):\n\n"
                      + "\n".join(sweep_md))
    labels = {opt: f"{opt} (lr {fmt_g(presets.EFFICIENCY_BEST[opt])})" for opt in best}
    curves, bands = curves_and_bands({labels[o]: runs for o, runs in best.items()}, "val_loss", "tokens")
    target = results.final_val_loss(adamw[0].rows)
    marks = {labels[o]: (results.tokens_to_reach(*results.val_curve(runs[0].rows), target) if target else None)
             for o, runs in best.items()}
    s.figures["efficiency_val"] = charts.val_curves_figure(
        curves, bands=bands, target=target, marks=marks,
        title="Validation loss vs tokens (best lr each" + (f"; marks and target: seed {adamw[0].seed})"
                                                            if len(adamw) > 1 else ")"))
    if not rn.quick:
        sweeps: dict[str, tuple[list, list]] = {}
        for o, lr, v in sweep_rows:
            if v is not None:
                sweeps.setdefault(o, ([], []))
                sweeps[o][0].append(lr)
                sweeps[o][1].append(v)
        s.figures["efficiency_sweep"] = charts.lr_sweep_figure(
            sweeps, title=first_seed("LR sweep: final validation loss", adamw))
    return s
