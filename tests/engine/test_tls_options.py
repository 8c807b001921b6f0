"""Self-hosted servers with their own certificates (issue 8 item 4), against Dovecot's
certificate from a private test CA on 127.0.0.1, through the PLAIN provider (which, unlike
the loopback test providers, verifies certificates)."""

from __future__ import annotations

import asyncio
import itertools
import ssl

import pytest
from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.mail import make_message
from superimap.api.schemas import ConnectionUpdate
from superimap.api.service import update_connection
from superimap.delivery.models import Delivery
from superimap.imapclient import TlsCertificateFailed
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider
from tests.helpers.engine import RunningEngine, wait_for

_names = itertools.count()


def _plain_user(partner, dovecot, **connection_fields) -> MailboxUser:
    name = f"tls{next(_names)}"
    dovecot.add_user(name, "secret-pw")
    fields = {"imap_tls": "implicit", "imap_port": dovecot.imaps_port, **connection_fields}
    if fields["imap_tls"] != "implicit":
        fields["imap_port"] = dovecot.imap_port
    connection = Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="PLAIN"),
        imap_host="127.0.0.1",
        **fields,
    )
    return MailboxUser.objects.create(
        connection=connection,
        tag=name,
        email=f"{name}@example.test",
        login_username=name,
        password="secret-pw",
        connected_at=timezone.now(),
    )


def _row(user_id: int) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id)


def _new_mail(user_id: int) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id, kind="new_mail"))


async def _receives_mail(dovecot, user: MailboxUser) -> None:
    await wait_for(lambda: _row(user.id).status == "idle")
    raw = make_message("over tls", "a@example.test", user.email, "hello")
    await asyncio.to_thread(dovecot.deliver, user.tag, raw)
    await wait_for(lambda: _new_mail(user.id), timeout=5)


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_the_default_refuses_a_private_ca_as_tls_failed_naming_the_fix(mail_partner, dovecot, tls):
    user = _plain_user(mail_partner, dovecot, imap_tls=tls)

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _row(user.id).status == "tls_failed")
            await asyncio.sleep(1.0)  # no quick retries: it stays tls_failed

    asyncio.run(scenario())
    row = _row(user.id)
    assert row.status == "tls_failed"
    assert row.consecutive_failures == 1
    assert "imap_tls_ca" in row.last_error and "imap_tls_verify" in row.last_error
    assert "127.0.0.1" in row.last_error


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_a_ca_bundle_makes_the_certificate_trusted(mail_partner, dovecot, tls):
    user = _plain_user(
        mail_partner, dovecot, imap_tls=tls, imap_tls_ca=dovecot.cert_path.read_text()
    )
    asyncio.run(_run(_receives_mail(dovecot, user)))


def test_verification_can_be_turned_off(mail_partner, dovecot):
    user = _plain_user(mail_partner, dovecot, imap_tls_verify=False)
    asyncio.run(_run(_receives_mail(dovecot, user)))
    assert user.connection.tls_warnings()


def test_plain_imap_works_when_allowed(mail_partner, dovecot):
    user = _plain_user(mail_partner, dovecot, imap_tls="none", imap_allow_plaintext=True)
    asyncio.run(_run(_receives_mail(dovecot, user)))
    assert "without TLS" in user.connection.tls_warnings()[0]


def test_fixing_the_connection_recovers_a_tls_failed_mailbox_at_once(mail_partner, dovecot):
    user = _plain_user(mail_partner, dovecot)

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _row(user.id).status == "tls_failed")
            body = ConnectionUpdate(imap_tls_ca=dovecot.cert_path.read_text())
            await asyncio.to_thread(_update, user.connection_id, body)
            # The auth-like back-off is >= 4 minutes; the update restarts the session.
            await _receives_mail(dovecot, user)

    asyncio.run(scenario())


def _update(connection_id: int, body: ConnectionUpdate) -> None:
    close_old_connections()
    update_connection(Connection.objects.select_related("provider").get(id=connection_id), body)


async def _run(coroutine) -> None:
    async with RunningEngine():
        await coroutine


def test_a_host_name_mismatch_names_imap_host_in_the_fix() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "Hostname mismatch, certificate is not valid for 'mail.example'."
    message = str(TlsCertificateFailed("mail.example", error))
    assert "Hostname mismatch" in message
    assert "set imap_host to a name the certificate is for" in message
