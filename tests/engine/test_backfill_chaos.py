"""Backfills against the chaos IMAP server (no CONDSTORE, no QRESYNC; faults on the wire):
every message of each window is sent once as backfill, nothing outside it, live mail too,
and each window's count identity holds (design.md 4.12)."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.chaos_server import ChaosImapServer, Fault
from devtools.testing.mail import make_message
from superimap.accounts import users as accounts_users
from superimap.delivery.models import Delivery
from superimap.engine.backfill import BackfillPacer
from superimap.engine.session import SessionSettings
from superimap.imapclient import LoginLimiter
from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.engine import RunningEngine, loopback_users, wait_for

MAILBOXES = 5
OLD = 30  # per mailbox, one a day at 08:00 over the last 30 days; the window: 12 days
WINDOW_DAYS = 12
SETTINGS = SessionSettings(
    command_timeout=3, fetch_timeout=5, idle_reissue=30, poll_interval=1, max_backoff=1
)
# Wire faults that end a command or a connection; no STALL (a 3 s timeout each) and no
# UIDVALIDITY change (a new UID space is a new window: tests/unit/sync/test_backfill.py).
FAULTS = [Fault.NO, Fault.BAD, Fault.BYE, Fault.RESET, Fault.TAGGED_GIBBERISH]


def _users() -> list[MailboxUser]:
    close_old_connections()
    return list(MailboxUser.objects.order_by("tag"))


def _all_finished() -> bool:
    return all(u.backfill_finished_at is not None for u in _users())


def test_every_window_is_sent_once_under_wire_faults(mail_partner, caplog):
    now = timezone.now()
    since = now - timedelta(days=WINDOW_DAYS)
    first_day = (now - timedelta(days=OLD)).replace(hour=8, minute=0, second=0, microsecond=0)
    inside: dict[str, set[str]] = {}

    async def scenario():
        server = ChaosImapServer(
            users=MAILBOXES, chaos=False, seed=11, chaos_rate=0.05, faults=FAULTS
        )
        await server.start()
        for i in range(MAILBOXES):
            name = f"user{i}"
            for day in range(OLD):
                when = first_day + timedelta(days=day)
                mid = f"<old.{i}.{day}@t>"
                raw = make_message(f"old {day}", "a@x.test", f"{name}@t", "x", mid)
                server.add_message(name, raw, when)
                if when >= since:
                    inside.setdefault(name, set()).add(mid)
        await asyncio.to_thread(loopback_users, mail_partner, server.port, MAILBOXES)
        for user in await asyncio.to_thread(_users):
            await asyncio.to_thread(accounts_users.request_backfill, user, since)
        # 10 a second: each window takes over a second, so faults land in the backfills.
        pacer = BackfillPacer(per_mailbox=10, per_host=400)
        server.chaos = True
        try:
            # Faults make many reconnects: no 30 s login interval per mailbox here.
            logins = LoginLimiter(mailbox_burst=1000, mailbox_interval=0.01)
            async with RunningEngine(
                session_settings=SETTINGS, backfill_pacer=pacer, login_limiter=logins
            ):
                # Live mail after the baselines (earlier mail is in the mailboxes' windows).
                await wait_for(lambda: all(u.last_uid for u in _users()), timeout=30)
                for _ in range(10):  # live mail while the backfills run
                    server.generate_message()
                    await asyncio.sleep(0.3)
                await wait_for(_all_finished, timeout=60, interval=0.2)
                server.chaos = False
                live = set(server.generated)
                await wait_for(
                    lambda: live <= set(_ids(backfill=False)), timeout=30, interval=0.2
                )
                await asyncio.sleep(1.0)  # anything sent twice would show up now
        finally:
            await server.stop()
        return server, live

    server, live = asyncio.run(scenario())
    assert sum(server.fault_counts.values()) >= 3, server.fault_counts
    # Some backfill was cut by a fault and continued after its stored position.
    assert re.search(r"backfill since .*: \d+ message\(s\) to send, [1-9]\d* done", caplog.text)
    assert sorted(_ids(backfill=False)) == sorted(live)
    for user in _users():
        sent = _ids(backfill=True, user=user)
        assert sorted(sent) == sorted(inside[user.tag]), user.tag  # exactly the window, once
        rows = MailLog.objects.filter(user=user, message_id__in=inside[user.tag])
        # The count identity of the window: messages = backfill deliveries + recorded skips.
        assert len(inside[user.tag]) == len(sent) + rows.exclude(skipped_reason="").count()
        # done and total count the window's mail sent live before the backfill began too.
        live_before = MailLog.objects.filter(
            user=user, uid__lte=user.backfill_until_uid, message_id__in=live
        ).count()
        total = len(inside[user.tag]) + live_before
        assert (user.backfill_done, user.backfill_total) == (total, total)


def _ids(backfill: bool, user: MailboxUser | None = None) -> list[str]:
    close_old_connections()
    rows = Delivery.objects.filter(kind="new_mail", backfill=backfill)
    if user is not None:
        rows = rows.filter(user=user)
    return list(rows.values_list("message_id", flat=True))
