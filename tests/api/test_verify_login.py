"""verify=true on POST/PUT users: the login is tried during the call (the hosted form's
check, against a real Dovecot); refused is 422 imap_auth_failed and nothing is saved,
unreachable is 502. Without it the call answers as before (the original's clients)."""

from __future__ import annotations

import pytest
from django.test import Client

from devtools.testing import free_port
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider
from tests.helpers.api import assert_error, form, send

USERS = "/connections/LOOPBACK_PLAIN/users"


@pytest.fixture
def loopback(partner, dovecot) -> Connection:
    dovecot.add_user("verifier", "verifier-pw")
    return Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        imap_host="127.0.0.1",
        imap_port=dovecot.imap_port,
        imap_tls="none",
    )


def _body(password: str, **extra) -> dict:
    return {"tag": "v", "login_username": "verifier", "password": password, **extra}


def test_a_refused_login_is_422_and_nothing_is_saved(api, loopback):
    r = api.post(USERS, _body("wrong", verify=True))
    error = assert_error(r, 422, "imap_auth_failed")
    assert "refused" in error["message"] and "wrong" not in r.content.decode()
    assert not MailboxUser.objects.exists()


def test_an_accepted_login_creates_the_connected_user(api, loopback):
    r = api.post(USERS, _body("verifier-pw", verify=True))
    assert r.status_code == 201, r.content
    user = MailboxUser.objects.get(tag="v")
    assert user.connected_at is not None and user.password == "verifier-pw"
    assert user.connect_pending  # user_connected still waits for the engine's own login


def test_an_unreachable_server_is_502_and_nothing_is_saved(api, loopback):
    loopback.imap_port = free_port()  # nothing listens there
    loopback.save()
    r = api.post(USERS, _body("verifier-pw", verify=True))
    assert_error(r, 502, "imap_unavailable")
    assert not MailboxUser.objects.exists()


def test_a_refused_login_on_update_leaves_the_user_as_it_was(api, loopback):
    assert api.post(USERS, _body("verifier-pw")).status_code == 201
    before = MailboxUser.objects.get(tag="v")
    r = api.put(f"{USERS}/v", {"password": "new-but-wrong", "verify": True})
    assert_error(r, 422, "imap_auth_failed")
    after = MailboxUser.objects.get(tag="v")
    assert after.password == "verifier-pw"
    assert (after.session_version, after.connect_pending) == (
        before.session_version,
        before.connect_pending,
    )


def test_update_verifies_the_stored_password_with_a_new_username(api, loopback, dovecot):
    dovecot.add_user("other", "verifier-pw")
    assert api.post(USERS, _body("verifier-pw")).status_code == 201
    r = api.put(f"{USERS}/v", {"login_username": "other", "verify": True})
    assert r.status_code == 200, r.content
    assert MailboxUser.objects.get(tag="v").login_username == "other"
    r = api.put(f"{USERS}/v", {"login_username": "nobody", "verify": True})
    assert_error(r, 422, "imap_auth_failed")


def test_verify_in_the_query_string_of_a_form_post(partner, loopback):
    body = form({"tag": "v", "login_username": "verifier", "login_password": "wrong"})
    r = send("POST", f"{USERS}?verify=true", partner.api_key, body)
    assert_error(r, 422, "imap_auth_failed")
    assert not MailboxUser.objects.exists()


def test_verify_needs_a_password(api, loopback):
    r = api.post(USERS, {"tag": "v", "login_username": "verifier", "verify": True})
    assert_error(r, 422, "missing_field")


def test_verify_does_not_apply_to_oauth_providers(api, partner):
    Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="GMAIL_OAUTH2"),
        oauth_client_id="id",
        oauth_client_secret="secret",
    )
    body = {"tag": "g", "email": "g@gmail.example", "oauth_refresh_token": "rt", "verify": True}
    assert_error(api.post("/connections/GMAIL_OAUTH2/users", body), 422, "invalid_field")
    assert not MailboxUser.objects.exists()


def test_without_verify_a_wrong_password_is_saved_as_before(api, loopback):
    r = api.post(USERS, _body("wrong"))
    assert r.status_code == 201, r.content
    assert MailboxUser.objects.get(tag="v").password == "wrong"


def test_the_schema_declares_verify_and_its_responses(db):
    schema = Client().get("/api/v1/openapi.json").json()
    users = schema["paths"]["/api/v1/connections/{code}/users"]
    user = schema["paths"]["/api/v1/connections/{code}/users/{tag}"]
    for operation in (users["post"], user["put"], user["patch"]):
        assert {"422", "502"} <= set(operation["responses"])
    components = schema["components"]["schemas"]
    for name in ("UserIn", "UserUpdate"):
        assert "imap_auth_failed" in components[name]["properties"]["verify"]["description"]
