"""Which run data goes into which figure: one function per story file, plus the numbers it shows.

Each ``fig_*`` function takes the loaded runs (role -> :class:`RunData`) and the output
folder, writes its file(s) through :mod:`muonclip.story.render`, and returns the numbers
the report quotes next to it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..viz import animate as A
from ..viz import plots as P
from . import analysis
from .render import save_animation, save_figure
from .rundata import RunData

__all__ = ["FIGURES", "FigureSpec", "display_name"]

Runs = Mapping[str, RunData]


def display_name(run: RunData) -> str:
    return {"adamw": "AdamW", "muon": "Muon", "muonclip": "MuonClip"}.get(run.optimizer, run.optimizer)


def _frames(opts: dict, full: int) -> int:
    return 16 if opts.get("quick") else full


def _tau(runs: Runs) -> float:
    """The guardrail's tau: the threshold every max-logit picture is drawn against."""
    for role in ("guardrail", "lifecycle"):
        if role in runs and runs[role].tau is not None:
            return runs[role].tau
    return float(runs["dragon"].config["optim"]["qk_clip_tau"])


# ------------------------------------------------------------------------------ singular values


def fig_adamw_surface(runs: Runs, out: Path, opts: dict) -> dict:
    ad = runs["adamw"]
    param = analysis.most_distorted_param(ad.spectra)
    values = ad.weight_spectra(param)
    anim = A.animate_spectrum_surface(ad.spectra_steps, values, title=f"AdamW: singular values of {param}",
                                      provenance=ad.provenance, frames=_frames(opts, 30))
    save_animation(anim, out / "adamw_singular_distortion.gif", fps=6)
    first, last = values[0], values[-1]
    return {"param": param, "top_over_median_first": float(first[0] / max(np.median(first), 1e-12)),
            "top_over_median_last": float(last[0] / max(np.median(last), 1e-12)),
            "entropy_last": float(analysis.normalized_entropy(last)[0]),
            "snapshots": int(len(ad.spectra_steps)), "step_last": int(ad.spectra_steps[-1])}


def fig_adam_vs_muon(runs: Runs, out: Path, opts: dict) -> dict:
    ad, mu = runs["adamw"], runs["muon"]
    param = analysis.most_distorted_param(ad.spectra)
    S = min(len(ad.spectra_steps), len(mu.spectra_steps))
    anim = A.animate_spectra_side_by_side(
        ad.spectra_steps[:S], [("AdamW", ad.weight_spectra(param)[:S]), ("Muon", mu.weight_spectra(param)[:S])],
        title=f"Weight spectra of {param}", provenance=[ad.provenance, mu.provenance], frames=_frames(opts, 30))
    save_animation(anim, out / "adam_vs_muon.gif", fps=6)
    names, e_ad = analysis.entropy_over_time(ad.spectra, "weight")
    _, e_mu = analysis.entropy_over_time(mu.spectra, "weight")
    fig = P.plot_spectral_entropy({"AdamW": (ad.spectra_steps, names, e_ad), "Muon": (mu.spectra_steps, names, e_mu)},
                                  provenance=[ad.provenance, mu.provenance])
    save_figure(fig, out / "spectral_entropy.png", description="normalised spectral entropy of tracked weights")
    return {"param": param, "entropy_adamw": float(e_ad[-1].mean()), "entropy_muon": float(e_mu[-1].mean()),
            "entropy_param_adamw": float(analysis.normalized_entropy(ad.weight_spectra(param)[-1])[0]),
            "entropy_param_muon": float(analysis.normalized_entropy(mu.weight_spectra(param)[-1])[0]),
            "n_matrices": len(names), "step_last": int(ad.spectra_steps[S - 1])}


def fig_update_goal(runs: Runs, out: Path, opts: dict) -> dict:
    ad, mu = runs["adamw"], runs["muon"]
    param = analysis.most_distorted_param(ad.spectra)
    S = min(len(ad.spectra_steps), len(mu.spectra_steps))
    anim = A.animate_spectra_side_by_side(
        ad.spectra_steps[:S], [("AdamW update", ad.update_spectra(param)[:S]),
                               ("Muon update", mu.update_spectra(param)[:S])],
        title=f"Applied update spectra of {param}", normalise="mean", reference=1.0,
        provenance=[ad.provenance, mu.provenance], frames=_frames(opts, 30))
    save_animation(anim, out / "singular_values_goal.gif", fps=6)
    _, u_ad = analysis.entropy_over_time(ad.spectra, "update")
    _, u_mu = analysis.entropy_over_time(mu.spectra, "update")
    # Skip the first snapshot (step 1: Adam's first step is sign-like, Muon's momentum is fresh).
    sl = slice(1, None) if u_ad.shape[0] > 1 else slice(None)
    return {"param": param, "update_entropy_adamw": float(u_ad[sl].mean()),
            "update_entropy_muon": float(u_mu[sl].mean())}


# ------------------------------------------------------------------------------ logits


def fig_dragon(runs: Runs, out: Path, opts: dict) -> dict:
    mu = runs["dragon"]
    tau = _tau(runs)
    s, v = mu.series("max_logit")
    ref = None
    if "dragon_adamw" in runs:
        rs, rv = runs["dragon_adamw"].series("max_logit")
        ref = (rs, rv, "AdamW")
    prov = [mu.provenance] + ([runs["dragon_adamw"].provenance] if ref else [])
    save_figure(P.plot_dragon(s, v, tau, reference=ref, provenance=prov), out / "dragon.png",
                description="vanilla Muon max logit with safe/danger zones")
    save_animation(A.animate_dragon(s, v, tau, reference=ref, provenance=prov, frames=_frames(opts, 36)),
                   out / "dragon.gif", fps=8)
    above = np.nonzero(v > tau)[0]
    return {"tau": tau, "start": float(v[:5].mean()), "peak": float(v.max()), "final": float(v[-1]),
            "peak_step": int(s[int(np.argmax(v))]), "steps": int(s[-1]),
            "growth": analysis.growth_factor(v), "first_above_tau": int(s[above[0]]) if above.size else None,
            "adamw_final": float(ref[1][-1]) if ref else None, "adamw_peak": float(ref[1].max()) if ref else None,
            "final_loss": float(mu.rows[-1]["loss"])}


def fig_rogue_heads(runs: Runs, out: Path, opts: dict) -> dict:
    run = runs["guardrail"]
    tau = _tau(runs)
    i, layer, why = analysis.rogue_pick(run.rows, tau)
    row = run.rows[i]
    heads = np.asarray(row["max_logits"], dtype=np.float64)
    fig = P.plot_rogue_heads(heads, layer, row["step"], tau, why=why, run_label=display_name(run),
                             provenance=run.provenance)
    save_figure(fig, out / "rogue_heads.png", description=f"per-head max logits at step {row['step']} ({why})")
    ever = analysis.heads_ever_above(run.head_logits(), tau)
    return {"step": int(row["step"]), "layer": layer, "why": why, "values": heads[layer].tolist(),
            "above": int((heads[layer] > tau).sum()), "heads_per_layer": int(heads.shape[1]),
            "above_all_layers": int((heads > tau).sum()), "heads_total": int(heads.size),
            "heads_ever": int(ever.sum()), "tau": tau}


def _phase_spans(ph: analysis.ClipPhases, start: int) -> list[tuple[float, float, str, str]]:
    if ph.first_clip is None:
        return []
    spans = [(ph.first_clip, ph.last_clip, "guardrail active", "#bcd9f5")]
    if ph.stabilised:
        spans.append((ph.last_clip, ph.total_steps, "self-stabilised", "#d8f0d0"))
    return spans


def fig_guardrail(runs: Runs, out: Path, opts: dict) -> dict:
    g, mu = runs["guardrail"], runs["dragon"]
    tau = g.tau if g.tau is not None else _tau(runs)
    s, v = g.series("max_logit")
    ms, mv = mu.series("max_logit")
    ns, nc = g.series("n_clipped")
    ph = analysis.clip_phases(g.rows, tau)
    anim = A.animate_max_logit(s, v, tau=tau, title="The guardrail: MuonClip", label=f"MuonClip (tau {tau:g})",
                               ghost=(ms, mv, "vanilla Muon"), lower=(ns, nc, "heads clipped"),
                               phases=_phase_spans(ph, int(s[0])), provenance=[g.provenance, mu.provenance],
                               frames=_frames(opts, 36))
    save_animation(anim, out / "guardrail.gif", fps=8)
    after = v[s >= ph.first_clip] if ph.first_clip is not None else np.zeros(0)
    return {"tau": tau, "first_clip": ph.first_clip, "clip_steps": ph.clip_steps, "steps": ph.total_steps,
            "max_after_first_clip": float(after.max()) if after.size else None,
            "final": float(v[-1]), "muon_final": float(mv[-1]), "heads_ever": ph.heads_clipped_ever,
            "heads_total": ph.heads_total, "final_loss": float(g.rows[-1]["loss"]),
            "muon_final_loss": float(mu.rows[-1]["loss"]),
            "final_val": float(g.series("val_loss")[1][-1]) if g.series("val_loss")[1].size else None,
            "muon_final_val": float(mu.series("val_loss")[1][-1]) if mu.series("val_loss")[1].size else None}


def fig_lifecycle(runs: Runs, out: Path, opts: dict) -> dict:
    lc = runs["lifecycle"]
    tau = lc.tau if lc.tau is not None else _tau(runs)
    s, v = lc.series("max_logit")
    ns, nc = lc.series("n_clipped")
    ph = analysis.clip_phases(lc.rows, tau)
    anim = A.animate_max_logit(s, v, tau=tau, title="QK-Clip's lifecycle", label=f"MuonClip (tau {tau:g})",
                               lower=(ns, nc, "heads clipped"), phases=_phase_spans(ph, int(s[0])),
                               provenance=lc.provenance, frames=_frames(opts, 40))
    save_animation(anim, out / "qk_clip_lifecycle.gif", fps=8)
    return {"tau": tau, "first_clip": ph.first_clip, "last_clip": ph.last_clip, "steps": ph.total_steps,
            "clip_steps": ph.clip_steps, "stabilised": ph.stabilised, "active_fraction": ph.active_fraction,
            "heads_ever": ph.heads_clipped_ever, "heads_total": ph.heads_total,
            "final": ph.final_max_logit, "final_over_tau": ph.final_max_logit / tau, "peak": ph.peak_max_logit,
            "schedule": lc.config["schedule"]["kind"], "weight_decay": lc.config["optim"]["weight_decay"]}


# ------------------------------------------------------------------------------ K2-style charts


def fig_max_logits(runs: Runs, out: Path, opts: dict) -> dict:
    series, prov = {}, []
    for role, name in (("dragon_adamw", "AdamW"), ("dragon", "Muon"), ("guardrail", "MuonClip")):
        if role in runs:
            series[name] = runs[role].series("max_logit")
            prov.append(runs[role].provenance)
    fig = P.plot_max_logits(series, tau=_tau(runs), title="Max logit over training (K2 Fig. 2 style)",
                            provenance=prov)
    save_figure(fig, out / "max_logits.png", description="max logit per step, all runs")
    return {name: {"final": float(v[-1]), "peak": float(v.max())} for name, (_, v) in series.items()}


def _loss_runs(runs: Runs) -> dict[str, RunData]:
    eff = {k: r for k, r in runs.items() if k.startswith("efficiency_")}
    if eff:
        return {display_name(r): r for r in eff.values()}
    out = {}
    for role, name in (("dragon_adamw", "AdamW"), ("dragon", "Muon"), ("guardrail", "MuonClip")):
        if role in runs:
            out[name] = runs[role]
    return out


def fig_loss_vs_tokens(runs: Runs, out: Path, opts: dict) -> dict:
    chosen = _loss_runs(runs)
    series, val, prov, numbers = {}, {}, [], {}
    for name, run in chosen.items():
        tok, loss = run.tokens_series("loss")
        series[name] = (tok, analysis.smooth(loss, max(1, len(loss) // 25)))
        vt, vl = run.tokens_series("val_loss")
        if vl.size:
            val[name] = (vt, vl)
        prov.append(run.provenance)
        numbers[name] = {"tokens": int(tok[-1]), "final_train_smoothed": float(series[name][1][-1]),
                         "final_val": float(vl[-1]) if vl.size else None}
    fig = P.plot_loss_vs_tokens(series, val, title="Loss vs tokens (K2 Fig. 3 style)", provenance=prov)
    save_figure(fig, out / "loss_vs_tokens.png", description="loss against tokens seen")
    numbers["_source"] = "efficiency" if any(k.startswith("efficiency_") for k in runs) else "dragon"
    return numbers


def fig_tradeoff(runs: Runs, out: Path, opts: dict) -> dict:
    from .tradeoff import summarize

    result = opts["tradeoff"]
    prov = f"run {result['run_id']} | config {result['config_hash']} | git {(result.get('git_sha') or 'unknown')[:12]}"
    save_animation(A.animate_tradeoff(result, provenance=prov, frames=_frames(opts, 30)),
                   out / "qk_clip_tradeoff.gif", fps=5)
    save_figure(P.plot_tradeoff_summary(result, provenance=prov), out / "qk_clip_tradeoff.png",
                description="trade-off experiment: accuracy and attention")
    return summarize(result)


def fig_l0(runs: Runs, out: Path, opts: dict) -> dict | None:
    sae_dirs = opts.get("sae_dirs")
    if not sae_dirs:
        return None
    from ..sae.plots import l0_series, plot_l0

    series = {label: l0_series(d) for label, d in sae_dirs.items()}
    fig = plot_l0(series, title="SAE L0 over training (log scale)")
    P.add_provenance(fig, opts.get("sae_provenance"))
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
