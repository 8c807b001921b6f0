"""SMTP settings of a connection over the API: host-per-connection providers only."""

from tests.helpers.api import GMAIL, assert_error


def test_plain_connections_take_smtp_settings(api):
    r = api.post(
        "/connections",
        {
            "imap_provider_code": "PLAIN",
            "imap_host": "imap.example.org",
            "smtp_host": "smtp.example.org",
            "smtp_port": 465,
        },
    )
    assert r.status_code == 201, r.content
    body = r.json()
    assert (body["smtp_host"], body["smtp_port"], body["smtp_tls"]) == (
        "smtp.example.org",
        465,
        "implicit",
    )
    r = api.put("/connections/PLAIN", {"smtp_tls": "starttls", "smtp_port": 2525})
    assert r.status_code == 200, r.content
    assert (r.json()["smtp_port"], r.json()["smtp_tls"]) == (2525, "starttls")


def test_fixed_providers_refuse_smtp_settings(api, partner):
    assert_error(
        api.post("/connections", {**GMAIL, "smtp_host": "x.example"}), 422, "invalid_field"
    )
    r = api.post("/connections", {"imap_provider_code": "YAHOO_PLAIN", "smtp_port": 25})
    assert_error(r, 422, "invalid_field")
    assert not partner.connections.exists()


def test_smtp_tls_none_only_for_loopback(api):
    plain = {"imap_provider_code": "PLAIN", "imap_host": "h.example", "smtp_tls": "none"}
    assert_error(api.post("/connections", plain), 422, "invalid_field")
    loopback = {**plain, "imap_provider_code": "LOOPBACK_PLAIN", "imap_host": "127.0.0.1"}
    assert api.post("/connections", loopback).status_code == 201
