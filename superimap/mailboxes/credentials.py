"""Checking a password against the IMAP server before it is saved (hosted connect form)."""

from __future__ import annotations

import imaplib
import ssl

from django.conf import settings

from superimap.engine.connection import client_tls_context
from superimap.netguard import PrivateTargetRefused, check_host
from superimap.partners.models import Connection, ImapProvider

CHECK_TIMEOUT_SECONDS = 15
# Shown to the end user for every network failure alike (refused, closed, timed out).
UNREACHABLE = "Cannot reach the mail server. Check its settings with the application."
REFUSED = "The mail server refused this username and password."
UNTRUSTED = "The mail server's TLS certificate is not trusted (see imap_tls_ca)."


def tls_context(connection: Connection) -> ssl.SSLContext:
    """The engine's context for this connection (its CA bundle, or no verification where
    the connection or a loopback test provider says so)."""
    ca_pem, verify = connection.tls_options()
    return client_tls_context(not verify, ca_pem)


def check_login(connection: Connection, username: str, password: str) -> str | None:
    """None when the server accepts the login, otherwise a message safe to show the user."""
    host, port, tls = connection.server()
    if not settings.IMAP_ALLOW_PRIVATE_HOSTS:
        try:
            check_host(host, port)
        except (PrivateTargetRefused, OSError, UnicodeError):
            # The same words whatever happened: no hint of which hosts or ports answer.
            return UNREACHABLE
    try:
        if tls == ImapProvider.TlsMode.IMPLICIT:
            client = imaplib.IMAP4_SSL(
                host, port, ssl_context=tls_context(connection), timeout=CHECK_TIMEOUT_SECONDS
            )
        else:
            client = imaplib.IMAP4(host, port, timeout=CHECK_TIMEOUT_SECONDS)
            if tls == ImapProvider.TlsMode.STARTTLS:
                client.starttls(ssl_context=tls_context(connection))
    except ssl.SSLCertVerificationError:
        return UNTRUSTED
    except (OSError, imaplib.IMAP4.error):
        return UNREACHABLE
    try:
        client.login(username, password)
    except imaplib.IMAP4.error:
        return REFUSED
    except OSError:
        return UNREACHABLE
    finally:
        try:
            client.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
    return None
