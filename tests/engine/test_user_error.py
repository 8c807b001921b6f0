"""user_error / user_recovered: the partner is told once per transition (Dovecot)."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta

import pytest
from django.db import close_old_connections
from django.utils import timezone

from devtools.testing import free_port
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider
from tests.helpers.engine import RunningEngine, fast_engine, wait_for


def _user(user_id: int) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id)


def _events(user_id: int, kind: str) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id, kind=kind).order_by("id"))


def test_a_refused_login_is_told_once_across_retries_and_restarts_then_recovery_once(
    mailbox, mail_partner
):
    mail_partner.user_error_webhook = "http://127.0.0.1:9/error"
    mail_partner.save()
    user = mailbox(password="wrong-password")

    async def scenario():
        async with fast_engine():
            await wait_for(lambda: _user(user.id).consecutive_failures >= 5)
        # A new engine (as after a restart) finds the user still failing: no second event.
        async with fast_engine(node_id="other-node"):
            failures = await asyncio.to_thread(lambda: _user(user.id).consecutive_failures)
            await wait_for(lambda: _user(user.id).consecutive_failures >= failures + 3)
            errors = await asyncio.to_thread(_events, user.id, "user_error")
            await asyncio.to_thread(
                lambda: MailboxUser.objects.filter(id=user.id).update(password="secret-pw")
            )
            await wait_for(lambda: _user(user.id).status == "idle", timeout=15)
            await wait_for(lambda: _events(user.id, "user_recovered"))
            await asyncio.sleep(1.0)  # a second user_recovered would show up now
        return errors

    errors_before_fix = asyncio.run(scenario())
    [error] = errors_before_fix
    assert _events(user.id, "user_error") == [error]
    assert error.status == Delivery.Status.PENDING  # the partner has a user_error URL
    assert error.payload["status"] == "auth_failed"
    assert error.payload["error"].startswith("login refused")
    assert error.payload["failing_since"]
    [recovered] = _events(user.id, "user_recovered")
    assert recovered.id > error.id
    assert recovered.status == Delivery.Status.SKIPPED  # no user_recovered URL: skipped
    assert recovered.payload["status"] == "idle"
    assert recovered.payload["failing_since"] == error.payload["failing_since"]
    user = _user(user.id)
    assert user.failing_since is None and user.error_notified_at is None


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_a_certificate_failure_is_tls_failed_and_told(mail_partner, dovecot, tls):
    dovecot.add_user("tlsuser", "pw")
    connection = Connection.objects.create(
        partner=mail_partner,
        provider=ImapProvider.objects.get(code="PLAIN"),  # verifies certificates
        imap_host="127.0.0.1",
        imap_port=dovecot.imaps_port if tls == "implicit" else dovecot.imap_port,
        imap_tls=tls,
    )
    user = MailboxUser.objects.create(
        connection=connection,
        tag="tls",
        login_username="tlsuser",
        password="pw",
        connected_at=timezone.now(),
    )

    async def scenario():
        async with fast_engine():
            await wait_for(lambda: _user(user.id).status == "tls_failed")
            await wait_for(lambda: _events(user.id, "user_error"))
            await wait_for(lambda: _user(user.id).consecutive_failures >= 3)

    asyncio.run(scenario())
    [error] = _events(user.id, "user_error")
    assert error.payload["status"] == "tls_failed"
    assert "certificate" in error.payload["error"]
    assert "certificate" in _user(user.id).last_error


def test_backing_off_is_told_only_after_15_minutes(mail_partner):
    connection = Connection.objects.create(
        partner=mail_partner,
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        imap_host="127.0.0.1",
        imap_port=free_port(),  # nothing listens: connection refused, again and again
        imap_tls="none",
    )
    user = MailboxUser.objects.create(
        connection=connection,
        tag="down",
        login_username="u",
        password="pw",
        connected_at=timezone.now(),
    )

    def fail_since(minutes: int) -> None:
        MailboxUser.objects.filter(id=user.id).update(
            failing_since=timezone.now() - timedelta(minutes=minutes)
        )

    async def scenario():
        async with fast_engine():
            await wait_for(lambda: _user(user.id).failing_since is not None)
            await wait_for(lambda: _user(user.id).consecutive_failures >= 5)
            told_early = await asyncio.to_thread(_events, user.id, "user_error")
            await asyncio.to_thread(fail_since, 14)
            await wait_for(lambda: _user(user.id).consecutive_failures >= 10)
            told_at_14 = await asyncio.to_thread(_events, user.id, "user_error")
            await asyncio.to_thread(fail_since, 16)
            await wait_for(lambda: _events(user.id, "user_error"))
            failures = await asyncio.to_thread(lambda: _user(user.id).consecutive_failures)
            await wait_for(lambda: _user(user.id).consecutive_failures >= failures + 3)
            return told_early, told_at_14

    told_early, told_at_14 = asyncio.run(scenario())
    assert told_early == [] and told_at_14 == []
    [error] = _events(user.id, "user_error")
    assert error.payload["status"] in ("backing_off", "connecting")
    assert "ConnectionRefusedError" in error.payload["error"]


def test_the_first_auth_back_off_after_a_dropped_connection_is_the_first(mailbox, dovecot, caplog):
    """A kicked session then a refused login: one transient failure (retried at once), then
    auth failure number one, 300 s ± 20 %, not number two (600 s ± 20 %, seen as 543 s)."""
    user = mailbox()
    caplog.set_level(logging.INFO, logger="superimap.engine")

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user(user.id).status == "idle")
            await asyncio.to_thread(dovecot.add_user, user.tag, "changed-pw")
            await asyncio.to_thread(dovecot.kick, user.tag)
            await wait_for(lambda: _user(user.id).status == "auth_failed", timeout=15)

    asyncio.run(scenario())
    retries = [
        (match.group(1), float(match.group(2)))
        for record in caplog.records
        if (
            match := re.search(
                r"mailbox .*?\(id \d+\): (.*); retry \d+ in ([\d.]+)s", record.getMessage()
            )
        )
        and f"(id {user.id}):" in record.getMessage()
    ]
    assert len(retries) == 2, retries
    (dropped, first_delay), (refused, auth_delay) = retries
    assert "login refused" not in dropped and first_delay < 1.0
    assert "login refused" in refused
    assert 240 <= auth_delay <= 360, auth_delay
