"""Retention: old new_mail payload bodies are dropped in batches; rows and attempts stay;
the worker keeps delivering while it purges."""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from superimap.delivery import outbox
from superimap.delivery.models import Delivery, DeliveryAttempt
from superimap.delivery.retention import Purger
from superimap.delivery.worker import Worker
from superimap.platform.dbpool import DbPool
from tests.helpers.delivery import make_partner, make_user

BODY = "x" * 4000


def mail(user, n: int, status: str, age_days: float, delivered_days: float | None = None):
    now = timezone.now()
    delivery = Delivery.objects.create(
        kind=Delivery.Kind.NEW_MAIL,
        partner=user.connection.partner,
        user=user,
        message_id=f"<{n}-{time.monotonic_ns()}@retention.test>",
        payload={"sha1": "s", "rfc822": BODY, "user_tag": user.tag},
        status=status,
        attempts=1,
        next_attempt_at=now,
        delivered_at=None
        if status != Delivery.Status.DELIVERED
        else now - timedelta(days=delivered_days if delivered_days is not None else age_days),
    )
    Delivery.objects.filter(id=delivery.id).update(created_at=now - timedelta(days=age_days))
    DeliveryAttempt.objects.create(
        delivery=delivery, number=1, started_at=now, url="http://x.test/", status_code=200
    )
    return delivery


def test_it_purges_delivered_after_7_days_and_failed_after_30(seeded_providers):
    user = make_user(make_partner("http://127.0.0.1:9"))
    old_delivered = mail(user, 1, "delivered", age_days=8)
    recent_delivered = mail(user, 2, "delivered", age_days=6)
    late_delivered = mail(user, 3, "delivered", age_days=8, delivered_days=1)  # retried long
    old_failed = mail(user, 4, "failed", age_days=20)
    very_old_failed = mail(user, 5, "failed", age_days=31)
    old_pending = mail(user, 6, "pending", age_days=40)
    connected = outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, user)
    Delivery.objects.filter(id=connected.id).update(
        status="delivered",
        created_at=timezone.now() - timedelta(days=60),
        delivered_at=timezone.now() - timedelta(days=60),
    )

    assert Purger(batch=2).purge(timezone.now()) == 2
    purged = {d.id for d in Delivery.objects.filter(payload_purged_at__isnull=False)}
    assert purged == {old_delivered.id, very_old_failed.id}
    for delivery in (old_delivered, very_old_failed):
        delivery.refresh_from_db()
        assert delivery.payload == {}
        assert delivery.attempt_log.count() == 1  # attempt metadata stays
    for delivery in (recent_delivered, late_delivered, old_failed, old_pending):
        delivery.refresh_from_db()
        assert delivery.payload["rfc822"] == BODY
    assert Delivery.objects.get(id=connected.id).payload["user_tag"] == user.tag
    assert Delivery.objects.count() == 7


def test_it_purges_in_batches_and_continues_where_it_stopped(seeded_providers):
    user = make_user(make_partner("http://127.0.0.1:9"))
    with transaction.atomic():
        for n in range(25):
            mail(user, n, "delivered", age_days=10)
    purger = Purger(batch=10)
    now = timezone.now()
    assert [purger.step(now) for _ in range(4)] == [10, 10, 5, 0]
    assert not Delivery.objects.filter(payload_purged_at__isnull=True).exists()


def test_purging_under_load_does_not_stall_delivery(seeded_providers, make_receiver, settings):
    """20,000 old payloads (~80 MB) purged by the running worker while new mail arrives at
    100/s: every new mail is delivered, none waits long, and the purge finishes."""
    receiver = make_receiver()
    user = make_user(make_partner(receiver.url))
    old = timezone.now() - timedelta(days=8)
    rows = [
        Delivery(
            kind=Delivery.Kind.NEW_MAIL,
            partner=user.connection.partner,
            user=user,
            message_id=f"<old-{n}@retention.test>",
            payload={"sha1": "s", "rfc822": BODY},
            status=Delivery.Status.DELIVERED,
            attempts=1,
            next_attempt_at=old,
            delivered_at=old,
        )
        for n in range(20000)
    ]
    with transaction.atomic():
        Delivery.objects.bulk_create(rows, batch_size=2000)
        Delivery.objects.update(created_at=old)

    async def scenario() -> list[float]:
        pool = DbPool(size=3)
        worker = Worker(pool, "retention-test", poll_interval=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        new_ids = []
        try:
            for n in range(300):  # 3 s at 100/s
                delivery = await pool.run(
                    lambda n=n: Delivery.objects.create(
                        kind=Delivery.Kind.NEW_MAIL,
                        partner=user.connection.partner,
                        user=user,
                        message_id=f"<new-{n}@retention.test>",
                        payload={"sha1": "s", "rfc822": BODY},
                        next_attempt_at=timezone.now(),
                    )
                )
                new_ids.append(str(delivery.event_id))
                worker.wake()
                await asyncio.sleep(0.01)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                left = await pool.run(
                    lambda: (
                        Delivery.objects.filter(
                            status=Delivery.Status.DELIVERED, payload_purged_at__isnull=True
                        )
                        .exclude(message_id__startswith="<new-")
                        .count()
                    )
                )
                if left == 0 and len(receiver.received) >= 300:
                    break
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await task
            pool.shutdown()
        return new_ids

    new_ids = asyncio.run(scenario())
    assert sorted(e.json["event_id"] for e in receiver.received) == sorted(new_ids)
    assert not Delivery.objects.filter(
        message_id__startswith="<old-", payload_purged_at__isnull=True
    ).exists()
    # Row to receipt on the same host (received_at is monotonic: shift it to wall time).
    offset = time.time() - time.monotonic()
    created = {
        str(d.event_id): d.created_at.timestamp()
        for d in Delivery.objects.filter(message_id__startswith="<new-")
    }
    latencies = [
        event.received_at + offset - created[event.json["event_id"]] for event in receiver.received
    ]
    print(
        f"purge under load: p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    assert statistics.median(latencies) < 0.5, statistics.median(latencies)
    assert max(latencies) < 3.0, max(latencies)


def test_a_row_that_becomes_purgeable_late_is_purged_by_the_next_step(seeded_providers):
    """Issue 16 item 7: the purge's progress lived in the worker's memory, so rows that
    became purgeable behind it (retried or replayed late) stayed until a restart."""
    user = make_user(make_partner("http://127.0.0.1:9"))
    purger = Purger()  # one worker's purger, never restarted
    now = timezone.now()
    replayed_failed = mail(user, 1, "failed", age_days=35)
    replayed_delivered = mail(user, 2, "failed", age_days=10)
    Delivery.replay(Delivery.objects.filter(id__in=[replayed_failed.id, replayed_delivered.id]))
    assert purger.step(now) == 0  # both pending again: not purgeable

    # The old failed one fails again an hour later: purgeable at once (created 35 days ago).
    later = now + timedelta(hours=1)
    Delivery.objects.filter(id=replayed_failed.id).update(status="failed")
    # The other is delivered an hour later: purgeable 7 days after that delivery.
    Delivery.objects.filter(id=replayed_delivered.id).update(status="delivered", delivered_at=later)
    assert purger.step(later) == 1
    assert Delivery.objects.get(id=replayed_failed.id).payload == {}
    assert purger.step(later + timedelta(days=6)) == 0
    assert purger.step(later + timedelta(days=7, seconds=1)) == 1
    assert Delivery.objects.get(id=replayed_delivered.id).payload == {}
