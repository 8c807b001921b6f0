"""OAuth 2.0 connect/disconnect through the hosted pages, against a real local OAuth server.

The browser's part of the dance is played by hand: Django's test client follows the
connect_url, a real HTTP client visits the OAuth server's /authorize, and its redirect is
taken back into the test client (same session cookie) at /oauth2/callback.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from django.conf import settings
from django.db import connection as db_connection
from django.test import Client

from devtools.testing.oauth_server import LoopbackOAuthServer
from superimap.delivery.models import Delivery
from superimap.mailboxes.links import make_link
from superimap.mailboxes.models import MailboxUser
from superimap.mailboxes.oauth import email_from_userinfo, id_token_claims
from superimap.partners.models import Connection, ImapProvider
from tests.helpers.api import ApiClient
from tests.helpers.database import database_file_bytes


@pytest.fixture
def oauth_server():
    server = LoopbackOAuthServer(login="alice", emails={"alice": "alice@example.com"})
    with server.in_thread():
        yield server


def oauth_connection(partner, server: LoopbackOAuthServer) -> Connection:
    return Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="LOOPBACK_OAUTH2"),
        imap_host="127.0.0.1",
        imap_port=1143,
        oauth_client_id=server.client_id,
        oauth_client_secret=server.client_secret,
        oauth_base_url=server.base_url,
    )


@pytest.fixture
def user(partner, oauth_server) -> MailboxUser:
    return MailboxUser.objects.create(
        connection=oauth_connection(partner, oauth_server), tag="alice"
    )


def path(user, action="connect") -> str:
    return make_link(user.id, action).removeprefix(settings.PUBLIC_URL)


def to_provider(client: Client, user: MailboxUser, query: str = "") -> str:
    """Open the connect_url; return the provider's authorize URL it redirects to."""
    r = client.get(path(user) + query)
    assert r.status_code == 302, r.content
    return r["Location"]


def consent(authorize_url: str) -> str:
    """The browser at the provider: return where the provider sends it back (a full URL)."""
    r = httpx2.get(authorize_url, follow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    return r.headers["location"]


def back_to_us(client: Client, callback_url: str):
    assert callback_url.startswith(settings.PUBLIC_URL + "/oauth2/callback?")
    return client.get(callback_url.removeprefix(settings.PUBLIC_URL))


def dance(client: Client, user: MailboxUser, query: str = ""):
    return back_to_us(client, consent(to_provider(client, user, query)))


def with_state(url: str, state: str) -> str:
    parts = urlsplit(url)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    params["state"] = state
    return f"{parts.scheme}://{parts.netloc}{parts.path}?" + "&".join(
        f"{k}={v}" for k, v in params.items()
    )


def assert_nothing_saved(user: MailboxUser) -> None:
    user.refresh_from_db()
    assert (user.oauth_refresh_token, user.connected_at, user.email) == ("", None, "")
    assert not Delivery.objects.exists()


# --- the happy path -------------------------------------------------------------------------


def test_it_redirects_to_the_provider_with_a_random_state(client, user, oauth_server):
    url = to_provider(client, user)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == oauth_server.base_url + "/authorize"
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert params["client_id"] == "loopback-client"
    assert params["redirect_uri"] == settings.PUBLIC_URL + "/oauth2/callback"
    assert params["response_type"] == "code"
    assert params["scope"] == "imap openid email"
    assert (params["access_type"], params["prompt"]) == ("offline", "consent")
    assert len(params["state"]) >= 32
    assert "client_secret" not in params
    again = parse_qs(urlsplit(to_provider(client, user)).query)["state"][0]
    assert again != params["state"]  # a new state each time


def test_it_connects_through_the_whole_dance(client, user, oauth_server):
    r = dance(client, user)
    assert r.status_code == 302
    assert r["Location"] == "http://app.example/connected"
    user.refresh_from_db()
    assert user.email == "alice@example.com"
    assert user.connected_at is not None
    assert user.oauth_refresh_token.startswith("refresh-alice-")
    assert user.status == MailboxUser.Status.NEW
    token_request = oauth_server.requests_to("/token")[0]
    assert token_request.params["grant_type"] == "authorization_code"
    assert token_request.params["client_secret"] == "loopback-secret"
    assert token_request.params["redirect_uri"] == settings.PUBLIC_URL + "/oauth2/callback"
    userinfo = oauth_server.requests_to("/userinfo")[0]
    assert userinfo.authorization == "Bearer token-for-alice"


def test_it_owes_user_connected_to_the_engines_first_login(client, user):
    dance(client, user)
    user.refresh_from_db()
    assert user.connect_pending  # sent by the engine's XOAUTH2 login (test_user_connected.py)
    assert not Delivery.objects.exists()


def test_it_reads_the_email_from_the_id_token_when_there_is_one(client, user, oauth_server):
    oauth_server.include_id_token = True
    oauth_server.emails["alice"] = "alice@id-token.example"
    dance(client, user)
    user.refresh_from_db()
    assert user.email == "alice@id-token.example"
    assert not oauth_server.requests_to("/userinfo")


def test_it_redirects_to_an_allowed_success_callback(client, user):
    r = dance(client, user, "?success=http://app.example/done?id=1")
    assert r["Location"] == "http://app.example/done?id=1"


def test_it_refuses_an_open_redirect_before_the_dance(client, user):
    r = client.get(path(user) + "?success=http://evil.example/phish")
    assert r.status_code == 400
    assert b"evil.example" in r.content
    assert_nothing_saved(user)


def test_it_shows_a_page_when_the_partner_has_no_success_url(client, user):
    partner = user.connection.partner
    partner.success_url = ""
    partner.save()
    r = dance(client, user)
    assert r.status_code == 200
    assert b"connected" in r.content


# --- state ----------------------------------------------------------------------------------


def test_it_refuses_a_callback_with_another_state(client, user):
    back = consent(to_provider(client, user))
    r = back_to_us(client, with_state(back, "forged-state"))
    assert r.status_code == 400
    assert_nothing_saved(user)


def test_it_refuses_a_callback_without_state(client, user):
    back = consent(to_provider(client, user))
    r = client.get("/oauth2/callback?code=" + parse_qs(urlsplit(back).query)["code"][0])
    assert r.status_code == 400
    assert_nothing_saved(user)


def test_it_refuses_a_callback_in_another_browser_session(client, user):
    back = consent(to_provider(client, user))
    r = back_to_us(Client(), back)
    assert r.status_code == 400
    assert_nothing_saved(user)


def test_a_state_is_good_for_one_use_only(client, user):
    back = consent(to_provider(client, user))
    assert back_to_us(client, back).status_code == 302
    pending = MailboxUser.objects.get(id=user.id).connect_pending
    assert back_to_us(client, back).status_code == 400
    assert MailboxUser.objects.get(id=user.id).connect_pending == pending  # connected once


# --- provider errors ------------------------------------------------------------------------


def test_denied_consent_goes_to_the_failure_callback(client, user, oauth_server):
    oauth_server.deny = True
    r = dance(client, user, "?failure=http://app.example/oops")
    assert r.status_code == 302
    assert r["Location"] == "http://app.example/oops"
    assert_nothing_saved(user)
    assert not oauth_server.requests_to("/token")


def test_denied_consent_shows_a_page_without_a_failure_url(client, user, oauth_server):
    partner = user.connection.partner
    partner.failure_url = ""
    partner.save()
    oauth_server.deny = True
    r = dance(client, user)
    assert r.status_code == 400
    assert b"not granted" in r.content
    assert_nothing_saved(user)


@pytest.mark.parametrize("error", ["invalid_grant", "500"])
def test_a_failing_token_endpoint_goes_to_the_failure_callback(client, user, oauth_server, error):
    oauth_server.token_error = error
    r = dance(client, user)
    assert r.status_code == 302
    assert r["Location"] == "http://app.example/failed"
    assert_nothing_saved(user)


def test_a_wrong_client_secret_fails_cleanly(client, user, oauth_server):
    user.connection.oauth_client_secret = "wrong"
    user.connection.save()
    r = dance(client, user)
    assert r["Location"] == "http://app.example/failed"
    assert_nothing_saved(user)


def test_no_refresh_token_is_a_failure(client, user, oauth_server):
    oauth_server.omit_refresh_token = True
    r = dance(client, user)
    assert r["Location"] == "http://app.example/failed"
    assert_nothing_saved(user)


def test_an_unreachable_token_endpoint_is_a_failure(client, user, oauth_server):
    back = consent(to_provider(client, user))
    user.connection.oauth_base_url = "http://127.0.0.1:9"  # discard port: connection refused
    user.connection.save()
    r = back_to_us(client, back)
    assert r["Location"] == "http://app.example/failed"
    assert_nothing_saved(user)


# --- disconnect -----------------------------------------------------------------------------


def test_disconnect_revokes_the_refresh_token_at_the_provider(client, user, oauth_server):
    dance(client, user)
    user.refresh_from_db()
    refresh_token = user.oauth_refresh_token
    r = client.post(path(user, "disconnect"))
    assert r.status_code == 302
    assert oauth_server.revoked == [refresh_token]
    revoke = oauth_server.requests_to("/revoke")[0]
    assert revoke.params["token_type_hint"] == "refresh_token"
    user.refresh_from_db()
    assert (user.oauth_refresh_token, user.connected_at) == ("", None)
    assert Delivery.objects.filter(kind="user_disconnected").count() == 1


def test_disconnect_works_when_the_revoke_endpoint_is_down(client, user, oauth_server, caplog):
    dance(client, user)
    user.refresh_from_db()
    refresh_token = user.oauth_refresh_token
    user.connection.oauth_base_url = "http://127.0.0.1:9"
    user.connection.save()
    r = client.post(path(user, "disconnect"))
    assert r.status_code == 302
    user.refresh_from_db()
    assert (user.oauth_refresh_token, user.connected_at) == ("", None)
    assert Delivery.objects.filter(kind="user_disconnected").count() == 1
    assert "revoke" in caplog.text
    assert refresh_token not in caplog.text


# --- secrets at rest and in logs ------------------------------------------------------------


def test_the_refresh_token_is_encrypted_in_the_database_file(
    seeded_providers, partner, oauth_server, caplog
):
    user = MailboxUser.objects.create(
        connection=oauth_connection(partner, oauth_server), tag="alice"
    )
    client = Client()
    dance(client, user)
    user.refresh_from_db()
    token = user.oauth_refresh_token
    assert token.startswith("refresh-alice-")
    with db_connection.cursor() as cursor:
        cursor.execute(
            "SELECT oauth_refresh_token FROM mailboxes_mailboxuser WHERE id = %s", [user.id]
        )
        assert cursor.fetchone()[0].startswith("gAAAAA")
    assert token.encode() not in database_file_bytes()
    assert token not in caplog.text
    assert "token-for-alice" not in caplog.text


# --- other providers and configuration ------------------------------------------------------


def test_gmail_connect_redirects_to_google(client, partner):
    gmail = Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="GMAIL_OAUTH2"),
        oauth_client_id="gmail-client-id",
        oauth_client_secret="gmail-secret",
    )
    user = MailboxUser.objects.create(connection=gmail, tag="g", email="g@gmail.example")
    url = to_provider(client, user)
    assert url.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert params["scope"] == "https://mail.google.com/ openid email"
    assert params["login_hint"] == "g@gmail.example"
    assert (params["access_type"], params["prompt"]) == ("offline", "consent")
    assert "gmail-secret" not in url


def test_connect_without_oauth_client_settings_shows_a_page(client, partner):
    gmail = Connection.objects.create(
        partner=partner, provider=ImapProvider.objects.get(code="GMAIL_OAUTH2")
    )
    user = MailboxUser.objects.create(connection=gmail, tag="g")
    r = client.get(path(user))
    assert r.status_code == 503
    assert b"not set up" in r.content


@pytest.mark.parametrize(
    ("info", "email"),
    [
        ({"sub": "1", "email": "g@gmail.example"}, "g@gmail.example"),  # Google OIDC
        ({"mail": "m@outlook.example", "userPrincipalName": "upn@x"}, "m@outlook.example"),
        ({"mail": None, "userPrincipalName": "upn@tenant.example"}, "upn@tenant.example"),
        ({"sub": "1"}, ""),
    ],
)
def test_it_reads_the_email_of_each_provider(info, email):
    assert email_from_userinfo(info) == email


def test_it_reads_id_token_claims_and_ignores_garbage():
    token = "eyJhbGciOiJub25lIn0.eyJlbWFpbCI6ImFAYi5jIn0."
    assert id_token_claims(token) == {"email": "a@b.c"}
    assert id_token_claims("not.a-jwt!.x") == {}
    assert id_token_claims(None) == {}


# --- API: connections of the loopback OAuth provider ----------------------------------------


def test_the_api_creates_a_loopback_oauth_connection(partner):
    api = ApiClient(partner.api_key)
    r = api.post(
        "/connections",
        {
            "imap_provider_code": "LOOPBACK_OAUTH2",
            "imap_host": "127.0.0.1",
            "imap_port": 1143,
            "imap_tls": "none",
            "oauth_client_id": "id",
            "oauth_client_secret": "secret",
            "oauth_base_url": "http://127.0.0.1:9999",
        },
    )
    assert r.status_code == 201, r.content
    assert r.json()["oauth_base_url"] == "http://127.0.0.1:9999"
    connection = partner.connections.get()
    assert connection.oauth_url("token") == "http://127.0.0.1:9999/token"


def test_the_api_requires_an_oauth_base_url_for_the_loopback_provider(partner):
    api = ApiClient(partner.api_key)
    r = api.post(
        "/connections",
        {
            "imap_provider_code": "LOOPBACK_OAUTH2",
            "imap_host": "127.0.0.1",
            "oauth_client_id": "id",
            "oauth_client_secret": "secret",
        },
    )
    assert r.status_code == 422
    assert "oauth_base_url" in r.json()["error"]["message"]


@pytest.mark.parametrize("code", ["GMAIL_OAUTH2", "PLAIN"])
def test_the_api_refuses_an_oauth_base_url_for_real_providers(partner, code):
    api = ApiClient(partner.api_key)
    r = api.post(
        "/connections",
        {
            "imap_provider_code": code,
            "imap_host": "h.example",
            "oauth_client_id": "id",
            "oauth_client_secret": "secret",
            "oauth_base_url": "http://127.0.0.1:9999",
        },
    )
    assert r.status_code == 422
    assert "oauth_base_url" in r.json()["error"]["message"]
    assert not partner.connections.exists()


def test_an_oauth_connect_link_cannot_be_used_again_after_success(client, user, oauth_server):
    link = path(user)
    r = client.get(link)
    assert r.status_code == 302
    back_to_us(client, consent(r["Location"]))
    user.refresh_from_db()
    assert user.connected_at is not None
    assert client.get(link).status_code == 404  # the link did its job


def test_two_sign_ins_started_from_one_link_connect_once(client, user, oauth_server):
    link = path(user)
    first = client.get(link)["Location"]
    second = client.get(link)["Location"]
    assert back_to_us(client, consent(first)).status_code == 302
    pending = MailboxUser.objects.get(id=user.id).connect_pending
    r = back_to_us(client, consent(second))
    assert r.status_code == 400
    assert b"used already" in r.content
    assert MailboxUser.objects.get(id=user.id).connect_pending == pending  # connected once
