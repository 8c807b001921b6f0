"""The fairness benchmark's summary (devtools/bench/fairness.py): medians per label,
scenario and A's queue, with mails that never arrived sorting last."""

from __future__ import annotations

from devtools.bench.fairness import _percentile, summarize


def result(label: str, scenario: str, a: int, p50, p99, missing: int = 0) -> dict:
    return {
        "label": label,
        "scenario": scenario,
        "a": {"deliveries_queued": a},
        "b": {
            "latency_ms": {"p50": p50, "p99": p99},
            "not_arrived_after_drain": missing,
        },
    }


def test_runs_are_summarized_by_label_scenario_and_a_queue_with_medians():
    runs = [
        result("main", "with_a", 1000, None, None, 1000),
        result("main", "with_a", 1000, None, None, 1000),
        result("main", "with_a", 1000, 5.0, None, 500),
        result("main", "with_a", 60, 13000.0, 22000.0),
        result("branch", "with_a", 1000, 6.7, 19.9),
        result("branch", "with_a", 1000, 6.8, 22.9),
        result("branch", "with_a", 1000, 6.7, 19.1),
    ]
    summary = {(s["label"], s["a_deliveries_queued"]): s for s in summarize(runs)}
    assert summary[("branch", 1000)]["b_p99_ms_median"] == 19.9
    assert summary[("branch", 1000)]["b_p99_ms_runs"] == [19.9, 22.9, 19.1]
    # A run whose p50 never arrived is the slowest: the median of (5, never, never) is never.
    assert summary[("main", 1000)]["b_p50_ms_median"] is None
    assert summary[("main", 1000)]["b_not_arrived_runs"] == [1000, 1000, 500]
    assert summary[("main", 60)]["runs"] == 1


def test_a_percentile_on_a_mail_that_never_arrived_is_infinite():
    assert _percentile([1.0, 2.0, float("inf")], 0.99) == float("inf")
    assert _percentile([1.0, 2.0, float("inf")], 0.50) == 2.0
    assert _percentile([], 0.5) is None
