"""Worker heartbeats (delivery/heartbeat.py) row by row: a stale worker's claims are handed
back with their attempt number kept, a fresh one keeps them, a worker found dead learns it
at its next beat, a worker just back from an outage judges nobody, and a worker whose own
heartbeat is stale starts no POST."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from django.utils import timezone

from superimap.delivery import heartbeat, outbox, queue
from superimap.delivery.models import Delivery, WorkerNode
from superimap.delivery.worker import Worker
from superimap.platform.dbpool import DbPool
from tests.helpers.delivery import make_partner, make_user

ALIVE = timedelta(seconds=5)


def claimed_by(worker: str, count: int, partner) -> list[Delivery]:
    # One user each: a user's lifecycle events go one at a time (per-user order).
    users = [make_user(partner) for _ in range(count)]
    rows = [outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, user) for user in users]
    claims = queue.claim_due(worker, count, timezone.now(), timedelta(seconds=60))
    assert len(claims) == count
    return rows


def beat(worker: str, age: float = 0.0, judge: bool = True) -> heartbeat.Beat:
    now = timezone.now() - timedelta(seconds=age)
    return heartbeat.beat(worker, now, ALIVE, now, judge)


def test_a_silent_workers_claims_are_handed_back_with_their_attempt(seeded_providers):
    rows = claimed_by("dead:1", 3, make_partner("http://127.0.0.1:9"))
    beat("dead:1", age=6)
    beat("live:2")
    assert beat("live:2").released == []  # already released by the first beat
    for row in Delivery.objects.filter(id__in=[r.id for r in rows]):
        assert (row.claimed_by, row.lease_until, row.attempts) == ("", None, 1)
    assert WorkerNode.objects.get(worker_id="dead:1").released_at is not None
    again = queue.claim_due("live:2", 10, timezone.now(), timedelta(seconds=60))
    assert sorted(c.attempt for c in again) == [2, 2, 2]  # fences the dead worker out


def test_a_worker_that_beats_keeps_its_claims(seeded_providers):
    claimed_by("slow:1", 2, make_partner("http://127.0.0.1:9"))
    beat("slow:1", age=4)  # late, but within WEBHOOK_WORKER_ALIVE_SECONDS
    assert beat("live:2").released == []
    assert Delivery.objects.filter(claimed_by="slow:1").count() == 2


def test_a_worker_found_dead_learns_it_at_its_next_beat(seeded_providers):
    beat("paused:1", age=10)
    assert beat("live:2").released == ["paused:1"]
    back = beat("paused:1")
    assert back.lapsed and WorkerNode.objects.get(worker_id="paused:1").released_at is None
    assert not beat("paused:1").lapsed


def test_a_worker_back_from_an_outage_judges_nobody(seeded_providers):
    claimed_by("other:1", 1, make_partner("http://127.0.0.1:9"))
    beat("other:1", age=10)
    assert beat("live:2", judge=False).released == []
    assert Delivery.objects.filter(claimed_by="other:1").count() == 1


def test_a_worker_whose_heartbeat_is_stale_sends_nothing_and_hands_back(
    seeded_providers, make_receiver
):
    receiver = make_receiver()
    rows = claimed_by("me:1", 2, make_partner(receiver.url))

    async def scenario() -> Worker:
        pool = DbPool(size=2)
        try:
            worker = Worker(pool, "me:1", timeout_seconds=2)
            worker._beat_at = time.monotonic() - 10  # its heartbeat has not got through
            assert not worker.claims_valid()
            claims = [
                queue.Claimed(
                    id=row.id,
                    event_id=str(row.event_id),
                    kind=row.kind,
                    attempt=1,
                    url=f"{receiver.url}/connected",
                    payload_json="{}",
                    sha1=None,
                    api_key="k",
                    webhook_secrets=("whsec_x",),
                    created_at=row.created_at,
                )
                for row in rows
            ]
            worker._inflight = len(claims)
            for claim in claims:
                await worker._send(None, claim)
            return worker
        finally:
            pool.shutdown()

    worker = asyncio.run(scenario())
    assert receiver.received == [] and worker._outcomes == []
    assert sorted(worker._unsent) == sorted(r.id for r in rows)
    assert queue.release_claims("me:1", worker._unsent) == 2
    assert set(Delivery.objects.values_list("claimed_by", "attempts")) == {("", 0)}


def test_it_removes_rows_released_more_than_a_day_ago_and_keeps_the_rest(seeded_providers):
    """The beat's plain-SQL DELETE (heartbeat.beat): a dead worker's row stays for /healthz
    until DEAD_ROW_RETENTION after its release, a live one is never removed."""
    now = timezone.now()
    for name, released in (
        ("gone:1", now - heartbeat.DEAD_ROW_RETENTION - timedelta(seconds=1)),
        ("recent:2", now - heartbeat.DEAD_ROW_RETENTION + timedelta(seconds=60)),
        ("alive:3", None),
    ):
        beat(name, judge=False)  # its row, alive
        WorkerNode.objects.filter(worker_id=name).update(released_at=released)
    assert heartbeat.beat("live:4", now, ALIVE, now).released == []
    assert set(WorkerNode.objects.values_list("worker_id", flat=True)) == {
        "recent:2",
        "alive:3",
        "live:4",
    }


def test_a_beat_renews_only_its_own_row(seeded_providers):
    now = timezone.now()
    beat("me:1", age=3)
    beat("other:2", age=3)
    assert heartbeat.beat("me:1", now, ALIVE, now) == heartbeat.Beat([], False)
    seen = dict(WorkerNode.objects.values_list("worker_id", "last_seen"))
    assert seen["me:1"] == now and seen["other:2"] < now - timedelta(seconds=2)
