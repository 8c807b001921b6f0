"""Inbox sweep against a real Dovecot: mail older than the user is sent, nothing twice. A
sweep is a backfill of all mail (design.md 4.12; tests/engine/test_backfill.py)."""

from __future__ import annotations

import asyncio

from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.mail import make_message
from superimap.accounts import users as accounts_users
from superimap.delivery.models import Delivery
from superimap.engine import store
from superimap.mailboxes.models import MailboxUser
from tests.helpers.engine import RunningEngine, loopback_connection, wait_for


def _user(user_id: int) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id)


def _subjects(user_id: int) -> list[str]:
    close_old_connections()
    rows = Delivery.objects.filter(user_id=user_id, kind="new_mail").order_by("id")
    return [d.payload["envelope"]["subject"] for d in rows]


def _request_sweep(user_id: int) -> None:
    close_old_connections()
    accounts_users.sweep_user(MailboxUser.objects.get(id=user_id))


def test_a_sweep_sends_the_mail_that_predates_the_user_once(mailbox, dovecot):
    user = mailbox()
    for subject in ("old 1", "old 2"):
        dovecot.deliver(user.tag, make_message(subject, "a@example.test", user.email, "x"))

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user(user.id).status == "idle")
            msg = make_message("later", "a@example.test", user.email, "y")
            await asyncio.to_thread(dovecot.deliver, user.tag, msg)
            await wait_for(lambda: _subjects(user.id) == ["later"])
            await asyncio.to_thread(_request_sweep, user.id)
            await wait_for(lambda: _user(user.id).backfill_finished_at is not None, timeout=15)
            await wait_for(lambda: _user(user.id).status == "idle")
            await asyncio.sleep(0.5)

    asyncio.run(scenario())
    subjects = _subjects(user.id)
    assert subjects[0] == "later"
    assert sorted(subjects[1:]) == ["old 1", "old 2"]
    done = _user(user.id)
    assert (done.backfill_done, done.backfill_total) == (3, 3)  # "later" was sent already
    swept = Delivery.objects.filter(user_id=user.id, kind="new_mail").order_by("id")[1:]
    assert all(d.payload["backfill"] is True and d.backfill for d in swept)


def test_finishing_a_backfill_keeps_a_newer_request_and_is_fenced_by_the_lease(mail_partner):
    connection = loopback_connection(mail_partner, 1)
    user = MailboxUser.objects.create(
        connection=connection, tag="u", owner_node="n1", connected_at=timezone.now()
    )
    accounts_users.request_backfill(user, None)
    served = user.backfill_requested_at
    assert not store.finish_backfill(user.id, "other-node", served)
    accounts_users.request_backfill(user, None)  # a newer request arrives while it runs
    assert not store.finish_backfill(user.id, "n1", served)
    assert _user(user.id).backfill_finished_at is None
    assert store.finish_backfill(user.id, "n1", user.backfill_requested_at)
    assert _user(user.id).backfill_finished_at is not None
