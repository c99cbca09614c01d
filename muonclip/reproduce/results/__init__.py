"""Every number the reports quote, defined once as a pure function of run data.

``docs/results.md`` (:mod:`muonclip.reproduce.report`) and the story's ``report.html``
(:mod:`muonclip.story`) both print from here. No I/O, no torch: the functions take metric
rows (``metrics.jsonl`` row dicts, see :mod:`muonclip.lab.metrics`), singular-value arrays
(``spectra.npz``, see :mod:`muonclip.lab.rundir`) or the trade-off result, and return plain
values, so each one is unit-tested on synthetic data. One home, several rooms:

* :mod:`.logits` -- steps and the max attention logit, over the run and per head;
* :mod:`.clips` -- what QK-Clip did: when, which heads, the cap, its phases, per-layer clipping;
* :mod:`.losses` -- validation curve, final losses, tokens to a target, spikes;
* :mod:`.spectra` -- singular values, spectral entropy, effective rank;
* :mod:`.experiments` -- the trade-off experiment and the field comparison;
* :mod:`.seeds` -- one quantity over several seeds: median (min-max), and a curve's band;
* :mod:`.targets` -- each chapter's targets, met only where every seed meets them.

A note on timing: a row's ``max_logit`` / ``max_logits`` come from that step's forward
pass, i.e. from the weights *before* that step's update and QK-Clip. The clip at step t
uses exactly these values (``S_h``), so the heads clipped at step t are the ones whose
row value exceeds tau, and ``max_logit`` of every later row measures the one-step slack
of the guardrail (the update of step t-1 acting on weights clipped at step t-1).
"""
from .clips import (
    K2_FRACTION_CLIPPED,
    ClipPhases,
    cap_ratio,
    clip_phases,
    clip_raster,
    clip_slack,
    clip_span_per_head,
    clip_steps,
    first_clip_step,
    fraction_heads_ever_clipped,
    heads_ever_clipped,
    landing_after_clip,
    landing_points,
    last_clip_step,
    layer_clip_shrinkage,
    max_after_first_clip,
    mean_over_heads,
    peaks_over_tau,
    per_layer_comparison,
    rogue_pick,
)
from .experiments import field_table, seed_stats, tradeoff_edge, tradeoff_summary, tradeoff_sweep_grid
from .logits import (
    final_max_logit,
    first_step_above,
    growth_factor,
    head_names,
    head_peaks,
    heads_above,
    heads_peak_above,
    initial_max_logit,
    is_finite_run,
    layer_max_series,
    n_heads,
    peak_max_logit,
    peak_step,
    series,
    total_steps,
    training_seconds,
)
from .losses import (
    best_val_loss,
    final_train_loss,
    final_val_loss,
    loss_spikes,
    max_loss_jump,
    relative_change,
    smooth,
    tokens_to_reach,
    val_curve,
)
from .seeds import SEED_SEP, Spread, curve_spread, spread
from .slack import SlackEvent, slack_decomposition, slack_events
from .spectra import (
    entropy_over_time,
    logit_bound_series,
    mean_after_first,
    mean_spectra_series,
    most_distorted_param,
    normalized_entropy,
    spectra_series,
    top_over_median,
)
from .targets import (
    CAP_MAX,
    CLIPPED_MAX,
    DRAGON_PEAK_MIN,
    EFFICIENCY_MAX,
    GROWTH_MIN,
    GUARDRAIL_PEAK_MIN,
    LIFECYCLE_FINAL_MAX,
    LIFECYCLE_LAST_CLIP_MAX,
    LOSS_REL_MAX,
    SPECTRA_SNAPSHOTS_MIN,
    Verdict,
    dragon_seed_numbers,
    dragon_targets,
    efficiency_ratio,
    efficiency_targets,
    guardrail_seed_numbers,
    guardrail_targets,
    lifecycle_seed_numbers,
    lifecycle_targets,
    spectra_targets,
    verdict,
)

__all__ = [
    "series", "is_finite_run", "total_steps", "training_seconds",
    "initial_max_logit", "peak_max_logit", "peak_step", "final_max_logit",
    "growth_factor", "first_step_above", "n_heads", "heads_above", "head_peaks", "heads_peak_above", "head_names",
    "layer_max_series", "clip_steps", "first_clip_step", "last_clip_step", "heads_ever_clipped",
    "fraction_heads_ever_clipped", "max_after_first_clip", "clip_slack", "cap_ratio", "peaks_over_tau",
    "clip_raster", "clip_span_per_head", "landing_points", "landing_after_clip", "layer_clip_shrinkage",
    "ClipPhases", "clip_phases", "rogue_pick", "K2_FRACTION_CLIPPED", "per_layer_comparison", "mean_over_heads",
    "val_curve", "final_val_loss", "best_val_loss", "final_train_loss", "relative_change", "tokens_to_reach",
    "loss_spikes", "max_loss_jump", "smooth", "spectra_series", "mean_spectra_series", "mean_after_first",
    "normalized_entropy", "entropy_over_time", "most_distorted_param", "top_over_median", "logit_bound_series",
    "tradeoff_summary",
    "seed_stats", "field_table", "tradeoff_sweep_grid", "tradeoff_edge", "Spread", "spread", "curve_spread",
    "SEED_SEP", "Verdict", "verdict", "GROWTH_MIN", "DRAGON_PEAK_MIN", "GUARDRAIL_PEAK_MIN", "CAP_MAX",
    "CLIPPED_MAX", "LOSS_REL_MAX", "LIFECYCLE_LAST_CLIP_MAX", "LIFECYCLE_FINAL_MAX", "SPECTRA_SNAPSHOTS_MIN",
    "EFFICIENCY_MAX", "dragon_seed_numbers", "dragon_targets", "guardrail_seed_numbers", "guardrail_targets",
    "lifecycle_seed_numbers", "lifecycle_targets", "spectra_targets", "efficiency_ratio", "efficiency_targets",
    "SlackEvent", "slack_events", "slack_decomposition",
]
