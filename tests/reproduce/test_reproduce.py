"""The reproduction: pure result functions on synthetic rows, and the direction of each effect
on shortened (QUICK_OVERRIDES) versions of the presets -- seeded, so deterministic."""
from __future__ import annotations

import math

import pytest
import torch

from muonclip.lab.config import apply_overrides, get_preset, list_presets
from muonclip.lab.metrics import read_metrics
from muonclip.reproduce import presets as P
from muonclip.reproduce import results as R
from muonclip.reproduce.runner import ensure_run


# ----------------------------------------------------------------------------- synthetic rows


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


def test_growth_and_peak(clip_rows):
    _, rows = clip_rows
    assert R.initial_max_logit(rows) == 2.0
    assert R.peak_max_logit(rows) == 12.0
    assert R.growth_factor(rows) == 6.0
    assert R.growth_factor(rows, at="final") == 4.0
    with pytest.raises(ValueError):
        R.growth_factor(rows, at="middle")


def test_clip_steps_heads_and_slack(clip_rows):
    tau, rows = clip_rows
    assert R.clip_steps(rows) == [3, 4]
    assert (R.first_clip_step(rows), R.last_clip_step(rows)) == (3, 4)
    assert R.heads_ever_clipped(rows, tau) == {(0, 0), (1, 0)}
    assert R.n_heads(rows) == 4
    assert R.fraction_heads_ever_clipped(rows, tau) == 0.5
    assert R.clip_slack(rows, tau) == pytest.approx(0.10)
    # heads_above of a clipped row agrees with n_clipped
    for r in rows:
        if r["n_clipped"]:
            assert len(R.heads_above(r, tau)) == r["n_clipped"]


def test_no_clip_gives_none():
    rows = [_row(1, [[1.0]]), _row(2, [[3.0]])]
    assert R.first_clip_step(rows) is None and R.last_clip_step(rows) is None
    assert R.clip_slack(rows, 5.0) is None
    assert R.heads_ever_clipped(rows, 5.0) == set()


def test_tokens_to_reach_interpolates():
    xs, ys = [100, 200, 300, 400], [4.0, 3.0, 2.0, 1.5]
    assert R.tokens_to_reach(xs, ys, 2.5) == pytest.approx(250.0)
    assert R.tokens_to_reach(xs, ys, 3.0) == pytest.approx(200.0)
    assert R.tokens_to_reach(xs, ys, 5.0) == 100.0  # reached at the first point
    assert R.tokens_to_reach(xs, ys, 1.0) is None  # never reached
    assert R.tokens_to_reach([1, 2, 3], [5.0, math.nan, 1.0], 3.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        R.tokens_to_reach([1, 2], [1.0], 1.0)


def test_val_and_loss_helpers():
    rows = [_row(1, [[1.0]], loss=3.0), _row(2, [[1.0]], loss=2.0, val_loss=2.5),
            _row(3, [[1.0]], loss=2.6), _row(4, [[1.0]], loss=1.9, val_loss=2.2), _row(5, [[1.0]], loss="nan")]
    assert R.val_curve(rows) == ([200, 400], [2.5, 2.2])
    assert R.val_curve(rows, "step") == ([2, 4], [2.5, 2.2])
    assert R.final_val_loss(rows) == 2.2 and R.best_val_loss(rows) == 2.2
    assert not R.is_finite_run(rows)
    spiky = [_row(i + 1, [[1.0]], loss=v) for i, v in enumerate([2.0, 2.0, 2.0, 2.8, 2.0, "nan"])]
    assert R.loss_spikes(spiky, threshold=0.5) == 2  # step 4 (2.8 > median 2.0 + 0.5) and the NaN
    assert R.max_loss_jump(spiky[:5]) == pytest.approx(0.8)


def test_layer_and_spectra_series():
    spec = {"a.q": {"w_entropy": 1.0, "w_erank": 2.0, "u_entropy": 3.0, "u_erank": 4.0},
            "b.k": {"w_entropy": 2.0, "w_erank": 4.0, "u_entropy": 1.0, "u_erank": 6.0}}
    rows = [_row(1, [[1.0, 3.0], [2.0, 0.0]], spectra=spec), _row(2, [[4.0, 3.0], [2.0, 5.0]])]
    steps, per_layer = R.layer_max_series(rows)
    assert steps == [1, 2] and per_layer == [[3.0, 4.0], [2.0, 5.0]]
    s, per = R.spectra_series(rows)
    assert s == [1] and per["a.q"]["u_erank"] == [4.0]
    assert R.mean_spectra_series(rows, "u_erank") == ([1], [5.0])
    assert R.mean_spectra_series(rows, "u_erank", contains=".k") == ([1], [6.0])


# ----------------------------------------------------------------------------- presets


def test_presets_registered_and_described():
    names = dict(list_presets())
    for name in P.PRESET_NAMES:
        assert name in names and f"seed {P.SEED}" in names[name]
    assert get_preset("guardrail").optim.optimizer == "muonclip"
    assert get_preset("dragon").optim.qk_clip_tau == P.TAU
    assert get_preset("dragon").model.qk_norm is False
    spectra = get_preset("spectra")
    assert spectra.run.steps // spectra.run.spectra_every >= 12
    for label, preset, opt, overrides in P.STORY_RUNS:
        cfg = apply_overrides(get_preset(preset), [f"optim.optimizer={opt}", *overrides])
        assert cfg.optim.optimizer == opt, label
    for name, quick in P.QUICK_OVERRIDES.items():
        apply_overrides(get_preset(name), quick)
    assert set(P.STORY_ALIASES.values()) <= {label for label, *_ in P.STORY_RUNS}


# ----------------------------------------------------------------------------- effects (quick runs)


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """The quick dragon (Muon), guardrail and lifecycle runs, trained once for this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("reproduce")
    out = {}
    try:
        for label, preset, opt in (("dragon", "dragon", "muon"), ("guardrail", "guardrail", "muonclip"),
                                   ("lifecycle", "lifecycle", "muonclip")):
            cfg = apply_overrides(get_preset(preset), [f"optim.optimizer={opt}", *P.QUICK_OVERRIDES[label]])
            run_dir = ensure_run(cfg, cache, label, progress=False, log=lambda m: None)
            out[label] = (cfg, read_metrics(run_dir / "metrics.jsonl"))
    finally:
        torch.set_num_threads(threads)
    return out


def test_dragon_muon_max_logit_grows(quick_runs):
    _, rows = quick_runs["dragon"]
    assert R.is_finite_run(rows)
    assert R.growth_factor(rows) > 10
    assert R.growth_factor(rows, at="final") > 10


def test_guardrail_caps_max_logit_at_tau(quick_runs):
    cfg, rows = quick_runs["guardrail"]
    tau = cfg.optim.qk_clip_tau
    first = R.first_clip_step(rows)
    assert first is not None and first < len(rows) - 5
    # After the first clip the max logit stays at tau up to the one-step slack (what one
    # update does to a head just clipped to tau; large this early in training), while the
    # same steps of vanilla Muon go far past tau.
    slack = R.clip_slack(rows, tau)
    assert 0 <= slack < 0.6
    after = [r["max_logit"] for r in rows if r["step"] > first]
    assert max(after) <= tau * 1.6
    _, muon_rows = quick_runs["dragon"]
    assert muon_rows[-1]["max_logit"] > 2.5 * tau
    assert rows[-1]["max_logit"] < muon_rows[-1]["max_logit"] / 2
    # every clipped step clipped exactly the heads above tau in that step's forward
    for r in rows:
        assert r["n_clipped"] == len(R.heads_above(r, tau))


def test_lifecycle_clip_switches_off(quick_runs):
    cfg, rows = quick_runs["lifecycle"]
    tau = cfg.optim.qk_clip_tau
    first, last = R.first_clip_step(rows), R.last_clip_step(rows)
    assert first is not None and last is not None
    assert last < len(rows)
    assert rows[-1]["max_logit"] < tau
