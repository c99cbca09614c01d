"""Which run data goes into which story figure: one function per story file, plus the numbers it shows.

Each ``fig_*`` function takes the loaded runs (role -> :class:`~muonclip.lab.rundir.RunData`)
and the output folder, takes its numbers from :mod:`muonclip.reproduce.results`, draws with
:mod:`muonclip.viz` (pure functions) and writes the file(s) through :mod:`muonclip.story.render`;
it returns the numbers the report quotes next to the figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from ..lab.rundir import RunData
from ..reproduce import results
from ..sae.plots import l0_series
from ..viz import animate, charts, plots
from ..viz.style import fmt_g
from .render import save_animation, save_figure

__all__ = ["FIGURES", "FigureSpec", "display_name"]

Runs = Mapping[str, RunData]


def display_name(run: RunData) -> str:
    return {"adamw": "AdamW", "muon": "Muon", "muonclip": "MuonClip"}.get(run.optimizer, run.optimizer)


def _frames(opts: dict, full: int) -> int:
    return 16 if opts.get("quick") else full


def _tau(runs: Runs) -> float:
    """The guardrail's tau: the threshold every max-logit picture is drawn against."""
    for role in ("guardrail", "lifecycle"):
        if role in runs and runs[role].clips:
            return runs[role].tau
    return runs["dragon"].tau


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


def fig_dragon(runs: Runs, out: Path, opts: dict) -> dict:
    mu = runs["dragon"]
    tau = _tau(runs)
    s, v = mu.series("max_logit")
    adamw = runs.get("dragon_adamw")
    ref = (*adamw.series("max_logit"), "AdamW") if adamw is not None else None
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
            "final_loss": results.final_train_loss(rows)}


def fig_rogue_heads(runs: Runs, out: Path, opts: dict) -> dict:
    run = runs["guardrail"]
    tau = _tau(runs)
    i, layer, why = results.rogue_pick(run.rows, tau)
    row = run.rows[i]
    heads = run.head_logits()[i]
    fig = plots.plot_rogue_heads(heads, layer, row["step"], tau, why=why, run_label=display_name(run),
                                 provenance=run.provenance)
    save_figure(fig, out / "rogue_heads.png", description=f"per-head max logits at step {row['step']} ({why})")
    above = results.heads_above(row, tau)
    return {"step": int(row["step"]), "layer": layer, "why": why, "values": heads[layer].tolist(),
            "above": sum(1 for li, _ in above if li == layer), "heads_per_layer": int(heads.shape[1]),
            "above_all_layers": len(above), "heads_total": results.n_heads(run.rows),
            "heads_ever": len(results.heads_ever_clipped(run.rows, tau)), "tau": tau}


def _phase_spans(ph: results.ClipPhases) -> list[tuple[float, float, str, str]]:
    if ph.first_clip is None:
        return []
    spans = [(ph.first_clip, ph.last_clip, "guardrail active", "#bcd9f5")]
    if ph.stabilised:
        spans.append((ph.last_clip, ph.total_steps, "self-stabilised", "#d8f0d0"))
    return spans


def fig_guardrail(runs: Runs, out: Path, opts: dict) -> dict:
    g, mu = runs["guardrail"], runs["dragon"]
    tau = g.tau if g.clips else _tau(runs)
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
            "final_val": results.final_val_loss(g.rows), "muon_final_val": results.final_val_loss(mu.rows)}


def fig_lifecycle(runs: Runs, out: Path, opts: dict) -> dict:
    lc = runs["lifecycle"]
    tau = lc.tau if lc.clips else _tau(runs)
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
            "schedule": lc.config["schedule"]["kind"], "weight_decay": lc.config["optim"]["weight_decay"]}


# ------------------------------------------------------------------------------ K2-style charts

_DRAGON_ROLES = (("dragon_adamw", "AdamW"), ("dragon", "Muon"), ("guardrail", "MuonClip"))


def fig_max_logits(runs: Runs, out: Path, opts: dict) -> dict:
    chosen = {name: runs[role] for role, name in _DRAGON_ROLES if role in runs}
    fig = plots.plot_max_logits({name: run.series("max_logit") for name, run in chosen.items()}, tau=_tau(runs),
                                title="Max logit over training (K2 Fig. 2 style)",
                                provenance=[run.provenance for run in chosen.values()])
    save_figure(fig, out / "max_logits.png", description="max logit per step, all runs")
    return {name: _max_logit_numbers(run) for name, run in chosen.items()}


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
    return results.tradeoff_summary(result)


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
    FigureSpec("dragon", ("dragon.png", "dragon.gif"), ("dragon",), fig_dragon, sources=("dragon", "dragon_adamw")),
    FigureSpec("rogue_heads", ("rogue_heads.png",), ("guardrail",), fig_rogue_heads),
    FigureSpec("guardrail", ("guardrail.gif",), ("guardrail", "dragon"), fig_guardrail),
    FigureSpec("lifecycle", ("qk_clip_lifecycle.gif",), ("lifecycle",), fig_lifecycle),
    FigureSpec("tradeoff", ("qk_clip_tradeoff.gif", "qk_clip_tradeoff.png"), (), fig_tradeoff,
               sources=("tradeoff",)),
    FigureSpec("max_logits", ("max_logits.png",), ("dragon",), fig_max_logits,
               sources=("dragon_adamw", "dragon", "guardrail")),
    FigureSpec("loss_vs_tokens", ("loss_vs_tokens.png",), (), fig_loss_vs_tokens,
               sources=("efficiency_*",)),
    FigureSpec("l0", ("l0.png",), (), fig_l0, optional=True, sources=("sae",)),
]
