"""A busy worker claims ahead (issue 20, workerpipe; design.md 5.15): past an endpoint's
cap it takes rows it holds, leased, and sends as that endpoint's POSTs finish, so the
endpoint's POSTs stay open while the next claim runs. The caps still bound the POSTs open;
rows that cannot be sent soon are handed back. Real worker, SQLite, real receiver."""

from __future__ import annotations

import asyncio
import time

from django.db import connection

from devtools.testing.webhook_receiver import Hang
from superimap.delivery import fairness, outbox
from superimap.delivery import worker as worker_module
from superimap.delivery.models import Delivery
from superimap.delivery.worker import Worker
from superimap.platform.dbpool import DbPool
from tests.helpers.delivery import count_claims, make_partner, make_user


def _enqueue(user, count: int) -> None:
    for n in range(count):
        payload = {"sha1": f"sha-{n}", "user_tag": user.tag}
        outbox.enqueue(Delivery.Kind.NEW_MAIL, user, payload, message_id=f"<{n}@ahead>")


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_a_backlog_to_one_endpoint_is_claimed_ahead_and_sent_within_its_cap(
    seeded_providers, make_receiver, monkeypatch, settings
):
    settings.WEBHOOK_PARTNER_CONCURRENCY = 4
    settings.WEBHOOK_ENDPOINT_CONCURRENCY = 4
    claims = count_claims(monkeypatch)
    receiver = make_receiver(responses=lambda event: Hang(0.01))
    user = make_user(make_partner(receiver.url))
    _enqueue(user, 60)
    most_open = [0]

    async def scenario() -> Worker:
        pool = DbPool(size=2)
        worker = Worker(pool, "node-ahead", concurrency=16, poll_interval=0.05)
        opened = worker.shares.opened

        def counting(delivery_id: int, partner_id: int, kind: str) -> None:
            opened(delivery_id, partner_id, kind)
            most_open[0] = max(most_open[0], len(worker.shares._open))

        worker.shares.opened = counting
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await _until(lambda: worker.counts.get("delivered", 0) == 60)
        finally:
            stop.set()
            await task
            pool.shutdown()
        return worker

    worker = asyncio.run(scenario())
    assert worker.ahead == 8
    # The first claim: the endpoint's share (4) and as many again ahead (its cap of 8).
    assert claims[0] == 4 + 4, claims
    assert most_open[0] == 4  # never more POSTs open than the cap
    assert len({r.json["event_id"] for r in receiver.received}) == 60
    assert Delivery.objects.filter(status="delivered", attempts=1).count() == 60


def test_rows_held_behind_hanging_posts_are_handed_back_unsent(
    seeded_providers, make_receiver, monkeypatch, settings
):
    # Cap 2, the endpoint's two POSTs hang: the two rows claimed ahead cannot be sent. Within
    # HOLD_MAX_SECONDS and the housekeeping interval they are handed back (due again, the
    # claim's attempt undone); the endpoint, stalled, gets no rows ahead after that.
    settings.WEBHOOK_PARTNER_CONCURRENCY = 2
    settings.WEBHOOK_ENDPOINT_CONCURRENCY = 2
    monkeypatch.setattr(worker_module, "HOLD_MAX_SECONDS", 0.3)
    monkeypatch.setattr(fairness, "AHEAD_STALLED_SECONDS", 0.3)
    monkeypatch.setattr(worker_module, "REPLAY_INTERVAL", 0.2)
    claims = count_claims(monkeypatch)
    receiver = make_receiver(responses=lambda event: Hang(3.0))
    user = make_user(make_partner(receiver.url))
    _enqueue(user, 4)
    state = {}

    async def scenario() -> None:
        pool = DbPool(size=2)
        worker = Worker(pool, "node-held", concurrency=8, poll_interval=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await _until(lambda: len(receiver.received) == 2)
            await _until(lambda: worker._held_n == 0, timeout=2.0)
            # The worker forgets its held rows, then commits their release: read the rows
            # once that commit is in (or after 2 s, for the assertions below to say why).
            deadline = time.monotonic() + 2.0
            while True:
                state["rows"] = await asyncio.to_thread(_rows)
                released = [row for row in state["rows"] if row[1] == ""]
                if len(released) >= 2 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            state["claimed"] = list(claims)
            state["received"] = len(receiver.received)
            await _until(lambda: worker.counts.get("delivered", 0) == 4)
        finally:
            stop.set()
            await task
            pool.shutdown()

    asyncio.run(scenario())
    assert state["claimed"][0] == 2 + 2
    assert state["received"] == 2  # the held rows were not sent
    held = [row for row in state["rows"] if row[1] == ""]
    assert len(held) == 2 and all(row[2] == 0 for row in held), state["rows"]
    # While the two POSTs hang the stalled endpoint took nothing ahead again.
    assert all(n == 0 for n in state["claimed"][1:]), state["claimed"]
    assert Delivery.objects.filter(status="delivered", attempts=1).count() == 4


def _rows() -> list[tuple]:
    try:
        return list(Delivery.objects.order_by("id").values_list("id", "claimed_by", "attempts"))
    finally:
        connection.close()
