"""The end-to-end benchmark's per-second latency breakdown (devtools/bench/e2e.py)."""

from __future__ import annotations

from devtools.bench.e2e import _by_second, _stage_summary, _stages_by_second


def test_latency_is_grouped_by_the_second_each_message_was_pushed_in():
    # (message number, pushed at, arrived at, signature ok)
    notes = [(1, 100.0, 100.010, True), (2, 100.5, 100.530, True), (3, 101.2, 101.9, True)]
    assert _by_second(notes) == [
        {"second": 0, "count": 2, "p50": 10.0, "p99": 30.0, "max": 30.0},
        {"second": 1, "count": 1, "p50": 700.0, "p99": 700.0, "max": 700.0},
    ]
    assert _by_second([]) == []


def test_the_stage_split_is_summed_up_overall_and_by_push_second():
    # (pushed at, push -> row, row -> first attempt, attempt -> arrival), seconds
    stages = [
        (100.0, 0.010, 0.100, 0.002),
        (100.5, 0.030, 0.300, 0.004),
        (101.2, 0.020, 1.0, 0.001),
    ]
    assert _stage_summary(stages) == {
        "count": 3,
        "push_to_row": {"p50": 20.0, "p99": 30.0},
        "row_to_attempt": {"p50": 300.0, "p99": 1000.0},
        "attempt_to_arrival": {"p50": 2.0, "p99": 4.0},
    }
    by_second = _stages_by_second(stages)
    assert [row["second"] for row in by_second] == [0, 1]
    assert by_second[0]["count"] == 2
    assert by_second[1]["row_to_attempt"] == {"p50": 1000.0, "p99": 1000.0}
    assert _stages_by_second([]) == []
