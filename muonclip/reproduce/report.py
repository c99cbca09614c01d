"""``muonclip reproduce``: run the reproduction presets (cached by config hash) and write
``docs/results.md`` with the measured numbers and figures.

Every number in the report is computed from a run's ``metrics.jsonl`` / ``spectra.npz`` by
:mod:`muonclip.reproduce.results`; the figures come from :mod:`muonclip.reproduce.figures`.
Targets are checked here and the ones that were missed are listed with their distance.
"""
from __future__ import annotations

import dataclasses
import math
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import presets as P
from . import results as R

__all__ = ["Run", "Check", "Section", "SECTION_NAMES", "train_command", "build_report", "main"]

SECTION_NAMES = ("dragon", "guardrail", "lifecycle", "spectra", "efficiency")
# Quick mode's tokens-to-target numbers are not meaningful; its runs are smoke tests.
_IGNORED_IN_DIFF = ("time", "tokens_per_s")


@dataclass
class Run:
    label: str
    preset: str
    optimizer: str
    overrides: list[str]
    cfg: Any
    run_dir: Path
    rows: list[dict]

    @property
    def tau(self) -> float:
        return self.cfg.optim.qk_clip_tau


@dataclass
class Check:
    """One target: ``met`` is None when it could not be evaluated."""

    name: str
    target: str
    measured: str
    met: bool | None


@dataclass
class Section:
    name: str
    title: str
    commands: list[str] = field(default_factory=list)
    table: list[tuple[str, str]] = field(default_factory=list)  # (quantity, value)
    extra_md: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # file stem -> Figure
    checks: list[Check] = field(default_factory=list)
    notes_if_missed: str = ""


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if abs(x) >= 1000 or (abs(x) < 1e-3 and x != 0):
            return f"{x:.3g}"
        return f"{x:.{nd}f}"
    return str(x)


def train_command(preset: str, optimizer: str, overrides: list[str], out: str) -> str:
    """The exact ``muonclip train`` command that reproduces one run."""
    parts = ["python", "-m", "muonclip", "train", "--preset", preset, "--optimizer", optimizer]
    for o in overrides:
        parts += ["--set", o]
    parts += ["--out", out]
    return " ".join(shlex.quote(p) for p in parts)


class _Runner:
    def __init__(self, cache: Path, quick: bool, log: Callable[[str], None]):
        self.cache, self.quick, self.log = cache, quick, log
        self.runs: dict[str, Run] = {}

    def get(self, label: str, preset: str, optimizer: str, overrides: list[str] | None = None,
            *, quick_key: str | None = None) -> Run:
        from ..lab.config import apply_overrides, get_preset
        from ..lab.metrics import read_metrics
        from .runner import ensure_run

        overrides = list(overrides or [])
        if self.quick:
            overrides = overrides + P.QUICK_OVERRIDES[quick_key or preset]
            label = f"quick-{label}"
        if label in self.runs:
            return self.runs[label]
        cfg = apply_overrides(get_preset(preset), [f"optim.optimizer={optimizer}", *overrides])
        t0 = time.perf_counter()
        self.log(f"[reproduce] {label}: {preset} / {optimizer} {' '.join(overrides)}")
        run_dir = ensure_run(cfg, self.cache, label, progress=False, log=self.log)
        rows = read_metrics(run_dir / "metrics.jsonl")
        self.log(f"[reproduce] {label}: done in {time.perf_counter() - t0:.0f} s ({len(rows)} steps)")
        run = Run(label, preset, optimizer, overrides, cfg, run_dir, rows)
        self.runs[label] = run
        return run

    def command(self, run: Run) -> str:
        return train_command(run.preset, run.optimizer, run.overrides, f"runs/{run.label}")


def _max_logit_curve(run: Run) -> tuple[list, list]:
    return R.series(run.rows, "max_logit")


def _per_head(run: Run) -> np.ndarray:
    return np.array([r["max_logits"] for r in run.rows], dtype=float)


def _first_cross(rows: list[dict], level: float) -> int | None:
    return next((int(r["step"]) for r in rows if float(r["max_logit"]) >= level), None)


# ----------------------------------------------------------------------------- sections


def section_dragon(rn: _Runner) -> Section:
    from . import figures as F

    muon = rn.get("dragon-muon", "dragon", "muon")
    adamw = rn.get("dragon-adamw", "dragon", "adamw")
    tau = muon.tau
    s = Section("dragon", "The dragon: vanilla Muon's max attention logit explodes",
                commands=[rn.command(muon), rn.command(adamw)])
    g = R.growth_factor(muon.rows)
    peak = R.peak_max_logit(muon.rows)
    _, layers = R.layer_max_series(muon.rows)
    layer_peaks = [max(v) for v in layers]
    for run in (muon, adamw):
        name = "Muon" if run is muon else "AdamW"
        s.table += [
            (f"{name}: max logit at step 1 / peak / final",
             f"{_fmt(R.initial_max_logit(run.rows), 2)} / {_fmt(R.peak_max_logit(run.rows), 1)} / "
             f"{_fmt(float(run.rows[-1]['max_logit']), 1)}"),
            (f"{name}: growth factor (peak / step 1)", f"{_fmt(R.growth_factor(run.rows), 1)}x"),
            (f"{name}: peak / tau", _fmt(R.peak_max_logit(run.rows) / tau, 2)),
            (f"{name}: first step at 3 tau", _fmt(_first_cross(run.rows, 3 * tau))),
            (f"{name}: per-layer peak max logit (layer 0..)",
             ", ".join(_fmt(max(v), 1) for v in R.layer_max_series(run.rows)[1])),
            (f"{name}: final val loss", _fmt(R.final_val_loss(run.rows), 4)),
            (f"{name}: loss spikes (> 0.5 nats above the median of the previous 20 steps) / largest rise",
             f"{R.loss_spikes(run.rows)} / {_fmt(R.max_loss_jump(run.rows), 3)}"),
        ]
    s.table.append(("tau (this scale)", _fmt(tau, 0)))
    s.checks += [
        Check("dragon: Muon growth >= 10x", ">= 10x", f"{g:.1f}x", g >= 10),
        Check("dragon: Muon peak >= 3 tau", f">= {3 * tau:g}", f"{peak:.1f} ({peak / tau:.2f} tau)", peak >= 3 * tau),
    ]
    s.extra_md.append(
        f"Layer with the largest Muon max logit: layer {int(np.argmax(layer_peaks))} "
        f"(the facts-file probe saw the deepest layers grow most; Wortsman et al. saw layer 0)."
    )
    s.figures["dragon_max_logit"] = F.max_logit_figure(
        {"Muon": _max_logit_curve(muon), "AdamW": _max_logit_curve(adamw)}, tau=tau,
        title="Max attention logit, dragon preset (no QK-norm, no weight decay)")
    s.figures["dragon_heads"] = F.layer_heads_figure(
        [r["step"] for r in muon.rows], _per_head(muon), tau=tau, title="Vanilla Muon: max logit of every head")
    return s


def section_guardrail(rn: _Runner) -> Section:
    from . import figures as F

    muon = rn.get("dragon-muon", "dragon", "muon")
    clip = rn.get("guardrail", "dragon", "muonclip", quick_key="guardrail")
    adamw = rn.get("dragon-adamw", "dragon", "adamw")
    tau = clip.tau
    s = Section("guardrail", "The guardrail: MuonClip holds the max logit at tau", commands=[rn.command(clip)])
    first, last = R.first_clip_step(clip.rows), R.last_clip_step(clip.rows)
    slack = R.clip_slack(clip.rows, tau)
    ever = R.heads_ever_clipped(clip.rows, tau)
    frac = R.fraction_heads_ever_clipped(clip.rows, tau)
    vm, vc = R.final_val_loss(muon.rows), R.final_val_loss(clip.rows)
    rel = (vc - vm) / vm if vm and vc else None
    steps_clipped = len(R.clip_steps(clip.rows))
    s.table += [
        ("tau", _fmt(tau, 0)),
        ("first clip / last clip (step)", f"{_fmt(first)} / {_fmt(last)} of {len(clip.rows)}"),
        ("steps with a clip", _fmt(steps_clipped)),
        ("measured one-step slack: max over steps after the first clip of max_logit/tau - 1", _fmt(slack, 3)),
        ("peak max logit after the first clip",
         _fmt(max((float(r["max_logit"]) for r in clip.rows if first and r["step"] > first), default=None), 1)),
        ("heads ever clipped", f"{len(ever)} / {R.n_heads(clip.rows)} ({100 * frac:.1f}%)"),
        ("which heads (layer, head)", ", ".join(f"({a},{b})" for a, b in sorted(ever)) or "none"
         if len(ever) <= R.n_heads(clip.rows) // 2 else f"all but {R.n_heads(clip.rows) - len(ever)}"),
        ("final val loss: MuonClip / Muon / AdamW",
         f"{_fmt(vc, 4)} / {_fmt(vm, 4)} / {_fmt(R.final_val_loss(adamw.rows), 4)}"),
        ("MuonClip vs Muon final val loss", f"{100 * rel:+.2f}%" if rel is not None else "n/a"),
        ("loss spikes (> 0.5 nats above the previous-20-step median): MuonClip / Muon",
         f"{R.loss_spikes(clip.rows)} / {R.loss_spikes(muon.rows)}"),
    ]
    # Why the clipped set is not sparse here: how many heads of *vanilla Muon* pass tau, and
    # pass peak/3 (the largest tau for which Muon's peak is still >= 3 tau).
    muon_peaks = _per_head(muon).max(axis=0)
    top = float(muon_peaks.max())
    s.table.append(("vanilla Muon: heads whose peak max logit exceeds tau / exceeds peak/3 "
                    f"(= {top / 3:.0f}, the largest tau with Muon peak >= 3 tau)",
                    f"{int((muon_peaks > tau).sum())} / {int((muon_peaks > top / 3).sum())} of {muon_peaks.size}"))
    # For contrast: the same model and tau with weight decay 0.1 and a cosine schedule (the
    # efficiency preset's MuonClip run) -- the "few rogue heads" picture.
    lr_eff = P.EFFICIENCY_CLIP_LR
    eff = rn.get(P.efficiency_label("muonclip", lr_eff), "efficiency", "muonclip", P.lr_override("muonclip", lr_eff))
    eff_ever = R.heads_ever_clipped(eff.rows, eff.tau)
    s.table.append(("for contrast, heads ever clipped with weight decay 0.1 + cosine lr (efficiency preset, "
                    f"MuonClip lr {lr_eff:g}, tau {eff.tau:g})",
                    f"{len(eff_ever)} / {R.n_heads(eff.rows)} ({100 * len(eff_ever) / R.n_heads(eff.rows):.1f}%)"))
    s.checks += [
        Check("guardrail: clip fired", "fires", _fmt(first), first is not None),
        Check("guardrail: heads ever clipped <= 25%", "<= 25%", f"{100 * frac:.1f}%", frac <= 0.25),
        Check("guardrail: final val loss within 1% of Muon (or better)", "<= +1%",
              f"{100 * rel:+.2f}%" if rel is not None else "n/a", None if rel is None else rel <= 0.01),
    ]
    s.extra_md.append(
        "The metrics row's max logit comes from the forward pass *before* that step's update and clip, "
        "so after the first clip every row measures what one optimizer step does to heads that were "
        "just clipped to tau: that is the slack above. The clip itself lands exactly on tau "
        "(tested in `tests/optim`)."
    )
    s.figures["guardrail_max_logit"] = F.max_logit_figure(
        {"Muon": _max_logit_curve(muon), "MuonClip": _max_logit_curve(clip), "AdamW": _max_logit_curve(adamw)},
        tau=tau, title=f"Guardrail: MuonClip (tau = {tau:g}) vs vanilla Muon")
    s.figures["guardrail_heads"] = F.layer_heads_figure(
        [r["step"] for r in clip.rows], _per_head(clip), tau=tau, title="MuonClip: max logit of every head")
    return s


def section_lifecycle(rn: _Runner) -> Section:
    from . import figures as F

    run = rn.get("lifecycle", "lifecycle", "muonclip")
    tau = run.tau
    n = len(run.rows)
    first, last = R.first_clip_step(run.rows), R.last_clip_step(run.rows)
    final = float(run.rows[-1]["max_logit"])
    s = Section("lifecycle", "The lifecycle: clipping switches itself off", commands=[rn.command(run)])
    c = run.cfg
    s.table += [
        ("model", f"{c.model.n_layer} layers x {c.model.n_head} heads of {c.model.head_size}, d_model "
                  f"{c.model.d_model}, T {c.model.seq_len}, batch {c.run.batch_size}, {c.run.steps} steps"),
        ("schedule", f"{c.schedule.kind}, warmup {c.schedule.warmup_steps}, min lr ratio {c.schedule.min_lr_ratio:g}; "
                     f"weight decay {c.optim.weight_decay:g}; lr {c.optim.lr:g}"),
        ("tau", _fmt(tau, 0)),
        ("first clip / last clip (step)", f"{_fmt(first)} / {_fmt(last)} of {n}"),
        ("last clip as a fraction of training", _fmt(last / n if last else None, 3)),
        ("peak max logit", _fmt(R.peak_max_logit(run.rows), 1)),
        ("final max logit / tau", _fmt(final / tau, 3)),
        ("heads ever clipped", f"{len(R.heads_ever_clipped(run.rows, tau))} / {R.n_heads(run.rows)}"),
        ("measured slack after the first clip", _fmt(R.clip_slack(run.rows, tau), 3)),
        ("final val loss", _fmt(R.final_val_loss(run.rows), 4)),
    ]
    s.checks += [
        Check("lifecycle: clip active early", "fires", _fmt(first), first is not None),
        Check("lifecycle: last clip <= 70% of training", "<= 0.70",
              _fmt(last / n if last else None, 3), None if last is None else last / n <= 0.70),
        Check("lifecycle: final max logit <= 0.8 tau", "<= 0.80", f"{final / tau:.3f}", final / tau <= 0.8),
    ]
    if not rn.quick:  # the same recipe on the full 8-head model, as a contrast
        full = rn.get("lifecycle-full-model", "lifecycle", "muonclip", P.LIFECYCLE_FULL_MODEL_OVERRIDES)
        fl, nf = R.last_clip_step(full.rows), len(full.rows)
        ff = float(full.rows[-1]["max_logit"]) / full.tau
        s.commands.append(rn.command(full))
        s.table += [
            ("contrast: same recipe on the full model (8 heads of 32, tau "
             f"{full.tau:g}, {nf} steps): first / last clip", f"{_fmt(R.first_clip_step(full.rows))} / {_fmt(fl)}"),
            ("contrast: last clip as a fraction / final max logit / tau",
             f"{_fmt(fl / nf if fl else None, 3)} / {ff:.3f}"),
            ("contrast: heads ever clipped",
             f"{len(R.heads_ever_clipped(full.rows, full.tau))} / {R.n_heads(full.rows)}"),
        ]
    s.figures["lifecycle"] = F.lifecycle_figure(
        [r["step"] for r in run.rows], [float(r["max_logit"]) for r in run.rows],
        [int(r["n_clipped"]) for r in run.rows], [float(r["lr"]) for r in run.rows], tau=tau,
        title="MuonClip lifecycle (cf. K2 Fig. 2 right)")
    return s


def _load_spectra(run: Run) -> dict[str, np.ndarray]:
    path = run.run_dir / "spectra.npz"
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def section_spectra(rn: _Runner) -> Section:
    from . import figures as F

    # Same config as the dragon runs: the cache serves them without extra compute.
    muon = rn.get("dragon-muon", "dragon", "muon")
    adamw = rn.get("dragon-adamw", "dragon", "adamw")
    s = Section("spectra", "Spectra: Muon's updates are flat, AdamW's are dominated by a few directions",
                commands=[rn.command(muon).replace("--preset dragon", "--preset spectra"),
                          rn.command(adamw).replace("--preset dragon", "--preset spectra")])
    series: dict[str, dict[str, Any]] = {"update (applied step)": {}, "weight": {}}
    for name, run in (("Muon", muon), ("AdamW", adamw)):
        steps, u = R.mean_spectra_series(run.rows, "u_erank")
        _, w = R.mean_spectra_series(run.rows, "w_erank")
        _, ue = R.mean_spectra_series(run.rows, "u_entropy")
        series["update (applied step)"][name] = (steps, u)
        series["weight"][name] = (steps, w)
        if u:
            later = u[1:] or u
            s.table += [
                (f"{name}: snapshots", _fmt(len(steps))),
                (f"{name}: update effective rank, mean over matrices and snapshots after step 1",
                 _fmt(sum(later) / len(later), 1)),
                (f"{name}: update spectral entropy (nats), same mean",
                 _fmt(sum(ue[1:] or ue) / len(ue[1:] or ue), 3)),
                (f"{name}: weight effective rank at step {steps[0]} / at the end", f"{_fmt(w[0], 1)} / {_fmt(w[-1], 1)}"),
            ]
    ms, as_ = _load_spectra(muon), _load_spectra(adamw)
    key = next((k for k in sorted(ms) if k.endswith("attn.q_proj.weight|update") and ".1." in k),
               next((k for k in sorted(ms) if k.endswith("|update")), None))
    if key and key in as_:
        k = len(ms[key][0])
        snap = len(ms["steps"]) // 2
        step = int(ms["steps"][snap])
        s.table.append((f"matrix shown (singular values: {k})", key.split("|")[0]))
        s.figures["spectra_updates"] = F.update_spectra_figure(
            {"Muon": ms[key][snap], "AdamW": as_[key][snap]},
            title=f"Singular values of one applied update, step {step}\n{key.split('|')[0]}")
        for name, z in (("Muon", ms), ("AdamW", as_)):
            sv = z[key][snap]
            s.table.append((f"{name}: that update's s_1 / s_median", _fmt(float(sv[0] / np.median(sv)), 1)))
        s.checks.append(Check("spectra: >= 12 snapshots", ">= 12", _fmt(len(ms["steps"])), len(ms["steps"]) >= 12))
    s.figures["spectra_erank"] = F.spectral_series_figure(series, title="Effective rank over training")
    return s


def section_efficiency(rn: _Runner) -> Section:
    from . import figures as F

    s = Section("efficiency", "Token efficiency: tokens to reach AdamW's final validation loss")
    sweep_rows: list[tuple[str, float, float | None]] = []
    best: dict[str, Run] = {}
    for opt, lrs in P.EFFICIENCY_LRS.items():
        if rn.quick:  # quick: only the chosen lr
            lrs = (P.EFFICIENCY_BEST[opt],)
        runs = []
        for lr in lrs:
            run = rn.get(P.efficiency_label(opt, lr), "efficiency", opt, P.lr_override(opt, lr))
            v = R.final_val_loss(run.rows)
            sweep_rows.append((opt, lr, v))
            runs.append((v if v is not None and math.isfinite(v) else math.inf, lr, run))
        chosen = [r for r in runs if r[1] == P.EFFICIENCY_BEST[opt]]
        best_by_sweep = min(runs, key=lambda t: t[0])
        best[opt] = (chosen or [best_by_sweep])[0][2]
        if chosen and best_by_sweep[1] != P.EFFICIENCY_BEST[opt]:
            s.extra_md.append(f"Note: for {opt} the sweep's best lr is now {best_by_sweep[1]:g}, "
                              f"not the preset's EFFICIENCY_BEST {P.EFFICIENCY_BEST[opt]:g}.")
    s.commands = [rn.command(r) for r in best.values()]
    target = R.final_val_loss(best["adamw"].rows)
    curves, marks = {}, {}
    total_tokens = best["adamw"].rows[-1]["tokens"]
    for opt, run in best.items():
        xs, ys = R.val_curve(run.rows)
        curves[f"{opt} (lr {P.EFFICIENCY_BEST[opt]:g})"] = (xs, ys)
        t = R.tokens_to_reach(xs, ys, target) if target is not None else None
        marks[f"{opt} (lr {P.EFFICIENCY_BEST[opt]:g})"] = t
        if opt != "adamw":
            ratio = t / total_tokens if t is not None else None
            s.table.append((f"{opt}: tokens to reach AdamW's final val loss",
                            f"{_fmt(t and int(round(t)))} of {total_tokens} ({_fmt(ratio, 3)}x)"))
            s.checks.append(Check(f"efficiency: {opt} tokens-to-AdamW-loss <= 0.6x", "<= 0.60x",
                                  f"{_fmt(ratio, 3)}x" if ratio is not None else "not reached",
                                  None if ratio is None else ratio <= 0.6))
    s.table.insert(0, ("AdamW final val loss (the target)", _fmt(target, 4)))
    mc = best["muonclip"]
    s.table.append(("muonclip: steps with a clip / heads ever clipped in that run (tau "
                    f"{mc.tau:g}; with no clip it is the Muon run step for step)",
                    f"{len(R.clip_steps(mc.rows))} / {len(R.heads_ever_clipped(mc.rows, mc.tau))}"))
    for opt, run in best.items():
        s.table.append((f"{opt}: final val loss", _fmt(R.final_val_loss(run.rows), 4)))
    sweep_md = ["| optimizer | lr | final val loss |", "|---|---|---|"]
    sweep_md += [f"| {o} | {lr:g} | {_fmt(v, 4)} |" for o, lr, v in sweep_rows]
    s.extra_md.insert(0, "LR sweep (same preset, same seed; AdamW sweeps `optim.adamw_lr`, Muon/MuonClip "
                         "sweep `optim.lr` of the hidden matrices with the AdamW groups at 3e-3):\n\n"
                      + "\n".join(sweep_md))
    s.figures["efficiency_val"] = F.val_curves_figure(curves, target=target, marks=marks,
                                                      title="Validation loss vs tokens (best lr each)")
    sweeps: dict[str, tuple[list, list]] = {}
    for o, lr, v in sweep_rows:
        if v is not None:
            sweeps.setdefault(o, ([], []))
            sweeps[o][0].append(lr)
            sweeps[o][1].append(v)
    if not rn.quick:
        s.figures["efficiency_sweep"] = F.lr_sweep_figure(sweeps, title="LR sweep: final validation loss")
    return s


SECTIONS: dict[str, Callable[[_Runner], Section]] = {
    "dragon": section_dragon,
    "guardrail": section_guardrail,
    "lifecycle": section_lifecycle,
    "spectra": section_spectra,
    "efficiency": section_efficiency,
}

# What was tried when a target is missed (text only: every number is in the tables).
NOTES = {
    "guardrail": "Without weight decay every head's logit grows at a similar rate (see the per-head figure "
                 "of vanilla Muon), so once the max passes 3 tau most heads have passed tau too: the clipped "
                 "set cannot be sparse in a run that must also make Muon reach 3 tau. We used 8 heads per "
                 "layer (instead of the probe's 4) and tried weight decay 0.1 and lr 0.04 in short probes; the "
                 "heads still grew together over those probes. The sparse picture does appear with weight "
                 "decay and a decaying lr (the contrast row of the guardrail table), where the dragon does not.",
    "lifecycle": "Weight decay plus a decaying lr is what switches the clip off: weight decay keeps shrinking "
                 "W_q and W_k while the lr decay weakens the updates that push logits up. On the full 8-head "
                 "model the runs we could afford (240-300 steps; weight decay 0.1, 0.2 and 0.3, lr 0.03 and 0.04) "
                 "either clipped until late in training or ended above 0.8 tau (the contrast rows show the best "
                 "of them); the preset therefore uses a smaller model trained for 400 steps, where the decay "
                 "phase is long enough.",
    "efficiency": "Runs are short (a few hundred steps) and byte-level; the advantage is measured at the "
                  "cosine schedule's end, where all optimizers have annealed.",
}


# ----------------------------------------------------------------------------- determinism


def determinism_check(log: Callable[[str], None]) -> tuple[str, float, list[str]]:
    """Train a short MuonClip run twice from scratch; return (label, max abs difference over
    all logged numbers except timings, keys compared)."""
    from ..lab.config import apply_overrides, get_preset
    from ..lab.metrics import read_metrics
    from ..lab.train import train

    # The quick guardrail (small model, 100 steps): cheap, and the clip fires in it from step ~24.
    cfg = apply_overrides(get_preset("guardrail"), P.QUICK_OVERRIDES["guardrail"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            log(f"[reproduce] determinism check: quick guardrail, run {i + 1} of 2")
            train(cfg, Path(tmp) / f"r{i}", progress=False, log=log)
            rows.append(read_metrics(Path(tmp) / f"r{i}" / "metrics.jsonl"))
    diff, keys = 0.0, set()

    def walk(a: Any, b: Any) -> None:
        nonlocal diff
        if isinstance(a, dict):
            for k in a:
                if k not in _IGNORED_IN_DIFF:
                    walk(a[k], b[k])
        elif isinstance(a, list):
            for x, y in zip(a, b):
                walk(x, y)
        elif isinstance(a, (int, float)):
            diff = max(diff, abs(float(a) - float(b)))

    for ra, rb in zip(*rows):
        keys |= {k for k in ra if k not in _IGNORED_IN_DIFF}
        walk(ra, rb)
    if len(rows[0]) != len(rows[1]):
        diff = math.inf
    n_clips = sum(1 for r in rows[0] if r.get("n_clipped"))
    return (f"the quick guardrail ({len(rows[0])} steps on the smaller model, {n_clips} of them with a clip)",
            diff, sorted(keys))


# ----------------------------------------------------------------------------- markdown


def _sae_section(rn: "_Runner") -> str:
    """Adam vs Muon SAEs (issue #8) trained on the guardrail run's residual stream, cached in
    the reproduce cache by run and SAE config; every number comes from their metrics."""
    from ..sae import DEFAULT, QUICK
    from ..sae.compare import compare_markdown, load_compare, run_compare
    from ..sae.config import sae_config_hash

    run = rn.get("guardrail", "dragon", "muonclip", quick_key="guardrail")
    cfg = QUICK if rn.quick else DEFAULT
    out = rn.cache / f"sae-{run.run_dir.name}-{sae_config_hash(cfg)}"
    if (out / "compare.json").exists():
        rn.log(f"[reproduce] reusing cached SAE comparison {out.name}")
        result = load_compare(out)
    else:
        rn.log(f"[reproduce] training Adam and Muon SAEs on {run.label}")
        result = run_compare(run.run_dir, cfg, out, progress=False, log=rn.log, tensorboard=False)
    flags = " --quick" if rn.quick else ""
    return "\n".join([
        "```bash", f"python -m muonclip sae --run runs/{run.label} --preset compare{flags} --out runs/sae-compare",
        "```", "", compare_markdown(result)])


def build_report(sections: list[Section], *, quick: bool, cache: Path, threads: int, fig_rel: str,
                 determinism: tuple[str, float, list[str]] | None, elapsed: float, sae_md: str | None) -> str:
    import torch

    lines = ["# MuonClip at CPU scale: measured results", ""]
    if quick:
        lines += ["> **Quick mode**: shortened runs (`QUICK_OVERRIDES`), smoke-test only. The targets below are "
                  "for the full presets; quick numbers are not expected to meet them.", ""]
    lines += [
        "Generated by `python -m muonclip reproduce"
        + (" --quick" if quick else "") + "`. Every number below is computed from the runs' "
        "`metrics.jsonl` / `spectra.npz` by `muonclip.reproduce.results`; nothing is typed in by hand. "
        "Presets live in `muonclip/reproduce/presets.py` (seed "
        f"{P.SEED}; run `python -m muonclip presets` for their descriptions).",
        "",
        f"Environment: torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, torch threads = {threads}. Wall time of this report: {elapsed / 60:.1f} min "
        f"(cached runs are reused by config hash).",
        "",
        "## Targets",
        "",
        "| target | wanted | measured | met |",
        "|---|---|---|---|",
    ]
    for sec in sections:
        for c in sec.checks:
            lines.append(f"| {c.name} | {c.target} | {c.measured} | "
                         f"{'yes' if c.met else ('n/a' if c.met is None else '**no**')} |")
    lines.append("")
    for sec in sections:
        lines += [f"## {sec.title}", "", "```bash", *sec.commands, "```", "",
                  "| quantity | measured |", "|---|---|"]
        lines += [f"| {q} | {v} |" for q, v in sec.table]
        lines.append("")
        for md in sec.extra_md:
            lines += [md, ""]
        for stem in sec.figures:
            lines += [f"![{stem}]({fig_rel}/{stem}.png)", ""]
    missed = [(sec, c) for sec in sections for c in sec.checks if c.met is False]
    lines += ["## What did not reproduce, and why we think so", ""]
    if not missed:
        lines += ["Every target above was met by these runs.", ""]
    for sec, c in missed:
        lines.append(f"- **{c.name}**: wanted {c.target}, measured {c.measured}. {NOTES.get(sec.name, '')}")
    if missed:
        lines.append("")
    lines += ["## Reproducibility", ""]
    lines += [
        "Runs are deterministic given the seed on the same machine, torch version and thread count: the "
        "data order and the initialisation come from `run.seed`, and the CPU kernels used are deterministic "
        "at a fixed thread count. A different thread count or CPU can change float summation order, so "
        "fresh runs elsewhere reproduce the *direction and rough size* of every effect, not the digits.",
    ]
    if determinism is not None:
        label, diff, keys = determinism
        lines += ["", f"Check made by this report: {label} trained twice from scratch; the largest absolute "
                      f"difference over every logged number ({', '.join(keys)}) except timings is "
                      f"**{_fmt(diff)}**. Tolerance for a fresh run on this machine: exact (0); elsewhere, "
                      "expect the numbers to move but the targets' verdicts to hold."]
    lines.append("")
    if sae_md:
        lines += ["## SAE comparison: Adam vs Muon (issue #8)", "", sae_md, ""]
    return "\n".join(lines)


def main(*, only: list[str] | None = None, quick: bool = False, cache: str | Path = "runs/reproduce",
         out: str | Path = "docs", threads: int = 1, determinism: bool = True,
         log: Callable[[str], None] | None = None) -> Path:
    """Run the presets and write ``OUT/results.md`` plus ``OUT/figures/*.png``. Returns the path."""
    import matplotlib.pyplot as plt
    import torch

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if threads:
        torch.set_num_threads(threads)
    names = list(only or SECTION_NAMES)
    bad = [n for n in names if n not in SECTIONS]
    if bad:
        raise ValueError(f"unknown section {bad[0]!r}; choose from {', '.join(SECTION_NAMES)}")
    t0 = time.perf_counter()
    rn = _Runner(Path(cache), quick, log)
    sections = [SECTIONS[n](rn) for n in names]
    sae_md = _sae_section(rn) if only is None else None
    det = determinism_check(log) if determinism else None
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for sec in sections:
        for stem, fig in sec.figures.items():
            fig.savefig(fig_dir / f"{stem}.png", dpi=110)
            plt.close(fig)
    text = build_report(sections, quick=quick, cache=Path(cache), threads=torch.get_num_threads(),
                        fig_rel="figures", determinism=det, elapsed=time.perf_counter() - t0,
                        sae_md=sae_md)
    path = out / "results.md"
    path.write_text(text + "\n", encoding="utf-8")
    log(f"[reproduce] wrote {path}")
    return path
