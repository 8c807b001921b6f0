"""OAuth 2.0 users in the engine: access tokens from a real local OAuth server, XOAUTH2 on
the chaos IMAP server (which accepts ``token-for-user{i}`` for ``user{i}``)."""

from __future__ import annotations

import asyncio
import dataclasses

from django.db import close_old_connections, connection

from devtools.testing import chaos_server
from devtools.testing.chaos_server import ChaosImapServer
from devtools.testing.oauth_server import LoopbackOAuthServer
from superimap.delivery.models import Delivery
from superimap.engine.oauth import access_tokens
from superimap.mailboxes.models import MailboxUser
from tests.helpers.engine import FAST, RunningEngine, oauth_user, wait_for

# Short back-off, so transient failures are retried within the test.
QUICK = dataclasses.replace(FAST, max_backoff=0.3)


def _user(user_id: int) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id)


def _new_mail(user_id: int) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id, kind="new_mail"))


async def _servers():
    imap = ChaosImapServer(users=5, seed=11)
    oauth = LoopbackOAuthServer()
    await imap.start()
    await oauth.start()
    return imap, oauth


async def _stop(imap: ChaosImapServer, oauth: LoopbackOAuthServer) -> None:
    await oauth.stop()
    await imap.stop()


async def _add_user(partner, imap, oauth, login: str, token: str | None = None) -> int:
    token = token or oauth.issue_refresh_token(login)
    return await asyncio.to_thread(oauth_user, partner, imap, oauth, login, token)


async def _reconnect(imap: ChaosImapServer, login: str) -> None:
    """Drop the user's IMAP connections and wait for the engine to log in again."""
    logins = imap.stats["logins"]
    for session in list(imap.sessions_by_user.get(login, ())):
        session.abort()
    for _ in range(200):
        if imap.stats["logins"] > logins:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the engine did not log in again")


def test_an_oauth_user_reaches_idle_over_xoauth2_and_gets_mail(mail_partner):
    async def scenario():
        imap, oauth = await _servers()
        try:
            user_id = await _add_user(mail_partner, imap, oauth, "user1")
            async with RunningEngine():
                await wait_for(lambda: _user(user_id).status == "idle")
                message_id = imap.generate_message("user1")
                deliveries = await wait_for(lambda: _new_mail(user_id))
        finally:
            await _stop(imap, oauth)
        return imap, oauth, message_id, deliveries

    imap, oauth, message_id, deliveries = asyncio.run(scenario())
    assert [d.message_id for d in deliveries] == [message_id]
    assert deliveries[0].payload["imap_provider_code"] == "LOOPBACK_OAUTH2"
    assert imap.stats["login_failures"] == 0
    refresh = oauth.requests_to("/token")[0].params
    assert refresh["grant_type"] == "refresh_token"
    assert refresh["client_id"] == "loopback-client"
    assert refresh["client_secret"] == "loopback-secret"


def test_the_access_token_is_reused_across_reconnects(mail_partner):
    async def scenario():
        imap, oauth = await _servers()
        try:
            user_id = await _add_user(mail_partner, imap, oauth, "user2")
            async with RunningEngine():
                await wait_for(lambda: _user(user_id).status == "idle")
                for _ in range(3):
                    await _reconnect(imap, "user2")
                await wait_for(lambda: _user(user_id).status == "idle")
        finally:
            await _stop(imap, oauth)
        return imap, oauth

    imap, oauth = asyncio.run(scenario())
    assert imap.stats["logins"] >= 4
    assert oauth.refreshes == 1


def test_the_access_token_is_refreshed_after_it_expires(mail_partner):
    async def scenario():
        imap, oauth = await _servers()
        oauth.expires_in = 1
        try:
            user_id = await _add_user(mail_partner, imap, oauth, "user3")
            async with RunningEngine():
                await wait_for(lambda: _user(user_id).status == "idle")
                refreshes_at_first = oauth.refreshes
                await asyncio.sleep(1.2)
                await _reconnect(imap, "user3")
                await wait_for(lambda: _user(user_id).status == "idle")
                message_id = imap.generate_message("user3")
                deliveries = await wait_for(lambda: _new_mail(user_id))
        finally:
            await _stop(imap, oauth)
        return oauth, refreshes_at_first, message_id, deliveries

    oauth, refreshes_at_first, message_id, deliveries = asyncio.run(scenario())
    assert refreshes_at_first == 1
    assert oauth.refreshes == 2
    assert [d.message_id for d in deliveries] == [message_id]


def test_a_rotated_refresh_token_is_kept_encrypted(mail_partner):
    async def scenario():
        imap, oauth = await _servers()
        oauth.rotate_refresh_tokens = True
        try:
            first_token = oauth.issue_refresh_token("user4")
            user_id = await _add_user(mail_partner, imap, oauth, "user4", token=first_token)
            async with RunningEngine():
                await wait_for(lambda: _user(user_id).status == "idle")
                await wait_for(lambda: _user(user_id).oauth_refresh_token != first_token)
        finally:
            await _stop(imap, oauth)
        return first_token, user_id

    first_token, user_id = asyncio.run(scenario())
    stored = _user(user_id).oauth_refresh_token
    assert stored.startswith("refresh-user4-") and stored != first_token
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT oauth_refresh_token FROM mailboxes_mailboxuser WHERE id = %s", [user_id]
        )
        (raw,) = cursor.fetchone()
    assert raw.startswith("gAAAA") and stored not in raw  # a Fernet token, not the secret


def test_invalid_grant_marks_the_user_auth_failed_and_others_go_on(mail_partner):
    async def scenario():
        imap, oauth = await _servers()
        try:
            bad = await _add_user(mail_partner, imap, oauth, "user1", token="refresh-revoked")
            good = await _add_user(mail_partner, imap, oauth, "user2")
            async with RunningEngine():
                await wait_for(lambda: _user(bad).status == "auth_failed")
                await wait_for(lambda: _user(good).status == "idle")
                message_id = imap.generate_message("user2")
                deliveries = await wait_for(lambda: _new_mail(good))
        finally:
            await _stop(imap, oauth)
        return imap, bad, message_id, deliveries

    imap, bad, message_id, deliveries = asyncio.run(scenario())
    user = _user(bad)
    assert user.status == "auth_failed"  # stays visible after the engine stopped
    assert "invalid_grant" in user.last_error
    assert "refresh-revoked" not in user.last_error
    assert [d.message_id for d in deliveries] == [message_id]
    assert "user1" not in imap.sessions_by_user  # never even tried to log in


def test_a_token_the_imap_server_refuses_is_an_auth_failure(mail_partner):
    """XOAUTH2 NO after the error challenge (answered with an empty line): auth_failed."""

    async def scenario():
        imap, oauth = await _servers()
        try:
            # A token for user4 presented as user1: the chaos server refuses it.
            user_id = await _add_user(
                mail_partner, imap, oauth, "user1", token=oauth.issue_refresh_token("user4")
            )
            async with RunningEngine() as engine:
                await wait_for(lambda: _user(user_id).status == "auth_failed")
                tokens = access_tokens(engine)
        finally:
            await _stop(imap, oauth)
        return imap, user_id, tokens

    imap, user_id, tokens = asyncio.run(scenario())
    assert tokens.refresh_count == 1  # a fresh token refused: no retry loop
    assert "XOAUTH2 refused" in _user(user_id).last_error
    # The chaos server sends its NO only after the challenge was answered: without that
    # empty line this would have been a timeout (backing_off), not auth_failed.
    assert _user(user_id).status == "auth_failed"
    assert "user1" not in imap.sessions_by_user  # never logged in


def test_it_authenticates_without_sasl_ir(mail_partner, monkeypatch):
    monkeypatch.setattr(chaos_server, "CAPABILITIES", "IMAP4rev1 IDLE AUTH=XOAUTH2")

    async def scenario():
        imap, oauth = await _servers()
        try:
            user_id = await _add_user(mail_partner, imap, oauth, "user1")
            async with RunningEngine():
                await wait_for(lambda: _user(user_id).status == "idle")
                message_id = imap.generate_message("user1")
                deliveries = await wait_for(lambda: _new_mail(user_id))
        finally:
            await _stop(imap, oauth)
        return message_id, deliveries

    message_id, deliveries = asyncio.run(scenario())
    assert [d.message_id for d in deliveries] == [message_id]


def test_a_failing_token_endpoint_is_transient(mail_partner):
    async def scenario():
        imap, oauth = await _servers()
        oauth.token_error = "500"
        try:
            user_id = await _add_user(mail_partner, imap, oauth, "user1")
            async with RunningEngine(session_settings=QUICK):
                user = await wait_for(
                    lambda: (u := _user(user_id)).status == "backing_off" and u.last_error and u
                )
                oauth.token_error = None
                await wait_for(lambda: _user(user_id).status == "idle")
        finally:
            await _stop(imap, oauth)
        return user

    user = asyncio.run(scenario())
    assert "token endpoint answered 500" in user.last_error


def test_an_unreachable_token_endpoint_is_transient(mail_partner):
    async def scenario():
        imap, oauth = await _servers()
        try:
            user_id = await _add_user(mail_partner, imap, oauth, "user1")
            await oauth.stop()  # nothing listens there now
            async with RunningEngine(session_settings=QUICK):
                user = await wait_for(
                    lambda: (u := _user(user_id)).status == "backing_off" and u.last_error and u
                )
        finally:
            await imap.stop()
        return user

    user = asyncio.run(scenario())
    assert "token endpoint unreachable" in user.last_error


def test_a_cached_token_the_server_refuses_is_refreshed_once(mail_partner):
    async def scenario():
        imap, oauth = await _servers()
        try:
            user_id = await _add_user(mail_partner, imap, oauth, "user2")
            async with RunningEngine() as engine:
                await wait_for(lambda: _user(user_id).status == "idle")
                tokens = access_tokens(engine)
                entry = tokens._cache[user_id]
                tokens._cache[user_id] = dataclasses.replace(entry, token="token-revoked")
                await _reconnect(imap, "user2")
                await wait_for(lambda: _user(user_id).status == "idle")
        finally:
            await _stop(imap, oauth)
        return oauth

    oauth = asyncio.run(scenario())
    assert oauth.refreshes == 2
