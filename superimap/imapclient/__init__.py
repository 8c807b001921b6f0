"""The one asyncio IMAP client: connection, TLS (implicit, STARTTLS, a connection's own
CA bundle), login (LOGIN, XOAUTH2), the checked-address connect (netguard), login rate
limits and the access-token cache.

Used by the engine's sessions, the API's message route and the login check of the hosted
form and the API. The protocol itself is superimap.imap (sans-IO); this package owns the
sockets and the waiting. It imports neither the engine nor the Django models.
"""

from superimap.imapclient.account import Account, PasswordAccount, Server
from superimap.imapclient.check import LoginCheck, check_password
from superimap.imapclient.connection import ImapConnection, client_tls_context
from superimap.imapclient.errors import (
    AuthFailed,
    CommandFailed,
    ServerBye,
    TlsCertificateFailed,
    TokenUnavailable,
)
from superimap.imapclient.login import (
    authenticate,
    authenticate_xoauth2,
    login,
    open_connection,
    refused_for_credentials,
)
from superimap.imapclient.messages import MessageGone, OpenMessage, open_message
from superimap.imapclient.ratelimit import LoginLimiter, TokenBucket
from superimap.imapclient.tokens import AccessTokens

__all__ = [
    "AccessTokens",
    "Account",
    "AuthFailed",
    "CommandFailed",
    "ImapConnection",
    "LoginCheck",
    "LoginLimiter",
    "MessageGone",
    "OpenMessage",
    "PasswordAccount",
    "Server",
    "ServerBye",
    "TlsCertificateFailed",
    "TokenBucket",
    "TokenUnavailable",
    "authenticate",
    "authenticate_xoauth2",
    "check_password",
    "client_tls_context",
    "login",
    "open_connection",
    "open_message",
    "refused_for_credentials",
]
