"""Checking a password login before it is saved (hosted connect form, API verify=true).

The same connection and login code as the engine's (login.py), so a login the check
accepts is one the engine makes. The outcome is coarse on purpose: the caller shows it to
whoever typed the password, and a network failure must not tell which hosts or ports
answer (the same UNREACHABLE for refused, closed, timed out, private, or not IMAP).
"""

from __future__ import annotations

import enum
import ssl

from superimap.imap import ImapError
from superimap.imapclient.account import PasswordAccount
from superimap.imapclient.connection import ImapConnection
from superimap.imapclient.errors import AuthFailed, CommandFailed, ServerBye
from superimap.imapclient.login import login, open_connection
from superimap.platform.netguard import PrivateTargetRefused

# A check reads no message: greeting, CAPABILITY and tagged answers only.
CHECK_MAX_LITERAL = 64 * 1024


class LoginCheck(enum.Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # the server answered the login with anything but OK
    UNREACHABLE = "unreachable"  # no IMAP server greeted us (or TLS/STARTTLS failed)
    UNTRUSTED = "untrusted"  # its TLS certificate did not verify


async def check_password(account: PasswordAccount, timeout: float) -> LoginCheck:
    """Connect (TLS as configured), CAPABILITY, LOGIN and LOGOUT: the engine's exchange;
    each wait bounded by ``timeout`` seconds."""
    try:
        conn = await _connect(account, timeout)
    except ssl.SSLCertVerificationError:
        return LoginCheck.UNTRUSTED
    except (OSError, PrivateTargetRefused, UnicodeError, ImapError, ServerBye, CommandFailed):
        return LoginCheck.UNREACHABLE
    try:
        await login(conn, account.username, account.password)
    except (AuthFailed, CommandFailed, ServerBye, ImapError):
        # Any answer but OK, a BYE or a close: refused (the server got that far).
        return LoginCheck.REFUSED
    except OSError:
        return LoginCheck.UNREACHABLE
    finally:
        await conn.logout()
        conn.abort()
    return LoginCheck.ACCEPTED


async def _connect(account: PasswordAccount, timeout: float) -> ImapConnection:
    """Connected, TLS as configured, and the server's capabilities known."""
    conn = await open_connection(account, timeout=timeout, max_literal_size=CHECK_MAX_LITERAL)
    try:
        if not conn.protocol.capabilities:
            await conn.command(*conn.protocol.capability())
    except BaseException:
        conn.abort()
        raise
    return conn
