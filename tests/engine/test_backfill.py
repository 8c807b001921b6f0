"""A chosen backfill window against a real Dovecot (design.md 4.12): the window exactly, oldest
first, "backfill": true, filters and dedup as skips, the count identity; live mail is not held
behind a paced backfill."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.mail import make_message
from superimap.accounts import users as accounts_users
from superimap.delivery.models import Delivery
from superimap.engine.backfill import BackfillPacer
from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.engine import RunningEngine, wait_for


def _user(user_id: int) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id)


def _mail(user_id: int) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id, kind="new_mail").order_by("id"))


def _finished(user_id: int) -> bool:
    return _finished_of(_user(user_id))


def _finished_of(user: MailboxUser) -> bool:
    return user.backfill_finished_at is not None


def test_a_backfill_sends_exactly_its_window_oldest_first_with_the_count_identity(
    mailbox, dovecot
):
    user = mailbox()
    user.filters = [{"name": "no ads", "subject_contains": ["report", "note", "copy", "live"]}]
    user.save(update_fields=["filters"])
    now = timezone.now()
    since = now - timedelta(days=4)
    to = user.email

    def msg(subject: str, mid: str) -> bytes:
        return make_message(subject, "a@example.test", to, "body", f"<{mid}@t>")

    copied = msg("copy", "copy")
    old = [
        (msg("ten days", "d10"), now - timedelta(days=10)),  # outside
        (msg("just before", "before"), since - timedelta(seconds=60)),  # outside, same day
        (msg("report a", "a"), since + timedelta(seconds=60)),  # inside, on the boundary day
        (msg("ad", "ad"), now - timedelta(days=3)),  # inside: filtered
        (copied, now - timedelta(days=2)),  # inside
        (msg("note b", "b"), now - timedelta(days=1)),  # inside
        (copied, now - timedelta(hours=1)),  # inside: a duplicate of "copy"
    ]
    for raw, when in old:
        dovecot.append(user.tag, raw, when)
    accounts_users.request_backfill(user, since)  # as on create with backfill_since

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _finished(user.id), timeout=20)
            await asyncio.to_thread(dovecot.deliver, user.tag, msg("live one", "live"))
            await wait_for(lambda: len(_mail(user.id)) == 4, timeout=10)

    asyncio.run(scenario())
    mail = _mail(user.id)
    subjects = [d.payload["envelope"]["subject"] for d in mail]
    assert subjects == ["report a", "copy", "note b", "live one"]  # oldest first, then live
    assert [d.payload.get("backfill") for d in mail] == [True, True, True, None]
    assert [d.backfill for d in mail] == [True, True, True, False]
    window_uids = {3, 4, 5, 6, 7}
    rows = {r.uid: r.skipped_reason for r in MailLog.objects.filter(user_id=user.id)}
    assert {uid: rows[uid] for uid in window_uids} == {
        3: "",
        4: "filtered",
        5: "",
        6: "",
        7: "duplicate",
    }
    assert not {1, 2} & set(rows)  # outside the window: never looked at
    # The count identity of the window: its messages = backfill deliveries + recorded skips.
    skips = sum(1 for uid in window_uids if rows[uid])
    assert len(window_uids) == sum(1 for d in mail if d.backfill) + skips
    done = _user(user.id)
    assert (done.backfill_done, done.backfill_total) == (5, 5)
    assert done.backfill_progress()["state"] == "done"
    assert done.last_uid == 8  # the checkpoint is the live mail's, not moved back


def test_live_mail_is_not_held_behind_a_paced_backfill(mailbox, dovecot):
    user = mailbox()
    start = timezone.now() - timedelta(days=2)
    count = 16
    for i in range(count):
        raw = make_message(f"old {i}", "a@example.test", user.email, "x", f"<old{i}@t>")
        dovecot.append(user.tag, raw, start + timedelta(minutes=i))
    accounts_users.request_backfill(user, None)
    live = make_message("live", "b@example.test", user.email, "y", "<live@t>")
    seen = {}

    def live_row():
        close_old_connections()
        rows = Delivery.objects.filter(user_id=user.id, message_id="<live@t>")
        return rows.select_related("stored_payload").first()  # payload read here, not async

    async def scenario():
        # 4 a second: the backfill takes ~4 s; the live message arrives ~1 s into it.
        async with RunningEngine(backfill_pacer=BackfillPacer(per_mailbox=4, per_host=100)):
            await wait_for(lambda: _user(user.id).backfill_done >= 2, timeout=15)
            sent = time.monotonic()
            await asyncio.to_thread(dovecot.deliver, user.tag, live)
            row = await wait_for(live_row, timeout=10, interval=0.02)
            seen["latency"] = time.monotonic() - sent
            then = await asyncio.to_thread(_user, user.id)
            seen["done_then"], seen["finished_then"] = then.backfill_done, _finished_of(then)
            await wait_for(lambda: _finished(user.id), timeout=20)
            assert row.backfill is False and "backfill" not in row.payload

    asyncio.run(scenario())
    assert not seen["finished_then"], seen
    assert seen["done_then"] < count, seen
    assert seen["latency"] < 1.5, seen
    assert len(_mail(user.id)) == count + 1
    assert _user(user.id).backfill_done == count


def test_a_sweep_over_mail_sent_before_is_not_paced_like_new_mail(mailbox, dovecot):
    user = mailbox()
    count = 20

    async def scenario():
        # 2 a second: 20 messages to fetch would take 10 s.
        async with RunningEngine(backfill_pacer=BackfillPacer(per_mailbox=2, per_host=100)):
            await wait_for(lambda: _user(user.id).status == "idle")
            for i in range(count):
                raw = make_message(f"live {i}", "a@example.test", user.email, "x", f"<l{i}@t>")
                await asyncio.to_thread(dovecot.deliver, user.tag, raw)
            await wait_for(lambda: len(_mail(user.id)) == count, timeout=20)
            await asyncio.to_thread(_sweep, user.id)
            started = time.monotonic()
            await wait_for(lambda: _finished(user.id), timeout=20)
            return time.monotonic() - started

    seconds = asyncio.run(scenario())
    done = _user(user.id)
    assert (done.backfill_done, done.backfill_total) == (count, count)
    assert len(_mail(user.id)) == count  # nothing sent again
    assert seconds < 5, seconds


def _sweep(user_id: int) -> None:
    accounts_users.sweep_user(_user(user_id))
