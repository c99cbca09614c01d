"""The guardrail's one-step slack, decomposed into the update's growth and the next batch's variation."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from muonclip.reproduce.results.slack import slack_decomposition, slack_events


def _row(step, max_logits, n_clipped=0, **extra):
    return {"step": step, "max_logit": max(v for layer in max_logits for v in layer), "max_logits": max_logits,
            "n_clipped": n_clipped, **extra}


def test_events_split_the_next_rows_excess_into_growth_and_batch():
    tau = 10.0
    rows = [
        _row(1, [[12.0, 3.0, 9.5]], n_clipped=1, max_logits_after=[[10.2, 3.5, 9.6]]),  # (0,0) clipped
        _row(2, [[11.22, 3.0, 8.64]]),            # next batch: (0,0) x1.1, (0,2) x0.9
        _row(3, [[9.0, 3.0, 2.0]]),               # no clip at 2: step 3 is not covered
        _row(4, [[10.5, 3.0, 2.0]], n_clipped=1, max_logits_after=[[9.8, 3.0, 2.0]]),
        # no row 5: the last clip has no next batch to read
    ]
    events = slack_events(rows, tau)
    # the clipped head, and the unclipped head within 10% of tau; the 3.5 head is too far under
    assert [(e.step, e.head, e.clipped) for e in events] == [(1, (0, 0), True), (1, (0, 2), False)]
    clipped, near = events
    assert clipped.growth == pytest.approx(1.02) and clipped.batch == pytest.approx(1.1)
    assert clipped.excess == pytest.approx(11.22 / tau)
    assert clipped.growth_share == pytest.approx(math.log(1.02) / math.log(1.122))
    assert near.excess == pytest.approx(0.864) and near.growth_share is None  # ended under tau

    out = slack_decomposition(rows, tau)
    assert out["events"] == 1 and out["events_over_tau"] == 1
    assert out["worst"] == {"step": 2, "head": [0, 0], "excess": pytest.approx(1.122), "growth": pytest.approx(1.02),
                            "batch": pytest.approx(1.1), "clipped": True}
    assert out["growth"]["max"] == pytest.approx(1.02) and out["batch"]["median"] == pytest.approx(1.1)


def test_no_clip_or_no_next_row_gives_none():
    assert slack_decomposition([_row(1, [[1.0]])], 10.0) is None
    assert slack_decomposition([_row(1, [[12.0]], n_clipped=1, max_logits_after=[[10.0]])], 10.0) is None


@given(st.floats(0.5, 2.0), st.floats(0.5, 2.0), st.floats(1.0, 100.0))
def test_growth_times_batch_is_the_next_rows_ratio_to_tau(growth, batch, tau):
    rows = [_row(1, [[2 * tau]], n_clipped=1, max_logits_after=[[growth * tau]]), _row(2, [[growth * batch * tau]])]
    (e,) = slack_events(rows, tau)
    assert e.growth == pytest.approx(growth) and e.batch == pytest.approx(batch)
    assert e.excess == pytest.approx(rows[1]["max_logit"] / tau)


def test_a_step_near_tau_without_a_clip_is_covered_too():
    """The lab re-reads the batch on steps with a head within 10% of tau: a head that was not
    clipped but crosses tau on the next batch is decomposed the same way."""
    tau = 10.0
    rows = [_row(7, [[9.7, 1.0]], max_logits_after=[[9.9, 1.0]]), _row(8, [[10.9, 1.0]], n_clipped=1)]
    (e,) = slack_events(rows, tau)
    assert (e.step, e.head, e.clipped) == (7, (0, 0), False)
    assert e.growth == pytest.approx(0.99) and e.batch == pytest.approx(10.9 / 9.9)
    assert slack_decomposition(rows, tau) is None  # no clipped head: nothing to summarise
