"""One partner cannot slow everyone (issue 15, item 5): a partner whose endpoint hangs is
held to its share of the worker's slots, and a claim serves every partner with due rows."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from devtools.testing.webhook_receiver import HANG
from superimap.delivery import fairness, outbox, queue
from superimap.delivery.models import Delivery
from superimap.delivery.worker import Worker
from superimap.platform.dbpool import DbPool
from tests.helpers.delivery import make_partner, make_user


def queue_user_events(partner, count: int, kind=Delivery.Kind.USER_CONNECTED) -> list[Delivery]:
    """One event each of `count` users of the partner (as when that many connect at once:
    per-user order holds back a user's later lifecycle events, not other users')."""
    with transaction.atomic():
        return [outbox.enqueue_user_event(kind, make_user(partner)) for _ in range(count)]


def run_worker_until(worker: Worker, pool: DbPool, done, timeout: float, during=None):
    """Run the real worker loop until done() or timeout; `during(worker)` runs beside it.
    Returns the seconds it took (or the timeout)."""

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        started = time.monotonic()
        try:
            if during is not None:
                await during(worker)
            while not done() and time.monotonic() - started < timeout and not task.done():
                await asyncio.sleep(0.01)
            return time.monotonic() - started
        finally:
            stop.set()
            await task
            pool.shutdown()

    return asyncio.run(scenario())


def test_a_hanging_partner_does_not_delay_another_partners_webhook(seeded_providers, make_receiver):
    # The incident: 60 users of partner A connected at once, A's endpoint accepts and never
    # answers, and partner B's webhook waited for A's timeout.
    hanging = make_receiver(responses=lambda event: HANG)
    healthy = make_receiver()
    queue_user_events(make_partner(hanging.url, name="A"), 60)
    b_user = make_user(make_partner(healthy.url, name="B"))
    pool = DbPool(size=2)
    worker = Worker(pool, "fair-node", concurrency=50, timeout_seconds=10, poll_interval=0.05)
    sent_at = []

    async def b_after_a_hangs(worker: Worker) -> None:
        deadline = time.monotonic() + 10
        while not hanging.received and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # every slot A may take is taken by now
        await asyncio.to_thread(_enqueue_closing, b_user)
        sent_at.append(time.monotonic())
        worker.wake()

    run_worker_until(worker, pool, lambda: bool(healthy.received), 15, b_after_a_hangs)
    assert healthy.received, "B's webhook never arrived"
    waited = healthy.received[0].received_at - sent_at[0]
    assert waited < 1.0, f"B's webhook waited {waited:.1f} s behind A's hanging endpoint"
    # A was held to its share: the slots it holds are fewer than all of them.
    assert 0 < len(hanging.received) <= fairness.Caps.for_concurrency(50).partner


def _enqueue_closing(user) -> None:
    from django.db import connection

    try:
        outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, user)
    finally:
        connection.close()


def test_a_claim_takes_each_partners_rows_even_behind_a_large_older_backlog(
    seeded_providers, make_receiver
):
    a = make_partner("http://a.example.test", name="A")
    b = make_partner("http://b.example.test", name="B")
    queue_user_events(a, 300)
    b_ids = {d.id for d in queue_user_events(b, 5)}
    caps = fairness.Caps(partner=30, endpoint=20, slow_endpoint=4)
    room = fairness.Shares(caps).room(fairness.CLAIM_ROUNDS)
    now = timezone.now() + timedelta(seconds=1)

    claimed = queue.claim_due("node", 50, now, timedelta(seconds=60), room)

    by_partner = {}
    for item in claimed:
        by_partner.setdefault(item.partner_id, []).append(item.id)
    assert set(by_partner[b.id]) == b_ids
    assert len(by_partner[a.id]) == caps.endpoint
    # Only what was taken is leased: A's other rows stay claimable.
    assert Delivery.objects.filter(lease_until__isnull=False).count() == caps.endpoint + 5


def test_a_partner_with_all_its_kinds_on_one_endpoint_is_held_to_the_partner_share(
    seeded_providers,
):
    a = make_partner("http://a.example.test", name="A")
    for kind in (Delivery.Kind.USER_CONNECTED, Delivery.Kind.USER_DISCONNECTED):
        queue_user_events(a, 40, kind)
    caps = fairness.Caps(partner=30, endpoint=20, slow_endpoint=4)
    now = timezone.now() + timedelta(seconds=1)

    room = fairness.Shares(caps).room(fairness.CLAIM_ROUNDS)

    claimed = queue.claim_due("node", 50, now, timedelta(seconds=60), room)

    assert len(claimed) == caps.partner
    assert max(sum(1 for c in claimed if c.kind == k) for k in {c.kind for c in claimed}) <= 20


def test_a_claim_skips_partners_whose_share_is_in_flight(seeded_providers):
    a = make_partner("http://a.example.test", name="A")
    b = make_partner("http://b.example.test", name="B")
    queue_user_events(a, 100)
    queue_user_events(b, 3)
    shares = fairness.Shares(fairness.Caps(partner=10, endpoint=10, slow_endpoint=2))
    for number in range(10):  # A's share is open already
        shares.opened(-1 - number, a.id, Delivery.Kind.USER_CONNECTED)
    now = timezone.now() + timedelta(seconds=1)

    # LIMIT 3: without skipping A in SQL, A's older rows would fill it.
    claimed = queue.claim_due("node", 3, now, timedelta(seconds=60), shares.room())

    assert {c.partner_id for c in claimed} == {b.id}
    assert len(claimed) == 3


def test_a_slow_endpoint_is_held_to_the_slow_share():
    clock = [100.0]
    caps = fairness.Caps(partner=30, endpoint=20, slow_endpoint=4)
    shares = fairness.Shares(caps, clock=lambda: clock[0])
    shares.opened(1, 7, "new_mail")
    assert shares.room().endpoint_cap((7, "new_mail")) == 20

    clock[0] += fairness.SLOW_AFTER_SECONDS  # a POST open this long: slow
    room = shares.room()
    assert room.endpoint_cap((7, "new_mail")) == 4
    assert [room.take(7, "new_mail") for _ in range(4)] == [True, True, True, False]
    assert room.take(7, "user_connected")  # its other endpoints are not slow

    shares.closed(1, answered=False, seconds=fairness.SLOW_AFTER_SECONDS)  # timed out
    assert shares.room().endpoint_cap((7, "new_mail")) == 4  # still slow: no answer
    shares.opened(2, 7, "new_mail")
    shares.closed(2, answered=True, seconds=0.05)  # a quick answer: back to the full share
    assert shares.room().endpoint_cap((7, "new_mail")) == 20


def test_rows_taken_ahead_go_past_the_endpoint_cap_but_not_into_another_partners_share(
    seeded_providers,
):
    # A busy worker's claim may take rows ahead (issue 20, workerpipe): past A's endpoint
    # cap, held and sent as A's POSTs finish. B's due rows behind A's older backlog are
    # taken all the same: the ahead rows come on top of the shares.
    a = make_partner("http://a.example.test", name="A")
    b = make_partner("http://b.example.test", name="B")
    queue_user_events(a, 300)
    b_ids = {d.id for d in queue_user_events(b, 5)}
    caps = fairness.Caps(partner=30, endpoint=20, slow_endpoint=4)
    room = fairness.Shares(caps).room(fairness.CLAIM_ROUNDS)
    room.ahead = 12
    now = timezone.now() + timedelta(seconds=1)

    claimed = queue.claim_due("node", 50 + 12, now, timedelta(seconds=60), room)

    by_partner: dict[int, list[int]] = {}
    for item in claimed:
        by_partner.setdefault(item.partner_id, []).append(item.id)
    assert set(by_partner[b.id]) == b_ids
    assert len(by_partner[a.id]) == caps.endpoint + 12
    assert room.ahead == 0


def test_ahead_stops_at_twice_the_cap_and_skips_slow_endpoints():
    caps = fairness.Caps(partner=30, endpoint=20, slow_endpoint=4)
    clock = [100.0]
    shares = fairness.Shares(caps, clock=lambda: clock[0])
    for number in range(20):  # new_mail at its cap
        shares.opened(number, 7, "new_mail")
    shares.opened(99, 7, "user_connected")
    clock[0] += fairness.SLOW_AFTER_SECONDS  # every POST above open this long: slow
    room = shares.room()
    room.ahead = 100
    # Slow endpoints: their (slow) cap only, nothing ahead; the SQL skips them.
    assert not room.take(7, "new_mail")
    assert room.full() == ([], [(7, "new_mail")])

    # A POST open for a second (not slow yet): the cap as before, but nothing ahead.
    shares = fairness.Shares(caps, clock=lambda: clock[0])
    shares.opened(1, 7, "new_mail")
    clock[0] += fairness.AHEAD_STALLED_SECONDS
    room = shares.room()
    room.ahead = 100
    assert [room.take(7, "new_mail") for _ in range(20)] == [True] * 19 + [False]

    room = fairness.Shares(caps).room()
    room.ahead = 100
    taken = [room.take(8, "new_mail") for _ in range(45)]
    assert taken == [True] * 40 + [False] * 5  # the cap, then as many again ahead
    assert room.ahead == 80
    assert room.full() == ([], [(8, "new_mail")])
    # A partner's other endpoint: ahead up to its partner cap plus an endpoint's.
    assert [room.take(8, "user_connected") for _ in range(11)] == [True] * 10 + [False]
    assert room.full() == ([8], [])

    room = fairness.Shares(caps).room()
    room.ahead = 3
    assert [room.take(9, "new_mail") for _ in range(24)] == [True] * 23 + [False]
    assert room.full() == ([], [(9, "new_mail")])  # no ahead left: at its cap is full


def test_shares_fit_a_held_row_only_under_the_sending_caps():
    caps = fairness.Caps(partner=3, endpoint=2, slow_endpoint=1)
    shares = fairness.Shares(caps)
    new_mail, connected = (7, "new_mail"), (7, "user_connected")
    shares.opened(1, *new_mail)
    assert shares.fits(new_mail)
    shares.opened(2, *new_mail)
    assert not shares.fits(new_mail)  # the endpoint's cap
    shares.opened(3, *connected)
    assert not shares.fits(connected)  # the partner's cap
    shares.closed(1, answered=True, seconds=0.01)
    assert shares.fits(new_mail) and shares.fits(connected)
    shares.dropped(3)
    shares.closed(2, answered=False, seconds=10.0)  # no answer: slow, cap 1
    shares.opened(4, *new_mail)
    assert not shares.fits(new_mail)


def test_a_partner_at_its_cap_with_a_stalled_endpoint_is_skipped_though_rows_may_go_ahead(
    seeded_providers,
):
    # A hangs: its share is open and a POST has been open for a second. Rows ahead must not
    # reopen A's backlog to the claim's SQL (its due rows are of a kind with nothing open):
    # A's 300 older rows would fill the LIMIT and B, with rows due, would get nothing.
    a = make_partner("http://a.example.test", name="A")
    b = make_partner("http://b.example.test", name="B")
    queue_user_events(a, 300)
    queue_user_events(b, 3)
    clock = [100.0]
    shares = fairness.Shares(
        fairness.Caps(partner=10, endpoint=8, slow_endpoint=2), clock=lambda: clock[0]
    )
    for number in range(10):  # none to user_connected, the kind of A's due rows
        kind = Delivery.Kind.NEW_MAIL if number < 8 else Delivery.Kind.USER_DISCONNECTED
        shares.opened(-1 - number, a.id, kind)
    clock[0] += fairness.AHEAD_STALLED_SECONDS
    room = shares.room()
    room.ahead = 25
    now = timezone.now() + timedelta(seconds=1)

    claimed = queue.claim_due("node", 3 + 25, now, timedelta(seconds=60), room)

    assert {c.partner_id for c in claimed} == {b.id}
    assert len(claimed) == 3
