"""Engine metrics move while the engine does real work (Dovecot)."""

from __future__ import annotations

import asyncio

from django.db import close_old_connections

from devtools.testing.mail import make_message
from devtools.testing.metrics import scrape, value
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from tests.helpers.engine import RunningEngine, wait_for


def _status(user_id: int) -> str:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id).status


def _new_mail(user_id: int) -> int:
    close_old_connections()
    return Delivery.objects.filter(user_id=user_id, kind="new_mail").count()


def test_it_counts_emails_and_sessions_of_a_running_engine(mailbox, dovecot):
    first, second = mailbox(), mailbox()
    before = scrape()

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _status(first.id) == "idle" and _status(second.id) == "idle")
            for i in range(3):
                raw = make_message(f"counted {i}", "a@example.test", first.email, "x")
                await asyncio.to_thread(dovecot.deliver, first.tag, raw)
            await wait_for(lambda: _new_mail(first.id) == 3)
            # One heartbeat after the sessions started (refresh_interval 0.2 s).
            await asyncio.sleep(0.5)
            return await asyncio.to_thread(scrape)

    during = asyncio.run(scenario())
    after = scrape()

    processed = "superimap_emails_processed_total"
    assert value(during, processed) - value(before, processed) == 3
    assert (
        value(during, "superimap_mailbox_sessions") - value(before, "superimap_mailbox_sessions")
        == 2
    )
    assert value(after, "superimap_mailbox_sessions") == value(before, "superimap_mailbox_sessions")
    # The database gauges, seen from any process.
    assert value(before, "superimap_engine_nodes_alive") == 0
    assert value(during, "superimap_engine_nodes_alive") == 1
    assert value(during, "superimap_engine_mailbox_sessions") == 2
    assert value(after, "superimap_engine_mailbox_sessions") == 0
    assert value(before, "superimap_mailboxes", status="new") == 2
    assert value(during, "superimap_mailboxes", status="idle") == 2
    assert value(during, "superimap_deliveries", status="pending") == 3
    assert value(during, "superimap_oldest_pending_delivery_seconds") > 0


def test_it_measures_push_to_commit_into_metrics_and_the_rollup(mailbox, dovecot, monkeypatch):
    from superimap.platform import rollups

    recorder = rollups.Recorder()
    monkeypatch.setattr(rollups, "RECORDER", recorder)
    user = mailbox()
    before = scrape()

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _status(user.id) == "idle")
            for i in range(2):
                raw = make_message(f"timed {i}", "a@example.test", user.email, "x")
                await asyncio.to_thread(dovecot.deliver, user.tag, raw)
            await wait_for(lambda: _new_mail(user.id) == 2)
            await asyncio.sleep(0.2)

    asyncio.run(scenario())
    after = scrape()

    count = "superimap_push_to_commit_seconds_count"
    assert value(after, count) - value(before, count) == 2
    rows = recorder.take()
    assert sum(values["new_mails"] for _, values in rows) == 2
    # Dovecot's INTERNALDATE is the delivery time: both well under a minute before commit.
    push = [sum(c) for c in zip(*(v["push_to_commit"] for _, v in rows), strict=True)]
    assert sum(push) == 2
    assert sum(push[: rollups.BOUNDS.index(60.0) + 1]) == 2
