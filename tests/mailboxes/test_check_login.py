"""The hosted form's password check, against a real Dovecot."""

from __future__ import annotations

import pytest

from devtools.testing import free_port
from superimap.mailboxes.credentials import REFUSED, UNREACHABLE, UNTRUSTED, check_login
from superimap.partners.models import Connection, ImapProvider


@pytest.fixture
def connection(partner, dovecot) -> Connection:
    dovecot.add_user("checker", "checker-pw")
    return Connection(
        partner=partner,
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        imap_host="127.0.0.1",
        imap_port=dovecot.imap_port,
        imap_tls="none",
    )


def test_it_accepts_the_right_password(connection):
    assert check_login(connection, "checker", "checker-pw") is None


def test_it_says_when_the_server_refuses_the_password(connection):
    assert check_login(connection, "checker", "wrong") == (
        "The mail server refused this username and password."
    )


def test_it_says_the_same_for_every_network_failure(connection):
    connection.imap_port = free_port()
    assert check_login(connection, "checker", "checker-pw") == UNREACHABLE
    assert "Error" not in UNREACHABLE


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_it_says_when_the_certificate_is_not_trusted_and_trusts_the_connections_ca(
    partner, dovecot, tls
):
    dovecot.add_user("checker", "checker-pw")
    connection = Connection(
        partner=partner,
        provider=ImapProvider.objects.get(code="PLAIN"),  # verifies certificates
        imap_host="127.0.0.1",
        imap_port=dovecot.imaps_port if tls == "implicit" else dovecot.imap_port,
        imap_tls=tls,
    )
    assert check_login(connection, "checker", "checker-pw") == UNTRUSTED
    connection.imap_tls_ca = dovecot.cert_path.read_text()
    assert check_login(connection, "checker", "checker-pw") is None
    assert check_login(connection, "checker", "wrong") == REFUSED
    connection.imap_tls_ca = ""
    connection.imap_tls_verify = False
    assert check_login(connection, "checker", "checker-pw") is None
