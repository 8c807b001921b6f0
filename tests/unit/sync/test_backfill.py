"""The backfill window, its progress and its pace (sync/backfill.py), table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from superimap.sync.backfill import (
    Pace,
    WindowSearch,
    remaining,
    step_size,
    to_check,
    window,
    window_searches,
)

SINCE = datetime(2026, 3, 10, 12, 30, 15, 500000, tzinfo=UTC)


CASES = [
    (
        "all mail: every candidate, no date asked",
        None,
        [3, 1, 2],
        None,
        {},
        [1, 2, 3],
        [],
    ),
    (
        "the sure ones are in; the boundary days are judged by INTERNALDATE",
        SINCE,
        [1, 2, 3, 4, 5],
        [4, 5],
        {
            1: SINCE - timedelta(hours=20),
            2: SINCE.replace(microsecond=0),  # the same second: in
            3: SINCE + timedelta(hours=1),
        },
        [2, 3, 4, 5],
        [1, 2, 3],
    ),
    (
        "a boundary UID without a date (expunged meanwhile) is not in the window",
        SINCE,
        [1, 2],
        [],
        {1: SINCE + timedelta(seconds=1)},
        [1],
        [1, 2],
    ),
    (
        "a second before since is out",
        SINCE,
        [9],
        [],
        {9: SINCE.replace(microsecond=0) - timedelta(seconds=1)},
        [],
        [9],
    ),
]


@pytest.mark.parametrize(
    ("since", "candidates", "sure", "dates", "expected", "checked"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_window(since, candidates, sure, dates, expected, checked):
    assert to_check(candidates, sure) == checked
    assert window(candidates, sure, dates, since) == expected


@pytest.mark.parametrize(
    ("since", "until", "chunk", "expected"),
    [
        (SINCE, 0, 5000, []),
        (None, 40, 5000, [WindowSearch("UID 1:40", None)]),
        (
            SINCE,
            40,
            5000,
            [WindowSearch("SINCE 09-Mar-2026 UID 1:40", "SINCE 12-Mar-2026 UID 1:40")],
        ),
        (
            datetime(2026, 3, 31, 23, 0, tzinfo=UTC),
            7,
            5000,
            [WindowSearch("SINCE 30-Mar-2026 UID 1:7", "SINCE 02-Apr-2026 UID 1:7")],
        ),
        (
            None,
            25,
            10,
            [
                WindowSearch("UID 1:10", None),
                WindowSearch("UID 11:20", None),
                WindowSearch("UID 21:25", None),
            ],
        ),
    ],
    ids=["empty folder", "all mail", "a moment", "across a month's end", "in chunks"],
)
def test_the_searches(since, until, chunk, expected):
    assert window_searches(since, until, chunk) == expected


@pytest.mark.parametrize(
    ("uids", "position", "expected"),
    [
        ([1, 5, 9], None, [1, 5, 9]),  # not started
        ([1, 5, 9], 5, [9]),  # resumed after a crash: after the position
        ([1, 5, 9], 9, []),  # all handled
        ([9, 1, 5], 0, [1, 5, 9]),  # oldest first
    ],
)
def test_what_remains(uids, position, expected):
    assert remaining(uids, position) == expected


@pytest.mark.parametrize(("rate", "expected"), [(1, 1), (20, 5), (200, 50), (10000, 100)])
def test_the_step_size(rate, expected):
    assert step_size(rate) == expected


def test_the_pace_lets_a_burst_through_then_waits_its_rate():
    pace = Pace(rate=20, burst=5, now=0.0)
    assert pace.take(5, 0.0) == 0.0
    assert pace.take(5, 0.0) == pytest.approx(0.25)  # queued behind the first five
    assert pace.take(5, 0.25) == pytest.approx(0.25)  # its turn at 0.5 s
    assert not pace.idle(0.5)
    assert pace.idle(10.0)
    assert pace.take(5, 10.0) == 0.0  # refilled, never above the burst
    assert pace.take(1, 10.0) == pytest.approx(0.05)


def test_what_was_not_used_goes_back_to_the_pace():
    pace = Pace(rate=20, burst=5, now=0.0)
    pace.take(5, 0.0)
    assert pace.take(5, 0.0) == pytest.approx(0.25)
    pace.give_back(5)  # the second five were sent before: nothing fetched
    assert pace.take(5, 0.0) == pytest.approx(0.25)  # not 0.5
    pace.give_back(100)
    assert pace.tokens == 5  # never above the burst
