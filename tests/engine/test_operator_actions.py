"""Operator actions against a real Dovecot and a real engine: reconnect now skips the
back-off without sending mail again; pause holds no session and resume catches up."""

from __future__ import annotations

import asyncio

from django.db import close_old_connections

from devtools.testing.mail import make_message
from superimap.accounts import users as accounts_users
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from tests.helpers.engine import FAST, RunningEngine, wait_for


def _user(user_id: int) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id)


def _subjects(user_id: int) -> list[str]:
    close_old_connections()
    rows = Delivery.objects.filter(user_id=user_id, kind="new_mail").order_by("id")
    return [d.payload["envelope"]["subject"] for d in rows]


def _act(action, user_id: int) -> None:
    action(_user(user_id))


def test_reconnect_now_skips_the_login_back_off(mailbox):
    """A refused login waits 240 s or more before the next try (session.backoff_delay);
    once the password is fixed on the server side, reconnect now logs in within seconds."""
    user = mailbox(password="wrong-password")

    async def scenario():
        async with RunningEngine(session_settings=FAST):
            await wait_for(lambda: _user(user.id).status == "auth_failed")
            # Fixed without a session restart (a plain UPDATE): the back-off still holds.
            await asyncio.to_thread(
                lambda: MailboxUser.objects.filter(id=user.id).update(password="secret-pw")
            )
            await asyncio.sleep(1.5)
            assert (await asyncio.to_thread(_user, user.id)).status == "auth_failed"
            await asyncio.to_thread(_act, accounts_users.reconnect_user, user.id)
            await wait_for(lambda: _user(user.id).status == "idle", timeout=5)

    asyncio.run(scenario())
    fixed = _user(user.id)
    assert fixed.last_error == "" and fixed.consecutive_failures == 0


def test_reconnect_now_restarts_a_watching_session_and_sends_nothing_again(mailbox, dovecot):
    user = mailbox()

    async def scenario():
        async with RunningEngine(session_settings=FAST) as engine:
            await wait_for(lambda: _user(user.id).status == "idle")
            first = engine.sessions[user.id][0]
            msg = make_message("before", "a@example.test", user.email, "x")
            await asyncio.to_thread(dovecot.deliver, user.tag, msg)
            await wait_for(lambda: _subjects(user.id) == ["before"])
            await asyncio.to_thread(_act, accounts_users.reconnect_user, user.id)
            await wait_for(
                lambda: user.id in engine.sessions and engine.sessions[user.id][0] is not first,
                timeout=5,
            )
            await wait_for(lambda: _user(user.id).status == "idle")
            msg = make_message("after", "a@example.test", user.email, "y")
            await asyncio.to_thread(dovecot.deliver, user.tag, msg)
            await wait_for(lambda: "after" in _subjects(user.id))
            await asyncio.sleep(0.5)  # a resent "before" would show up now

    asyncio.run(scenario())
    assert _subjects(user.id) == ["before", "after"]


def test_pause_holds_no_session_and_resume_catches_up_without_loss(mailbox, dovecot):
    user = mailbox()

    async def scenario():
        async with RunningEngine(session_settings=FAST) as engine:
            await wait_for(lambda: _user(user.id).status == "idle")
            await asyncio.to_thread(_act, accounts_users.pause_user, user.id)
            await wait_for(lambda: user.id not in engine.sessions, timeout=5)
            msg = make_message("while paused", "a@example.test", user.email, "x")
            await asyncio.to_thread(dovecot.deliver, user.tag, msg)
            await asyncio.sleep(1.5)  # several refreshes: nobody takes the mailbox
            paused = await asyncio.to_thread(_user, user.id)
            assert user.id not in engine.sessions
            assert paused.status == "paused" and paused.owner_node == ""
            assert await asyncio.to_thread(_subjects, user.id) == []
            await asyncio.to_thread(_act, accounts_users.resume_user, user.id)
            await wait_for(lambda: _subjects(user.id) == ["while paused"], timeout=5)
            await wait_for(lambda: _user(user.id).status == "idle")

    asyncio.run(scenario())
    resumed = _user(user.id)
    assert resumed.paused_at is None
    assert _subjects(user.id) == ["while paused"]
