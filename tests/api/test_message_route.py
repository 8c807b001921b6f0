"""GET .../messages/{uid_validity}/{uid}: a message streamed from a real Dovecot (and, for
OAuth 2.0 users, from the chaos server with a loopback OAuth server)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time

import pytest
from django.db import close_old_connections, connections
from django.test import AsyncClient
from django.utils import timezone

from devtools.testing.chaos_server import ChaosImapServer
from devtools.testing.mail import make_message
from devtools.testing.oauth_server import LoopbackOAuthServer
from superimap.imapclient.messages import CHUNK_BYTES
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner
from tests.helpers.api import asgi_get, close_request_connections, message_path

_names = itertools.count()


@pytest.fixture
def owner(seeded_providers) -> Partner:
    return Partner.objects.create(name="Owner")


@pytest.fixture
def dovecot_user(owner, dovecot):
    """A Dovecot mailbox and a connected LOOPBACK_PLAIN user of `owner` watching it."""
    name = f"msg{next(_names)}-{int(time.time() * 1000) % 100000}"
    dovecot.add_user(name, "pw")
    connection, _ = Connection.objects.get_or_create(
        partner=owner,
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        defaults={"imap_host": "127.0.0.1", "imap_port": dovecot.imap_port, "imap_tls": "none"},
    )
    return MailboxUser.objects.create(
        connection=connection,
        tag=name,
        email=f"{name}@example.test",
        login_username=name,
        password="pw",
        connected_at=timezone.now(),
    )


async def _in_thread(fn):
    """fn() in a thread of its own, closing the database connections it opened there."""

    def call():
        try:
            return fn()
        finally:
            connections.close_all()

    return await asyncio.to_thread(call)


def _with_8bit_body(subject: str, size: int = 0) -> bytes:
    raw = make_message(subject, "a@example.test", "b@example.test", "caf\u00e9")
    raw = raw.replace("caf\u00e9".encode(), b"caf\xe9 \xff raw 8-bit")  # not UTF-8 on purpose
    line = b"0123456789" * 7 + b"\r\n"
    return raw + line * (size // len(line))


def test_it_streams_a_small_message_byte_exact(dovecot_user, dovecot, owner):
    raw = _with_8bit_body("small")
    dovecot.deliver(dovecot_user.tag, raw)
    uid_validity = dovecot.uidvalidity(dovecot_user.tag)

    status, headers, body = asgi_get(message_path(dovecot_user, uid_validity, 1), owner.api_key)

    assert status == 200, body[:300]
    assert headers["Content-Type"] == "message/rfc822"
    assert body == raw
    assert headers["X-Message-Size"] == str(len(raw))
    # Read with BODY.PEEK and EXAMINE: nothing is marked \Seen.
    assert dovecot.message_flags(dovecot_user.tag) == [set()]


def test_it_streams_a_message_of_several_slices_byte_exact(dovecot_user, dovecot, owner):
    raw = _with_8bit_body("large", size=int(2.5 * CHUNK_BYTES))
    dovecot.deliver(dovecot_user.tag, make_message("first", "a@example.test", "b@x.test", "1"))
    dovecot.deliver(dovecot_user.tag, raw)
    uid_validity = dovecot.uidvalidity(dovecot_user.tag)

    status, _, body = asgi_get(message_path(dovecot_user, uid_validity, 2), owner.api_key)

    assert status == 200
    assert len(body) == len(raw) > 2 * CHUNK_BYTES
    assert hashlib.sha1(body).hexdigest() == hashlib.sha1(raw).hexdigest()


def test_it_answers_404_for_an_expunged_message_or_an_old_uidvalidity(dovecot_user, dovecot, owner):
    dovecot.deliver(dovecot_user.tag, _with_8bit_body("soon gone"))
    dovecot.deliver(dovecot_user.tag, _with_8bit_body("stays"))
    uid_validity = dovecot.uidvalidity(dovecot_user.tag)
    dovecot.doveadm("expunge", "-u", dovecot_user.tag, "mailbox", "INBOX", "uid", "1")

    status, headers, body = asgi_get(message_path(dovecot_user, uid_validity, 1), owner.api_key)
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert b'"message_not_found"' in body
    status, _, body = asgi_get(message_path(dovecot_user, uid_validity + 1, 2), owner.api_key)
    assert status == 404 and b'"message_not_found"' in body
    status, _, body = asgi_get(message_path(dovecot_user, uid_validity, 2), owner.api_key)
    assert status == 200 and b"stays" in body


def test_it_answers_409_for_an_archived_or_disconnected_user(dovecot_user, dovecot, owner):
    dovecot.deliver(dovecot_user.tag, _with_8bit_body("kept"))
    path = message_path(dovecot_user, dovecot.uidvalidity(dovecot_user.tag), 1)
    MailboxUser.objects.filter(id=dovecot_user.id).update(connected_at=None)
    status, _, body = asgi_get(path, owner.api_key)
    assert status == 409 and b'"not_connected"' in body
    dovecot_user.archive()
    status, _, body = asgi_get(path, owner.api_key)
    assert status == 409 and b'"archived"' in body


def test_it_answers_404_to_another_partner_and_401_without_a_key(dovecot_user, dovecot):
    dovecot.deliver(dovecot_user.tag, _with_8bit_body("private"))
    path = message_path(dovecot_user, dovecot.uidvalidity(dovecot_user.tag), 1)
    outsider = Partner.objects.create(name="Outsider")
    # The outsider has a connection of the same provider: still not its user.
    Connection.objects.create(
        partner=outsider,
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        imap_host="127.0.0.1",
        imap_port=dovecot.imap_port,
        imap_tls="none",
    )
    status, _, body = asgi_get(path, outsider.api_key)
    assert status == 404 and b"private" not in body
    status, _, body = asgi_get(path, None)
    assert status == 401 and b'"unauthorized"' in body


def test_it_answers_502_when_the_server_refuses_the_stored_password(dovecot_user, dovecot, owner):
    dovecot.deliver(dovecot_user.tag, _with_8bit_body("locked"))
    path = message_path(dovecot_user, dovecot.uidvalidity(dovecot_user.tag), 1)
    MailboxUser.objects.filter(id=dovecot_user.id).update(password="wrong")
    status, headers, body = asgi_get(path, owner.api_key)
    assert status == 502 and headers["Content-Type"] == "application/json"
    assert b'"imap_auth_failed"' in body


def test_it_validates_the_uid_and_uid_validity(dovecot_user, owner):
    base = message_path(dovecot_user, 1, 1).rsplit("/", 2)[0]
    status, _, body = asgi_get(f"{base}/abc/1", owner.api_key)
    assert status == 422 and b'"validation_error"' in body
    status, _, body = asgi_get(f"{base}/0/1", owner.api_key)
    assert status == 404


def test_it_streams_for_an_oauth2_user_over_xoauth2(owner):
    async def scenario():
        imap = ChaosImapServer(users=2, seed=5)
        oauth = LoopbackOAuthServer()
        await imap.start()
        await oauth.start()
        try:
            raw = _with_8bit_body("over oauth", size=CHUNK_BYTES + 10)
            uid = imap.add_message("user1", raw)
            uid_validity = imap.mailbox("user1").uidvalidity
            refresh = oauth.issue_refresh_token("user1")

            def make_user() -> MailboxUser:
                connection = Connection.objects.create(
                    partner=owner,
                    provider=ImapProvider.objects.get(code="LOOPBACK_OAUTH2"),
                    imap_host="127.0.0.1",
                    imap_port=imap.port,
                    imap_tls="none",
                    oauth_client_id=oauth.client_id,
                    oauth_client_secret=oauth.client_secret,
                    oauth_base_url=oauth.base_url,
                )
                return MailboxUser.objects.create(
                    connection=connection,
                    tag="oauth-user",
                    email="user1",
                    oauth_refresh_token=refresh,
                    connected_at=timezone.now(),
                )

            user = await _in_thread(make_user)
            response = await AsyncClient().get(
                message_path(user, uid_validity, uid), headers={"x-api-key": owner.api_key}
            )
            body = b"".join([part async for part in response.streaming_content])
            return raw, response.status_code, body
        finally:
            await close_request_connections()
            await oauth.stop()
            await imap.stop()

    close_old_connections()
    raw, status, body = asyncio.run(scenario())
    assert status == 200
    assert body == raw


def test_a_response_never_read_still_closes_its_imap_connection(owner):
    async def scenario():
        imap = ChaosImapServer(users=1, seed=5)
        await imap.start()
        try:
            uid = imap.add_message("user0", _with_8bit_body("unread"))

            def make_user() -> MailboxUser:
                connection = Connection.objects.create(
                    partner=owner,
                    provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
                    imap_host="127.0.0.1",
                    imap_port=imap.port,
                    imap_tls="none",
                )
                return MailboxUser.objects.create(
                    connection=connection,
                    tag="unread",
                    login_username="user0",
                    password="pass0",
                    connected_at=timezone.now(),
                )

            user = await _in_thread(make_user)
            path = message_path(user, imap.mailbox("user0").uidvalidity, uid)
            response = await AsyncClient().get(path, headers={"x-api-key": owner.api_key})
            open_before = len(imap.sessions_by_user.get("user0", ()))
            response.close()
            for _ in range(100):
                if not imap.sessions_by_user.get("user0"):
                    break
                await asyncio.sleep(0.02)
            return response.status_code, open_before, len(imap.sessions_by_user.get("user0", ()))
        finally:
            await close_request_connections()
            await imap.stop()

    close_old_connections()
    status, open_before, open_after = asyncio.run(scenario())
    assert status == 200
    assert (open_before, open_after) == (1, 0)
