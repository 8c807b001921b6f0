"""The group commit's adaptive window (superimap/sync/groupcommit.py): when the waiting
batches are committed, from the arrival rate, the oldest batch's wait and the group's size."""

from __future__ import annotations

import math

import pytest

from superimap.sync.groupcommit import GAP_CAP_WINDOWS, SMOOTHING, ArrivalRate, commit_wait

W = 0.010  # the window of these cases (ENGINE_GROUP_COMMIT_MS=10)


@pytest.mark.parametrize(
    ("case", "now", "oldest", "waiting", "gap", "window", "max_messages", "wait"),
    [
        # Low rate or no rate yet: at once (a lone mail waits for nobody).
        ("first batch ever (no rate)", 100.0, 100.0, 1, math.inf, W, 500, 0.0),
        ("100/s: one more expected in the window", 100.0, 100.0, 1, 0.010, W, 500, 0.0),
        ("just under two expected", 100.0, 100.0, 1, 0.00501, W, 500, 0.0),
        # Enough expected: up to the window from the oldest batch's arrival.
        ("exactly two expected", 100.0, 100.0, 1, 0.005, W, 500, W),
        ("1,000/s, just arrived", 100.0, 100.0, 1, 0.001, W, 500, W),
        ("1,000/s, oldest waited 4 ms", 100.004, 100.0, 5, 0.001, W, 500, 0.006),
        ("oldest waited the window (a long commit)", 100.010, 100.0, 12, 0.001, W, 500, 0.0),
        ("oldest waited past it", 100.050, 100.0, 40, 0.001, W, 500, 0.0),
        # Full, or no window configured: at once.
        ("full group", 100.0, 100.0, 500, 0.001, W, 500, 0.0),
        ("over full", 100.0, 100.0, 700, 0.001, W, 500, 0.0),
        ("window 0", 100.0, 100.0, 1, 0.0001, 0.0, 500, 0.0),
        ("20 ms window, 200/s", 100.0, 100.0, 1, 0.005, 0.020, 500, 0.020),
    ],
)
def test_commit_wait(case, now, oldest, waiting, gap, window, max_messages, wait):
    assert commit_wait(now, oldest, waiting, gap, window, max_messages) == pytest.approx(wait), case


def test_the_rate_is_unknown_until_the_second_arrival():
    rate = ArrivalRate()
    assert math.isinf(rate.gap)
    rate.arrived(5.0, W)
    assert math.isinf(rate.gap)
    rate.arrived(5.002, W)
    assert rate.gap == pytest.approx(0.002)


@pytest.mark.parametrize(
    ("case", "gaps", "expected"),
    [
        ("steady 1 ms", [0.001] * 30, 0.001),
        ("a step from 1 ms to 5 ms moves by SMOOTHING", [0.001, 0.005], 0.001 + 0.004 * SMOOTHING),
        ("a quiet hour counts as GAP_CAP_WINDOWS windows", [0.001, 3600.0], None),
        ("a clock that went back counts as 0", [0.001, -1.0], 0.001 * (1 - SMOOTHING)),
    ],
)
def test_arrival_rate(case, gaps, expected):
    rate, now = ArrivalRate(), 0.0
    rate.arrived(now, W)
    for gap in gaps:
        now += gap
        rate.arrived(now, W)
    if expected is None:
        expected = 0.001 + (GAP_CAP_WINDOWS * W - 0.001) * SMOOTHING
    assert rate.gap == pytest.approx(expected), case


def test_after_a_quiet_spell_a_burst_gets_groups_within_a_few_batches():
    """From an hour's silence, a burst at 1,000/s: the first batch goes at once, and the
    rate is learnt back within 20 batches, so that groups form again."""
    rate, now = ArrivalRate(), 0.0
    rate.arrived(now, W)
    now += 3600.0
    rate.arrived(now, W)
    assert commit_wait(now, now, 1, rate.gap, W, 500) == 0.0
    for _ in range(20):
        now += 0.001
        rate.arrived(now, W)
    assert commit_wait(now, now, 1, rate.gap, W, 500) == pytest.approx(W)
