"""Checking a password against the IMAP server before it is saved (hosted connect form,
and the API's verify=true): the IMAP client's check (imapclient/check.py), from sync code."""

from __future__ import annotations

import asyncio

from superimap.imapclient import LoginCheck, PasswordAccount, check_password
from superimap.partners.models import Connection

CHECK_TIMEOUT_SECONDS = 15
# Shown to the end user for every network failure alike (refused, closed, timed out).
UNREACHABLE = "Cannot reach the mail server. Check its settings with the application."
REFUSED = "The mail server refused this username and password."
UNTRUSTED = "The mail server's TLS certificate is not trusted (see imap_tls_ca)."
MESSAGES = {
    LoginCheck.ACCEPTED: None,
    LoginCheck.REFUSED: REFUSED,
    LoginCheck.UNREACHABLE: UNREACHABLE,
    LoginCheck.UNTRUSTED: UNTRUSTED,
}


def check_login(connection: Connection, username: str, password: str) -> str | None:
    """None when the server accepts the login, otherwise a message safe to show the user.

    Called from sync views (a thread of their own under ASGI, no running loop), so the
    check runs on an event loop of its own for its few seconds."""
    host, port, tls = connection.server()
    ca_pem, verify = connection.tls_options()
    account = PasswordAccount(
        host=host,
        port=port,
        tls=str(tls),
        username=username,
        password=password,
        insecure_tls=not verify,
        tls_ca=ca_pem,
    )
    return MESSAGES[asyncio.run(check_password(account, CHECK_TIMEOUT_SECONDS))]
