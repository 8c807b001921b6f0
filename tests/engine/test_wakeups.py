"""The engine wakes the webhook workers once per group commit, not once per batch in it:
the sessions a COMMIT resumes together share one on_new_deliveries() call."""

from __future__ import annotations

import asyncio

from django.db import close_old_connections

from devtools.testing.chaos_server import ChaosImapServer
from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.engine import RunningEngine, loopback_users, wait_for

USERS = 5


def _delivered() -> int:
    close_old_connections()
    return Delivery.objects.filter(kind="new_mail").count()


def test_one_wake_up_per_group_of_batches(mail_partner):
    calls = []

    async def scenario():
        server = ChaosImapServer(users=USERS, chaos=False, seed=7)
        await server.start()
        await asyncio.to_thread(loopback_users, mail_partner, server.port, USERS)
        try:
            async with RunningEngine(on_new_deliveries=lambda: calls.append(1)) as engine:
                engine.persister.window = 0.5  # every mailbox's batch in one group
                engine.persister.adaptive = False  # the whole window, even for the first
                await wait_for(
                    lambda: MailboxUser.objects.filter(status="idle").count() == USERS,
                    timeout=15,
                )
                for i in range(USERS):
                    raw = make_message(f"m{i}", "a@example.test", f"user{i}@x", "hi", f"<m{i}@t>")
                    server.add_message(f"user{i}", raw)
                await wait_for(lambda: _delivered() == USERS, timeout=15)
                await asyncio.sleep(0.2)
                groups, batches, wakeups = (
                    engine.persister.groups,
                    engine.persister.batches,
                    engine.wakeups,
                )
        finally:
            await server.stop()
        return server, groups, batches, wakeups

    server, groups, batches, wakeups = asyncio.run(scenario())
    assert batches == USERS and groups < batches  # batches did share groups
    assert len(calls) == wakeups == groups  # one wake-up per group, none per batch
    # Count, don't assume: every message in a folder is one delivery, no skips.
    for i in range(USERS):
        user = MailboxUser.objects.get(tag=f"user{i}")
        delivered = Delivery.objects.filter(user=user, kind="new_mail").count()
        skipped = MailLog.objects.filter(user=user).exclude(skipped_reason="").count()
        assert len(server.messages_of(f"user{i}")) == delivered + skipped == 1
