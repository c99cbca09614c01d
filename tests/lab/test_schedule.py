"""Learning-rate schedules: warmup values, cosine and WSD end exactly at min_lr_ratio on the
last step (issue #12), monotone decay after warmup, constant stays constant, WSD shape.

The training loop calls ``mult(step)`` for ``step`` in ``range(steps)``: the last step is
``steps - 1``.
"""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from muonclip.lab.schedule import lr_multiplier

KINDS = ("constant", "cosine", "wsd")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("warmup", [1, 4, 10])
def test_warmup_starts_at_one_over_warmup_and_ends_at_one(kind, warmup):
    mult = lr_multiplier(kind, steps=50, warmup_steps=warmup, min_lr_ratio=0.1)
    assert mult(0) == pytest.approx(1 / warmup, abs=0, rel=1e-15)
    assert mult(warmup - 1) == 1.0
    values = [mult(s) for s in range(warmup)]
    assert values == sorted(values)  # a linear ramp
    for s in range(warmup):
        assert mult(s) == pytest.approx((s + 1) / warmup, rel=1e-15)


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("steps, warmup", [(2, 0), (10, 0), (100, 0), (100, 10), (7, 6), (301, 20)])
def test_cosine_reaches_min_lr_ratio_exactly_on_the_last_step(steps, warmup, min_lr_ratio):
    """The cosine used to end at progress (steps - 1 - warmup) / (steps - warmup) < 1, so the
    last step never reached min_lr_ratio (steps=100, ratio 0.1: 0.10022)."""
    mult = lr_multiplier("cosine", steps=steps, warmup_steps=warmup, min_lr_ratio=min_lr_ratio)
    assert mult(steps - 1) == min_lr_ratio
    assert mult(warmup) == (1.0 if steps - 1 > warmup else min_lr_ratio)  # the decay starts at the peak
    if steps - 1 - warmup >= 2 and (steps - 1 - warmup) % 2 == 0:
        mid = warmup + (steps - 1 - warmup) // 2  # half-way through the decay
        assert mult(mid) == pytest.approx(min_lr_ratio + 0.5 * (1 - min_lr_ratio), rel=1e-12)


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("steps, warmup, decay_fraction", [(100, 0, 0.2), (100, 10, 0.2), (50, 5, 0.5),
                                                            (10, 0, 1.0), (9, 2, 0.3), (5, 0, 0.2)])
def test_wsd_shape(steps, warmup, decay_fraction, min_lr_ratio):
    """Warmup, flat at 1 until the decay starts, then a linear decay whose end, the last step,
    is exactly min_lr_ratio."""
    mult = lr_multiplier("wsd", steps=steps, warmup_steps=warmup, decay_fraction=decay_fraction,
                         min_lr_ratio=min_lr_ratio)
    decay_start = int(round(steps * (1 - decay_fraction)))
    assert mult(steps - 1) == min_lr_ratio
    for s in range(warmup, decay_start):
        assert mult(s) == 1.0
    if decay_start >= warmup and decay_start < steps - 1:
        assert mult(decay_start) == 1.0  # the decay starts from the plateau
    tail = [mult(s) for s in range(max(warmup, decay_start), steps)]
    diffs = [b - a for a, b in zip(tail, tail[1:], strict=False)]
    for d in diffs:  # linear: equal steps down
        assert d == pytest.approx(diffs[0], abs=1e-12)


def test_wsd_without_decay_stays_flat():
    mult = lr_multiplier("wsd", steps=20, warmup_steps=2, decay_fraction=0.0, min_lr_ratio=0.1)
    assert [mult(s) for s in range(2, 20)] == [1.0] * 18


@pytest.mark.parametrize("warmup", [0, 3])
def test_constant_stays_constant(warmup):
    mult = lr_multiplier("constant", steps=40, warmup_steps=warmup, min_lr_ratio=0.3)
    assert [mult(s) for s in range(warmup, 40)] == [1.0] * (40 - warmup)


@given(
    kind=st.sampled_from(("cosine", "wsd")),
    steps=st.integers(1, 400),
    warmup_frac=st.floats(0.0, 1.0),
    decay_fraction=st.floats(0.0, 1.0),
    min_lr_ratio=st.floats(0.0, 1.0),
)
def test_decay_after_warmup_is_monotone_and_bounded(kind, steps, warmup_frac, decay_fraction, min_lr_ratio):
    warmup = int(warmup_frac * (steps - 1))  # warmup < steps
    mult = lr_multiplier(kind, steps=steps, warmup_steps=warmup, decay_fraction=decay_fraction,
                         min_lr_ratio=min_lr_ratio)
    values = [mult(s) for s in range(max(0, warmup - 1), steps)]  # from the warmup's peak on
    for a, b in zip(values, values[1:], strict=False):
        assert b <= a
    assert all(min_lr_ratio <= v <= 1.0 for v in values)
    assert all(math.isfinite(v) for v in values)
    decays = kind == "cosine" or int(round(steps * (1 - decay_fraction))) < steps
    if decays:
        assert mult(steps - 1) == min_lr_ratio


@pytest.mark.parametrize("kwargs", [dict(kind="linear"), dict(steps=0), dict(warmup_steps=-1),
                                    dict(decay_fraction=1.5), dict(min_lr_ratio=-0.1)])
def test_bad_arguments_raise(kwargs):
    args = dict(kind="cosine", steps=10, warmup_steps=0, decay_fraction=0.2, min_lr_ratio=0.0)
    args.update(kwargs)
    with pytest.raises(ValueError):
        lr_multiplier(**args)
