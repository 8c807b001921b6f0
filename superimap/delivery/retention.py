"""Retention: dropping old new_mail payload bodies (the raw email) in small batches.

Delivered deliveries lose their payload WEBHOOK_RETENTION_DAYS after creation (and
delivery), failed ones after WEBHOOK_FAILED_RETENTION_DAYS; the rows, their status and
every attempt stay. User events are a few hundred bytes and are kept. Each batch is one
short UPDATE by primary key, so the queue's writers wait milliseconds at most; SQLite
reuses the freed pages, so the database file stops growing once the oldest payloads go.

The scan walks `created_at` upwards from a cursor kept in memory: a step reads only rows
that crossed the cutoff since the last step. A row that becomes purgeable after the cursor
passed it (a very old delivery replayed and delivered again) is purged after the next
restart of the worker.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction

from superimap.delivery.models import Delivery

PURGE_BATCH = 500


class Purger:
    """Retention periods default to the settings; the soak benchmark passes shorter ones."""

    def __init__(
        self,
        batch: int = PURGE_BATCH,
        retention: timedelta | None = None,
        failed_retention: timedelta | None = None,
    ) -> None:
        self.batch = batch
        self.retention = retention
        self.failed_retention = failed_retention
        self._cursor: dict[str, datetime | None] = {
            Delivery.Status.DELIVERED: None,
            Delivery.Status.FAILED: None,
        }

    def step(
        self,
        now: datetime,
        retention: timedelta | None = None,
        failed_retention: timedelta | None = None,
    ) -> int:
        """Purge at most one batch per status; returns how many payloads were dropped."""
        retention = retention or self.retention
        failed_retention = failed_retention or self.failed_retention
        keep = {
            Delivery.Status.DELIVERED: retention or timedelta(days=settings.WEBHOOK_RETENTION_DAYS),
            Delivery.Status.FAILED: failed_retention
            or timedelta(days=settings.WEBHOOK_FAILED_RETENTION_DAYS),
        }
        purged = 0
        for status, cursor in self._cursor.items():
            cutoff = now - keep[status]
            rows = Delivery.objects.filter(
                kind=Delivery.Kind.NEW_MAIL,
                status=status,
                created_at__lt=cutoff,
                payload_purged_at__isnull=True,
            )
            if cursor is not None:
                rows = rows.filter(created_at__gte=cursor)
            if status == Delivery.Status.DELIVERED:
                rows = rows.filter(delivered_at__lt=cutoff)
            found = list(rows.order_by("created_at").values_list("id", "created_at")[: self.batch])
            if found:
                with transaction.atomic():
                    purged += Delivery.objects.filter(
                        id__in=[row_id for row_id, _ in found], status=status
                    ).update(payload={}, payload_purged_at=now)
            # A short batch means everything before the cutoff was looked at.
            self._cursor[status] = found[-1][1] if len(found) == self.batch else cutoff
        return purged

    def purge(self, now: datetime, **kwargs) -> int:
        """Steps until a step finds nothing (tests and tools; the worker paces steps)."""
        total = 0
        while count := self.step(now, **kwargs):
            total += count
        return total
