"""The field checks of superimap/accounts/checks.py: tables of values in, problems out. No
database, no DNS: these are the rules the API and the dashboard share."""

from __future__ import annotations

import pytest

from superimap.accounts.checks import (
    Problem,
    ProviderKind,
    ca_bundle_problem,
    given_connection_problems,
    given_credential_problems,
    missing_credential_problems,
    required_connection_problems,
    tls_problems,
)

GMAIL = ProviderKind("GMAIL_OAUTH2", oauth=True, host_per_connection=False)
ICLOUD = ProviderKind("ICLOUD", oauth=False, host_per_connection=False)
PLAIN = ProviderKind("PLAIN", oauth=False, host_per_connection=True)
LOOPBACK = ProviderKind("LOOPBACK_PLAIN", oauth=False, host_per_connection=True, loopback_only=True)
LOOPBACK_OAUTH = ProviderKind(
    "LOOPBACK_OAUTH2", oauth=True, host_per_connection=False, loopback_only=True
)


def _fields(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.field, p.code) for p in problems]


@pytest.mark.parametrize(
    "kind, given, expected",
    [
        (PLAIN, {"imap_host": "imap.example.com", "imap_port": 993}, []),
        (PLAIN, {"imap_tls_verify": False, "imap_allow_plaintext": True}, []),
        (GMAIL, {"oauth_client_id": "cid", "oauth_client_secret": "s"}, []),
        (GMAIL, {"imap_host": "x.example"}, [("imap_host", "invalid_field")]),
        (GMAIL, {"imap_host": ""}, [("imap_host", "invalid_field")]),  # given is given
        (GMAIL, {"imap_host": None}, []),  # None: not given
        (GMAIL, {"smtp_port": 25}, [("smtp_port", "invalid_field")]),
        (GMAIL, {"imap_tls_verify": False}, [("imap_tls_verify", "invalid_field")]),
        (GMAIL, {"oauth_base_url": "http://127.0.0.1:1"}, [("oauth_base_url", "invalid_field")]),
        (LOOPBACK_OAUTH, {"oauth_base_url": "http://127.0.0.1:1"}, []),
        (LOOPBACK, {"oauth_base_url": "http://127.0.0.1:1"}, [("oauth_base_url", "invalid_field")]),
        (ICLOUD, {"oauth_client_id": "cid"}, [("oauth_client_id", "invalid_field")]),
        (ICLOUD, {"imap_port": 143}, [("imap_port", "invalid_field")]),
        (PLAIN, {"imap_tls_ca": "not a pem"}, [("imap_tls_ca", "invalid_field")]),
        (
            GMAIL,
            {"oauth_base_url": "http://x", "imap_host": "h", "imap_port": 1},
            [
                ("oauth_base_url", "invalid_field"),
                ("imap_host", "invalid_field"),
                ("imap_port", "invalid_field"),
            ],
        ),
    ],
)
def test_given_connection_fields(kind, given, expected):
    assert _fields(given_connection_problems(kind, given)) == expected


def test_the_api_and_the_form_say_the_fixed_field_each_their_way():
    [fixed] = given_connection_problems(GMAIL, {"imap_host": "x"})
    assert fixed.message == "imap_host is fixed for GMAIL_OAUTH2."
    [foreign] = given_connection_problems(ICLOUD, {"oauth_client_secret": "s"})
    assert foreign.message == "oauth_client_secret does not apply to ICLOUD."
    [ca] = given_connection_problems(PLAIN, {"imap_tls_ca": "x"})
    assert ca.message.startswith("imap_tls_ca must be PEM certificate(s)")
    assert ca.shown_on_form.startswith("The CA bundle must be PEM certificate(s)")


@pytest.mark.parametrize(
    "kind, values, expected",
    [
        (GMAIL, {"oauth_client_id": "c", "oauth_client_secret": "s", "oauth_token_url": "u"}, []),
        (
            GMAIL,
            {"oauth_client_id": "c", "oauth_token_url": "u"},
            [("oauth_client_secret", "missing_field")],
        ),
        (
            GMAIL,
            {"oauth_client_secret": "s", "oauth_token_url": "u"},
            [("oauth_client_id", "missing_field")],
        ),
        (
            LOOPBACK_OAUTH,
            {"oauth_client_id": "c", "oauth_client_secret": "s", "oauth_token_url": ""},
            [("oauth_base_url", "missing_field")],
        ),
        (PLAIN, {"imap_host": "imap.example.com"}, []),
        (PLAIN, {"imap_host": ""}, [("imap_host", "missing_field")]),
        (ICLOUD, {}, []),
    ],
)
def test_required_connection_fields(kind, values, expected):
    assert _fields(required_connection_problems(kind, values)) == expected


@pytest.mark.parametrize(
    "kind, values, expected",
    [
        (PLAIN, {"imap_tls": "implicit"}, []),
        (PLAIN, {"imap_tls": "starttls"}, []),
        (PLAIN, {"imap_tls": "none"}, ["imap_tls"]),
        (PLAIN, {"imap_tls": "none", "imap_allow_plaintext": True}, []),
        (PLAIN, {"smtp_tls": "none", "imap_allow_plaintext": True}, ["smtp_tls"]),
        (PLAIN, {"imap_tls": "none", "smtp_tls": "none"}, ["imap_tls", "smtp_tls"]),
        (LOOPBACK, {"imap_tls": "none", "smtp_tls": "none"}, []),  # loopback test servers
        (GMAIL, {"imap_tls": "none"}, []),  # fixed host: the provider's TLS
    ],
)
def test_no_tls_needs_an_opt_in(kind, values, expected):
    assert [p.field for p in tls_problems(kind, values)] == expected


@pytest.mark.parametrize(
    "kind, given, expected",
    [
        (PLAIN, {"password": "pw"}, []),
        (PLAIN, {"oauth_refresh_token": "t"}, ["oauth_refresh_token"]),
        (PLAIN, {"oauth_refresh_token": ""}, []),
        (GMAIL, {"oauth_refresh_token": "t"}, []),
        (GMAIL, {"password": "pw"}, ["password"]),
        (GMAIL, {"password": "pw", "login_username": "u"}, ["password", "login_username"]),
        (GMAIL, {"login_username": ""}, []),
    ],
)
def test_credentials_the_provider_takes(kind, given, expected):
    assert [p.field for p in given_credential_problems(kind, given)] == expected


@pytest.mark.parametrize(
    "given, values, expected",
    [
        ({"password": "pw"}, {"email": "a@example.com"}, []),
        ({"password": "pw"}, {"login_username": "a"}, []),
        ({"password": "pw"}, {"email": "", "login_username": ""}, ["login_username"]),
        ({"oauth_refresh_token": "t"}, {"email": "a@example.com"}, []),
        ({"oauth_refresh_token": "t"}, {"login_username": "a"}, ["email"]),
        ({}, {}, []),  # no new credentials: nothing to log in as yet
    ],
)
def test_new_credentials_need_who_to_log_in_as(given, values, expected):
    assert [p.field for p in missing_credential_problems(given, values)] == expected


@pytest.mark.parametrize(
    "pem, starts",
    [
        ("", "must be PEM"),
        ("hello", "must be PEM"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "is not a valid PEM"),
    ],
)
def test_ca_bundles_that_do_not_load(pem, starts):
    assert ca_bundle_problem(pem).startswith(starts)
