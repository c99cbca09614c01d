"""Which run data goes into which story figure: one function per story file, plus the numbers it shows.

Each ``fig_*`` function takes the loaded runs (role -> :class:`~muonclip.lab.rundir.RunData`)
and the output folder, takes its numbers from :mod:`muonclip.reproduce.results`, draws with
:mod:`muonclip.viz` (pure functions) and writes the file(s) through :mod:`muonclip.story.render`;
it returns the numbers the report quotes next to the figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from ..lab import probe
from ..lab.rundir import RunData
from ..reproduce import results
from ..sae.plots import l0_series
from ..viz import animate, charts, clip_charts, plots
from ..viz.style import fmt_g
from .interactive import attention_row, head_series, step_series, tau_drawn
from .render import save_animation, save_figure

__all__ = ["FIGURES", "FigureSpec", "display_name"]

Runs = Mapping[str, RunData]


def display_name(run: RunData) -> str:
    return {"adamw": "AdamW", "muon": "Muon", "muonclip": "MuonClip"}.get(run.optimizer, run.optimizer)


def _frames(opts: dict, full: int) -> int:
    return 16 if opts.get("quick") else full


def _max_logit_numbers(run: RunData) -> dict:
    return {"final": results.final_max_logit(run.rows), "peak": results.peak_max_logit(run.rows)}


# ------------------------------------------------------------------------------ singular values


def fig_adamw_surface(runs: Runs, out: Path, opts: dict) -> dict:
    ad = runs["adamw"]
    param = results.most_distorted_param(ad.spectra)
    values = ad.weight_spectra(param)
    ratios = [results.top_over_median(v) for v in values]
    anim = animate.animate_spectrum_surface(ad.spectra_steps, values, title=f"AdamW: singular values of {param}",
                                            top_over_median=ratios, provenance=ad.provenance,
                                            frames=_frames(opts, 30))
    save_animation(anim, out / "adamw_singular_distortion.gif", fps=6)
    return {"param": param, "top_over_median_first": ratios[0], "top_over_median_last": ratios[-1],
            "entropy_last": float(results.normalized_entropy(values[-1])[0]),
            "snapshots": int(len(ad.spectra_steps)), "step_last": int(ad.spectra_steps[-1])}


def _side_by_side(runs: Runs, kind: str, opts: dict, title: str, **kwargs):
    """AdamW and Muon spectra (``weight`` or ``update``) of the most distorted matrix, animated
    (``title`` + the matrix's name)."""
    ad, mu = runs["adamw"], runs["muon"]
    param = results.most_distorted_param(ad.spectra)
    n = min(len(ad.spectra_steps), len(mu.spectra_steps))
    spectra = [ad.spectra[f"{param}|{kind}"][:n], mu.spectra[f"{param}|{kind}"][:n]]
    suffix = " update" if kind == "update" else ""
    anim = animate.animate_spectra_side_by_side(
        ad.spectra_steps[:n], [(f"AdamW{suffix}", spectra[0]), (f"Muon{suffix}", spectra[1])],
        title=title + param, entropies=[results.normalized_entropy(v) for v in spectra],
        provenance=[ad.provenance, mu.provenance], frames=_frames(opts, 30), **kwargs)
    return param, n, anim


def fig_adam_vs_muon(runs: Runs, out: Path, opts: dict) -> dict:
    ad, mu = runs["adamw"], runs["muon"]
    param, n, anim = _side_by_side(runs, "weight", opts, "Weight spectra of ")
    save_animation(anim, out / "adam_vs_muon.gif", fps=6)
    names, e_ad = results.entropy_over_time(ad.spectra, "weight")
    _, e_mu = results.entropy_over_time(mu.spectra, "weight")
    fig = plots.plot_spectral_entropy({"AdamW": (ad.spectra_steps, names, e_ad),
                                       "Muon": (mu.spectra_steps, names, e_mu)},
                                      provenance=[ad.provenance, mu.provenance])
    save_figure(fig, out / "spectral_entropy.png", description="normalised spectral entropy of tracked weights")
    return {"param": param, "entropy_adamw": float(e_ad[-1].mean()), "entropy_muon": float(e_mu[-1].mean()),
            "entropy_param_adamw": float(results.normalized_entropy(ad.weight_spectra(param)[-1])[0]),
            "entropy_param_muon": float(results.normalized_entropy(mu.weight_spectra(param)[-1])[0]),
            "n_matrices": len(names), "step_last": int(ad.spectra_steps[n - 1])}


def fig_update_goal(runs: Runs, out: Path, opts: dict) -> dict:
    ad, mu = runs["adamw"], runs["muon"]
    param, _, anim = _side_by_side(runs, "update", opts, "Applied update spectra of ", normalise="mean",
                                   reference=1.0)
    save_animation(anim, out / "singular_values_goal.gif", fps=6)
    _, u_ad = results.entropy_over_time(ad.spectra, "update")
    _, u_mu = results.entropy_over_time(mu.spectra, "update")
    return {"param": param, "update_entropy_adamw": results.mean_after_first(u_ad.mean(axis=1)),
            "update_entropy_muon": results.mean_after_first(u_mu.mean(axis=1))}


# ------------------------------------------------------------------------------ logits


def fig_bridge(runs: Runs, out: Path, opts: dict) -> dict:
    """From spectra to logits: sigma_1(W_q) sigma_1(W_k) / sqrt(d) beside the measured max logit,
    per layer, for the runs that track spectra (AdamW and Muon on the dragon preset)."""
    chosen = {display_name(runs[r]): runs[r] for r in ("adamw", "muon") if r in runs}
    panels = {name: results.logit_bound_series(run.spectra, run.spectra_steps, run.rows,
                                               int(run.config["model"]["head_dim"]))
              for name, run in chosen.items()}
    panels = {k: v for k, v in panels.items() if v["layers"] and len(v["steps"]) >= 2}
    if not panels:
        raise ValueError("no run tracks both q_proj and k_proj spectra")
    fig = plots.plot_logit_bound(panels, title="From spectra to logits: the bound grows with the logit",
                                 provenance=[chosen[k].provenance for k in panels])
    save_figure(fig, out / "logit_bridge.png", description="sigma_1(W_q) sigma_1(W_k)/sqrt(d) and the max logit")
    numbers = {}
    for name, p in panels.items():
        top_b = [max(col) for col in zip(*p["bound"], strict=True)]
        top_m = [max(col) for col in zip(*p["measured"], strict=True)]
        numbers[name] = {"step_first": p["steps"][0], "step_last": p["steps"][-1],
                         "bound_first": top_b[0], "bound_last": top_b[-1],
                         "bound_growth": top_b[-1] / top_b[0], "measured_growth": top_m[-1] / top_m[0],
                         "measured_last": top_m[-1], "ratio_last": top_m[-1] / top_b[-1],
                         "d_model": int(chosen[name].config["model"]["d_model"]),
                         "head_dim": int(chosen[name].config["model"]["head_dim"])}
    return numbers


def fig_dragon(runs: Runs, out: Path, opts: dict) -> dict:
    mu = runs["dragon"]
    tau = mu.tau  # the dragon preset's own tau (its config), not another preset's
    s, v = mu.series("max_logit")
    adamw = runs.get("dragon_adamw")
    ref = (*adamw.series("max_logit"), "AdamW (same preset)") if adamw is not None else None
    prov = [mu.provenance] + ([adamw.provenance] if adamw is not None else [])
    save_figure(plots.plot_dragon(s, v, tau, reference=ref, provenance=prov), out / "dragon.png",
                description="vanilla Muon max logit with safe/danger zones")
    save_animation(animate.animate_dragon(s, v, tau, reference=ref, provenance=prov, frames=_frames(opts, 36)),
                   out / "dragon.gif", fps=8)
    rows = mu.rows
    return {"tau": tau, "start": results.initial_max_logit(rows), "peak": results.peak_max_logit(rows),
            "final": results.final_max_logit(rows), "peak_step": results.peak_step(rows),
            "steps": results.total_steps(rows), "growth": results.growth_factor(rows),
            "first_above_tau": results.first_step_above(rows, tau),
            "adamw_final": results.final_max_logit(adamw.rows) if adamw is not None else None,
            "adamw_peak": results.peak_max_logit(adamw.rows) if adamw is not None else None,
            "adamw_start": results.initial_max_logit(adamw.rows) if adamw is not None else None,
            "adamw_growth": results.growth_factor(adamw.rows) if adamw is not None else None,
            "adamw_first_above_tau": results.first_step_above(adamw.rows, tau) if adamw is not None else None,
            "final_loss": results.final_train_loss(rows), "tau_drawn": tau_drawn(mu, "dragon"),
            "interactive": {"tau": tau, "lines": [step_series(mu, "vanilla Muon")]
                            + ([step_series(adamw, "AdamW")] if adamw is not None else [])}}


def fig_rogue_heads(runs: Runs, out: Path, opts: dict) -> dict:
    run = runs["guardrail"]
    tau = run.tau
    peaks = results.peaks_over_tau(run.rows, tau)
    steps, heads, raster = results.clip_raster(run.rows, tau)
    fig = clip_charts.rogue_heads_figure(peaks, steps, heads, raster, reference_fraction=results.K2_FRACTION_CLIPPED,
                                         title=f"Rogue heads over the whole run ({display_name(run)}, "
                                               f"tau {fmt_g(tau)})")
    plots.add_provenance(fig, run.provenance)
    save_figure(fig, out / "rogue_heads.png", description="every head's peak / tau, and when each was clipped")
    spans = results.clip_span_per_head(run.rows, tau)
    clipped = [r for _, r, c in peaks if c]
    healthy = [r for _, r, c in peaks if not c]
    return {"tau": tau, "heads_total": results.n_heads(run.rows), "heads_ever": len(clipped),
            "fraction": results.fraction_heads_ever_clipped(run.rows, tau), "k2_fraction": results.K2_FRACTION_CLIPPED,
            "top": [[list(h), r, c] for h, r, c in peaks[:5]],
            "healthy_max_peak_over_tau": max(healthy) if healthy else None,
            "spans": {f"{h[0]},{h[1]}": list(v) for h, v in sorted(spans.items())},
            "steps": results.total_steps(run.rows), "tau_drawn": tau_drawn(run, "guardrail"),
            "interactive": head_series(run)}


def fig_cap(runs: Runs, out: Path, opts: dict) -> dict:
    run = runs["guardrail"]
    tau, rows = run.tau, run.rows
    fig = clip_charts.cap_figure(*results.series(rows, "max_logit"), *results.landing_points(rows, tau), tau=tau,
                                 cap_target=1.10, title="The cap: before each step, and where the clip puts the "
                                                        "clipped heads")
    plots.add_provenance(fig, run.provenance)
    save_figure(fig, out / "qk_clip_cap.png",
                description="max logit / tau per step, and the clipped heads after the clip")
    return {"tau": tau, "cap": results.cap_ratio(rows, tau), "slack": results.clip_slack(rows, tau),
            "slack_parts": results.slack_decomposition(rows, tau),
            "landing": results.landing_after_clip(rows, tau), "first_clip": results.first_clip_step(rows),
            "tau_drawn": tau_drawn(run, "guardrail")}


def fig_per_layer(runs: Runs, out: Path, opts: dict) -> dict:
    head, layer = runs["guardrail"], runs["guardrail_layer"]
    c = results.per_layer_comparison(head.rows, layer.rows, head.tau, probe.attention_entropy(head.run_dir),
                                     probe.attention_entropy(layer.run_dir))
    fig = clip_charts.per_layer_figure(c["total_factor"], title="Per-layer clipping: healthy heads' total logit factor")
    plots.add_provenance(fig, layer.provenance)
    save_figure(fig, out / "qk_clip_per_layer.png", description="healthy heads shrunk by per-layer clipping")
    return {k: v for k, v in c.items() if k != "total_factor"}  # numbers.json keys must be strings


def _phase_spans(ph: results.ClipPhases) -> list[tuple[float, float, str, str]]:
    if ph.first_clip is None:
        return []
    spans = [(ph.first_clip, ph.last_clip, "guardrail active", "#bcd9f5")]
    if ph.stabilised:
        spans.append((ph.last_clip, ph.total_steps, "self-stabilised", "#d8f0d0"))
    return spans


def fig_guardrail(runs: Runs, out: Path, opts: dict) -> dict:
    g = runs["guardrail"]
    mu = runs.get("guardrail_muon") or runs["dragon"]  # vanilla Muon on the guardrail's own preset
    tau = g.tau
    s, v = g.series("max_logit")
    ph = results.clip_phases(g.rows, tau)
    anim = animate.animate_max_logit(s, v, tau=tau, title="The guardrail: MuonClip",
                                     label=f"MuonClip (tau {fmt_g(tau)})",
                                     ghost=(*mu.series("max_logit"), "vanilla Muon"),
                                     lower=(*g.series("n_clipped"), "heads clipped"), phases=_phase_spans(ph),
                                     provenance=[g.provenance, mu.provenance], frames=_frames(opts, 36))
    save_animation(anim, out / "guardrail.gif", fps=8)
    return {"tau": tau, "first_clip": ph.first_clip, "clip_steps": ph.clip_steps, "steps": ph.total_steps,
            "max_after_first_clip": results.max_after_first_clip(g.rows),
            "final": ph.final_max_logit, "muon_final": results.final_max_logit(mu.rows),
            "heads_ever": ph.heads_clipped_ever, "heads_total": ph.heads_total,
            "final_loss": results.final_train_loss(g.rows), "muon_final_loss": results.final_train_loss(mu.rows),
            "final_val": results.final_val_loss(g.rows), "muon_final_val": results.final_val_loss(mu.rows),
            "cap": results.cap_ratio(g.rows, tau), "muon_peak": results.peak_max_logit(mu.rows),
            "muon_growth": results.growth_factor(mu.rows), "muon_start": results.initial_max_logit(mu.rows),
            "fraction": results.fraction_heads_ever_clipped(g.rows, tau), "tau_drawn": tau_drawn(g, "guardrail"),
            "interactive": {"tau": tau, "phases": {"first_clip": ph.first_clip, "last_clip": ph.last_clip},
                            "lines": [step_series(g, "MuonClip"), step_series(mu, "vanilla Muon")]}}


def fig_lifecycle(runs: Runs, out: Path, opts: dict) -> dict:
    lc = runs["lifecycle"]
    tau = lc.tau
    s, v = lc.series("max_logit")
    ph = results.clip_phases(lc.rows, tau)
    anim = animate.animate_max_logit(s, v, tau=tau, title="QK-Clip's lifecycle", label=f"MuonClip (tau {fmt_g(tau)})",
                                     lower=(*lc.series("n_clipped"), "heads clipped"), phases=_phase_spans(ph),
                                     provenance=lc.provenance, frames=_frames(opts, 40))
    save_animation(anim, out / "qk_clip_lifecycle.gif", fps=8)
    return {"tau": tau, "first_clip": ph.first_clip, "last_clip": ph.last_clip, "steps": ph.total_steps,
            "clip_steps": ph.clip_steps, "stabilised": ph.stabilised, "active_fraction": ph.active_fraction,
            "heads_ever": ph.heads_clipped_ever, "heads_total": ph.heads_total,
            "final": ph.final_max_logit, "final_over_tau": ph.final_max_logit / tau, "peak": ph.peak_max_logit,
            "schedule": lc.config["schedule"]["kind"], "weight_decay": lc.config["optim"]["weight_decay"],
            "tau_drawn": tau_drawn(lc, "lifecycle"),
            "interactive": {"tau": tau, "phases": {"first_clip": ph.first_clip, "last_clip": ph.last_clip,
                                                   "stabilised": ph.stabilised},
                            "lines": [step_series(lc, "MuonClip")]}}


# ------------------------------------------------------------------------------ K2-style charts

_DRAGON_ROLES = (("dragon_adamw", "AdamW"), ("dragon", "Muon"), ("dragon_clip", "MuonClip"))


def fig_max_logits(runs: Runs, out: Path, opts: dict) -> dict:
    chosen = {name: runs[role] for role, name in _DRAGON_ROLES if role in runs}
    # the tau line is the clipping run's own (its config); without one, the dragon preset's
    role = "dragon_clip" if "dragon_clip" in runs else "dragon"
    drawn = tau_drawn(runs[role], role)
    fig = plots.plot_max_logits({name: run.series("max_logit") for name, run in chosen.items()}, tau=drawn["tau"],
                                title="Max logit over training (K2 Fig. 2 style)",
                                provenance=[run.provenance for run in chosen.values()])
    save_figure(fig, out / "max_logits.png", description="max logit per step, all runs")
    return {"runs": {name: _max_logit_numbers(run) for name, run in chosen.items()}, "tau_drawn": drawn}


def _loss_runs(runs: Runs) -> dict[str, RunData]:
    eff = {k: r for k, r in runs.items() if k.startswith("efficiency_")}
    if eff:
        return {display_name(r): r for r in eff.values()}
    return {name: runs[role] for role, name in _DRAGON_ROLES if role in runs}


def fig_loss_vs_tokens(runs: Runs, out: Path, opts: dict) -> dict:
    chosen = _loss_runs(runs)
    series, val, numbers = {}, {}, {}
    for name, run in chosen.items():
        tok, loss = run.series("loss", "tokens")
        series[name] = (tok, results.smooth(loss, max(1, len(loss) // 25)))
        vt, vl = run.series("val_loss", "tokens")
        if vl.size:
            val[name] = (vt, vl)
        numbers[name] = {"tokens": int(tok[-1]), "final_train_smoothed": float(series[name][1][-1]),
                         "final_val": results.final_val_loss(run.rows)}
    fig = plots.plot_loss_vs_tokens(series, val, title="Loss vs tokens (K2 Fig. 3 style)",
                                    provenance=[run.provenance for run in chosen.values()])
    save_figure(fig, out / "loss_vs_tokens.png", description="loss against tokens seen")
    numbers["_source"] = "efficiency" if any(k.startswith("efficiency_") for k in runs) else "dragon"
    return numbers


def fig_tradeoff(runs: Runs, out: Path, opts: dict) -> dict:
    result = opts["tradeoff"]
    prov = f"run {result['run_id']} | config {result['config_hash']} | git {(result.get('git_sha') or 'unknown')[:12]}"
    save_animation(animate.animate_tradeoff(result, provenance=prov, frames=_frames(opts, 30)),
                   out / "qk_clip_tradeoff.gif", fps=5)
    save_figure(plots.plot_tradeoff_summary(result, provenance=prov), out / "qk_clip_tradeoff.png",
                description="trade-off experiment: accuracy and attention")
    return {**results.tradeoff_summary(result), "interactive": attention_row(result)}


def fig_tradeoff_sweep(runs: Runs, out: Path, opts: dict) -> dict:
    result = opts["tradeoff_sweep"]
    grids = {"held-out accuracy": results.tradeoff_sweep_grid(result, "accuracy"),
             "attention on the keyword": results.tradeoff_sweep_grid(result, "keyword_attention"),
             "held-out loss": results.tradeoff_sweep_grid(result, "eval_loss")}
    fig = clip_charts.tradeoff_sweep_figure(result["seq_lens"], result["taus"], grids,
                                            title="QK-Clip tau against prompt length (tool selection)")
    plots.add_provenance(fig, f"run {result['run_id']} | config {result['config_hash']}")
    save_figure(fig, out / "qk_clip_tradeoff_sweep.png", description="tau x prompt length sweep")
    return {"seq_lens": result["seq_lens"], "taus": result["taus"],
            "edge": {str(k): v for k, v in results.tradeoff_edge(result).items()},
            "loss_edge": {str(k): v for k, v in results.tradeoff_edge(result, "eval_loss", margin=0.01).items()},
            "accuracy": grids["held-out accuracy"].tolist(),
            "keyword_attention": grids["attention on the keyword"].tolist(),
            "eval_loss": grids["held-out loss"].tolist(), "seconds": result["seconds"]}


def fig_l0(runs: Runs, out: Path, opts: dict) -> dict | None:
    sae_dirs = opts.get("sae_dirs")
    if not sae_dirs:
        return None
    series = {label: l0_series(d) for label, d in sae_dirs.items()}
    fig = charts.plot_l0(series, title="SAE L0 over training (log scale)")
    plots.add_provenance(fig, opts.get("sae_provenance"))
    save_figure(fig, out / "l0.png", description="SAE L0 per optimizer")
    return {label: {"final_l0": float(v[-1]) if v else None} for label, (_, v) in series.items()}


class FigureSpec:
    """``roles``: runs the figure cannot do without; ``sources``: every role it may draw from
    (its provenance; ``efficiency_*`` matches any efficiency run)."""

    def __init__(self, key: str, files: tuple[str, ...], roles: tuple[str, ...], fn: Callable,
                 optional: bool = False, sources: tuple[str, ...] | None = None):
        self.key, self.files, self.roles, self.fn, self.optional = key, files, roles, fn, optional
        self.sources = sources if sources is not None else roles

    def uses(self, role: str) -> bool:
        return any(role == s or (s.endswith("*") and role.startswith(s[:-1])) for s in self.sources)


FIGURES: list[FigureSpec] = [
    FigureSpec("adamw_surface", ("adamw_singular_distortion.gif",), ("adamw",), fig_adamw_surface),
    FigureSpec("adam_vs_muon", ("adam_vs_muon.gif", "spectral_entropy.png"), ("adamw", "muon"), fig_adam_vs_muon),
    FigureSpec("update_goal", ("singular_values_goal.gif",), ("adamw", "muon"), fig_update_goal),
    FigureSpec("bridge", ("logit_bridge.png",), ("adamw", "muon"), fig_bridge),
    FigureSpec("dragon", ("dragon.png", "dragon.gif"), ("dragon",), fig_dragon, sources=("dragon", "dragon_adamw")),
    FigureSpec("rogue_heads", ("rogue_heads.png",), ("guardrail",), fig_rogue_heads),
    # drawn against vanilla Muon on the guardrail's own preset (the dragon only stands in without it)
    FigureSpec("guardrail", ("guardrail.gif",), ("guardrail", "dragon"), fig_guardrail,
               sources=("guardrail", "guardrail_muon")),
    FigureSpec("cap", ("qk_clip_cap.png",), ("guardrail",), fig_cap),
    FigureSpec("per_layer", ("qk_clip_per_layer.png",), ("guardrail", "guardrail_layer"), fig_per_layer),
    FigureSpec("lifecycle", ("qk_clip_lifecycle.gif",), ("lifecycle",), fig_lifecycle),
    FigureSpec("tradeoff", ("qk_clip_tradeoff.gif", "qk_clip_tradeoff.png"), (), fig_tradeoff,
               sources=("tradeoff",)),
    FigureSpec("tradeoff_sweep", ("qk_clip_tradeoff_sweep.png",), (), fig_tradeoff_sweep,
               sources=("tradeoff_sweep",)),
    FigureSpec("max_logits", ("max_logits.png",), ("dragon",), fig_max_logits,
               sources=("dragon_adamw", "dragon", "dragon_clip")),
    FigureSpec("loss_vs_tokens", ("loss_vs_tokens.png",), (), fig_loss_vs_tokens,
               sources=("efficiency_*",)),
    FigureSpec("l0", ("l0.png",), (), fig_l0, optional=True, sources=("sae",)),
]
