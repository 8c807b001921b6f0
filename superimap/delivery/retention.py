"""Retention: dropping old new_mail payload bodies (the raw email) in small batches.

Delivered deliveries lose their payload WEBHOOK_RETENTION_DAYS after delivery (and so
after creation), failed ones WEBHOOK_FAILED_RETENTION_DAYS after creation; the rows, their
status and every attempt stay. User events are a few hundred bytes and are kept. Each batch
is one short UPDATE by primary key (payload_purged_at) and one DELETE of the payloads'
rows (DeliveryPayload), so the queue's writers wait milliseconds at most; SQLite
reuses the freed pages, so the database file stops growing once the oldest payloads go.

No cursor and no memory between steps: each step reads a partial index that holds exactly
the rows still holding a payload of that status (models.py, `delivery_delivered_payloads`
on delivered_at, `delivery_failed_payloads` on created_at), oldest first. Every entry before
the cutoff is purgeable, so a step reads no row it leaves alone, and a row that becomes
purgeable late (a replayed delivery delivered or failed again) is found by the next step,
whatever the process did before.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

from superimap.delivery.models import Delivery, DeliveryPayload
from superimap.platform.sqltext import marks

PURGE_BATCH = 500


def _purgeable_sql(vendor: str) -> dict[str, str]:
    # Literal kind and status: SQLite uses a partial index only when the query's WHERE
    # names the index's condition terms as written, not as bound parameters; and it is told
    # which (without statistics it preferred the status index and a sort).
    table = Delivery._meta.db_table
    found = {}
    for status, column, index in (
        (Delivery.Status.DELIVERED, "delivered_at", "delivery_delivered_payloads"),
        (Delivery.Status.FAILED, "created_at", "delivery_failed_payloads"),
    ):
        hint = f" INDEXED BY {index}" if vendor == "sqlite" else ""
        found[status] = (
            f"SELECT id FROM {table}{hint} WHERE kind = 'new_mail' "
            f"AND status = '{status.value}' "
            f"AND payload_purged_at IS NULL AND {column} < %s ORDER BY {column} LIMIT %s"
        )
    return found


def _purge(ids: list[int], status: str, now: datetime) -> int:
    """Mark the rows purged and delete their DeliveryPayload rows, in one transaction."""
    with transaction.atomic(), connection.cursor() as cursor:
        # status again: a row replayed since the SELECT keeps its payload.
        cursor.execute(
            f"UPDATE {Delivery._meta.db_table} SET payload_purged_at = %s "
            f"WHERE id IN ({marks(ids)}) AND status = %s RETURNING id",
            [connection.ops.adapt_datetimefield_value(now), *ids, status],
        )
        purged = [row_id for (row_id,) in cursor.fetchall()]
        if purged:
            cursor.execute(
                f"DELETE FROM {DeliveryPayload._meta.db_table} "
                f"WHERE delivery_id IN ({marks(purged)})",
                purged,
            )
    return len(purged)


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
        for status, sql in _purgeable_sql(connection.vendor).items():
            cutoff = connection.ops.adapt_datetimefield_value(now - keep[status])
            with connection.cursor() as cursor:
                cursor.execute(sql, [cutoff, self.batch])
                ids = [row_id for (row_id,) in cursor.fetchall()]
            if ids:
                purged += _purge(ids, status, now)
        return purged

    def purge(self, now: datetime, **kwargs) -> int:
        """Steps until a step finds nothing (tests and tools; the worker paces steps)."""
        total = 0
        while count := self.step(now, **kwargs):
            total += count
        return total
