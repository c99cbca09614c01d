"""The dragon and spectra sections: vanilla Muon's logits explode; Muon's updates are flat, AdamW's are not."""
from __future__ import annotations

from typing import Any

from ...viz import charts
from ...viz.style import DIGITS, fmt, fmt_g
from .. import presets, results
from ..runner import Arm, Run, Runner
from .base import Section, cell, curves_and_bands, first_seed, logit, seeds_of

__all__ = ["DRAGON_MUON", "DRAGON_ADAMW", "dragon_arms", "section_dragon", "section_spectra"]

DRAGON_MUON = Arm("dragon-muon", "dragon", "muon")
DRAGON_ADAMW = Arm("dragon-adamw", "dragon", "adamw")


def dragon_arms(quick: bool) -> list[Arm]:
    """The dragon's (and the spectra section's: same config) runs."""
    return [DRAGON_MUON, DRAGON_ADAMW]


def _growth(x: float) -> str:
    return f"{fmt(x, DIGITS['growth'])}x"


def section_dragon(rn: Runner) -> Section:
    muon, adamw = rn.arm(DRAGON_MUON), rn.arm(DRAGON_ADAMW)
    tau = muon[0].tau
    s = Section("dragon", "The dragon: vanilla Muon's max attention logit explodes",
                commands=[rn.command(muon[0]), rn.command(adamw[0])])
    for name, runs in (("Muon", muon), ("AdamW", adamw)):
        s.table.extend([
            (f"{name}: max logit at step 1 / peak / final",
             f"{cell(runs, results.initial_max_logit, DIGITS['initial_logit'])} / "
             f"{cell(runs, results.peak_max_logit, DIGITS['logit'])} / "
             f"{cell(runs, results.final_max_logit, DIGITS['logit'])}"),
            (f"{name}: growth factor (peak / step 1)", cell(runs, results.growth_factor, as_text=_growth)),
            (f"{name}: peak / tau", cell(runs, lambda rows: results.peak_max_logit(rows) / tau, 2)),
            (f"{name}: first step at 3 tau", cell(runs, lambda rows: results.first_step_above(rows, 3 * tau))),
            (first_seed(f"{name}: per-layer peak max logit (layer 0..)", runs),
             ", ".join(logit(max(v)) for v in results.layer_max_series(runs[0].rows)[1])),
            (f"{name}: final val loss", cell(runs, results.final_val_loss, DIGITS["loss"])),
            (f"{name}: loss spikes (> 0.5 nats above the median of the previous 20 steps) / largest rise",
             f"{cell(runs, results.loss_spikes)} / {cell(runs, results.max_loss_jump, 3)}"),
        ])
    s.table.append(("tau (this scale)", fmt_g(tau)))
    s.table.append(("tau rule (the preset's)", presets.TAU_RULES["dragon"]))
    s.checks.extend(results.dragon_targets([results.dragon_seed_numbers(r.rows, tau) for r in muon],
                                           seeds=seeds_of(muon)))
    layer_peaks = [max(v) for v in results.layer_max_series(muon[0].rows)[1]]
    s.extra_md.append(
        f"Layer with the largest Muon max logit{' on seed ' + str(muon[0].seed) if len(muon) > 1 else ''}: layer "
        f"{layer_peaks.index(max(layer_peaks))} (the facts-file probe saw the deepest layers grow most; Wortsman et "
        "al. saw layer 0).")
    curves, bands = curves_and_bands({"Muon": muon, "AdamW": adamw})
    s.figures["dragon_max_logit"] = charts.max_logit_figure(
        curves, bands=bands, tau=tau, title="Max attention logit, dragon preset (no QK-norm, no weight decay)")
    s.figures["dragon_heads"] = charts.layer_heads_figure(
        [r["step"] for r in muon[0].rows], muon[0].data.head_logits(), tau=tau,
        title=first_seed("Vanilla Muon: max logit of every head", muon))
    return s


# ----------------------------------------------------------------------------- spectra


def _mean_rank(rows: list[dict], stat: str) -> float | None:
    _, values = results.mean_spectra_series(rows, stat)
    return results.mean_after_first(values) if values else None


def _spectra_rows(name: str, runs: list[Run]) -> list[tuple[str, str]]:
    """The spectra table rows of one optimizer over its seeds."""
    steps, update_rank = results.mean_spectra_series(runs[0].rows, "u_erank")
    if not update_rank:
        return []
    return [
        (f"{name}: snapshots", fmt(len(steps))),
        (f"{name}: update effective rank, mean over matrices and snapshots after step 1",
         cell(runs, lambda rows: _mean_rank(rows, "u_erank"), DIGITS["rank"])),
        (f"{name}: update spectral entropy (nats), same mean",
         cell(runs, lambda rows: _mean_rank(rows, "u_entropy"), DIGITS["entropy"])),
        (f"{name}: weight effective rank at step {steps[0]} / at the end",
         f"{cell(runs, lambda rows: results.mean_spectra_series(rows, 'w_erank')[1][0], DIGITS['rank'])} / "
         f"{cell(runs, lambda rows: results.mean_spectra_series(rows, 'w_erank')[1][-1], DIGITS['rank'])}"),
    ]


def section_spectra(rn: Runner) -> Section:
    # Same config as the dragon runs: the cache serves them without extra compute.
    muon, adamw = rn.arm(DRAGON_MUON), rn.arm(DRAGON_ADAMW)
    s = Section("spectra", "Spectra: Muon's updates are flat, AdamW's are dominated by a few directions",
                commands=[rn.command(muon[0]).replace("--preset dragon", "--preset spectra"),
                          rn.command(adamw[0]).replace("--preset dragon", "--preset spectra")])
    series: dict[str, dict[str, Any]] = {"update (applied step)": {}, "weight": {}}
    bands: dict[str, dict[str, Any]] = {"update (applied step)": {}, "weight": {}}
    for name, runs in (("Muon", muon), ("AdamW", adamw)):
        s.table.extend(_spectra_rows(name, runs))
        for panel, stat in (("update (applied step)", "u_erank"), ("weight", "w_erank")):
            curve, band = curves_and_bands({name: runs}, stat)
            series[panel].update(curve)
            bands[panel].update(band)
    ms, as_ = muon[0].data.spectra, adamw[0].data.spectra
    key = next((k for k in sorted(ms) if k.endswith("attn.q_proj.weight|update") and ".1." in k),
               next((k for k in sorted(ms) if k.endswith("|update")), None))
    if key and key in as_:
        snapshots = muon[0].data.spectra_steps
        snap = len(snapshots) // 2
        s.table.append((first_seed(f"matrix shown (singular values: {len(ms[key][0])})", muon), key.split("|")[0]))
        s.figures["spectra_updates"] = charts.update_spectra_figure(
            {"Muon": ms[key][snap], "AdamW": as_[key][snap]},
            title=f"Singular values of one applied update, step {int(snapshots[snap])}\n{key.split('|')[0]}")
        for name, spectra, runs in (("Muon", ms, muon), ("AdamW", as_, adamw)):
            s.table.append((first_seed(f"{name}: that update's s_1 / s_median", runs),
                            fmt(results.top_over_median(spectra[key][snap]), DIGITS["rank"])))
    s.checks.extend(results.spectra_targets([len(r.data.spectra_steps) for r in muon], seeds=seeds_of(muon)))
    s.figures["spectra_erank"] = charts.spectral_series_figure(series, bands=bands,
                                                               title="Effective rank over training")
    return s

