"""The end-to-end benchmark's per-second latency breakdown (devtools/bench/e2e.py)."""

from __future__ import annotations

from devtools.bench.e2e import _by_second


def test_latency_is_grouped_by_the_second_each_message_was_pushed_in():
    # (message number, pushed at, arrived at, signature ok)
    notes = [(1, 100.0, 100.010, True), (2, 100.5, 100.530, True), (3, 101.2, 101.9, True)]
    assert _by_second(notes) == [
        {"second": 0, "count": 2, "p50": 10.0, "p99": 30.0, "max": 30.0},
        {"second": 1, "count": 1, "p50": 700.0, "p99": 700.0, "max": 700.0},
    ]
    assert _by_second([]) == []
