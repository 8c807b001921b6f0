"""Checking a password against the IMAP server before it is saved (hosted connect form)."""

from __future__ import annotations

import imaplib
import ssl

from django.conf import settings

from superimap.netguard import PrivateTargetRefused, check_host
from superimap.partners.models import Connection, ImapProvider

CHECK_TIMEOUT_SECONDS = 15
# Shown to the end user for every network failure alike (refused, closed, timed out).
UNREACHABLE = "Cannot reach the mail server. Check its settings with the application."


def tls_context(provider: ImapProvider) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if provider.loopback_only:
        # Loopback test servers use self-signed certificates.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def check_login(connection: Connection, username: str, password: str) -> str | None:
    """None when the server accepts the login, otherwise a message safe to show the user."""
    host, port, tls = connection.server()
    provider = connection.provider
    if not settings.IMAP_ALLOW_PRIVATE_HOSTS:
        try:
            check_host(host, port)
        except (PrivateTargetRefused, OSError, UnicodeError):
            # The same words whatever happened: no hint of which hosts or ports answer.
            return UNREACHABLE
    try:
        if tls == ImapProvider.TlsMode.IMPLICIT:
            client = imaplib.IMAP4_SSL(
                host, port, ssl_context=tls_context(provider), timeout=CHECK_TIMEOUT_SECONDS
            )
        else:
            client = imaplib.IMAP4(host, port, timeout=CHECK_TIMEOUT_SECONDS)
            if tls == ImapProvider.TlsMode.STARTTLS:
                client.starttls(ssl_context=tls_context(provider))
    except (OSError, imaplib.IMAP4.error):
        return UNREACHABLE
    try:
        client.login(username, password)
    except imaplib.IMAP4.error:
        return "The mail server refused this username and password."
    except OSError:
        return UNREACHABLE
    finally:
        try:
            client.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
    return None
