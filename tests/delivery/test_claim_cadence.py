"""When the worker claims (issue 20, item 2): a claim says whether it may have left due
rows, and a finished send claims again only then, so a delivery that comes alone costs one
claim, not two."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from superimap.delivery import fairness, outbox, queue
from superimap.delivery.models import Delivery
from superimap.delivery.worker import Worker
from superimap.platform.dbpool import DbPool
from tests.helpers.delivery import make_partner, make_user


def queue_events(partner, count: int) -> None:
    with transaction.atomic():
        for _ in range(count):
            outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, make_user(partner))


def claim(limit: int, room: fairness.Room) -> list[queue.Claimed]:
    now = timezone.now() + timedelta(seconds=1)
    return queue.claim_due("node", limit, now, timedelta(seconds=60), room)


def test_a_claim_says_whether_due_rows_may_be_left(seeded_providers):
    a = make_partner("http://a.example.test", name="A")
    caps = fairness.Caps(partner=2, endpoint=2, slow_endpoint=1)
    queue_events(a, 1)

    room = fairness.Shares(caps).room()
    assert len(claim(10, room)) == 1 and not room.more  # all there was

    queue_events(a, 4)
    room = fairness.Shares(fairness.Caps(partner=10, endpoint=10, slow_endpoint=1)).room()
    assert len(claim(3, room)) == 3 and room.more  # cut short by its LIMIT

    queue_events(a, 3)
    room = fairness.Shares(caps).room()
    assert len(claim(10, room)) == 2 and room.more  # A's share is full: 2 rows are left


def test_deliveries_that_come_alone_cost_one_claim_each(seeded_providers, make_receiver):
    receiver = make_receiver()
    partner = make_partner(receiver.url)
    pool = DbPool()
    # A long poll: every claim here comes from a wake-up or a finished send.
    worker = Worker(pool, "cadence", concurrency=10, poll_interval=30)

    async def scenario() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            for number in range(1, 6):
                await asyncio.to_thread(_enqueue_closing, partner)
                worker.wake()
                deadline = time.monotonic() + 10
                while worker.counts.get("delivered", 0) < number:
                    assert time.monotonic() < deadline, worker.counts
                    await asyncio.sleep(0.01)
            return worker.claims
        finally:
            stop.set()
            await task
            pool.shutdown()

    claims = asyncio.run(scenario())

    received = receiver.wait_for(5, timeout=5)
    sent = {str(e) for e in Delivery.objects.values_list("event_id", flat=True)}
    assert len(sent) == 5 and {event.json["event_id"] for event in received} == sent
    # The first claim at start (nothing due yet), then one per delivery; before, each
    # finished send claimed again and found nothing.
    assert claims <= 1 + 5, claims


def _enqueue_closing(partner) -> None:
    try:
        queue_events(partner, 1)
    finally:
        connection.close()
