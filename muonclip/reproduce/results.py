"""Every number the reports quote, defined once as a pure function of run data.

``docs/results.md`` (:mod:`muonclip.reproduce.report`) and the story's ``report.html``
(:mod:`muonclip.story`) both print from here. No I/O, no torch: the functions take metric
rows (``metrics.jsonl`` row dicts, see :mod:`muonclip.lab.metrics`), singular-value arrays
(``spectra.npz``, see :mod:`muonclip.lab.rundir`) or the trade-off result, and return plain
values, so each one is unit-tested on synthetic data.

A note on timing: a row's ``max_logit`` / ``max_logits`` come from that step's forward
pass, i.e. from the weights *before* that step's update and QK-Clip. The clip at step t
uses exactly these values (``S_h``), so the heads clipped at step t are the ones whose
row value exceeds tau, and ``max_logit`` of every later row measures the one-step slack
of the guardrail (the update of step t-1 acting on weights clipped at step t-1).

The module is over 400 lines on purpose: one home for every reported quantity is the point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..viz.style import fmt, fmt_g, fmt_pct

__all__ = [
    "series", "is_finite_run", "total_steps",
    "initial_max_logit", "peak_max_logit", "peak_step", "final_max_logit", "growth_factor", "first_step_above",
    "clip_steps", "first_clip_step", "last_clip_step", "n_heads", "heads_above", "heads_ever_clipped",
    "fraction_heads_ever_clipped", "head_peaks", "heads_peak_above", "max_after_first_clip", "clip_slack",
    "ClipPhases", "clip_phases", "rogue_pick",
    "val_curve", "final_val_loss", "best_val_loss", "final_train_loss", "relative_change", "tokens_to_reach",
    "loss_spikes", "max_loss_jump", "smooth",
    "layer_max_series", "spectra_series", "mean_spectra_series", "mean_after_first",
    "normalized_entropy", "entropy_over_time", "most_distorted_param", "top_over_median",
    "tradeoff_summary",
]

Row = Mapping[str, Any]


def _num(x: Any) -> float:
    """Row values may be the strings 'nan' / 'inf' (JSON has no non-finite floats)."""
    return float(x)


def _clipped(row: Row) -> bool:
    return int(row.get("n_clipped", 0) or 0) > 0


# ----------------------------------------------------------------------------- rows and logits


def series(rows: Sequence[Row], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of every row that has ``key`` (e.g. ``series(rows, "val_loss", "tokens")``)."""
    xs, ys = [], []
    for r in rows:
        if key in r and r[key] is not None:
            xs.append(r[x])
            ys.append(_num(r[key]))
    return xs, ys


def is_finite_run(rows: Sequence[Row]) -> bool:
    """True when every training loss is finite."""
    return all(math.isfinite(_num(r["loss"])) for r in rows)


def total_steps(rows: Sequence[Row]) -> int:
    """Length of the run in optimizer steps: the last row's step (0 for no rows)."""
    return int(rows[-1]["step"]) if rows else 0


def initial_max_logit(rows: Sequence[Row]) -> float:
    """Max attention logit of the first step's forward (the freshly initialised model)."""
    if not rows:
        raise ValueError("no metrics rows")
    return _num(rows[0]["max_logit"])


def peak_max_logit(rows: Sequence[Row]) -> float:
    """Largest max attention logit over the run."""
    if not rows:
        raise ValueError("no metrics rows")
    return max(_num(r["max_logit"]) for r in rows)


def peak_step(rows: Sequence[Row]) -> int:
    """Step of the largest max attention logit (the first one on a tie)."""
    peak = peak_max_logit(rows)
    return next(int(r["step"]) for r in rows if _num(r["max_logit"]) == peak)


def final_max_logit(rows: Sequence[Row]) -> float:
    """Max attention logit of the last step's forward."""
    if not rows:
        raise ValueError("no metrics rows")
    return _num(rows[-1]["max_logit"])


def growth_factor(rows: Sequence[Row], *, at: str = "peak") -> float:
    """How far the max logit grew: the ``peak`` (default) or ``final`` max logit divided by
    the max logit of step 1 (:func:`initial_max_logit`).

    The one definition of growth in both reports (the story used final / mean of the
    first five steps; it now quotes this one)."""
    if at not in ("peak", "final"):
        raise ValueError("at must be 'peak' or 'final'")
    top = peak_max_logit(rows) if at == "peak" else final_max_logit(rows)
    return top / initial_max_logit(rows)


def first_step_above(rows: Sequence[Row], level: float) -> int | None:
    """First step whose max logit exceeds ``level`` (strictly, like the clip's S > tau); None if never.

    One definition for "first step above tau" (story) and "first step at 3 tau" (results.md,
    which used ``>=``: the two differ only when a logit equals the level exactly)."""
    return next((int(r["step"]) for r in rows if _num(r["max_logit"]) > level), None)


def clip_steps(rows: Sequence[Row]) -> list[int]:
    """Steps at which QK-Clip rescaled at least one head."""
    return [int(r["step"]) for r in rows if _clipped(r)]


def first_clip_step(rows: Sequence[Row]) -> int | None:
    """First step with a clip (None if the clip never fired)."""
    steps = clip_steps(rows)
    return steps[0] if steps else None


def last_clip_step(rows: Sequence[Row]) -> int | None:
    """Last step with a clip (None if the clip never fired)."""
    steps = clip_steps(rows)
    return steps[-1] if steps else None


def n_heads(rows: Sequence[Row]) -> int:
    """Total number of attention heads (layers x heads) in the run."""
    return sum(len(layer) for layer in rows[0]["max_logits"]) if rows else 0


def heads_above(row: Row, tau: float) -> set[tuple[int, int]]:
    """``(layer, head)`` pairs of this row whose max logit exceeds ``tau``: for a MuonClip
    run these are exactly the heads clipped at this step."""
    return {(li, hi) for li, layer in enumerate(row["max_logits"]) for hi, v in enumerate(layer)
            if _num(v) > tau}


def heads_ever_clipped(rows: Sequence[Row], tau: float) -> set[tuple[int, int]]:
    """Heads clipped at least once: the heads above ``tau`` in the rows where the clip fired
    (``n_clipped > 0``).

    The one definition in both reports (the story counted heads that ever passed tau in any
    row; in a MuonClip run that is the same set, and a run without the clip now has none)."""
    out: set[tuple[int, int]] = set()
    for r in rows:
        if _clipped(r):
            out |= heads_above(r, tau)
    return out


def fraction_heads_ever_clipped(rows: Sequence[Row], tau: float) -> float:
    """Share of all heads that were clipped at least once."""
    return len(heads_ever_clipped(rows, tau)) / n_heads(rows)


def head_peaks(rows: Sequence[Row]) -> np.ndarray:
    """Each head's largest max logit over the run, shape [layers, heads]."""
    return np.array([r["max_logits"] for r in rows], dtype=np.float64).max(axis=0)


def heads_peak_above(rows: Sequence[Row], level: float) -> int:
    """How many heads have a peak max logit over the run above ``level``."""
    return int((head_peaks(rows) > level).sum())


def max_after_first_clip(rows: Sequence[Row]) -> float | None:
    """Largest max logit over the steps *after* the first clip (None if the clip never fired
    or nothing follows it). The first clip's own row is excluded: it is the logit that made
    the clip fire. (The story included it; it now quotes this one.)"""
    first = first_clip_step(rows)
    after = [_num(r["max_logit"]) for r in rows if first is not None and int(r["step"]) > first]
    return max(after) if after else None


def clip_slack(rows: Sequence[Row], tau: float) -> float | None:
    """``max_after_first_clip / tau - 1``: how far one step's update can push a clipped head
    past tau before the next clip. Negative means the max logit stayed strictly below tau.
    None if the clip never fired."""
    after = max_after_first_clip(rows)
    return None if after is None else after / tau - 1.0


def cap_ratio(rows: Sequence[Row], tau: float) -> float | None:
    """``max_after_first_clip / tau``: the cap as K2 draws it (1.0 = flat at tau)."""
    after = max_after_first_clip(rows)
    return None if after is None else after / tau


def head_names(rows: Sequence[Row]) -> list[tuple[int, int]]:
    """Every ``(layer, head)`` of the run, in layer-major order."""
    return [(li, hi) for li, layer in enumerate(rows[0]["max_logits"]) for hi in range(len(layer))] if rows else []


def peaks_over_tau(rows: Sequence[Row], tau: float) -> list[tuple[tuple[int, int], float, bool]]:
    """Each head's peak max logit / tau over the whole run, largest first, with whether it was
    ever clipped (:func:`heads_ever_clipped`)."""
    peaks, ever = head_peaks(rows), heads_ever_clipped(rows, tau)
    out = [((li, hi), float(peaks[li, hi]) / tau, (li, hi) in ever) for li, hi in head_names(rows)]
    return sorted(out, key=lambda t: -t[1])


def clip_raster(rows: Sequence[Row], tau: float) -> tuple[list[int], list[tuple[int, int]], np.ndarray]:
    """``(steps, heads, clipped [steps, heads])``: which head each clipping step clipped (the
    heads above tau in the rows where the clip fired), for every head ever clipped."""
    heads = sorted(heads_ever_clipped(rows, tau))
    steps = [int(r["step"]) for r in rows]
    raster = np.zeros((len(rows), len(heads)), dtype=bool)
    for i, r in enumerate(rows):
        if _clipped(r):
            above = heads_above(r, tau)
            raster[i] = [h in above for h in heads]
    return steps, heads, raster


def clip_span_per_head(rows: Sequence[Row], tau: float) -> dict[tuple[int, int], tuple[int, int]]:
    """Every ever-clipped head's first and last clipping step."""
    steps, heads, raster = clip_raster(rows, tau)
    return {h: (steps[int(np.argmax(col))], steps[len(col) - 1 - int(np.argmax(col[::-1]))])
            for h, col in zip(heads, raster.T, strict=True)}


def landing_points(rows: Sequence[Row], tau: float) -> tuple[list[int], list[float]]:
    """``(steps, ratios)``: for every head clipped at a step, that step and the head's max logit
    of the updated, clipped weights on the step's own batch (``max_logits_after``) over tau."""
    points = [(int(r["step"]), _num(r["max_logits_after"][li][hi]) / tau) for r in rows if r.get("max_logits_after")
              for li, hi in sorted(heads_above(r, tau))]
    return [p[0] for p in points], [p[1] for p in points]


def landing_after_clip(rows: Sequence[Row], tau: float) -> dict[str, Any] | None:
    """Where the clip put the clipped heads (:func:`landing_points`): min, median, max and the
    largest distance from tau. None without such rows."""
    _, ratios = landing_points(rows, tau)
    if not ratios:
        return None
    return {"n": len(ratios), "min": min(ratios), "max": max(ratios), "median": float(np.median(ratios)),
            "max_abs_error": max(abs(x - 1.0) for x in ratios)}


def layer_clip_shrinkage(rows: Sequence[Row], tau: float) -> dict[str, Any]:
    """What per-layer clipping (``qk_clip_granularity="layer"``) does to healthy heads.

    At each clipping step every head of a layer whose worst head passed tau is scaled by that
    layer's gamma = tau / max; the heads at or below tau there were healthy and shrunk anyway.
    Returns the healthy heads shrunk at least once, the number of such (step, head) events, the
    median gamma of those events and each shrunk head's total logit factor (the product of its
    gammas), smallest first."""
    total: dict[tuple[int, int], float] = {}
    gammas = []
    for r in rows:
        if not _clipped(r):
            continue
        for li, layer in enumerate(r["max_logits"]):
            worst = max(_num(v) for v in layer)
            if worst <= tau:
                continue
            gamma = tau / worst
            for hi, v in enumerate(layer):
                if _num(v) <= tau:
                    total[(li, hi)] = total.get((li, hi), 1.0) * gamma
                    gammas.append(gamma)
    return {"healthy_heads_shrunk": sorted(total), "events": len(gammas),
            "median_gamma": float(np.median(gammas)) if gammas else None,
            "total_factor": dict(sorted(total.items(), key=lambda kv: kv[1]))}


@dataclass(frozen=True)
class ClipPhases:
    """QK-Clip's life in one run, found from the rows.

    ``first_clip``/``last_clip``: the first and last step with a clipped head (None if it
    never fired). ``stabilised``: the clip stayed off for at least ``min_quiet`` steps after
    ``last_clip`` until the end of the run.
    """

    total_steps: int
    first_clip: int | None
    last_clip: int | None
    clip_steps: int
    heads_clipped_ever: int
    heads_total: int
    stabilised: bool
    final_max_logit: float
    peak_max_logit: float
    tau: float

    @property
    def active_fraction(self) -> float:
        """Share of the run from the first to the last clip (both included)."""
        if self.first_clip is None:
            return 0.0
        return (self.last_clip - self.first_clip + 1) / self.total_steps


def clip_phases(rows: Sequence[Row], tau: float, min_quiet: int | None = None) -> ClipPhases:
    """The :class:`ClipPhases` of a run; ``min_quiet`` defaults to max(5, 5% of the run)."""
    total = total_steps(rows)
    first, last = first_clip_step(rows), last_clip_step(rows)
    if min_quiet is None:
        min_quiet = max(5, total // 20)
    return ClipPhases(
        total_steps=total, first_clip=first, last_clip=last, clip_steps=len(clip_steps(rows)),
        heads_clipped_ever=len(heads_ever_clipped(rows, tau)), heads_total=n_heads(rows),
        stabilised=last is not None and total - last >= min_quiet,
        final_max_logit=final_max_logit(rows) if rows else math.nan,
        peak_max_logit=peak_max_logit(rows) if rows else math.nan, tau=float(tau),
    )


def rogue_pick(rows: Sequence[Row], tau: float | None) -> tuple[int, int, str]:
    """``(row index, layer, why)`` of the step and layer the rogue-heads picture shows.

    The first step where some head's max logit passes tau (the first clip of a MuonClip run);
    failing that, the step and layer where the spread between a layer's largest head and its
    median head is largest.
    """
    heads = np.array([r["max_logits"] for r in rows], dtype=np.float64)  # [S, L, H]
    if tau is not None:
        hit = np.argwhere((heads > tau).any(axis=2))
        if hit.size:
            i = int(hit[0, 0])
            return i, int(np.argmax(heads[i].max(axis=1))), f"first step where a head passed tau = {fmt_g(tau)}"
    spread = heads.max(axis=2) - np.median(heads, axis=2)  # [S, L]
    i, layer = np.unravel_index(int(np.argmax(spread)), spread.shape)
    return int(i), int(layer), "step and layer with the widest spread between heads"


# ----------------------------------------------------------------------------- losses


def val_curve(rows: Sequence[Row], x: str = "tokens") -> tuple[list[float], list[float]]:
    """Validation loss against ``tokens`` (default) or ``step``."""
    return series(rows, "val_loss", x)


def final_val_loss(rows: Sequence[Row]) -> float | None:
    """The last validation loss of the run (None if it never evaluated)."""
    _, ys = val_curve(rows)
    return ys[-1] if ys else None


def best_val_loss(rows: Sequence[Row]) -> float | None:
    """The lowest validation loss of the run."""
    _, ys = val_curve(rows)
    finite = [y for y in ys if math.isfinite(y)]
    return min(finite) if finite else None


def final_train_loss(rows: Sequence[Row]) -> float:
    """Training loss of the last step's batch."""
    return _num(rows[-1]["loss"])


def relative_change(value: float | None, reference: float | None) -> float | None:
    """``(value - reference) / reference`` (e.g. MuonClip's final val loss against Muon's);
    None when either is missing or the reference is 0."""
    if value is None or not reference:
        return None
    return (value - reference) / reference


def tokens_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """First ``x`` at which the curve ``ys`` reaches ``target`` (``y <= target``), linearly
    interpolated between the two evaluations around the crossing. None if never reached.
    If the first point is already at or below the target, its x is returned."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    prev = None
    for x, y in zip(xs, ys, strict=True):
        if math.isfinite(y) and y <= target:
            if prev is None:
                return float(x)
            px, py = prev
            if py == y:
                return float(x)
            return float(px + (x - px) * (py - target) / (py - y))
        prev = (x, y) if math.isfinite(y) else prev
    return None


def _jumps(rows: Sequence[Row], window: int) -> list[float]:
    """Per step: training loss minus the median of the previous ``window`` finite losses
    (inf for a non-finite loss, 0 for the first step)."""
    losses = [_num(r["loss"]) for r in rows]
    out = []
    for i, v in enumerate(losses):
        prev = sorted(u for u in losses[max(0, i - window):i] if math.isfinite(u))
        if not math.isfinite(v):
            out.append(math.inf)
        elif not prev:
            out.append(0.0)
        else:
            n = len(prev)
            med = prev[n // 2] if n % 2 else 0.5 * (prev[n // 2 - 1] + prev[n // 2])
            out.append(v - med)
    return out


def loss_spikes(rows: Sequence[Row], *, window: int = 20, threshold: float = 0.5) -> int:
    """Steps whose training loss exceeds the median of the previous ``window`` steps by more
    than ``threshold`` nats (non-finite losses count as spikes)."""
    return sum(1 for j in _jumps(rows, window) if j > threshold)


def max_loss_jump(rows: Sequence[Row], *, window: int = 20) -> float:
    """Largest rise of the training loss above the median of the previous ``window`` steps."""
    return max(_jumps(rows, window), default=0.0)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (same length; the first points average what exists)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(values.size):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


# ----------------------------------------------------------------------------- spectra


def layer_max_series(rows: Sequence[Row]) -> tuple[list[int], list[list[float]]]:
    """``(steps, per_layer)`` where ``per_layer[l][i]`` is layer l's max over heads at step i."""
    steps = [int(r["step"]) for r in rows]
    n_layer = len(rows[0]["max_logits"]) if rows else 0
    per_layer = [[max(_num(v) for v in r["max_logits"][li]) for r in rows] for li in range(n_layer)]
    return steps, per_layer


def spectra_series(rows: Sequence[Row]) -> tuple[list[int], dict[str, dict[str, list[float]]]]:
    """``(steps, {param: {stat: values}})`` from rows that carry ``spectra`` (stats:
    w_entropy, w_erank, u_entropy, u_erank)."""
    steps: list[int] = []
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        spec = r.get("spectra")
        if not spec:
            continue
        steps.append(int(r["step"]))
        for name, stats in spec.items():
            d = out.setdefault(name, {})
            for k, v in stats.items():
                d.setdefault(k, []).append(_num(v))
    return steps, out


def mean_spectra_series(rows: Sequence[Row], stat: str, *, contains: str = "") -> tuple[list[int], list[float]]:
    """Mean of ``stat`` (e.g. ``u_erank``, the effective rank of the applied update) over the
    tracked matrices whose name contains ``contains``, at each spectra snapshot."""
    steps, per = spectra_series(rows)
    names = [n for n in per if contains in n and stat in per[n]]
    if not names:
        return steps, []
    return steps, [sum(per[n][stat][i] for n in names) / len(names) for i in range(len(steps))]


def mean_after_first(values: Sequence[float]) -> float:
    """Mean over the snapshots after the first (step 1: Adam's first step is sign-like and
    Muon's momentum is fresh); the only snapshot when there is just one."""
    later = list(values[1:]) or list(values)
    return float(sum(later) / len(later))


def normalized_entropy(s: np.ndarray) -> np.ndarray:
    """Spectral entropy of each row of ``s`` (singular values) divided by ln(k): 1 = flat, 0 = rank one."""
    s = np.atleast_2d(np.asarray(s, dtype=np.float64))
    k = s.shape[-1]
    p = s / np.clip(s.sum(axis=-1, keepdims=True), 1e-300, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return h / np.log(k) if k > 1 else np.ones(s.shape[0])


def entropy_over_time(spectra: Mapping[str, np.ndarray], kind: str = "weight") -> tuple[list[str], np.ndarray]:
    """(param names, array [snapshots, params]) of normalised spectral entropy."""
    names = sorted(k.split("|")[0] for k in spectra if k.endswith("|" + kind))
    if not names:
        return [], np.zeros((0, 0))
    return names, np.stack([normalized_entropy(spectra[f"{n}|{kind}"]) for n in names], axis=1)


def most_distorted_param(spectra: Mapping[str, np.ndarray]) -> str:
    """The tracked weight whose final spectrum is least flat (lowest normalised entropy)."""
    names, ent = entropy_over_time(spectra, "weight")
    if not names:
        raise ValueError("run has no spectra snapshots")
    return names[int(np.argmin(ent[-1]))]


def top_over_median(sv: Sequence[float]) -> float:
    """Largest singular value over the median one (1 for a flat spectrum)."""
    sv = np.asarray(sv, dtype=np.float64)
    return float(sv[0] / max(float(np.median(sv)), 1e-12))


# ----------------------------------------------------------------------------- trade-off experiment


def tradeoff_summary(result: Mapping[str, Any]) -> dict:
    """Final numbers of each arm of the trade-off experiment (:mod:`muonclip.reproduce.tradeoff`)
    and a one-sentence conclusion drawn from them."""
    out: dict[str, Any] = {}
    for arm in result["arms"]:
        last = arm["snapshots"][-1]
        out[arm["optimizer"]] = {
            "label": arm["label"], **{k: last[k] for k in ("accuracy", "keyword_attention", "distractor_attention",
                                                            "margin", "max_logit")},
            "steps_to_90": next((s["step"] for s in arm["snapshots"] if s["accuracy"] >= 0.9), None),
            "loss": last["loss"], "clipped_steps": arm.get("clipped_steps", 0),
            "peak_max_logit": max(s["max_logit"] for s in arm["snapshots"]),
        }
    c, m = out.get("muonclip"), out.get("muon")
    if c and m:
        d_acc = c["accuracy"] - m["accuracy"]
        if abs(d_acc) < 0.02:
            acc = f"accuracy was the same ({fmt_pct(c['accuracy'])} with the clip, {fmt_pct(m['accuracy'])} without)"
        else:
            acc = (f"accuracy was {'lower' if d_acc < 0 else 'higher'} with the clip "
                   f"({fmt_pct(c['accuracy'])} vs {fmt_pct(m['accuracy'])})")
        d_margin = c["margin"] - m["margin"]
        if abs(d_margin) < 0.05:
            att = f"attention on the keyword was about as sharp (margin {fmt(c['margin'], 2)} vs {fmt(m['margin'], 2)})"
        else:
            att = (f"attention on the keyword was {'flatter' if d_margin < 0 else 'sharper'} with the clip "
                   f"(keyword weight {fmt(c['keyword_attention'], 2)} vs {fmt(m['keyword_attention'], 2)}; "
                   f"margin over a distractor {fmt(c['margin'], 2)} vs {fmt(m['margin'], 2)})")
        out["conclusion"] = f"At tau = {fmt_g(result['config']['tau'])}, {acc}; {att}."
    return out


# ----------------------------------------------------------------------------- field comparison (#16)


def seed_stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and half-range over seeds (``spread``: (max - min) / 2); missing values are
    counted in ``missing`` (e.g. a seed that never reached the target loss)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"mean": sum(finite) / len(finite) if finite else None,
            "spread": (max(finite) - min(finite)) / 2 if finite else None,
            "values": [None if v is None else float(v) for v in values],
            "missing": len(values) - len(finite)}


def field_table(efficiency: Mapping[str, Sequence[Sequence[Row]]], dragon: Mapping[str, Sequence[Sequence[Row]]],
                *, baseline: str = "adamw") -> dict[str, dict[str, Any]]:
    """Per arm of the field comparison (:mod:`muonclip.reproduce.field`), over its seeds:
    final validation loss; tokens to reach the baseline's mean final validation loss (and
    that over the baseline's own tokens); and on ``dragon`` the peak max logit and its growth."""
    target = seed_stats([final_val_loss(r) for r in efficiency[baseline]])["mean"]
    base_tokens = seed_stats([tokens_to_reach(*val_curve(r), target) for r in efficiency[baseline]])["mean"]
    out = {}
    for name, runs in efficiency.items():
        tokens = seed_stats([tokens_to_reach(*val_curve(r), target) if target is not None else None for r in runs])
        row = {"seeds": len(runs), "final_val_loss": seed_stats([final_val_loss(r) for r in runs]),
               "tokens_to_baseline": tokens,
               "tokens_vs_baseline": (tokens["mean"] / base_tokens if tokens["mean"] and base_tokens else None)}
        if dragon.get(name):
            row["dragon_peak_max_logit"] = seed_stats([peak_max_logit(r) for r in dragon[name]])
            row["dragon_growth"] = seed_stats([growth_factor(r) for r in dragon[name]])
        out[name] = row
    return out


K2_FRACTION_CLIPPED = 0.127  # Kimi K2 report: 12.7% of heads were ever clipped


def per_layer_comparison(head_rows: Sequence[Row], layer_rows: Sequence[Row], tau: float,
                         entropy_head: Sequence[Sequence[float]],
                         entropy_layer: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Per-head (K2) against per-layer clipping on the same preset and seed: heads ever clipped,
    the healthy heads per-layer clipping shrank (:func:`layer_clip_shrinkage`), their attention
    entropy in both runs (per layer, per head tables, e.g. from ``muonclip.lab.probe``), the
    mean entropy of all heads, the caps and the final validation losses."""
    shrink = layer_clip_shrinkage(layer_rows, tau)
    healthy = shrink["healthy_heads_shrunk"]
    factors = list(shrink["total_factor"].values())
    return {"tau": tau, "healthy_shrunk": len(healthy), "events": shrink["events"],
            "median_gamma": shrink["median_gamma"], "min_total_factor": min(factors) if factors else None,
            "total_factor": shrink["total_factor"],
            "entropy_head": mean_over_heads(entropy_head, healthy),
            "entropy_layer": mean_over_heads(entropy_layer, healthy),
            "entropy_all_head": mean_over_heads(entropy_head, head_names(head_rows)),
            "entropy_all_layer": mean_over_heads(entropy_layer, head_names(layer_rows)),
            "heads_ever_head": len(heads_ever_clipped(head_rows, tau)),
            "heads_ever_layer": len(heads_ever_clipped(layer_rows, tau)),
            "heads_total": n_heads(head_rows),
            "cap_head": cap_ratio(head_rows, tau), "cap_layer": cap_ratio(layer_rows, tau),
            "val_head": final_val_loss(head_rows), "val_layer": final_val_loss(layer_rows)}


def tradeoff_sweep_grid(result: Mapping[str, Any], key: str) -> np.ndarray:
    """``[len(seq_lens), len(taus)]`` of one measured quantity of the trade-off sweep."""
    seq_lens, taus = result["seq_lens"], result["taus"]
    grid = np.full((len(seq_lens), len(taus)), np.nan)
    for cell in result["cells"]:
        grid[seq_lens.index(cell["seq_len"]), taus.index(cell["tau"])] = cell[key]
    return grid


def tradeoff_edge(result: Mapping[str, Any], key: str = "accuracy", *, margin: float = 0.02) -> dict[int, float | None]:
    """Per prompt length, the largest tau at which ``key`` is worse than the unclipped arm's by
    more than ``margin`` (held-out accuracy lower, or, for ``eval_loss``, loss higher); None when
    no tau of the sweep cost that much."""
    taus = result["taus"]
    grid = tradeoff_sweep_grid(result, key)
    sign = -1.0 if key in ("eval_loss", "loss") else 1.0  # +1: higher is better
    free = taus.index(None)
    out = {}
    for i, seq_len in enumerate(result["seq_lens"]):
        costly = [t for j, t in enumerate(taus) if t is not None and sign * (grid[i, free] - grid[i, j]) > margin]
        out[seq_len] = max(costly) if costly else None
    return out


def mean_over_heads(values: Sequence[Sequence[float]], heads: Sequence[tuple[int, int]]) -> float | None:
    """Mean of a per-layer, per-head table (e.g. attention entropy) over ``heads``."""
    picked = [float(values[li][hi]) for li, hi in heads]
    return sum(picked) / len(picked) if picked else None
