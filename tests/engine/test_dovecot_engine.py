"""The engine against a real Dovecot on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import time

from django.db import close_old_connections

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.engine import RunningEngine, wait_for


def _status(user_id: int) -> str:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id).status


def _deliveries(user_id: int) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id, kind="new_mail").order_by("id"))


def test_it_delivers_a_message_that_arrives_while_idling(mailbox, dovecot):
    user = mailbox()
    dovecot.deliver(user.tag, make_message("Before", "a@example.test", "b@example.test", "old"))

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _status(user.id) == "idle")
            raw = make_message("Héllo wörld", "Ann <ann@example.test>", user.email, "new mail")
            started = time.monotonic()
            await asyncio.to_thread(dovecot.deliver, user.tag, raw)
            rows = await wait_for(lambda: _deliveries(user.id), timeout=5)
            return raw, rows, time.monotonic() - started

    raw, rows, latency = asyncio.run(scenario())
    assert latency < 2.0
    assert len(rows) == 1
    payload = rows[0].payload
    assert payload["envelope"]["subject"] == "Héllo wörld"
    assert payload["envelope"]["from"] == [
        {"name": "Ann", "route": None, "mailbox": "ann", "host": "example.test"}
    ]
    assert payload["sha1"] == hashlib.sha1(payload["rfc822"].encode()).hexdigest()
    assert payload["rfc822"].encode() == raw
    assert payload["user_tag"] == user.tag
    # The mail that predates the user produced nothing, and nothing was marked \Seen.
    assert MailLog.objects.filter(user=user).count() == 1
    assert all("\\Seen" not in flags for flags in dovecot.message_flags(user.tag))


def test_it_marks_a_wrong_password_auth_failed_and_keeps_running(mailbox, dovecot):
    user = mailbox(password="wrong-password")
    good = mailbox()

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _status(user.id) == "auth_failed")
            await wait_for(lambda: _status(good.id) == "idle")

    asyncio.run(scenario())
    user.refresh_from_db()
    assert "login refused" in user.last_error
    assert user.consecutive_failures >= 1


def test_it_neither_loses_nor_duplicates_mail_across_a_uidvalidity_change(mailbox, dovecot):
    user = mailbox()

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _status(user.id) == "idle")
            for i in range(3):
                msg = make_message(f"first {i}", "a@example.test", user.email, "x")
                await asyncio.to_thread(dovecot.deliver, user.tag, msg)
            await wait_for(lambda: len(_deliveries(user.id)) == 3)
            await asyncio.to_thread(dovecot.recreate_mailbox, user.tag)
            msg = make_message("after change", "a@example.test", user.email, "y")
            await asyncio.to_thread(dovecot.deliver, user.tag, msg)
            await wait_for(lambda: len(_deliveries(user.id)) >= 4, timeout=15)
            await asyncio.sleep(1.0)

    asyncio.run(scenario())
    subjects = [d.payload["envelope"]["subject"] for d in _deliveries(user.id)]
    assert sorted(subjects) == ["after change", "first 0", "first 1", "first 2"]
    user.refresh_from_db()
    assert user.uid_validity == dovecot.uidvalidity(user.tag)


def test_it_watches_over_implicit_tls(mailbox, dovecot):
    user = mailbox(tls="implicit")

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _status(user.id) == "idle")
            msg = make_message("over tls", "a@example.test", user.email, "z")
            await asyncio.to_thread(dovecot.deliver, user.tag, msg)
            return await wait_for(lambda: _deliveries(user.id))

    rows = asyncio.run(scenario())
    assert [r.payload["envelope"]["subject"] for r in rows] == ["over tls"]
