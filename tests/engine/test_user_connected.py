"""user_connected means connected: it is sent once the engine's first login with new
credentials succeeds, whether they came from the API, the hosted form or OAuth; a refused
first login sends user_error and no user_connected (design.md 4.9). Real Dovecot, the chaos
server with a real OAuth server, the real engine."""

from __future__ import annotations

import asyncio
import itertools
import time

from django.db import close_old_connections
from django.test import Client

from devtools.testing.chaos_server import ChaosImapServer
from devtools.testing.mail import make_message
from devtools.testing.oauth_server import LoopbackOAuthServer
from superimap.delivery.models import Delivery
from superimap.mailboxes.links import make_link
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider
from tests.helpers.api import ApiClient
from tests.helpers.engine import fast_engine, loopback_connection, wait_for

_names = itertools.count()


def _kinds(user_id: int) -> list[str]:
    close_old_connections()
    return list(
        Delivery.objects.filter(user_id=user_id).order_by("id").values_list("kind", flat=True)
    )


def _user(tag: str) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(tag=tag, archived=False)


def _api(partner) -> ApiClient:
    close_old_connections()
    return ApiClient(partner.api_key)


def _dovecot_user(dovecot, password: str) -> str:
    name = f"conn{next(_names)}-{int(time.time() * 1000) % 100000}"
    dovecot.add_user(name, password)
    return name


def test_a_refused_first_login_sends_user_error_and_no_user_connected_until_fixed(
    mail_partner, dovecot
):
    loopback_connection(mail_partner, dovecot.imap_port)
    name = _dovecot_user(dovecot, "right-pw")
    body = {"tag": name, "email": f"{name}@example.test", "login_username": name}
    r = _api(mail_partner).post("/connections/LOOPBACK_PLAIN/users", {**body, "password": "wrong"})
    assert r.status_code == 201, r.content
    user_id = _user(name).id
    assert _kinds(user_id) == []  # not connected yet: nothing to tell

    async def scenario():
        async with fast_engine():
            await wait_for(lambda: "user_error" in _kinds(user_id))
            await wait_for(lambda: _user(name).consecutive_failures >= 3)
            refused = await asyncio.to_thread(_kinds, user_id)
            put = await asyncio.to_thread(
                lambda: _api(mail_partner).put(
                    f"/connections/LOOPBACK_PLAIN/users/{name}", {"password": "right-pw"}
                )
            )
            assert put.status_code == 200, put.content
            await wait_for(lambda: "user_connected" in _kinds(user_id), timeout=15)
            await wait_for(lambda: _user(name).status == "idle")
            raw = make_message("after connect", "a@example.test", f"{name}@example.test", "x")
            await asyncio.to_thread(dovecot.deliver, name, raw)
            await wait_for(lambda: "new_mail" in _kinds(user_id))
            await asyncio.sleep(1.0)  # a second user_connected would show up now
            return refused

    refused = asyncio.run(scenario())
    assert refused == ["user_error"]
    kinds = _kinds(user_id)
    assert kinds.count("user_connected") == 1
    assert kinds.index("user_connected") < kinds.index("new_mail")
    assert kinds.count("user_recovered") == 1  # the user_error ended
    close_old_connections()
    error = Delivery.objects.get(user_id=user_id, kind="user_error")
    assert error.payload["status"] == "auth_failed"
    connected = Delivery.objects.get(user_id=user_id, kind="user_connected")
    assert connected.payload["email"] == f"{name}@example.test"
    assert connected.payload["user_tag"] == name
    assert _user(name).connect_pending == ""


def test_new_credentials_send_user_connected_again_once_and_the_same_ones_do_not(
    mail_partner, dovecot
):
    loopback_connection(mail_partner, dovecot.imap_port)
    first = _dovecot_user(dovecot, "first-pw")
    second = _dovecot_user(dovecot, "second-pw")
    body = {"tag": "mover", "login_username": first, "password": "first-pw"}
    assert _api(mail_partner).post("/connections/LOOPBACK_PLAIN/users", body).status_code == 201
    user_id = _user("mover").id

    def put(fields: dict) -> None:
        r = _api(mail_partner).put("/connections/LOOPBACK_PLAIN/users/mover", fields)
        assert r.status_code == 200, r.content

    async def scenario():
        async with fast_engine():
            await wait_for(lambda: _kinds(user_id) == ["user_connected"])
            await wait_for(lambda: _user("mover").status == "idle")
            # The same credentials again: no new login, nothing to tell.
            await asyncio.to_thread(put, {"login_username": first, "password": "first-pw"})
            await asyncio.sleep(1.0)
            same = await asyncio.to_thread(_kinds, user_id)
            # Another account's credentials: told again after the first login with them.
            await asyncio.to_thread(put, {"login_username": second, "password": "second-pw"})
            await wait_for(lambda: _kinds(user_id).count("user_connected") == 2)
            await asyncio.to_thread(dovecot.kick, second)  # a reconnect is no new credential
            await wait_for(lambda: _user("mover").status == "idle")
            await asyncio.sleep(1.0)
            return same

    same = asyncio.run(scenario())
    assert same == ["user_connected"]
    assert _kinds(user_id) == ["user_connected", "user_connected"]


def test_the_hosted_form_connect_is_told_by_the_engines_first_login(mail_partner, dovecot):
    connection = loopback_connection(mail_partner, dovecot.imap_port)
    name = _dovecot_user(dovecot, "form-pw")
    user = MailboxUser.objects.create(connection=connection, tag=name)
    form = {"email": f"{name}@example.test", "login_username": name, "password": "form-pw"}
    r = Client().post(make_link(user.id, "connect"), form)
    assert r.status_code in (200, 302), r.content
    assert _kinds(user.id) == []  # the form's own check is not the engine's login

    async def scenario():
        async with fast_engine():
            await wait_for(lambda: _kinds(user.id) == ["user_connected"])
            await wait_for(lambda: _user(name).status == "idle")
            await asyncio.sleep(1.0)

    asyncio.run(scenario())
    assert _kinds(user.id) == ["user_connected"]


def test_an_oauth_user_is_told_after_its_xoauth2_login_and_a_refused_one_is_not(mail_partner):
    async def scenario():
        imap = ChaosImapServer(users=3, seed=5)
        oauth = LoopbackOAuthServer()
        await imap.start()
        await oauth.start()
        try:
            await asyncio.to_thread(_oauth_connection, mail_partner, imap, oauth)
            api = await asyncio.to_thread(_api, mail_partner)
            for tag, token in (
                ("good", oauth.issue_refresh_token("user1")),
                ("bad", "refresh-revoked"),
            ):
                login = "user1" if tag == "good" else "user2"
                body = {"tag": tag, "email": f"{login}@chaos.test", "oauth_refresh_token": token}
                r = await asyncio.to_thread(api.post, "/connections/LOOPBACK_OAUTH2/users", body)
                assert r.status_code == 201, r.content
            good = await asyncio.to_thread(lambda: _user("good").id)
            bad = await asyncio.to_thread(lambda: _user("bad").id)
            assert await asyncio.to_thread(_kinds, good) == []
            async with fast_engine():
                await wait_for(lambda: _kinds(good) == ["user_connected"])
                await wait_for(lambda: _kinds(bad) == ["user_error"])
                await wait_for(lambda: _user("bad").consecutive_failures >= 3)
        finally:
            await oauth.stop()
            await imap.stop()
        return good, bad

    good, bad = asyncio.run(scenario())
    assert _kinds(good) == ["user_connected"]
    assert _kinds(bad) == ["user_error"]
    assert _user("bad").connect_pending  # still owed: told after a login that succeeds


def _oauth_connection(partner, imap: ChaosImapServer, oauth: LoopbackOAuthServer) -> None:
    close_old_connections()
    Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="LOOPBACK_OAUTH2"),
        imap_host="127.0.0.1",
        imap_port=imap.port,
        imap_tls="none",
        oauth_client_id=oauth.client_id,
        oauth_client_secret=oauth.client_secret,
        oauth_base_url=oauth.base_url,
    )
