"""Backfilled new_mail go in a lane of their own (design.md 4.12): a claim takes live rows
first and backfill rows only for the slots left, so live mail never waits behind a
backfill's backlog; fair shares still hold across both lanes. The real claim SQL."""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.utils import timezone

from superimap.delivery import fairness, outbox, queue
from superimap.delivery.models import Delivery
from tests.helpers.delivery import make_partner, make_user

LEASE = timedelta(seconds=60)


def mail(user, n: int, backfill: bool) -> Delivery:
    payload = {"sha1": f"sha-{n}", "user_tag": user.tag}
    row = outbox.enqueue(Delivery.Kind.NEW_MAIL, user, payload, message_id=f"<{n}@t>")
    if backfill:
        Delivery.objects.filter(id=row.id).update(backfill=True)
    return row


def test_live_mail_is_claimed_before_an_older_backfill_backlog(seeded_providers):
    user = make_user(make_partner("http://127.0.0.1:9"))
    backlog = [mail(user, n, backfill=True) for n in range(30)]
    live = mail(user, 100, backfill=False)  # the newest row of all
    now = timezone.now() + timedelta(seconds=1)

    first = queue.claim_due("node-a", 5, now, LEASE)
    assert [c.id for c in first] == [live.id, *[b.id for b in backlog[:4]]]
    # With no live row due, the backfill lane is served oldest first.
    second = queue.claim_due("node-a", 5, now, LEASE)
    assert [c.id for c in second] == [b.id for b in backlog[4:9]]


def test_the_backfill_lane_keeps_the_fair_shares(seeded_providers, settings):
    settings.WEBHOOK_PARTNER_CONCURRENCY = 3
    settings.WEBHOOK_ENDPOINT_CONCURRENCY = 3
    busy = make_user(make_partner("http://127.0.0.1:9"))
    other = make_user(make_partner("http://127.0.0.1:8", name="Other app"))
    for n in range(10):
        mail(busy, n, backfill=True)
    live = mail(busy, 50, backfill=False)
    quiet = mail(other, 60, backfill=True)
    now = timezone.now() + timedelta(seconds=1)
    # As the worker claims after new work came in: up to CLAIM_ROUNDS looks (per lane).
    room = fairness.Shares(fairness.Caps.for_concurrency(10)).room(fairness.CLAIM_ROUNDS)

    claimed = queue.claim_due("node-a", 10, now, LEASE, room)
    ids = [c.id for c in claimed]
    assert ids[0] == live.id and quiet.id in ids
    assert sum(1 for c in claimed if c.partner_id == busy.connection.partner_id) == 3


def test_each_lane_is_a_range_of_the_claims_index(db):
    if connection.vendor != "sqlite":
        return
    dues, _, _, _ = queue._claim_sql("sqlite")
    now = timezone.now()
    with connection.cursor() as cursor:
        for backfill in (False, True):
            cursor.execute(f"EXPLAIN QUERY PLAN {dues[backfill]}", [now, now, 10])
            plan = [row[-1] for row in cursor.fetchall()]
            main = [step for step in plan if "delivery_due_by_endpoint" in step]
            assert main and "backfill=? AND next_attempt_at<?" in main[0], plan
            assert not any("TEMP B-TREE" in step for step in plan), plan


def test_the_deliveries_api_says_which_are_backfilled(seeded_providers, api, partner):
    user = make_user(partner)
    live, backfilled = mail(user, 1, backfill=False), mail(user, 2, backfill=True)
    rows = {row["event_id"]: row["backfill"] for row in api.get("/deliveries").json()}
    assert rows == {str(live.event_id): False, str(backfilled.event_id): True}
