import pytest

from devtools.testing.dovecot import write_test_certificates
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider
from tests.helpers.api import GMAIL, ApiClient, assert_error

PLAIN_HOST = {"imap_provider_code": "PLAIN", "imap_host": "mail.example.org"}


def test_it_lists_connections_with_the_header_key(api, plain_connection):
    r = api.get("/connections")
    assert r.status_code == 200
    assert [c["imap_provider_code"] for c in r.json()] == ["PLAIN"]


def test_it_accepts_the_api_key_query_parameter(client, partner, plain_connection):
    r = client.get("/api/v1/connections", {"api_key": partner.api_key})
    assert r.status_code == 200
    assert len(r.json()) == 1


def test_it_refuses_a_missing_key(client, plain_connection):
    assert_error(client.get("/api/v1/connections"), 401, "unauthorized")


def test_it_refuses_a_wrong_header_key(plain_connection):
    assert_error(ApiClient("wrong-key").get("/connections"), 401, "unauthorized")


def test_it_refuses_a_wrong_query_key(client, plain_connection):
    assert_error(client.get("/api/v1/connections", {"api_key": "nope"}), 401)


def test_it_refuses_a_wrong_key_on_writes(partner):
    r = ApiClient("wrong-key").post("/connections", {"imap_provider_code": "PLAIN"})
    assert_error(r, 401)
    assert not partner.connections.exists()


def test_it_creates_a_plain_connection(api, partner):
    r = api.post(
        "/connections",
        {"imap_provider_code": "PLAIN", "imap_host": "mail.example.org", "imap_tls": "starttls"},
    )
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["imap_host"] == "mail.example.org"
    assert body["imap_tls"] == "starttls"
    assert body["imap_port"] == 993
    assert body["users_count"] == 0
    assert partner.connections.get().imap_host == "mail.example.org"


def test_it_creates_an_oauth_connection_without_echoing_the_secret(api):
    r = api.post("/connections", GMAIL)
    assert r.status_code == 201, r.content
    assert r.json()["oauth_client_secret"] == "- encrypted -"
    assert b"oauth-secret-123" not in r.content


def test_it_never_shows_the_oauth_secret_on_get_or_list(api):
    api.post("/connections", GMAIL)
    for r in (api.get("/connections"), api.get("/connections/GMAIL_OAUTH2")):
        assert r.status_code == 200
        assert b"oauth-secret-123" not in r.content
        assert b"- encrypted -" in r.content


def test_it_refuses_an_unknown_provider_code(api):
    assert_error(api.post("/connections", {"imap_provider_code": "NOPE"}), 422, "unknown_provider")


def test_it_refuses_a_duplicate_connection(api, plain_connection):
    r = api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "other.example"})
    assert_error(r, 409, "duplicate")
    assert Connection.objects.filter(partner=plain_connection.partner).count() == 1


def test_it_requires_the_client_secret_for_oauth(api, partner):
    r = api.post("/connections", {"imap_provider_code": "GMAIL_OAUTH2", "oauth_client_id": "x"})
    assert_error(r, 422, "missing_field")
    assert not partner.connections.exists()


def test_it_requires_imap_host_for_plain(api, partner):
    assert_error(api.post("/connections", {"imap_provider_code": "PLAIN"}), 422, "missing_field")
    assert not partner.connections.exists()


def test_it_refuses_a_blank_imap_host(api):
    r = api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "   "})
    assert_error(r, 422, "missing_field")


def test_it_refuses_tls_none_for_plain(api, partner):
    r = api.post(
        "/connections",
        {"imap_provider_code": "PLAIN", "imap_host": "h.example", "imap_tls": "none"},
    )
    assert_error(r, 422, "invalid_field")
    assert not partner.connections.exists()


def test_it_allows_tls_none_for_the_loopback_provider(api):
    r = api.post(
        "/connections",
        {"imap_provider_code": "LOOPBACK_PLAIN", "imap_host": "127.0.0.1", "imap_tls": "none"},
    )
    assert r.status_code == 201, r.content


def test_it_refuses_the_loopback_provider_unless_enabled(api, partner, settings):
    settings.ALLOW_LOOPBACK_IMAP = False
    r = api.post(
        "/connections",
        {"imap_provider_code": "LOOPBACK_PLAIN", "imap_host": "127.0.0.1", "imap_tls": "none"},
    )
    assert_error(r, 422, "unknown_provider")
    assert not partner.connections.exists()


def test_it_refuses_server_settings_for_an_oauth_provider(api):
    assert_error(api.post("/connections", {**GMAIL, "imap_host": "evil.example"}), 422)


def test_it_refuses_oauth_settings_for_a_fixed_password_provider(api):
    r = api.post("/connections", {"imap_provider_code": "YAHOO_PLAIN", "oauth_client_id": "x"})
    assert_error(r, 422, "invalid_field")


def test_it_gets_one_connection(api, plain_connection):
    r = api.get("/connections/PLAIN")
    assert r.status_code == 200
    assert r.json()["imap_host"] == "imap.example.com"


def test_it_answers_404_for_a_connection_the_partner_lacks(api):
    assert_error(api.get("/connections/GMAIL_OAUTH2"), 404, "not_found")


def test_it_updates_a_connection(api, plain_connection):
    r = api.put("/connections/PLAIN", {"imap_host": "new.example", "imap_port": 143})
    assert r.status_code == 200, r.content
    plain_connection.refresh_from_db()
    assert (plain_connection.imap_host, plain_connection.imap_port) == ("new.example", 143)


def test_it_rotates_the_oauth_secret_without_echoing_it(api):
    api.post("/connections", GMAIL)
    r = api.put("/connections/GMAIL_OAUTH2", {"oauth_client_secret": "rotated-secret"})
    assert r.status_code == 200
    conn = Connection.objects.get(provider__code="GMAIL_OAUTH2")
    assert conn.oauth_client_secret == "rotated-secret"
    assert b"rotated-secret" not in r.content


def test_it_refuses_tls_none_on_update(api, plain_connection):
    assert_error(api.put("/connections/PLAIN", {"imap_tls": "none"}), 422)
    plain_connection.refresh_from_db()
    assert plain_connection.imap_tls == "implicit"


def test_it_deletes_a_connection_and_its_users(api, plain_connection):
    api.post("/connections/PLAIN/users", {"tag": "u1", "email": "a@example.com", "password": "p"})
    r = api.delete("/connections/PLAIN")
    assert r.status_code == 204
    assert not Connection.objects.filter(id=plain_connection.id).exists()
    assert not plain_connection.users.exists()


def test_it_counts_only_active_users(api, plain_connection):
    api.post("/connections/PLAIN/users", {"tag": "a"})
    api.post("/connections/PLAIN/users", {"tag": "b"})
    api.delete("/connections/PLAIN/users/b")
    assert api.get("/connections").json()[0]["users_count"] == 1


def test_it_lists_connections_without_n_plus_1(api, partner, django_assert_max_num_queries):
    for code in ("PLAIN", "LOOPBACK_PLAIN", "YAHOO_PLAIN", "ICLOUD_PLAIN"):
        Connection.objects.create(
            partner=partner, provider=ImapProvider.objects.get(code=code), imap_host="h"
        )
    with django_assert_max_num_queries(3):
        r = api.get("/connections")
    assert len(r.json()) == 4


# Tenant isolation: the outsider's key never sees or changes the owner's connection.


def test_it_hides_the_connection_from_another_partner(outsider_api, plain_connection):
    assert outsider_api.get("/connections").json() == []
    assert_error(outsider_api.get("/connections/PLAIN"), 404)


def test_it_stops_another_partner_updating_the_connection(outsider_api, plain_connection):
    assert_error(outsider_api.put("/connections/PLAIN", {"imap_host": "evil.example"}), 404)
    plain_connection.refresh_from_db()
    assert plain_connection.imap_host == "imap.example.com"


def test_it_stops_another_partner_deleting_the_connection(outsider_api, plain_connection):
    assert_error(outsider_api.delete("/connections/PLAIN"), 404)
    assert Connection.objects.filter(id=plain_connection.id).exists()


def test_it_lets_another_partner_have_its_own_connection(outsider_api, outsider, plain_connection):
    r = outsider_api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "o.example"})
    assert r.status_code == 201
    plain_connection.refresh_from_db()
    assert plain_connection.imap_host == "imap.example.com"
    assert outsider.connections.get().imap_host == "o.example"


def test_it_never_echoes_the_api_key(api, partner, plain_connection):
    responses = [
        api.get("/connections"),
        api.get("/connections/PLAIN"),
        api.put("/connections/PLAIN", {"imap_port": 994}),
        api.post("/connections/PLAIN/users", {"tag": "u"}),
        api.get("/connections/PLAIN/users"),
        api.get("/deliveries"),
    ]
    for r in responses:
        assert r.status_code in (200, 201)
        assert partner.api_key.encode() not in r.content
        assert partner.webhook_secret.encode() not in r.content


# --- self-hosted servers: TLS options (issue 8 item 4) and idle refresh (item 3) ---------


def _test_ca_pem(tmp_path) -> str:
    return write_test_certificates(tmp_path).ca_cert.read_text()


def test_it_takes_a_ca_bundle_for_plain(api, tmp_path):
    pem = _test_ca_pem(tmp_path)
    r = api.post("/connections", {**PLAIN_HOST, "imap_tls_ca": pem})
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["imap_tls_ca"] == pem.strip()
    assert body["imap_tls_verify"] is True
    assert body["warnings"] == []


@pytest.mark.parametrize(
    "value",
    [
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "x" * 70000,
        12,
    ],
)
def test_it_refuses_a_bad_ca_bundle(api, partner, value):
    assert_error(api.post("/connections", {**PLAIN_HOST, "imap_tls_ca": value}), 422)
    assert not partner.connections.exists()


def test_it_shows_turned_off_verification_as_a_warning(api):
    r = api.post("/connections", {**PLAIN_HOST, "imap_tls_verify": False})
    assert r.status_code == 201, r.content
    assert r.json()["imap_tls_verify"] is False
    assert "verification is off" in r.json()["warnings"][0]
    assert "verification is off" in api.get("/connections/PLAIN").json()["warnings"][0]


def test_it_allows_plain_imap_only_by_explicit_opt_in(api, partner):
    none = {**PLAIN_HOST, "imap_tls": "none", "imap_port": 143}
    error = assert_error(api.post("/connections", none), 422, "invalid_field")
    assert "imap_allow_plaintext" in error["message"]
    r = api.post("/connections", {**none, "imap_allow_plaintext": True})
    assert r.status_code == 201, r.content
    assert r.json()["imap_tls"] == "none"
    assert "without TLS" in r.json()["warnings"][0]
    # Withdrawing the opt-in while still on "none" is refused too.
    assert_error(api.put("/connections/PLAIN", {"imap_allow_plaintext": False}), 422)


@pytest.mark.parametrize(
    "field", [("imap_tls_ca", "x"), ("imap_tls_verify", False), ("imap_allow_plaintext", True)]
)
def test_it_refuses_tls_options_for_a_fixed_host_provider(api, field):
    assert_error(api.post("/connections", {**GMAIL, field[0]: field[1]}), 422, "invalid_field")


def test_it_sets_idle_refresh_per_connection_over_the_provider_default(api):
    assert api.post("/connections", GMAIL).json()["idle_refresh_seconds"] is None  # automatic
    r = api.post("/connections", {**PLAIN_HOST, "idle_refresh_seconds": 30})
    assert r.status_code == 201, r.content
    assert r.json()["idle_refresh_seconds"] == 30
    r = api.put("/connections/PLAIN", {"idle_refresh_seconds": 0})
    assert r.json()["idle_refresh_seconds"] == 0


@pytest.mark.parametrize("value", [-1, 1741, "soon", 2.5])
def test_it_refuses_a_bad_idle_refresh(api, value):
    assert_error(api.post("/connections", {**PLAIN_HOST, "idle_refresh_seconds": value}), 422)


def test_updating_a_connection_restarts_its_users_sessions(api, plain_connection):
    user = MailboxUser.objects.create(connection=plain_connection, tag="u1")
    before = user.session_version
    assert api.put("/connections/PLAIN", {"imap_tls_verify": False}).status_code == 200
    user.refresh_from_db()
    assert user.session_version != before


@pytest.mark.parametrize("port", [True, False, "993", 993.0, "0x3e1"])
@pytest.mark.parametrize("field", ["imap_port", "smtp_port"])
def test_it_refuses_ports_that_are_not_integers(api, field, port):
    body = {"imap_provider_code": "PLAIN", "imap_host": "imap.example.com", field: port}
    assert_error(api.post("/connections", body), 422, "validation_error")


def test_the_schema_lists_the_provider_codes(client, db):
    schema = client.get("/api/v1/openapi.json").json()
    field = schema["components"]["schemas"]["ConnectionIn"]["properties"]["imap_provider_code"]
    assert "PLAIN" in field["enum"] and "GMAIL_OAUTH2" in field["enum"]
    assert set(field["enum"]) == set(ImapProvider.objects.values_list("code", flat=True))
