"""Sessions restart only for changes that matter to them, and logins are rate-limited per
mailbox and per server host, so no API pattern or reconnect storm hammers a provider."""

from __future__ import annotations

import asyncio

from django.db import close_old_connections

from devtools.testing.chaos_server import ChaosImapServer
from superimap.accounts import connections as accounts_connections
from superimap.accounts import users as accounts_users
from superimap.imapclient import LoginLimiter, TokenBucket
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection
from tests.helpers.api import ApiClient
from tests.helpers.engine import RunningEngine, loopback_users, wait_for

USER = "/connections/LOOPBACK_PLAIN/users/user0"


def _status(tag: str = "user0") -> str:
    close_old_connections()
    return MailboxUser.objects.get(tag=tag, archived=False).status


def _put(api: ApiClient, path: str, body: dict) -> None:
    close_old_connections()
    r = api.put(path, body)
    assert r.status_code == 200, r.content


async def _settle(seconds: float = 1.5) -> None:
    await asyncio.sleep(seconds)  # several engine refreshes (0.2 s each)


def test_no_op_puts_do_not_log_in_again(mail_partner):
    api = ApiClient(mail_partner.api_key)

    async def scenario():
        async with ChaosImapServer(users=1) as server:
            await asyncio.to_thread(loopback_users, mail_partner, server.port, 1)
            async with RunningEngine():
                await wait_for(lambda: _status() == "idle")
                assert server.stats["logins"] == 1
                same = {"login_username": "user0", "password": "pass0", "enable_tracer": False}
                for _ in range(30):
                    await asyncio.to_thread(_put, api, USER, same)
                    await asyncio.to_thread(_put, api, USER, {})
                await asyncio.to_thread(_put, api, "/connections/LOOPBACK_PLAIN", {})
                await _settle()
                assert server.stats["logins"] == 1
                assert await asyncio.to_thread(_status) == "idle"
                # A change that matters does restart the session, once.
                await asyncio.to_thread(_put, api, USER, {"email": "user0@chaos.test"})
                await wait_for(lambda: server.stats["logins"] == 2)
                await _settle()
                assert server.stats["logins"] == 2

    asyncio.run(scenario())


def test_a_server_setting_change_restarts_the_sessions_of_the_connection(mail_partner):
    async def scenario():
        async with ChaosImapServer(users=2) as server, ChaosImapServer(users=2) as moved:
            await asyncio.to_thread(loopback_users, mail_partner, server.port, 2)
            async with RunningEngine():
                await wait_for(lambda: _status("user1") == "idle" and _status() == "idle")

                def move():
                    close_old_connections()
                    connection = Connection.objects.get(partner=mail_partner)
                    connection.imap_port = moved.port
                    accounts_connections.save_connection(connection)

                await asyncio.to_thread(move)
                await wait_for(lambda: moved.stats["logins"] == 2)
                assert server.stats["logins"] == 2

    asyncio.run(scenario())


def test_changing_credentials_in_a_loop_logs_in_no_faster_than_the_mailbox_bucket(mail_partner):
    api = ApiClient(mail_partner.api_key)
    limiter = LoginLimiter(mailbox_burst=2, mailbox_interval=3600)

    async def scenario():
        async with ChaosImapServer(users=1) as server:
            await asyncio.to_thread(loopback_users, mail_partner, server.port, 1)
            async with RunningEngine(login_limiter=limiter):
                await wait_for(lambda: _status() == "idle")
                for i in range(8):  # each a real change: the session restarts each time
                    await asyncio.to_thread(_put, api, USER, {"email": f"u{i}@chaos.test"})
                    await _settle(0.5)
                await _settle()
                assert server.stats["logins"] == 2
                assert limiter.waited > 0
                assert await asyncio.to_thread(_status) == "connecting"

    asyncio.run(scenario())


def test_many_mailboxes_on_one_host_log_in_no_faster_than_the_host_bucket(mail_partner):
    # The chaos server's 127.0.0.1 by its name (IMAP_LOGIN_LIMITS="127.0.0.1=3/0.01"); the
    # default (host_burst) and the loopback class would let all 10 in.
    limiter = LoginLimiter(host_burst=100, host_limits={"127.0.0.1": (3, 0.01)})

    async def scenario():
        async with ChaosImapServer(users=10) as server:
            await asyncio.to_thread(loopback_users, mail_partner, server.port, 10)
            async with RunningEngine(login_limiter=limiter) as engine:
                await wait_for(lambda: len(engine.sessions) == 10)
                await _settle(2)
                assert server.stats["logins"] == 3

    asyncio.run(scenario())


def test_a_token_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=0.5, burst=3, now=100.0)
    assert [bucket.reserve(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve(100.0) == 2.0  # the next token comes in 2 s
    assert bucket.reserve(100.0) == 4.0  # and the one after it, queued behind
    assert bucket.reserve(110.0) == 0.0  # refilled meanwhile (never past the burst)
    assert bucket.full(1000.0)


def test_the_limiter_has_documented_defaults(settings):
    limiter = LoginLimiter()
    assert (limiter.mailbox_burst, 1 / limiter.mailbox_rate) == (5, 30)
    assert (limiter.host_burst, limiter.host_rate) == (500, 50)
    clock = [0.0]
    limiter = LoginLimiter(clock=lambda: clock[0])
    delays = [limiter.mailbox_delay(7) for _ in range(6)]
    assert delays == [0, 0, 0, 0, 0, 30]
    assert limiter.mailbox_delay(8) == 0  # another mailbox has its own bucket
    assert [limiter.host_delay("IMAP.example.com") for _ in range(500)][-1] == 0
    assert limiter.host_delay("imap.example.com") == 1 / 50
    assert limiter.host_limit("127.0.0.1") == (20_000, 2_000)  # loopback: benches, own box
    assert limiter.host_limit("10.1.2.3") == (5_000, 500)  # private: a server on the LAN


def test_imap_login_limits_sets_limits_per_host(settings):
    settings.IMAP_LOGIN_LIMITS = {"imap.gmail.com": (2, 0.5), "loopback": (1, 1.0)}
    clock = [0.0]
    limiter = LoginLimiter(clock=lambda: clock[0])
    assert [limiter.host_delay("imap.gmail.com") for _ in range(3)] == [0, 0, 2]
    assert [limiter.host_delay("imap.example.com") for _ in range(3)] == [0, 0, 0]
    assert [limiter.host_delay("localhost") for _ in range(2)] == [0, 1]
    assert limiter.host_limit("10.0.0.1") == (5_000, 500)  # the built-in private limit stays


def test_only_session_fields_move_the_session_version(plain_connection):
    user = accounts_users.create_user(plain_connection, "v", password="pw")
    first = user.session_version
    assert first
    user.enable_tracer = True
    user.status = MailboxUser.Status.IDLE
    accounts_users.save_user(user)
    accounts_users.archive_user(user)
    accounts_users.restore_user(user)
    assert MailboxUser.objects.get(id=user.id).session_version == first
    # Changed elsewhere, then re-read: not a change made here.
    MailboxUser.objects.filter(id=user.id).update(password="")
    user.refresh_from_db()
    accounts_users.save_user(user)
    assert MailboxUser.objects.get(id=user.id).session_version == first
    user.password = "new-pw"
    accounts_users.save_user(user)
    second = MailboxUser.objects.get(id=user.id).session_version
    assert second != first
    plain_connection.refresh_from_db()
    plain_connection.smtp_host = "smtp.example.com"  # tracers only: no restart
    accounts_connections.save_connection(plain_connection)
    assert MailboxUser.objects.get(id=user.id).session_version == second
    plain_connection.imap_port = 143
    accounts_connections.save_connection(plain_connection)
    assert MailboxUser.objects.get(id=user.id).session_version != second


def test_try_login_takes_both_tokens_or_none():
    clock = [0.0]
    limiter = LoginLimiter(mailbox_burst=2, host_burst=3, host_rate=0.5, clock=lambda: clock[0])
    assert [limiter.try_login(1, "imap.example.com") for _ in range(3)] == [0, 0, 30]
    assert limiter.try_login(2, "IMAP.example.com") == 0  # the host's third token
    assert limiter.try_login(3, "imap.example.com") == 2  # host empty: mailbox 3 keeps its tokens
    clock[0] = 2.0
    assert limiter.try_login(3, "imap.example.com") == 0
    assert limiter.try_login(3, "imap.example.com") == 2  # its second token is still there


def test_the_message_route_answers_429_past_the_mailbox_login_limit(partner, monkeypatch):
    from django.test import Client
    from django.utils import timezone

    from devtools.testing import free_port
    from superimap.api import messages
    from superimap.delivery.payloads import message_url
    from superimap.partners.models import ImapProvider

    clock = [0.0]
    monkeypatch.setattr(messages, "_limiter", LoginLimiter(clock=lambda: clock[0]))
    connection = Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        imap_host="127.0.0.1",
        imap_port=free_port(),  # nothing listens: each request that tries is a 502
        imap_tls="none",
    )
    user = MailboxUser.objects.create(
        connection=connection,
        tag="alice",
        login_username="alice",
        password="pw",
        connected_at=timezone.now(),
    )
    url = message_url("LOOPBACK_PLAIN", user.tag, 1, 1)

    def get():
        return Client().get(url[url.index("/api/v1/") :], HTTP_X_API_KEY=partner.api_key)

    assert [get().status_code for _ in range(5)] == [502] * 5
    refused = get()
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "imap_rate_limited"
    assert "retry in 30 s" in refused.json()["error"]["message"]
    clock[0] = 30.0
    assert get().status_code == 502  # one more login after the interval
    assert get().status_code == 429
