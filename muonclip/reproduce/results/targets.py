"""The targets of every chapter, judged over seeds: met only where every seed meets them.

Each chapter has a ``*_seed_numbers`` function (one seed's run(s) in, a dict of plain numbers
out) and a ``*_targets`` function (those dicts for every seed in, one :class:`Verdict` per
target out). docs/results.md and report.html both print these verdicts, so a target missed on
one seed reads as missed on both pages; the guardrail's per-seed dicts are also the rows of
``docs/data/guardrail-seeds.json``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from ...viz.style import DIGITS, fmt, fmt_pct
from .clips import cap_ratio, first_clip_step, fraction_heads_ever_clipped, heads_ever_clipped, last_clip_step
from .logits import Row, final_max_logit, growth_factor, initial_max_logit, n_heads, peak_max_logit, total_steps
from .losses import final_val_loss, relative_change, tokens_to_reach, val_curve
from .seeds import _finite, spread

__all__ = [
    "Verdict", "verdict", "GROWTH_MIN", "DRAGON_PEAK_MIN", "GUARDRAIL_PEAK_MIN", "CAP_MAX", "CLIPPED_MAX",
    "LOSS_REL_MAX", "LIFECYCLE_LAST_CLIP_MAX", "LIFECYCLE_FINAL_MAX", "SPECTRA_SNAPSHOTS_MIN", "EFFICIENCY_MAX",
    "dragon_seed_numbers", "dragon_targets", "guardrail_seed_numbers", "guardrail_targets",
    "lifecycle_seed_numbers", "lifecycle_targets", "spectra_targets", "efficiency_ratio", "efficiency_targets",
]

# The thresholds (issue #5, and issue #23 for the guardrail's Muon peak: 2.5 tau, not 2, so that
# the unclipped arm clearly passes tau by more than the clip's own cap).
GROWTH_MIN = 10.0             # vanilla Muon's max logit grows at least 10x (peak / step 1)
DRAGON_PEAK_MIN = 3.0         # the dragon's Muon peak, in tau
GUARDRAIL_PEAK_MIN = 2.5      # the guardrail's Muon peak, in tau
CAP_MAX = 1.10                # MuonClip's max logit after the first clip, in tau
CLIPPED_MAX = 0.25            # share of heads ever clipped
LOSS_REL_MAX = 0.01           # MuonClip's final val loss at most 1% above Muon's
LIFECYCLE_LAST_CLIP_MAX = 0.70  # the last clip, as a fraction of training
LIFECYCLE_FINAL_MAX = 0.80    # the final max logit, in tau
SPECTRA_SNAPSHOTS_MIN = 12
EFFICIENCY_MAX = 0.60         # tokens to AdamW's final val loss, as a fraction of AdamW's tokens


@dataclass(frozen=True)
class Verdict:
    """One target over the seeds: ``met`` is True only if every seed meets it, None if no seed
    could be judged; ``missed_seeds`` are the seeds (``run.seed``) that miss it or have no value."""

    name: str
    wanted: str
    measured: str
    met: bool | None
    missed_seeds: tuple[int, ...]
    n_seeds: int

    @property
    def met_text(self) -> str:
        """``yes``, ``no`` (naming the seeds that miss when there are several) or ``n/a``."""
        if self.met is None:
            return "n/a"
        if self.met:
            return "yes"
        if self.n_seeds == 1:
            return "no"
        which = ", ".join(str(s) for s in self.missed_seeds)
        return f"no (seed{'s' if len(self.missed_seeds) > 1 else ''} {which})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "missed_seeds": list(self.missed_seeds), "met_text": self.met_text}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        return cls(d["name"], d["wanted"], d["measured"], d["met"], tuple(d["missed_seeds"]), d["n_seeds"])


def verdict(name: str, wanted: str, values: Sequence[float | int | None], holds: Callable[[Any], bool], *,
            seeds: Sequence[int] | None = None, digits: int = 3, as_text: Callable[[Any], str] | None = None,
            unit: str = "") -> Verdict:
    """Judge per-seed ``values`` against ``holds``: a seed without a value misses; with no value
    on any seed the target is not judged (``met`` None)."""
    sp = spread(values)
    seeds = tuple(range(len(values))) if seeds is None else tuple(seeds)
    if len(seeds) != len(values):
        raise ValueError(f"{len(values)} values for {len(seeds)} seeds")
    if not sp.present:
        return Verdict(name, wanted, "n/a", None, (), len(values))
    missed = tuple(s for s, v in zip(seeds, sp.values, strict=True) if not _finite(v) or not holds(v))
    return Verdict(name, wanted, sp.text(digits, as_text=as_text) + unit, not missed, missed, len(values))


def _col(per_seed: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    return [d[key] for d in per_seed]


def _growth(x: float) -> str:
    return f"{fmt(x, DIGITS['growth'])}x"


# ----------------------------------------------------------------------------- the dragon


def dragon_seed_numbers(muon: Sequence[Row], tau: float) -> dict[str, Any]:
    """Vanilla Muon on the dragon preset, one seed: growth and peak over tau."""
    peak = peak_max_logit(muon)
    return {"growth": growth_factor(muon), "peak": peak, "peak_over_tau": peak / tau}


def dragon_targets(per_seed: Sequence[Mapping[str, Any]], *, seeds: Sequence[int] | None = None) -> list[Verdict]:
    return [
        verdict("dragon: Muon growth >= 10x", f">= {fmt(GROWTH_MIN, 0)}x", _col(per_seed, "growth"),
                lambda v: v >= GROWTH_MIN, seeds=seeds, as_text=_growth),
        verdict("dragon: Muon peak >= 3 tau", f">= {fmt(DRAGON_PEAK_MIN, 0)} tau", _col(per_seed, "peak_over_tau"),
                lambda v: v >= DRAGON_PEAK_MIN, seeds=seeds, digits=2, unit=" tau"),
    ]


# ----------------------------------------------------------------------------- the guardrail


def guardrail_seed_numbers(muon: Sequence[Row], clip: Sequence[Row], tau: float) -> dict[str, Any]:
    """The guardrail's numbers of one seed: vanilla Muon (``muon``) and MuonClip (``clip``) on
    the same preset, seed and Newton-Schulz precision."""
    peak = peak_max_logit(muon)
    val_clip, val_muon = final_val_loss(clip), final_val_loss(muon)
    return {"tau": tau, "muon_initial": initial_max_logit(muon), "muon_peak": peak, "muon_peak_over_tau": peak / tau,
            "muon_growth": growth_factor(muon), "first_clip": first_clip_step(clip),
            "last_clip": last_clip_step(clip), "steps": total_steps(clip), "cap": cap_ratio(clip, tau),
            "heads_ever": len(heads_ever_clipped(clip, tau)), "heads_total": n_heads(clip),
            "fraction_clipped": fraction_heads_ever_clipped(clip, tau),
            "val_muonclip": val_clip, "val_muon": val_muon, "val_rel": relative_change(val_clip, val_muon)}


def guardrail_targets(per_seed: Sequence[Mapping[str, Any]], *, label: str = "guardrail",
                      seeds: Sequence[int] | None = None) -> list[Verdict]:
    """The four K2-like targets (and that Muon grows and the clip fires), for one precision."""
    return [
        verdict(f"{label}: Muon peak >= 2.5 tau", f">= {fmt(GUARDRAIL_PEAK_MIN, 1)} tau",
                _col(per_seed, "muon_peak_over_tau"), lambda v: v >= GUARDRAIL_PEAK_MIN, seeds=seeds, unit=" tau"),
        verdict(f"{label}: Muon growth >= 10x", f">= {fmt(GROWTH_MIN, 0)}x", _col(per_seed, "muon_growth"),
                lambda v: v >= GROWTH_MIN, seeds=seeds, as_text=_growth),
        verdict(f"{label}: clip fired (first clip, step)", "fires", _col(per_seed, "first_clip"), lambda v: True,
                seeds=seeds),
        verdict(f"{label}: cap after the first clip <= 1.10 tau", f"<= {fmt(CAP_MAX, 2)} tau", _col(per_seed, "cap"),
                lambda v: v <= CAP_MAX, seeds=seeds, digits=DIGITS["ratio"], unit=" tau"),
        verdict(f"{label}: heads ever clipped <= 25%", f"<= {fmt_pct(CLIPPED_MAX, 0)}",
                _col(per_seed, "fraction_clipped"), lambda v: v <= CLIPPED_MAX, seeds=seeds, as_text=fmt_pct),
        verdict(f"{label}: final val loss within 1% of Muon (or better)", f"<= {fmt_pct(LOSS_REL_MAX, 0, signed=True)}",
                _col(per_seed, "val_rel"), lambda v: v <= LOSS_REL_MAX, seeds=seeds,
                as_text=lambda v: fmt_pct(v, 2, signed=True)),
    ]


# ----------------------------------------------------------------------------- the lifecycle


def lifecycle_seed_numbers(rows: Sequence[Row], tau: float) -> dict[str, Any]:
    """The lifecycle run of one seed: when the clip was on, where the max logit ended."""
    last, steps = last_clip_step(rows), total_steps(rows)
    return {"tau": tau, "first_clip": first_clip_step(rows), "last_clip": last, "steps": steps,
            "last_clip_fraction": last / steps if last else None, "final_over_tau": final_max_logit(rows) / tau,
            "peak": peak_max_logit(rows), "heads_ever": len(heads_ever_clipped(rows, tau)),
            "heads_total": n_heads(rows), "final_val": final_val_loss(rows)}


def lifecycle_targets(per_seed: Sequence[Mapping[str, Any]], *, seeds: Sequence[int] | None = None) -> list[Verdict]:
    ratio = DIGITS["ratio"]
    return [
        verdict("lifecycle: clip active early (first clip, step)", "fires", _col(per_seed, "first_clip"),
                lambda v: True, seeds=seeds),
        verdict("lifecycle: last clip <= 70% of training", f"<= {fmt(LIFECYCLE_LAST_CLIP_MAX, 2)}",
                _col(per_seed, "last_clip_fraction"), lambda v: v <= LIFECYCLE_LAST_CLIP_MAX, seeds=seeds,
                digits=ratio),
        verdict("lifecycle: final max logit <= 0.8 tau", f"<= {fmt(LIFECYCLE_FINAL_MAX, 2)}",
                _col(per_seed, "final_over_tau"), lambda v: v <= LIFECYCLE_FINAL_MAX, seeds=seeds, digits=ratio),
    ]


# ----------------------------------------------------------------------------- spectra, efficiency


def spectra_targets(snapshots: Sequence[int], *, seeds: Sequence[int] | None = None) -> list[Verdict]:
    """Enough spectra snapshots per run (the count of each seed's Muon run)."""
    return [verdict("spectra: >= 12 snapshots", f">= {SPECTRA_SNAPSHOTS_MIN}", list(snapshots),
                    lambda v: v >= SPECTRA_SNAPSHOTS_MIN, seeds=seeds)]


def efficiency_ratio(rows: Sequence[Row], adamw: Sequence[Row]) -> float | None:
    """Tokens ``rows`` needs to reach AdamW's final val loss (same seed), over AdamW's tokens;
    None if it never does or AdamW never evaluated."""
    target = final_val_loss(adamw)
    if target is None or not adamw:
        return None
    reached = tokens_to_reach(*val_curve(rows), target)
    return None if reached is None else reached / adamw[-1]["tokens"]


def efficiency_targets(ratios: Mapping[str, Sequence[float | None]], *,
                       seeds: Sequence[int] | None = None) -> list[Verdict]:
    """``ratios[optimizer]``: :func:`efficiency_ratio` of each seed."""
    return [verdict(f"efficiency: {opt} tokens-to-AdamW-loss <= 0.6x", f"<= {fmt(EFFICIENCY_MAX, 2)}x", list(r),
                    lambda v: v <= EFFICIENCY_MAX, seeds=seeds, digits=DIGITS["ratio"], unit="x")
            for opt, r in ratios.items()]
