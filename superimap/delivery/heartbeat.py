"""Worker liveness (design.md 8): a heartbeat row per worker process, and the claims of
dead workers handed back in seconds.

Every worker renews its WorkerNode row every HEARTBEAT_EVERY seconds. A row older than
WEBHOOK_WORKER_ALIVE_SECONDS is a dead worker (kill -9, a lost host): the first live worker
to see it releases that worker's claimed deliveries, in the transaction that marks the row
released, so they are sent again at once instead of after WEBHOOK_LEASE_SECONDS. The claim
keeps its attempt number (the dead worker may have sent it), so a worker that was only
paused records nothing over the newer attempt (the fence in queue.record_outcomes); and a
worker stops starting POSTs once its own heartbeat is older than it may be (Worker.
claims_valid), so a paused worker that wakes up does not send what others now send.
Claims of a worker without a row (an older version) wait for their lease, as before.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction

from superimap import __version__
from superimap.delivery.models import Delivery, WorkerNode

HEARTBEAT_EVERY = 1.0
# Rows of dead workers are kept this long after their claims were released (/healthz shows
# this host's worker dead until a new one runs), then removed.
DEAD_ROW_RETENTION = timedelta(days=1)


@dataclass(frozen=True)
class Beat:
    released: list[str]
    """Dead workers whose claims this beat released."""
    lapsed: bool
    """This worker had been found dead (a long pause): its claims were released."""


def beat(
    worker_id: str, now: datetime, alive: timedelta, started_at: datetime, judge: bool = True
) -> Beat:
    """Renew this worker's heartbeat; with ``judge``, release the claims of workers dead for
    ``alive`` (a worker that was itself cut off from the database does not judge yet).

    The common beat (its row renewed, nobody dead) is three plain statements: through the
    ORM the same beat took ~0.5 ms of CPU, ~1.8 ms after the second's sleep, every second
    of every worker (issue 20, workercpu3). The rare steps (a lapsed or missing row, a dead
    worker to release) stay in the ORM."""
    table = WorkerNode._meta.db_table
    db_time = connection.ops.adapt_datetimefield_value
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_seen = %s WHERE worker_id = %s AND released_at IS NULL",
            [db_time(now), worker_id],
        )
        lapsed = False
        if not cursor.rowcount:
            mine = WorkerNode.objects.filter(worker_id=worker_id)
            lapsed = bool(mine.update(last_seen=now, released_at=None))
            if not lapsed:
                WorkerNode.objects.create(
                    worker_id=worker_id,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    version=__version__,
                    started_at=started_at,
                    last_seen=now,
                )
        if not judge:
            return Beat([], lapsed)
        cutoff = now - alive
        cursor.execute(
            f"SELECT worker_id FROM {table} WHERE last_seen < %s AND released_at IS NULL "
            "AND worker_id <> %s ORDER BY worker_id",
            [db_time(cutoff), worker_id],
        )
        dead = [name for (name,) in cursor.fetchall()]
        released = []
        for name in dead:
            # Re-checked under the row lock: a worker that renewed meanwhile keeps its claims.
            if WorkerNode.objects.filter(
                worker_id=name, last_seen__lt=cutoff, released_at__isnull=True
            ).update(released_at=now):
                release_dead_claims(name)
                released.append(name)
        cursor.execute(
            f"DELETE FROM {table} WHERE released_at < %s", [db_time(now - DEAD_ROW_RETENTION)]
        )
    return Beat(released, lapsed)


def release_dead_claims(worker_id: str) -> int:
    """Make a dead worker's claims due now. ``attempts`` stays: that attempt may have been
    sent, and a newer claim must fence the dead (or paused) worker's outcome out."""
    return (
        Delivery.objects.filter(status=Delivery.Status.PENDING, claimed_by=worker_id)
        .exclude(claimed_by="")
        .update(claimed_by="", lease_until=None)
    )


def leave(worker_id: str) -> None:
    """On clean shutdown, after release_claims(): this worker is gone, not dead."""
    WorkerNode.objects.filter(worker_id=worker_id).delete()
