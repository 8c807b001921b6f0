"""Per-minute rollups behind the dashboard's overview (design.md 9.1).

The engine and the worker count what they do in memory (new mails, webhooks delivered and
failed, latency histograms) and each process writes one MinuteRollup row per minute: the
current minute's row is upserted every ROLLUP_FLUSH_SECONDS with the totals so far (a retry after
a failed write writes the same totals again: nothing counted twice), earlier minutes once
more when they end. The overview reads a day of these rows (1,440 per process) instead of
computing rates and percentiles over the Delivery table at page load.

Latencies go in histograms over BOUNDS (seconds), the same buckets as the Prometheus
histograms, so several processes' minutes add up bucket by bucket and p50/p99 come from
the sum. Push -> commit is measured by the engine from the push (FetchedMessage.pushed_at:
the EXISTS that announced the message, or its INTERNALDATE) to the commit of its Delivery
row; commit -> 2xx by the worker from the Delivery row's creation to the 2xx answer.

This module is the in-memory half (no Django: the engine and the worker count here); the
rows are written and purged by superimap/rollupwriter.py.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable

BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
BUCKETS = len(BOUNDS) + 1  # the last bucket: slower than BOUNDS[-1]
KEEP_IN_MEMORY = 24 * 60  # minutes not yet written survive a day-long database outage


class _Minute:
    __slots__ = ("new_mails", "delivered", "failed", "push", "commit", "backlog", "written")

    def __init__(self) -> None:
        self.new_mails = 0
        self.delivered = 0
        self.failed = 0
        self.push = [0] * BUCKETS
        self.commit = [0] * BUCKETS
        self.backlog: tuple[int, float] | None = None
        self.written = False


class Recorder:
    """This process's counters, by minute (epoch seconds // 60). Used from the event loop
    only: ``record_*`` cost a dict lookup and a bisect per mail."""

    def __init__(self) -> None:
        self._minutes: dict[int, _Minute] = {}
        self._dirty: set[int] = set()

    def _minute(self, now: float | None = None) -> tuple[int, _Minute]:
        key = int((time.time() if now is None else now) // 60)
        minute = self._minutes.get(key)
        if minute is None:
            minute = self._minutes[key] = _Minute()
            for old in [k for k in self._minutes if k < key - KEEP_IN_MEMORY]:
                del self._minutes[old]
                self._dirty.discard(old)
        self._dirty.add(key)
        return key, minute

    def record_new_mails(self, count: int, push_seconds: Iterable[float] = ()) -> None:
        """``count`` new mails committed; the push -> commit latency of those known."""
        _, minute = self._minute()
        minute.new_mails += count
        buckets = minute.push
        for seconds in push_seconds:
            buckets[bisect_left(BOUNDS, seconds)] += 1

    def record_outcomes(self, delivered: int, failed: int, commit_seconds: Iterable[float]) -> None:
        """Webhook attempts recorded: 2xx, failures, commit -> 2xx of the delivered ones."""
        _, minute = self._minute()
        minute.delivered += delivered
        minute.failed += failed
        buckets = minute.commit
        for seconds in commit_seconds:
            buckets[bisect_left(BOUNDS, seconds)] += 1

    def record_backlog(self, due: int, oldest_seconds: float) -> None:
        _, minute = self._minute()
        minute.backlog = (due, oldest_seconds)

    def needs_backlog(self) -> bool:
        """Whether this minute has no backlog figure yet (one COUNT per minute)."""
        minute = self._minutes.get(int(time.time() // 60))
        return minute is None or minute.backlog is None

    def take(self) -> list[tuple[int, dict]]:
        """Snapshots of the minutes changed since the last take (to write, off the loop)."""
        rows = []
        current = int(time.time() // 60)
        for key in sorted(self._dirty):
            m = self._minutes[key]
            rows.append(
                (
                    key,
                    {
                        "new_mails": m.new_mails,
                        "delivered": m.delivered,
                        "failed_attempts": m.failed,
                        "push_to_commit": list(m.push),
                        "commit_to_delivered": list(m.commit),
                        "backlog": m.backlog[0] if m.backlog else None,
                        "backlog_oldest_seconds": m.backlog[1] if m.backlog else None,
                    },
                )
            )
        self._dirty.clear()
        for key in [k for k in self._minutes if k < current]:
            del self._minutes[key]  # ended and about to be written for the last time
        return rows

    def put_back(self, rows: list[tuple[int, dict]]) -> None:
        """A write failed: keep these minutes for the next flush (unless newer data is
        already there, which includes them)."""
        for key, values in rows:
            if key not in self._minutes:
                m = self._minutes[key] = _Minute()
                m.new_mails = values["new_mails"]
                m.delivered = values["delivered"]
                m.failed = values["failed_attempts"]
                m.push = list(values["push_to_commit"])
                m.commit = list(values["commit_to_delivered"])
                if values["backlog"] is not None:
                    m.backlog = (values["backlog"], values["backlog_oldest_seconds"])
            self._dirty.add(key)


RECORDER = Recorder()
