"""Drop-in for the original's clients: its parameter forms, field names and archive semantics,
and the exact requests rest-client 2.1 makes for the original README's snippets."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider
from tests.helpers.api import REST_CLIENT_REQUESTS, assert_error, form, send


def replay(name: str, api_key: str):
    """Send one captured request as it was (method, path, every header, body)."""
    raw = REST_CLIENT_REQUESTS[name].replace("$API_KEY$", api_key)
    head, _, body = raw.partition("\r\n\r\n")
    request_line, *header_lines = head.split("\r\n")
    method, path, _ = request_line.split(" ")
    headers = dict(line.split(": ", 1) for line in header_lines)
    content_type = headers.pop("Content-Type", "")
    headers.pop("Content-Length", None)
    meta = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}
    return Client().generic(
        method, path, body.encode(), content_type=content_type, secure=False, **meta
    )


@pytest.fixture
def gmail(partner) -> Connection:
    return Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="GMAIL_OAUTH2"),
        oauth_client_id="client-id",
        oauth_client_secret="client-secret",
    )


# The original README's snippets, as rest-client 2.1 sends them.


def test_it_answers_the_readme_snippet_creating_a_user(partner, gmail):
    r = replay("create_user", partner.api_key)
    assert r.status_code == 201, r.content
    assert r.json()["tag"] == "MY_USER"
    assert gmail.users.filter(tag="MY_USER", archived=False).exists()


def test_it_answers_the_readme_snippet_fetching_connect_url(partner, gmail):
    replay("create_user", partner.api_key)
    r = replay("get_user", partner.api_key)
    assert r.status_code == 200
    connect_url = r.json()["connect_url"]
    assert "/connect/" in connect_url
    # The snippet appends "?" + callbacks.to_query: the link must take a query string.
    assert "?" not in connect_url


def test_it_answers_the_readme_snippet_listing_connections(partner, gmail):
    r = replay("list_connections", partner.api_key)
    assert r.status_code == 200
    assert r.json()[0]["imap_provider_code"] == "GMAIL_OAUTH2"
    assert r.json()[0]["users_count"] == 0


def test_it_creates_an_oauth_connection_from_a_rest_client_hash(partner):
    r = replay("create_connection", partner.api_key)
    assert r.status_code == 201, r.content
    connection = partner.connections.get(provider__code="GMAIL_OAUTH2")
    assert connection.oauth_client_id == "id" and connection.oauth_client_secret == "s"


def test_it_sets_a_password_archives_and_restores_as_rest_client_sends_them(
    partner, plain_connection
):
    MailboxUser.objects.create(connection=plain_connection, tag="MY_USER")
    r = replay("set_password", partner.api_key)
    assert r.status_code == 200, r.content
    user = MailboxUser.objects.get(tag="MY_USER")
    assert user.login_username == "me@example.com" and user.password == "app-password"
    assert r.json()["connected_at"] is not None
    assert replay("delete_user", partner.api_key).status_code == 204
    assert replay("restore", partner.api_key).json()["archived"] is False


# Parameter forms: JSON, form-encoded, multipart, query string, mismatched Content-Type.


@pytest.mark.parametrize(
    "body,content_type",
    [
        (json.dumps({"tag": "bob", "email": "b@example.com"}).encode(), "application/json"),
        (form({"tag": "bob", "email": "b@example.com"}), "application/x-www-form-urlencoded"),
        (form({"tag": "bob", "email": "b@example.com"}), "application/json"),
        (json.dumps({"tag": "bob", "email": "b@example.com"}).encode(), "text/plain"),
        (
            json.dumps({"tag": "bob", "email": "b@example.com"}).encode(),
            "application/x-www-form-urlencoded",
        ),
        (form({"tag": "bob", "email": "b@example.com"}), ""),
    ],
    ids=["json", "form", "form-labelled-json", "json-labelled-text", "json-labelled-form", "none"],
)
def test_it_reads_the_body_whatever_its_encoding(partner, plain_connection, body, content_type):
    r = send("POST", "/connections/PLAIN/users", partner.api_key, body, content_type)
    assert r.status_code == 201, r.content
    assert r.json()["email"] == "b@example.com"


def test_it_reads_a_multipart_body(partner, plain_connection):
    r = Client().post(
        "/api/v1/connections/PLAIN/users",
        {"tag": "bob", "email": "b@example.com", "enable_tracer": "1"},
        HTTP_X_API_KEY=partner.api_key,
    )  # the test client sends a dict as multipart/form-data
    assert r.status_code == 201, r.content
    assert r.json()["enable_tracer"] is True


def test_it_reads_parameters_from_the_query_string(partner, plain_connection):
    r = send("POST", f"/connections/PLAIN/users?tag=bob&api_key={partner.api_key}", "")
    assert r.status_code == 201, r.content
    assert r.json()["tag"] == "bob"


def test_it_lets_the_query_string_win_over_the_body_as_rails_does(partner, plain_connection):
    body = form({"tag": "bob", "email": "body@example.com"})
    r = send(
        "POST",
        "/connections/PLAIN/users?email=query%40example.com",
        partner.api_key,
        body,
        "application/x-www-form-urlencoded",
    )
    assert r.status_code == 201, r.content
    assert r.json()["email"] == "query@example.com"


def test_it_reads_form_values_as_numbers_and_booleans(partner):
    body = form(
        {"imap_provider_code": "PLAIN", "imap_host": "mail.example.com", "imap_port": "143"}
    )
    r = send("POST", "/connections", partner.api_key, body, "application/x-www-form-urlencoded")
    assert r.status_code == 201, r.content
    assert r.json()["imap_port"] == 143


@pytest.mark.parametrize("port", ["0x3e1", "true", "143.0", " 143", ""])
def test_it_refuses_form_ports_that_are_not_digits(partner, port):
    # A form's digit strings are numbers (above); anything else stays as strict as JSON.
    body = form({"imap_provider_code": "PLAIN", "imap_host": "mail.example.com", "imap_port": port})
    r = send("POST", "/connections", partner.api_key, body, "application/x-www-form-urlencoded")
    assert_error(r, 422, "validation_error")
    assert not partner.connections.exists()


def test_it_reads_a_port_in_the_query_string_as_a_number(partner):
    body = json.dumps({"imap_provider_code": "PLAIN", "imap_host": "mail.example.com"})
    r = send("POST", "/connections?imap_port=143", partner.api_key, body, "application/json")
    assert r.status_code == 201, r.content
    assert r.json()["imap_port"] == 143


def test_it_answers_a_json_400_for_a_body_that_is_neither_json_nor_a_form(
    partner, plain_connection
):
    r = send("POST", "/connections/PLAIN/users", partner.api_key, b'{"tag": ', "application/json")
    assert_error(r, 400)


def test_it_answers_a_json_422_for_a_form_missing_a_field(partner, plain_connection):
    r = send("POST", "/connections/PLAIN/users", partner.api_key, b"email=x", "application/json")
    assert_error(r, 422, "validation_error")


# The original's field names.


def test_it_takes_login_password_as_password(partner, plain_connection):
    # A password no random token in the answer (connect URL, ids) can contain by chance:
    # "pw" once turned up inside one.
    secret = "pw-Never-Shown-7q"
    body = form({"tag": "bob", "login_username": "bob", "login_password": secret})
    r = send("POST", "/connections/PLAIN/users", partner.api_key, body, "application/json")
    assert r.status_code == 201, r.content
    user = MailboxUser.objects.get(tag="bob")
    assert user.password == secret and user.connected_at is not None
    assert secret.encode() not in r.content


def test_it_refuses_login_password_and_password_that_differ(partner, plain_connection):
    body = json.dumps({"tag": "bob", "login_username": "b", "login_password": "a", "password": "b"})
    r = send("POST", "/connections/PLAIN/users", partner.api_key, body.encode(), "application/json")
    assert_error(r, 422, "validation_error")
    assert not MailboxUser.objects.exists()


def test_it_takes_oauth2_client_id_and_secret_on_update(partner, gmail):
    body = form({"oauth2_client_id": "new-id", "oauth2_client_secret": "new-secret"})
    r = send("PUT", "/connections/GMAIL_OAUTH2", partner.api_key, body, "application/json")
    assert r.status_code == 200, r.content
    gmail.refresh_from_db()
    assert (gmail.oauth_client_id, gmail.oauth_client_secret) == ("new-id", "new-secret")
    assert b"new-secret" not in r.content


def test_it_ignores_the_provider_code_in_an_update_body_as_the_path_wins(partner, gmail):
    body = form({"imap_provider_code": "GMAIL_OAUTH2", "oauth2_client_id": "x"})
    r = send("PUT", "/connections/GMAIL_OAUTH2", partner.api_key, body, "application/json")
    assert r.status_code == 200, r.content


def test_it_connects_an_oauth_user_with_a_refresh_token_held_by_the_partner(partner, gmail):
    body = form({"tag": "bob", "email": "bob@gmail.example", "oauth2_refresh_token": "rt-1"})
    r = send("POST", "/connections/GMAIL_OAUTH2/users", partner.api_key, body, "application/json")
    assert r.status_code == 201, r.content
    user = MailboxUser.objects.get(tag="bob")
    assert user.oauth_refresh_token == "rt-1" and user.connected_at is not None
    assert user.watchable
    assert b"rt-1" not in r.content


def test_it_requires_an_email_with_a_refresh_token(partner, gmail):
    body = form({"tag": "bob", "oauth2_refresh_token": "rt-1"})
    r = send("POST", "/connections/GMAIL_OAUTH2/users", partner.api_key, body, "application/json")
    assert_error(r, 422, "missing_field")


def test_it_refuses_a_refresh_token_for_a_password_provider(partner, plain_connection):
    body = form({"tag": "bob", "email": "b@example.com", "oauth2_refresh_token": "rt"})
    r = send("POST", "/connections/PLAIN/users", partner.api_key, body, "application/json")
    assert_error(r, 422, "invalid_field")


def test_it_ignores_a_tag_in_an_update_body_as_the_path_wins(partner, plain_connection):
    MailboxUser.objects.create(connection=plain_connection, tag="bob")
    r = send("PUT", "/connections/PLAIN/users/bob", partner.api_key, form({"tag": "x"}), "")
    assert r.status_code == 200, r.content
    assert r.json()["tag"] == "bob"


# Credentials set through the API connect the user, like the hosted flows; user_connected
# is owed until the engine's first login with them succeeds (tests/engine/test_user_connected.py).


def _owed(tag: str) -> bool:
    user = MailboxUser.objects.get(tag=tag, archived=False)
    return bool(user.connect_pending) and user.connected_at is not None


def test_it_connects_the_user_when_a_password_is_set_on_create(partner, plain_connection):
    body = form({"tag": "bob", "login_username": "bob@example.com", "login_password": "pw"})
    r = send("POST", "/connections/PLAIN/users", partner.api_key, body, "application/json")
    assert r.status_code == 201, r.content
    assert _owed("bob")
    assert not Delivery.objects.filter(kind="user_connected").exists()  # no login yet


def test_it_connects_the_user_when_a_password_is_set_on_update(partner, plain_connection):
    MailboxUser.objects.create(connection=plain_connection, tag="bob", email="b@example.com")
    r = send("PUT", "/connections/PLAIN/users/bob", partner.api_key, form({"login_password": "pw"}))
    assert r.status_code == 200, r.content
    assert _owed("bob")


def test_it_connects_the_user_for_a_refresh_token(partner, gmail):
    body = form({"tag": "bob", "email": "bob@gmail.example", "oauth2_refresh_token": "rt"})
    r = send("POST", "/connections/GMAIL_OAUTH2/users", partner.api_key, body)
    assert r.status_code == 201, r.content
    assert _owed("bob")


def test_it_owes_no_user_connected_without_credentials(partner, plain_connection):
    send("POST", "/connections/PLAIN/users", partner.api_key, form({"tag": "bob"}))
    send("PUT", "/connections/PLAIN/users/bob", partner.api_key, form({"email": "b@x.example"}))
    assert not Delivery.objects.exists()
    assert not _owed("bob")


# Responses carry every field the original rendered, with its name and type.


def test_it_renders_the_originals_user_fields(partner, plain_connection):
    send("POST", "/connections/PLAIN/users", partner.api_key, form({"tag": "bob"}))
    body = send("GET", "/connections/PLAIN/users/bob", partner.api_key).json()
    assert body["tag"] == "bob"
    assert body["email"] is None  # nil in the original until known
    assert body["connected_at"] is None
    assert body["connect_url"].startswith("http") and body["disconnect_url"].startswith("http")
    [listed] = send("GET", "/connections/PLAIN/users", partner.api_key).json()
    assert {"tag", "email"} <= set(listed)


def test_it_renders_the_originals_connection_fields(partner, plain_connection):
    send("POST", "/connections/PLAIN/users", partner.api_key, form({"tag": "bob"}))
    body = send("GET", "/connections/PLAIN", partner.api_key).json()
    assert body["imap_provider_code"] == "PLAIN"
    assert body["users_count"] == 1 and isinstance(body["users_count"], int)


def test_it_takes_the_api_key_from_a_form_body_as_rails_params_did(partner, plain_connection):
    body = form({"tag": "bob", "api_key": partner.api_key})
    r = Client().post("/api/v1/connections/PLAIN/users", body, content_type="application/json")
    assert r.status_code == 201, r.content
    assert r.json()["tag"] == "bob"


def test_it_refuses_a_wrong_api_key_in_the_body(partner, plain_connection):
    body = form({"tag": "bob", "api_key": "wrong"})
    r = Client().post("/api/v1/connections/PLAIN/users", body, content_type="application/json")
    assert_error(r, 401)


def test_it_lets_the_header_key_win_over_a_body_key(partner, outsider, plain_connection):
    body = form({"tag": "bob", "api_key": outsider.api_key})
    r = send("POST", "/connections/PLAIN/users", partner.api_key, body, "application/json")
    assert r.status_code == 201, r.content


@pytest.mark.parametrize(
    "path", ["/connections.json", "/connections/PLAIN.json", "/connections/PLAIN/users/bob.json"]
)
def test_it_accepts_the_json_format_suffix_rails_routes_took(partner, plain_connection, path):
    MailboxUser.objects.create(connection=plain_connection, tag="bob")
    r = send("GET", path, partner.api_key)
    assert r.status_code == 200, r.content


def test_it_answers_a_json_400_for_deeply_nested_json(partner, plain_connection):
    body = b'{"tag": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = send("POST", "/connections/PLAIN/users", partner.api_key, body, "application/json")
    assert_error(r, 400)


def test_it_updates_with_patch_as_rails_resources_routed_it(partner, plain_connection):
    MailboxUser.objects.create(connection=plain_connection, tag="bob")
    r = send("PATCH", "/connections/PLAIN/users/bob", partner.api_key, form({"email": "b@x.io"}))
    assert r.status_code == 200, r.content
    assert r.json()["email"] == "b@x.io"
    r = send("PATCH", "/connections/PLAIN", partner.api_key, form({"imap_port": "143"}))
    assert r.status_code == 200, r.content
    assert r.json()["imap_port"] == 143
