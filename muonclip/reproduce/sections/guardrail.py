"""The guardrail section: MuonClip caps the max logit at tau and clips few heads, on every seed, in fp32 and bf16 NS.

Its arms: vanilla Muon and MuonClip on the ``guardrail`` preset in each Newton-Schulz precision
of :data:`~muonclip.reproduce.presets.GUARDRAIL_NS_PRECISIONS`, the per-layer ablation and the
steep no-decay contrast, all on every seed. It works with whatever the preset holds (tau,
recipe): every number comes from the runs. Its per-seed, per-precision numbers and verdicts
are also a data file, ``guardrail-seeds.json``.
"""
from __future__ import annotations

from typing import Any, Sequence

from ...lab import get_preset, probe
from ...lab.train import AFTER_PASS_NEAR
from ...viz import charts, clip_charts
from ...viz.style import DIGITS, fmt, fmt_g, fmt_pct
from .. import presets, results
from ..runner import Arm, Run, Runner
from .base import Section, cell, curves_and_bands, environment, first_seed, ratio, seeds_of

__all__ = ["GUARDRAIL_DATA", "GUARDRAIL_LAYER", "DRAGON_CLIP", "guardrail_arm", "guardrail_arms",
           "section_guardrail"]

GUARDRAIL_DATA = "guardrail-seeds.json"
GUARDRAIL_LAYER = Arm("guardrail-layer", "guardrail", "muonclip", tuple(presets.GUARDRAIL_LAYER_OVERRIDES))
# The steep no-decay guardrail: the dragon preset with the clip on (also the SAE comparison's source run).
DRAGON_CLIP = Arm("dragon-clip", "dragon", "muonclip", quick_key="dragon-clip")


def guardrail_arm(label: str, optimizer: str, precision: str) -> Arm:
    """``label``'s arm of the guardrail preset in Newton-Schulz ``precision``."""
    label, overrides = presets.ns_precision_label(label, precision, get_preset("guardrail").optim.ns_precision)
    return Arm(label, "guardrail", optimizer, tuple(overrides))


# AdamW on the same preset (fp32, no Newton-Schulz): the scale the tau rule is measured against.
GUARDRAIL_ADAMW = Arm("guardrail-adamw", "guardrail", "adamw")


def guardrail_arms(quick: bool) -> list[Arm]:
    arms = [guardrail_arm(label, opt, p) for p in presets.GUARDRAIL_NS_PRECISIONS
            for label, opt in (("guardrail-muon", "muon"), ("guardrail", "muonclip"))]
    return arms + [GUARDRAIL_ADAMW, GUARDRAIL_LAYER, DRAGON_CLIP]


def _heads(heads) -> str:
    return ", ".join(f"({a},{b})" for a, b in heads) or "none"


def _heads_ever(runs: Sequence[Run]) -> str:
    """``ever / total (share)`` over the seeds."""
    tau = runs[0].tau
    return (f"{cell(runs, lambda rows: len(results.heads_ever_clipped(rows, tau)))} / "
            f"{cell(runs, results.n_heads)} "
            f"({cell(runs, lambda rows: results.fraction_heads_ever_clipped(rows, tau), as_text=fmt_pct)})")


def _precision_arms(rn: Runner) -> dict[str, tuple[list[Run], list[Run]]]:
    """Per NS precision: (vanilla Muon runs, MuonClip runs), one per seed."""
    return {p: (rn.arm(guardrail_arm("guardrail-muon", "muon", p)), rn.arm(guardrail_arm("guardrail", "muonclip", p)))
            for p in presets.GUARDRAIL_NS_PRECISIONS}


def _per_seed(muon: Sequence[Run], clip: Sequence[Run]) -> list[dict[str, Any]]:
    return [{"seed": c.seed, **results.guardrail_seed_numbers(m.rows, c.rows, c.tau)}
            for m, c in zip(muon, clip, strict=True)]


def section_guardrail(rn: Runner) -> Section:
    by_precision = _precision_arms(rn)
    main = presets.GUARDRAIL_NS_PRECISIONS[0]
    muon, clip = by_precision[main]
    layer, steep = rn.arm(GUARDRAIL_LAYER), rn.arm(DRAGON_CLIP)
    tau, first = clip[0].tau, clip[0]
    s = Section("guardrail", "The guardrail: MuonClip caps the max logit at tau and clips few heads",
                commands=[rn.command(muon[0]), rn.command(clip[0]), rn.command(layer[0])])
    s.commands.extend(rn.command(arms[i][0]) for p, arms in by_precision.items() if p != main for i in (0, 1))
    c = first.cfg
    s.table.extend([
        ("model / recipe", f"{c.model.n_layer} layer(s) x {c.model.n_head} heads of {c.model.head_size}, d_model "
                           f"{c.model.d_model}, T {c.model.seq_len}, batch {c.run.batch_size}, {c.run.steps} steps; "
                           f"lr {fmt_g(c.optim.lr)} {c.schedule.kind} (warmup {c.schedule.warmup_steps}), weight "
                           f"decay {fmt_g(c.optim.weight_decay)}"),
        ("tau", fmt_g(tau)),
        (f"Newton-Schulz precision of the rows below (the targets are judged in each of "
         f"{', '.join(presets.GUARDRAIL_NS_PRECISIONS)})", main),
        ("vanilla Muon: max logit at step 1 / peak / peak over tau / growth (peak / step 1)",
         f"{cell(muon, results.initial_max_logit, DIGITS['initial_logit'])} / "
         f"{cell(muon, results.peak_max_logit, DIGITS['logit'])} / "
         f"{cell(muon, lambda rows: results.peak_max_logit(rows) / tau, 3)} / "
         f"{cell(muon, results.growth_factor, as_text=lambda x: fmt(x, DIGITS['growth']) + 'x')}"),
        ("MuonClip: first clip / last clip (step)",
         f"{cell(clip, results.first_clip_step)} / {cell(clip, results.last_clip_step)} of "
         f"{cell(clip, results.total_steps)}"),
        ("MuonClip: steps with a clip", cell(clip, lambda rows: len(results.clip_steps(rows)))),
        ("MuonClip: the cap, max logit after the first clip / tau (forward before each step)",
         cell(clip, lambda rows: results.cap_ratio(rows, tau), DIGITS["ratio"])),
    ])
    landing = results.landing_after_clip(first.rows, tau)
    s.table.extend([
        (first_seed("MuonClip: clipped heads after the clip, on the same batch: max logit / tau (min / median / max "
                    f"over {fmt(landing and landing['n'])} head-steps)", clip),
         f"{ratio(landing['min'])} / {ratio(landing['median'])} / {ratio(landing['max'])}" if landing else "n/a"),
        ("MuonClip: heads ever clipped", _heads_ever(clip)),
        (first_seed("MuonClip: which heads (layer, head)", clip),
         _heads(sorted(results.heads_ever_clipped(first.rows, tau)))),
        ("final val loss: MuonClip / Muon",
         f"{cell(clip, results.final_val_loss, DIGITS['loss'])} / {cell(muon, results.final_val_loss, DIGITS['loss'])}"
         f" ({results.spread([d['val_rel'] for d in _per_seed(muon, clip)]).text(as_text=_signed_pct)})"),
    ])
    _tau_rule(s, rn.arm(GUARDRAIL_ADAMW), tau)
    _precisions(s, by_precision, tau)
    _slack(s, clip, tau)
    s.extra_md.append(
        "The metrics row's max logit comes from the forward pass *before* that step's update and clip, so after "
        "the first clip every row measures what one optimizer step does to heads that were just clipped: the cap "
        "above is that one-step slack. On the clipping step's own batch the clipped weights "
        "land on tau up to what the same step's update moved them (the clip's gamma comes from the forward before "
        "the update, as in K2); with lr 0 they land on tau to 1e-6 (`tests/optim`, `benchmarks/gpu_check.py`).")
    _rogue_heads(s, clip)
    _per_layer(s, clip, layer)
    s.commands.append(rn.command(steep[0]))
    s.table.append((f"contrast, the steep no-decay guardrail (dragon preset + MuonClip, tau {fmt_g(steep[0].tau)}): "
                    "heads ever clipped / cap",
                    f"{_heads_ever(steep)} / {cell(steep, lambda r: results.cap_ratio(r, steep[0].tau), 3)} tau"))
    curves, bands = curves_and_bands({"Muon": muon, "MuonClip": clip, "MuonClip per layer": layer})
    s.figures["guardrail_max_logit"] = charts.max_logit_figure(
        curves, bands=bands, tau=tau, title=f"Guardrail preset: MuonClip (tau = {fmt_g(tau)}) vs vanilla Muon")
    s.figures["guardrail_heads"] = charts.layer_heads_figure(
        [r["step"] for r in first.rows], first.data.head_logits(), tau=tau,
        title=first_seed("MuonClip: max logit of every head", clip))
    s.figures["guardrail_cap"] = clip_charts.cap_figure(
        *results.series(first.rows, "max_logit"), *results.landing_points(first.rows, tau), tau=tau,
        cap_target=results.CAP_MAX, seed_curves=[results.series(r.rows, "max_logit") for r in clip[1:]],
        title="The cap: before each step, and where the clip puts the clipped heads")
    return s


def _tau_rule(s: Section, adamw: Sequence[Run], tau: float) -> None:
    """How tau was chosen (the preset's rule) and what AdamW reaches on the same preset here."""
    s.table.extend([
        ("tau rule (the preset's)", presets.TAU_RULES["guardrail"]),
        ("AdamW on the same preset: peak max logit / tau over that peak",
         f"{cell(adamw, results.peak_max_logit, DIGITS['logit'])} / "
         f"{cell(adamw, lambda rows: tau / results.peak_max_logit(rows), DIGITS['ratio'])}"),
    ])


def _slack(s: Section, clip: Sequence[Run], tau: float) -> None:
    """The one-step slack decomposed (:func:`results.slack_decomposition`), over the seeds."""
    per_seed = [results.slack_decomposition(r.rows, tau) for r in clip]
    if not any(per_seed):
        return

    def over(get, digits: int = DIGITS["ratio"]) -> str:
        return results.spread([get(d) if d else None for d in per_seed]).text(digits)

    s.table.extend([
        ("slack, growth: clipped heads on the same batch after the update and clip, max logit / tau (max over "
         "head-steps; p90)", f"{over(lambda d: d['growth']['max'])}; {over(lambda d: d['growth']['p90'])}"),
        ("slack, batch variation: the next batch over the same batch, same weights (max; p90)",
         f"{over(lambda d: d['batch']['max'])}; {over(lambda d: d['batch']['p90'])}"),
        ("slack: share of the log-excess over tau that growth explains (median over the rows that ended above tau)",
         over(lambda d: d["growth_share_median"])),
        (first_seed("slack: the worst covered row (step, head): excess = growth x batch", clip),
         (lambda w: f"step {w['step']}, ({w['head'][0]},{w['head'][1]}): {ratio(w['excess'])} = "
                    f"{ratio(w['growth'])} x {ratio(w['batch'])}")(per_seed[0]["worst"]) if per_seed[0] else "n/a"),
    ])
    s.extra_md.append(
        "**The slack, decomposed.** The clip's gamma comes from the forward *before* the step's update, so the "
        "update of the clipping step itself is unseen: on the same batch the clipped head lands at tau times that "
        "step's growth. The next row then reads the same weights on the next batch. Their product is the next "
        "row's max logit over tau (`results.slack_decomposition`); the table gives each part. "
        "`docs/guardrail-search.md` plots both parts against lr and tau over the search's runs. "
        + _slack_cause([d for d in per_seed if d], [results.cap_ratio(r.rows, tau) for r, d in zip(clip, per_seed,
                                                                                                  strict=True) if d]))


# The per-head logits are logged to 5 decimals, the max logit in full: a cap within this factor of
# the worst covered row is that row.
_LOGGED = 1 + 1e-4


def _slack_cause(per_seed: Sequence[dict[str, Any]], caps: Sequence[float | None]) -> str:
    """The cause, from the numbers: which factor is larger in each seed's worst covered row,
    and which part a typical row above tau owes its excess to. A cap above the worst covered
    row is a row the after-pass did not cover: every head was below ``AFTER_PASS_NEAR`` x tau the
    step before, so that head jumped by more than cap / AFTER_PASS_NEAR in one step."""
    batch_larger = [d["worst"]["batch"] > d["worst"]["growth"] for d in per_seed]
    jumped = [c is not None and c > d["worst"]["excess"] * _LOGGED for d, c in zip(per_seed, caps, strict=True)]
    uncovered = [c for c, j in zip(caps, jumped, strict=True) if j]
    by_batch = sum(b or j for b, j in zip(batch_larger, jumped, strict=True))
    worst = "; ".join(f"{ratio(d['worst']['excess'])} = {ratio(d['worst']['growth'])} x {ratio(d['worst']['batch'])}"
                      for d in per_seed)
    jumps = (f" On {len(uncovered)} seed(s) the cap ({', '.join(ratio(c) for c in uncovered)} tau) is a row that "
             f"followed a step with every head below {AFTER_PASS_NEAR:g} tau: a jump of more than "
             f"{fmt_pct(min(uncovered) / AFTER_PASS_NEAR - 1, 0)} in one step." if uncovered else "")
    shares = [d["growth_share_median"] for d in per_seed if d["growth_share_median"] is not None]
    typical = (f" A typical row above tau owes a median {fmt_pct(results.spread(shares).median, 0)} of its "
               "log-excess to the update (the batch factor's p90 is in the table)." if shares else "")
    cause = ("the next batch (a token pair the clipping step's batch lacked), not the update the clip cannot see"
             if 2 * by_batch > len(per_seed) else "the update the clip cannot see, not the next batch")
    return (f"**Cause, measured:** the worst covered row owes more to its batch factor than to its growth on "
            f"{sum(batch_larger)} of {len(per_seed)} seeds "
            f"(excess = growth x batch per seed: {worst}).{jumps}{typical} So on "
            f"{by_batch if 2 * by_batch > len(per_seed) else len(per_seed) - by_batch} of {len(per_seed)} seeds the "
            f"cap is set by {cause}.")


def _signed_pct(x: float) -> str:
    return fmt_pct(x, 2, signed=True)


def _precisions(s: Section, by_precision: dict[str, tuple[list[Run], list[Run]]], tau: float) -> None:
    """The targets in each NS precision (all seeds must meet them), a per-seed table and the data file."""
    data: dict[str, Any] = {}
    verdicts: dict[str, list[results.Verdict]] = {}
    for p, (muon, clip) in by_precision.items():
        per_seed = _per_seed(muon, clip)
        verdicts[p] = results.guardrail_targets(per_seed, label=f"guardrail, {p} NS", seeds=seeds_of(clip))
        s.checks.extend(verdicts[p])
        data[p] = {"runs": {"muon": [r.run_dir.name for r in muon], "muonclip": [r.run_dir.name for r in clip]},
                   "per_seed": per_seed, "targets": [v.to_dict() for v in verdicts[p]],
                   "all_met": all(v.met for v in verdicts[p])}
    names = [v.name.split(": ", 1)[1] for v in next(iter(verdicts.values()))]
    md = ["| target | " + " | ".join(f"{p} NS: measured (met)" for p in verdicts) + " |",
          "|---|" + "---|" * len(verdicts)]
    md += [f"| {name} | " + " | ".join(f"{v[i].measured} ({v[i].met_text})" for v in verdicts.values()) + " |"
           for i, name in enumerate(names)]
    seeds = ["| seed | NS | Muon peak / tau | heads ever clipped | cap / tau | val loss vs Muon | every target |",
             "|---|---|---|---|---|---|---|"]
    for p, block in data.items():
        for row in block["per_seed"]:
            missed = [v["name"].split(": ", 1)[1] for v in block["targets"] if row["seed"] in v["missed_seeds"]]
            seeds.append(f"| {row['seed']} | {p} | {fmt(row['muon_peak_over_tau'], 3)} | {fmt(row['heads_ever'])} / "
                         f"{fmt(row['heads_total'])} | {ratio(row['cap'])} | "
                         f"{fmt_pct(row['val_rel'], 2, signed=True)} | "
                         f"{'yes' if not missed else 'no: ' + '; '.join(missed)} |")
    seeded = next(iter(by_precision.values()))[1]
    n = len(seeded)
    s.extra_md.append(f"The targets in each Newton-Schulz precision (`optim.ns_precision`), over {n} seed(s): met "
                      "only where every seed meets them.\n\n" + "\n".join(md))
    s.extra_md.append(f"Every seed (also in `data/{GUARDRAIL_DATA}`):\n\n" + "\n".join(seeds))
    missed = sorted({v.name.split(": ", 1)[1] for vs in verdicts.values() for v in vs if v.met is False})
    if missed:
        s.extra_md.append(
            f"Missed on some seed: {'; '.join(missed)}. The guardrail search (`docs/guardrail-search.md`) records "
            "every candidate preset measured, which target each misses and by how much, and the slack's two parts "
            "against lr and tau.")
    first = seeded[0]
    s.data[GUARDRAIL_DATA] = {
        "what": "the guardrail chapter of docs/results.md: vanilla Muon and MuonClip on the guardrail preset, per "
                "seed and Newton-Schulz precision; every target is met only where every seed meets it",
        "preset": "guardrail", "tau": tau, "steps": first.cfg.run.steps, "seeds": seeds_of(seeded),
        "quick": first.label.startswith("quick-"),
        "thresholds": {"muon_peak_over_tau_min": results.GUARDRAIL_PEAK_MIN, "cap_max": results.CAP_MAX,
                       "fraction_clipped_max": results.CLIPPED_MAX, "val_rel_max": results.LOSS_REL_MAX,
                       "muon_growth_min": results.GROWTH_MIN},
        "environment": environment(), "precisions": data,
        "all_met": all(block["all_met"] for block in data.values()),
    }


def _rogue_heads(s: Section, clip: Sequence[Run]) -> None:
    """Which heads went rogue (first seed): sorted peaks over tau and when each was clipped."""
    run = clip[0]
    tau, rows = run.tau, run.rows
    peaks = results.peaks_over_tau(rows, tau)
    spans = results.clip_span_per_head(rows, tau)
    s.table.extend([
        (first_seed("rogue heads: peak max logit / tau, top 8 (layer, head: ratio, clipped?)", clip),
         "; ".join(f"({h[0]},{h[1]}): {fmt(r, 2)}{' clipped' if c else ''}" for h, r, c in peaks[:8])),
        (first_seed("rogue heads: first / last clipping step per clipped head", clip),
         "; ".join(f"({h[0]},{h[1]}): {a}-{b}" for h, (a, b) in sorted(spans.items())) or "none"),
    ])
    steps, heads, raster = results.clip_raster(rows, tau)
    s.figures["rogue_heads"] = clip_charts.rogue_heads_figure(
        peaks, steps, heads, raster, reference_fraction=results.K2_FRACTION_CLIPPED,
        title=f"Rogue heads: peak / tau of every head over the run (MuonClip, tau = {fmt_g(tau)})")


def _per_layer(s: Section, clip: Sequence[Run], layer: Sequence[Run]) -> None:
    """K2 clips per head; the naive per-layer clip shrinks every head of a layer with a rogue one."""
    tau = clip[0].tau
    per_seed = [results.per_layer_comparison(h.rows, lr.rows, tau, probe.attention_entropy(h.run_dir),
                                             probe.attention_entropy(lr.run_dir))
                for h, lr in zip(clip, layer, strict=True)]

    def over(key: str, digits: int = 3) -> str:
        return results.spread([c[key] for c in per_seed]).text(digits)

    rel = results.spread([results.relative_change(c["val_layer"], c["val_head"]) for c in per_seed])
    md = ["| | per head (K2) | per layer |", "|---|---|---|",
          f"| heads ever clipped | {_heads_ever(clip)} | {_heads_ever(layer)} |",
          f"| healthy heads shrunk (at or below tau while their layer was clipped) | 0 | {over('healthy_shrunk')} "
          f"({over('events')} head-steps) |",
          f"| median gamma of those events / smallest total factor of a healthy head | - | "
          f"{over('median_gamma')} / {over('min_total_factor')} |",
          f"| attention entropy of those healthy heads, final weights (nats) | "
          f"{over('entropy_head')} | {over('entropy_layer')} |",
          f"| attention entropy, mean of all heads (nats) | {over('entropy_all_head')} | {over('entropy_all_layer')} |",
          f"| max logit after the first clip / tau | {over('cap_head')} | {over('cap_layer')} |",
          f"| final val loss | {over('val_head', DIGITS['loss'])} | {over('val_layer', DIGITS['loss'])} "
          f"({rel.text(as_text=_signed_pct)}) |"]
    s.extra_md.append("Per head against per layer (`optim.qk_clip_granularity=layer` scales every head of a layer "
                      f"by the layer's worst gamma, as a naive implementation does), same preset, over {len(clip)} "
                      "seed(s):\n\n" + "\n".join(md))
    if per_seed[0]["total_factor"]:
        s.figures["guardrail_per_layer"] = clip_charts.per_layer_figure(
            per_seed[0]["total_factor"],
            title=first_seed("Per-layer clipping: healthy heads' total logit factor", clip))
