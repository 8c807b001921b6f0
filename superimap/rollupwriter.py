"""Writing the per-minute rollups (superimap/platform/rollups.py counts them in memory):
each process upserts its MinuteRollup rows every ROLLUP_FLUSH_SECONDS, a worker measures the
backlog once a minute, and rows past ROLLUP_RETENTION_DAYS are purged (design.md 9.1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from superimap import healthz
from superimap.delivery.models import Delivery
from superimap.engine.models import MinuteRollup
from superimap.platform import dboutage
from superimap.platform.rollups import RECORDER, Recorder

log = logging.getLogger("superimap.platform.rollups")

RETENTION_EVERY = 3600.0


def write(source: str, rows: list[tuple[int, dict]]) -> None:
    """Upsert this process's rows (one per minute)."""
    for key, values in rows:
        minute = datetime.fromtimestamp(key * 60, UTC)
        MinuteRollup.objects.update_or_create(minute=minute, source=source, defaults=values)


def measure_backlog(now: datetime) -> tuple[int, float]:
    """Due, unsent webhooks and the oldest one's wait (indexed: status, next_attempt_at)."""
    due = Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now).count()
    return due, healthz.oldest_due_age(now)


def purge(now: datetime) -> int:
    cutoff = now - timedelta(days=settings.ROLLUP_RETENTION_DAYS)
    deleted, _ = MinuteRollup.objects.filter(minute__lt=cutoff).delete()
    return deleted


async def flush_once(pool, source: str, *, backlog: bool, recorder: Recorder = RECORDER) -> None:
    if backlog and recorder.needs_backlog():
        recorder.record_backlog(*await pool.run(measure_backlog, timezone.now()))
    rows = recorder.take()
    if not rows:
        return
    try:
        await pool.run(write, source, rows)
    except BaseException:
        recorder.put_back(rows)
        raise


async def flush_loop(pool, source: str, stop: asyncio.Event, *, backlog: bool) -> None:
    """Write this process's rollups every ROLLUP_FLUSH_SECONDS until ``stop``, once more after;
    ``backlog``: this process runs a worker, which measures the backlog once a minute."""
    purged_at = 0.0
    while True:
        stopping = stop.is_set()
        try:
            await flush_once(pool, source, backlog=backlog and not stopping)
            if time.monotonic() - purged_at > RETENTION_EVERY:
                purged_at = time.monotonic()
                await pool.run(purge, timezone.now())
        except Exception as exc:  # noqa: BLE001 - counters are kept, the next flush retries
            if not dboutage.lost(exc):
                log.warning("could not write rollups of %s", source, exc_info=True)
        if stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.ROLLUP_FLUSH_SECONDS)
