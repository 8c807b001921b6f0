"""Tracer emails end to end: the engine sends them by SMTP and detects them in Dovecot."""

from __future__ import annotations

import asyncio
import logging

from django.db import close_old_connections

from devtools.testing import free_port
from devtools.testing.smtp_server import SmtpServer
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from superimap.tracers.models import TracerLog
from tests.helpers.engine import RunningEngine, wait_for

PASSWORD = "secret-pw"


def _tracers(user_id: int) -> list[TracerLog]:
    close_old_connections()
    return list(TracerLog.objects.filter(user_id=user_id).order_by("id"))


def _status(user_id: int) -> str:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id).status


def _use_smtp(user: MailboxUser, port: int) -> None:
    connection = user.connection
    connection.smtp_host, connection.smtp_port, connection.smtp_tls = "127.0.0.1", port, "none"
    connection.save()


def _into_dovecot(dovecot):
    def deliver(mail_from, recipients, raw):
        for rcpt in recipients:
            dovecot.deliver(rcpt.split("@")[0], raw)

    return deliver


def test_tracer_mails_come_back_detected_and_are_not_delivered(mailbox, dovecot):
    user = mailbox()
    user.enable_tracer = True
    user.save()
    plain = mailbox()  # same connection, tracer off: never picked
    smtp = SmtpServer(on_message=_into_dovecot(dovecot), users={user.tag: PASSWORD})

    async def scenario():
        async with smtp:
            await asyncio.to_thread(_use_smtp, user, smtp.port)
            async with RunningEngine(tracer_interval=0.3, num_tracers=3) as engine:
                await wait_for(lambda: _status(user.id) == "idle")
                await wait_for(
                    lambda: (
                        len(rows := _tracers(user.id)) >= 3 and all(r.detected_at for r in rows[:3])
                    ),
                    timeout=15,
                )
                # Stop further rounds and let the last one in flight finish.
                engine.tracers.count = 0
                await asyncio.sleep(0.5)
                await wait_for(lambda: all(r.detected_at for r in _tracers(user.id)), timeout=10)
                return engine.tracers.rounds

    rounds = asyncio.run(scenario())
    rows = _tracers(user.id)
    assert rounds >= 1 and len(rows) == 3 * rounds
    assert all(row.latency_seconds > 0 for row in rows)
    assert {m.recipients[0] for m in smtp.received} == {user.email}
    subjects = {row.tracer_uid for row in rows}
    assert len(smtp.received) == len(subjects)
    assert all(m.username == user.tag for m in smtp.received)
    assert not Delivery.objects.filter(user__in=[user, plain]).exists()
    assert not TracerLog.objects.filter(user=plain).exists()


def test_no_tracer_for_users_without_enable_tracer(mailbox, dovecot):
    user = mailbox()
    smtp = SmtpServer(on_message=_into_dovecot(dovecot), users={user.tag: PASSWORD})

    async def scenario():
        async with smtp:
            await asyncio.to_thread(_use_smtp, user, smtp.port)
            async with RunningEngine(tracer_interval=0.1, num_tracers=3):
                await wait_for(lambda: _status(user.id) == "idle")
                await asyncio.sleep(1.0)

    asyncio.run(scenario())
    assert not TracerLog.objects.exists()
    assert smtp.connections == 0


def test_smtp_down_leaves_tracers_undetected_and_engine_running(mailbox, dovecot, caplog):
    user = mailbox()
    user.enable_tracer = True
    user.save()
    _use_smtp(user, free_port())
    caplog.set_level(logging.INFO, logger="superimap")

    async def scenario():
        async with RunningEngine(tracer_interval=0.2, num_tracers=2) as engine:
            await wait_for(lambda: _status(user.id) == "idle")
            await wait_for(lambda: engine.tracers.rounds >= 2, timeout=10)
            # The engine still works: a normal mail is delivered.
            from devtools.testing.mail import make_message

            raw = make_message("Still here", "a@example.test", user.email, "body")
            await asyncio.to_thread(dovecot.deliver, user.tag, raw)
            await wait_for(lambda: Delivery.objects.filter(user_id=user.id).exists(), timeout=5)
            return engine.tracers.failed, engine.sessions.keys()

    failed, sessions = asyncio.run(scenario())
    rows = _tracers(user.id)
    assert failed >= 4 and len(rows) >= 4
    assert all(row.detected_at is None and row.latency_seconds is None for row in rows)
    assert "sending via 127.0.0.1" in caplog.text
    assert PASSWORD not in caplog.text


def test_an_oauth_user_gets_tracers_over_xoauth2(mail_partner):
    from devtools.testing.chaos_server import ChaosImapServer
    from devtools.testing.oauth_server import LoopbackOAuthServer
    from tests.helpers.engine import oauth_user

    def enable(user_id: int, smtp_port: int) -> None:
        MailboxUser.objects.filter(id=user_id).update(enable_tracer=True)
        _use_smtp(MailboxUser.objects.get(id=user_id), smtp_port)

    async def scenario():
        imap = ChaosImapServer(users=3, seed=5)

        async def into_chaos(mail_from, recipients, raw):
            for rcpt in recipients:
                imap.add_message(rcpt, raw)

        smtp = SmtpServer(on_message=into_chaos, tokens={"user1": "token-for-user1"})
        async with LoopbackOAuthServer() as oauth, smtp:
            await imap.start()
            try:
                token = oauth.issue_refresh_token("user1")
                user_id = await asyncio.to_thread(
                    oauth_user, mail_partner, imap, oauth, "user1", token
                )
                await asyncio.to_thread(enable, user_id, smtp.port)
                async with RunningEngine(tracer_interval=0.3, num_tracers=2) as engine:
                    await wait_for(lambda: _status(user_id) == "idle")
                    await wait_for(lambda: engine.tracers.rounds >= 1)
                    engine.tracers.count = 0
                    await wait_for(
                        lambda: (rows := _tracers(user_id)) and all(r.detected_at for r in rows),
                        timeout=10,
                    )
            finally:
                await imap.stop()
        return user_id, smtp

    user_id, smtp = asyncio.run(scenario())
    assert len(_tracers(user_id)) % 2 == 0 and smtp.auth_failures == 0
    assert {m.username for m in smtp.received} == {"user1"}
    assert not Delivery.objects.filter(user_id=user_id).exists()
