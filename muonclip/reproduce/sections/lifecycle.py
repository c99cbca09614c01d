"""The lifecycle section: with weight decay and a decaying lr, clipping switches itself off (on every seed)."""
from __future__ import annotations

from ...viz import charts
from ...viz.style import DIGITS, fmt, fmt_g
from .. import presets, results
from ..runner import Arm, Runner
from .base import Section, cell, curves_and_bands, first_seed, ratio, seeds_of

__all__ = ["LIFECYCLE", "LIFECYCLE_FULL_MODEL", "lifecycle_arms", "section_lifecycle"]

LIFECYCLE = Arm("lifecycle", "lifecycle", "muonclip")
# The same recipe on the full 8-head model: a contrast on the first seed only (not run with --quick).
LIFECYCLE_FULL_MODEL = Arm("lifecycle-full-model", "lifecycle", "muonclip",
                           tuple(presets.LIFECYCLE_FULL_MODEL_OVERRIDES), seeded=False)


def lifecycle_arms(quick: bool) -> list[Arm]:
    return [LIFECYCLE] if quick else [LIFECYCLE, LIFECYCLE_FULL_MODEL]


def section_lifecycle(rn: Runner) -> Section:
    runs = rn.arm(LIFECYCLE)
    tau = runs[0].tau
    per_seed = [results.lifecycle_seed_numbers(r.rows, tau) for r in runs]

    def over(key: str, digits: int = 3) -> str:
        return results.spread([d[key] for d in per_seed]).text(digits)

    s = Section("lifecycle", "The lifecycle: clipping switches itself off", commands=[rn.command(runs[0])])
    c = runs[0].cfg
    s.table.extend([
        ("model", f"{c.model.n_layer} layers x {c.model.n_head} heads of {c.model.head_size}, d_model "
                  f"{c.model.d_model}, T {c.model.seq_len}, batch {c.run.batch_size}, {c.run.steps} steps"),
        ("schedule", f"{c.schedule.kind}, warmup {c.schedule.warmup_steps}, min lr ratio "
                     f"{fmt_g(c.schedule.min_lr_ratio)}; weight decay {fmt_g(c.optim.weight_decay)}; "
                     f"lr {fmt_g(c.optim.lr)}"),
        ("tau", fmt_g(tau)),
        ("tau rule (the preset's)", presets.TAU_RULES["lifecycle"]),
        ("first clip / last clip (step)", f"{over('first_clip')} / {over('last_clip')} of {over('steps')}"),
        ("last clip as a fraction of training", over("last_clip_fraction", DIGITS["ratio"])),
        ("peak max logit", over("peak", DIGITS["logit"])),
        ("final max logit / tau", over("final_over_tau", DIGITS["ratio"])),
        ("heads ever clipped", f"{over('heads_ever')} / {over('heads_total')}"),
        ("measured slack after the first clip", cell(runs, lambda rows: results.clip_slack(rows, tau),
                                                     DIGITS["ratio"])),
        ("final val loss", over("final_val", DIGITS["loss"])),
    ])
    s.checks.extend(results.lifecycle_targets(per_seed, seeds=seeds_of(runs)))
    if not rn.quick:  # the same recipe on the full 8-head model, as a contrast
        full = rn.arm(LIFECYCLE_FULL_MODEL)[0]
        s.commands.append(rn.command(full))
        contrast = results.lifecycle_seed_numbers(full.rows, full.tau)
        s.table.extend([
            (f"contrast (seed {full.seed}): same recipe on the full model (8 heads of 32, tau "
             f"{fmt_g(full.tau)}, {fmt(contrast['steps'])} steps): first / last clip",
             f"{fmt(contrast['first_clip'])} / {fmt(contrast['last_clip'])}"),
            (f"contrast (seed {full.seed}): last clip as a fraction / final max logit / tau",
             f"{ratio(contrast['last_clip_fraction'])} / {ratio(contrast['final_over_tau'])}"),
            (f"contrast (seed {full.seed}): heads ever clipped", f"{fmt(contrast['heads_ever'])} / "
                                                                f"{fmt(contrast['heads_total'])}"),
        ])
    rows = runs[0].rows
    _, bands = curves_and_bands({"max logit": runs})
    s.figures["lifecycle"] = charts.lifecycle_figure(
        [r["step"] for r in rows], [float(r["max_logit"]) for r in rows], [int(r["n_clipped"]) for r in rows],
        [float(r["lr"]) for r in rows], tau=tau, band=bands.get("max logit"),
        title=first_seed("MuonClip lifecycle (cf. K2 Fig. 2 right)", runs)
        + (", band: every seed's max logit" if len(runs) > 1 else ""))
    return s
