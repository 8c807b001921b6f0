"""Checking a password against the IMAP server before it is saved (hosted connect form)."""

from __future__ import annotations

import imaplib
import ssl

from django.conf import settings

from superimap.engine.connection import client_tls_context
from superimap.partners.models import Connection, ImapProvider
from superimap.platform import netguard
from superimap.platform.netguard import PrivateTargetRefused

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


class _CheckedImap(imaplib.IMAP4):
    """imaplib.IMAP4 over netguard.connect(): one lookup, checked, and the socket goes to
    that address; imaplib would resolve the name again when it connects."""

    def __init__(self, host: str, port: int, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        super().__init__(host, port, timeout=CHECK_TIMEOUT_SECONDS)

    def _create_socket(self, timeout):
        return netguard.connect(
            self.host, self.port, timeout=timeout, allow_private=self.allow_private
        )


class _CheckedImapSsl(imaplib.IMAP4_SSL):
    """imaplib.IMAP4_SSL likewise; the certificate is checked for the name (SNI)."""

    def __init__(
        self, host: str, port: int, *, allow_private: bool, ssl_context: ssl.SSLContext
    ) -> None:
        self.allow_private = allow_private
        super().__init__(host, port, ssl_context=ssl_context, timeout=CHECK_TIMEOUT_SECONDS)

    def _create_socket(self, timeout):
        sock = netguard.connect(
            self.host, self.port, timeout=timeout, allow_private=self.allow_private
        )
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def check_login(connection: Connection, username: str, password: str) -> str | None:
    """None when the server accepts the login, otherwise a message safe to show the user."""
    host, port, tls = connection.server()
    allow_private = settings.IMAP_ALLOW_PRIVATE_HOSTS
    try:
        if tls == ImapProvider.TlsMode.IMPLICIT:
            client = _CheckedImapSsl(
                host, port, allow_private=allow_private, ssl_context=tls_context(connection)
            )
        else:
            client = _CheckedImap(host, port, allow_private=allow_private)
            if tls == ImapProvider.TlsMode.STARTTLS:
                client.starttls(ssl_context=tls_context(connection))
    except ssl.SSLCertVerificationError:
        return UNTRUSTED
    except (OSError, PrivateTargetRefused, UnicodeError, imaplib.IMAP4.error):
        # The same words whatever happened: no hint of which hosts or ports answer.
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
