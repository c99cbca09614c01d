"""Every reported quantity (muonclip.reproduce.results) on synthetic rows and spectra, including
the definitions the reproduction and the story used to disagree on."""
from __future__ import annotations

import math

import numpy as np
import pytest

from muonclip.reproduce import results


def _row(step, max_logits, n_clipped=0, loss=2.0, **extra):
    flat = [v for layer in max_logits for v in layer]
    return {"step": step, "tokens": 100 * step, "loss": loss, "lr": 0.01, "max_logit": max(flat),
            "max_logits": max_logits, "n_clipped": n_clipped, "min_gamma": 1.0, **extra}


@pytest.fixture
def clip_rows():
    tau = 10.0
    return tau, [
        _row(1, [[1.0, 2.0], [1.5, 0.5]]),
        _row(2, [[5.0, 2.0], [1.5, 0.5]]),
        _row(3, [[12.0, 2.0], [1.5, 0.5]], n_clipped=1),   # head (0,0) clipped
        _row(4, [[10.5, 2.0], [11.0, 0.5]], n_clipped=2),  # slack 0.10; (1,0) clipped too
        _row(5, [[9.0, 2.0], [9.5, 0.5]]),
        _row(6, [[8.0, 2.0], [7.0, 0.5]]),
    ]


def test_growth_is_peak_or_final_over_step_one(clip_rows):
    _, rows = clip_rows
    assert results.initial_max_logit(rows) == 2.0
    assert results.peak_max_logit(rows) == 12.0 and results.peak_step(rows) == 3
    assert results.final_max_logit(rows) == 8.0 and results.total_steps(rows) == 6
    assert results.growth_factor(rows) == 6.0
    assert results.growth_factor(rows, at="final") == 4.0
    with pytest.raises(ValueError):
        results.growth_factor(rows, at="middle")
    # the story's old definition (final / mean of the first five) would give 8 / 6.2 here
    assert results.growth_factor(rows, at="final") != pytest.approx(8.0 / np.mean([2.0, 5.0, 12.0, 11.0, 9.5]))


def test_first_step_above_is_strict(clip_rows):
    _, rows = clip_rows
    assert results.first_step_above(rows, 10.0) == 3
    assert results.first_step_above(rows, 12.0) is None  # equal to the level is not above it
    assert results.first_step_above(rows, 100.0) is None


def test_clip_steps_heads_and_slack(clip_rows):
    tau, rows = clip_rows
    assert results.clip_steps(rows) == [3, 4]
    assert (results.first_clip_step(rows), results.last_clip_step(rows)) == (3, 4)
    assert results.heads_ever_clipped(rows, tau) == {(0, 0), (1, 0)}
    assert results.n_heads(rows) == 4
    assert results.fraction_heads_ever_clipped(rows, tau) == 0.5
    assert results.clip_slack(rows, tau) == pytest.approx(0.10)
    # heads_above of a clipped row agrees with n_clipped
    for r in rows:
        if r["n_clipped"]:
            assert len(results.heads_above(r, tau)) == r["n_clipped"]


def test_max_after_first_clip_excludes_the_clipped_row(clip_rows):
    tau, rows = clip_rows
    # step 3's 12.0 is the logit that made the clip fire; the largest one after it is step 4's 11.0
    assert results.max_after_first_clip(rows) == 11.0
    assert results.clip_slack(rows, tau) == pytest.approx(11.0 / tau - 1)


def test_heads_ever_clipped_needs_a_clip():
    """A run without the clip has no clipped heads, even where heads pass tau (the story's old
    definition counted them)."""
    rows = [_row(1, [[1.0, 20.0]]), _row(2, [[30.0, 2.0]])]
    assert results.heads_ever_clipped(rows, 10.0) == set()
    assert results.heads_peak_above(rows, 10.0) == 2
    assert results.head_peaks(rows).tolist() == [[30.0, 20.0]]


def test_no_clip_gives_none():
    rows = [_row(1, [[1.0]]), _row(2, [[3.0]])]
    assert results.first_clip_step(rows) is None and results.last_clip_step(rows) is None
    assert results.clip_slack(rows, 5.0) is None and results.max_after_first_clip(rows) is None
    assert results.heads_ever_clipped(rows, 5.0) == set()


def test_clip_phases_from_the_rows():
    rows = [_row(s, [[0.2 * s, 0.1 * s]], n_clipped=1 if 10 < s < 30 else 0) for s in range(1, 41)]
    ph = results.clip_phases(rows, tau=5.0)
    assert (ph.first_clip, ph.last_clip, ph.total_steps) == (11, 29, 40)
    assert ph.stabilised and ph.clip_steps == 19 and ph.active_fraction == pytest.approx(19 / 40)
    assert ph.heads_total == 2 and ph.heads_clipped_ever == 1  # only head 0 passes 5 while clipping
    assert ph.final_max_logit == pytest.approx(8.0) and ph.peak_max_logit == pytest.approx(8.0)
    assert not results.clip_phases(rows, 5.0, min_quiet=20).stabilised


def test_rogue_pick():
    rows = [_row(s, [[0.2 * s, 0.1 * s], [0.05 * s, 0.3 * s]]) for s in range(1, 41)]
    i, layer, why = results.rogue_pick(rows, 5.0)
    assert "first step" in why and max(max(r) for r in rows[i]["max_logits"]) > 5.0 and layer == 1
    assert max(max(r) for r in rows[i - 1]["max_logits"]) <= 5.0
    _, _, why2 = results.rogue_pick(rows, None)
    assert "spread" in why2


def test_tokens_to_reach_interpolates():
    xs, ys = [100, 200, 300, 400], [4.0, 3.0, 2.0, 1.5]
    assert results.tokens_to_reach(xs, ys, 2.5) == pytest.approx(250.0)
    assert results.tokens_to_reach(xs, ys, 3.0) == pytest.approx(200.0)
    assert results.tokens_to_reach(xs, ys, 5.0) == 100.0  # reached at the first point
    assert results.tokens_to_reach(xs, ys, 1.0) is None  # never reached
    assert results.tokens_to_reach([1, 2, 3], [5.0, math.nan, 1.0], 3.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        results.tokens_to_reach([1, 2], [1.0], 1.0)


def test_val_and_loss_helpers():
    rows = [_row(1, [[1.0]], loss=3.0), _row(2, [[1.0]], loss=2.0, val_loss=2.5),
            _row(3, [[1.0]], loss=2.6), _row(4, [[1.0]], loss=1.9, val_loss=2.2), _row(5, [[1.0]], loss="nan")]
    assert results.val_curve(rows) == ([200, 400], [2.5, 2.2])
    assert results.val_curve(rows, "step") == ([2, 4], [2.5, 2.2])
    assert results.final_val_loss(rows) == 2.2 and results.best_val_loss(rows) == 2.2
    assert math.isnan(results.final_train_loss(rows)) and results.final_train_loss(rows[:4]) == 1.9
    assert not results.is_finite_run(rows)
    spiky = [_row(i + 1, [[1.0]], loss=v) for i, v in enumerate([2.0, 2.0, 2.0, 2.8, 2.0, "nan"])]
    assert results.loss_spikes(spiky, threshold=0.5) == 2  # step 4 (2.8 > median 2.0 + 0.5) and the NaN
    assert results.max_loss_jump(spiky[:5]) == pytest.approx(0.8)


def test_relative_change():
    assert results.relative_change(1.8, 2.0) == pytest.approx(-0.1)
    assert results.relative_change(None, 2.0) is None and results.relative_change(1.0, None) is None
    assert results.relative_change(1.0, 0.0) is None


def test_smooth_is_a_trailing_mean():
    assert results.smooth([1.0, 2.0, 3.0, 4.0], 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert results.smooth([1.0, 5.0], 1).tolist() == [1.0, 5.0]


def test_layer_and_spectra_series():
    spec = {"a.q": {"w_entropy": 1.0, "w_erank": 2.0, "u_entropy": 3.0, "u_erank": 4.0},
            "b.k": {"w_entropy": 2.0, "w_erank": 4.0, "u_entropy": 1.0, "u_erank": 6.0}}
    rows = [_row(1, [[1.0, 3.0], [2.0, 0.0]], spectra=spec), _row(2, [[4.0, 3.0], [2.0, 5.0]])]
    steps, per_layer = results.layer_max_series(rows)
    assert steps == [1, 2] and per_layer == [[3.0, 4.0], [2.0, 5.0]]
    s, per = results.spectra_series(rows)
    assert s == [1] and per["a.q"]["u_erank"] == [4.0]
    assert results.mean_spectra_series(rows, "u_erank") == ([1], [5.0])
    assert results.mean_spectra_series(rows, "u_erank", contains=".k") == ([1], [6.0])
    assert results.mean_after_first([10.0, 2.0, 4.0]) == 3.0 and results.mean_after_first([7.0]) == 7.0


def test_spectral_numbers():
    flat = results.normalized_entropy(np.ones((1, 8)))[0]
    spike = results.normalized_entropy(np.array([[1.0] + [1e-9] * 7]))[0]
    assert flat == pytest.approx(1.0) and spike < 0.05
    peaked = np.array([[4.0, 2.0, 1.0, 1.0], [8.0, 2.0, 1.0, 1.0]])
    even = np.array([[1.0, 1.0, 1.0, 1.0], [1.1, 1.0, 1.0, 0.9]])
    spectra = {"a|weight": even, "b|weight": peaked, "b|update": even}
    assert results.most_distorted_param(spectra) == "b"
    names, ent = results.entropy_over_time(spectra, "weight")
    assert names == ["a", "b"] and ent.shape == (2, 2) and ent[-1, 0] > ent[-1, 1]
    assert results.top_over_median([8.0, 2.0, 1.0, 1.0]) == pytest.approx(8.0 / 1.5)
    with pytest.raises(ValueError):
        results.most_distorted_param({})


def _arm(optimizer, accuracy, margin, keyword):
    snaps = [{"step": s, "accuracy": a, "keyword_attention": keyword, "distractor_attention": 0.02,
              "margin": margin, "max_logit": 1.0 + s, "loss": 1.0 / (1 + s)} for s, a in ((0, 0.1), (10, accuracy))]
    return {"label": optimizer, "optimizer": optimizer, "snapshots": snaps, "clipped_steps": 3}


def test_tradeoff_summary_states_what_the_numbers_show():
    result = {"config": {"tau": 2.0}, "arms": [_arm("muonclip", 0.95, 0.30, 0.32), _arm("muon", 0.96, 0.60, 0.62)]}
    out = results.tradeoff_summary(result)
    assert out["muonclip"]["steps_to_90"] == 10 and out["muon"]["peak_max_logit"] == 11.0
    assert out["conclusion"] == ("At tau = 2, accuracy was the same (95.0% with the clip, 96.0% without); attention "
                                 "on the keyword was flatter with the clip (keyword weight 0.32 vs 0.62; margin over "
                                 "a distractor 0.30 vs 0.60).")


# -- per-head picture (#15) -------------------------------------------------------------------
def test_peaks_raster_and_spans(clip_rows):
    tau, rows = clip_rows
    peaks = results.peaks_over_tau(rows, tau)
    assert [h for h, _, _ in peaks[:2]] == [(0, 0), (1, 0)] and peaks[0][1] == pytest.approx(1.2)
    assert [c for _, _, c in peaks] == [True, True, False, False]
    steps, heads, raster = results.clip_raster(rows, tau)
    assert heads == [(0, 0), (1, 0)] and raster.shape == (6, 2)
    assert raster[:, 0].tolist() == [False, False, True, True, False, False]
    assert raster[:, 1].tolist() == [False, False, False, True, False, False]
    assert results.clip_span_per_head(rows, tau) == {(0, 0): (3, 4), (1, 0): (4, 4)}
    assert results.cap_ratio(rows, tau) == pytest.approx(1.1)


def test_landing_after_clip_reads_the_clipped_heads_only():
    tau = 10.0
    rows = [_row(1, [[12.0, 3.0]], n_clipped=1, max_logits_after=[[10.2, 3.5]]),
            _row(2, [[9.0, 3.0]])]
    landing = results.landing_after_clip(rows, tau)
    assert landing["n"] == 1 and landing["median"] == pytest.approx(1.02)
    assert landing["max_abs_error"] == pytest.approx(0.02)
    assert results.landing_after_clip([_row(1, [[1.0]])], tau) is None


def test_layer_clip_shrinkage_counts_healthy_heads_and_their_factors():
    tau = 10.0
    rows = [_row(1, [[20.0, 5.0], [4.0, 3.0]], n_clipped=2),   # layer 0 clipped at gamma 0.5
            _row(2, [[12.5, 9.0], [11.0, 3.0]], n_clipped=4),  # both layers clipped
            _row(3, [[8.0, 5.0], [4.0, 3.0]])]
    out = results.layer_clip_shrinkage(rows, tau)
    assert out["healthy_heads_shrunk"] == [(0, 1), (1, 1)]
    assert out["events"] == 3
    assert out["total_factor"][(0, 1)] == pytest.approx(0.5 * 0.8)
    assert out["total_factor"][(1, 1)] == pytest.approx(10 / 11)
    assert list(out["total_factor"]) == [(0, 1), (1, 1)]  # smallest first


def test_tradeoff_edge_finds_the_largest_costly_tau():
    cells = [{"seq_len": n, "tau": t, "accuracy": a} for n, t, a in
             [(16, 0.5, 1.0), (16, 2.0, 1.0), (16, None, 1.0), (64, 0.5, 0.6), (64, 2.0, 0.9), (64, None, 1.0)]]
    result = {"seq_lens": [16, 64], "taus": [0.5, 2.0, None], "cells": cells}
    assert results.tradeoff_edge(result) == {16: None, 64: 2.0}
    assert results.tradeoff_sweep_grid(result, "accuracy").tolist() == [[1.0, 1.0, 1.0], [0.6, 0.9, 1.0]]


# -- field comparison (#16) -------------------------------------------------------------------
def _val_rows(losses, tokens_per_eval=100):
    return [_row(i + 1, [[1.0]], val_loss=v, tokens=tokens_per_eval * (i + 1)) for i, v in enumerate(losses)]


def test_seed_stats_and_field_table():
    stats = results.seed_stats([1.0, 3.0, None])
    assert stats["mean"] == 2.0 and stats["spread"] == 1.0 and stats["missing"] == 1
    eff = {"adamw": [_val_rows([3.0, 2.5, 2.0]), _val_rows([3.0, 2.6, 2.2])],  # target: mean final 2.1
           "muon": [_val_rows([2.5, 2.05, 1.9]), _val_rows([2.5, 2.1, 1.95])]}
    dragon = {"muon": [[_row(1, [[0.5]]), _row(2, [[50.0]])]]}
    table = results.field_table(eff, dragon, baseline="adamw")
    assert table["adamw"]["final_val_loss"]["mean"] == pytest.approx(2.1)
    assert table["adamw"]["tokens_to_baseline"]["missing"] == 1  # the worse seed never reaches the mean
    assert table["muon"]["tokens_to_baseline"]["missing"] == 0
    assert table["muon"]["tokens_vs_baseline"] < 1.0
    assert table["muon"]["dragon_growth"]["mean"] == pytest.approx(100.0)
    assert "dragon_growth" not in table["adamw"]


def test_tradeoff_edge_on_loss_looks_for_a_rise():
    cells = [{"seq_len": 16, "tau": t, "eval_loss": v} for t, v in [(0.5, 0.08), (1.0, 0.005), (None, 0.0001)]]
    result = {"seq_lens": [16], "taus": [0.5, 1.0, None], "cells": cells}
    assert results.tradeoff_edge(result, "eval_loss", margin=0.01) == {16: 0.5}
    assert results.tradeoff_edge(result, "eval_loss", margin=0.001) == {16: 1.0}


def test_training_seconds_is_the_last_rows_clock():
    from muonclip.reproduce.results import training_seconds

    assert training_seconds([]) == 0.0
    assert training_seconds([{"step": 1, "time": 0.5}, {"step": 2, "time": 1.25}]) == 1.25
    assert training_seconds([{"step": 1}]) == 0.0  # a log without a clock
