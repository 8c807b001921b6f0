"""Opening a connection (implicit TLS or STARTTLS) and logging in (LOGIN or XOAUTH2).

One path for every caller: the engine's sessions, the API's message route and the login
check of the hosted form and the API (check.py). The caller takes its turn from the login
limits (ratelimit.py) first; this module only talks to the server.
"""

from __future__ import annotations

import asyncio
import logging

from superimap.imap import Bye, Continuation, TaggedResponse
from superimap.imap.protocol import xoauth2_initial_response
from superimap.imapclient.account import Account, Server
from superimap.imapclient.connection import ImapConnection
from superimap.imapclient.errors import AuthFailed, CommandFailed, ServerBye
from superimap.imapclient.tokens import AccessTokens

log = logging.getLogger("superimap.engine")

# RFC 5530 codes that say "not now" rather than "not these credentials".
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE", "OVERQUOTA"})


def refused_for_credentials(response: TaggedResponse) -> bool:
    """A NO to LOGIN/AUTHENTICATE that a human must fix; BAD and 'try later' codes are
    transient and only back off like any other failure."""
    if response.status != "NO":
        return False
    code = str(response.code[0]).upper() if response.code else ""
    return code not in TRANSIENT_CODES


async def open_connection(
    server: Server, *, timeout: float, max_literal_size: int
) -> ImapConnection:
    """Connect (implicit TLS or STARTTLS as configured) and read the greeting."""
    conn = await ImapConnection.open(
        server.host,
        server.port,
        implicit_tls=server.tls == "implicit",
        insecure=server.insecure_tls,
        timeout=timeout,
        max_literal_size=max_literal_size,
        ca_pem=server.tls_ca,
    )
    try:
        if server.tls == "starttls":
            await conn.start_tls(server.host, server.insecure_tls, server.tls_ca)
    except BaseException:
        conn.abort()
        raise
    return conn


async def authenticate(
    conn: ImapConnection, account: Account, tokens: AccessTokens | None = None
) -> None:
    """LOGIN, or AUTHENTICATE XOAUTH2 with an access token from ``tokens`` (the caller's
    process-wide cache; needed for oauth2 only); AuthFailed when the server refuses the
    credentials."""
    if not conn.protocol.capabilities:
        await conn.command(*conn.protocol.capability())
    if account.auth_kind == "oauth2":
        if tokens is None:
            raise ValueError("an XOAUTH2 login needs an access-token cache")
        await authenticate_xoauth2(conn, account, tokens)
    else:
        await login(conn, account.username, account.password)
    if not conn.protocol.capabilities or "IDLE" not in conn.protocol.capabilities:
        await conn.command(*conn.protocol.capability())


async def login(conn: ImapConnection, username: str, password: str) -> None:
    """LOGIN; AuthFailed when the server refuses these credentials, CommandFailed for a
    refusal that is not about them (BAD, or a 'try later' code)."""
    try:
        await conn.command(*conn.protocol.login(username, password))
    except CommandFailed as exc:
        if refused_for_credentials(exc.response):
            raise AuthFailed(f"login refused: {exc.response.text[:200]}") from None
        raise


async def authenticate_xoauth2(
    conn: ImapConnection, account: Account, tokens: AccessTokens
) -> None:
    """AUTHENTICATE XOAUTH2 with an access token; AuthFailed if the server refuses it.

    A refused cached token is dropped and one fresh token is tried before giving up.
    """
    from_cache = tokens.cached(account) is not None
    token = await tokens.get(account)
    if _accepted(await _xoauth2(conn, account.username, token)):
        return
    tokens.forget(account.user_id)
    if from_cache:
        log.info("mailbox %s: cached access token refused; refreshing", account.label)
        token = await tokens.get(account)
        if _accepted(await _xoauth2(conn, account.username, token)):
            return
        tokens.forget(account.user_id)
    raise AuthFailed("XOAUTH2 refused by the server")


def _accepted(response: TaggedResponse) -> bool:
    """True on OK; False when the token was refused; raises for transient refusals."""
    if response.status == "OK":
        return True
    if refused_for_credentials(response):
        return False
    raise CommandFailed("AUTHENTICATE", response)


async def _xoauth2(conn: ImapConnection, username: str, token: str) -> TaggedResponse:
    """One AUTHENTICATE XOAUTH2 exchange; its tagged response."""
    protocol = conn.protocol
    sasl_ir = "SASL-IR" in protocol.capabilities
    tag, data = protocol.authenticate_xoauth2(username, token, sasl_ir=sasl_ir)
    await conn.send(data)
    answered = sasl_ir
    loop = asyncio.get_running_loop()
    deadline = loop.time() + conn.timeout
    while True:
        event = await conn.next_event(max(0.0, deadline - loop.time()))
        if isinstance(event, TaggedResponse) and event.tag == tag:
            if event.status != "OK":
                log.info("XOAUTH2 answered %s: %s", event.status, event.text[:200])
            return event
        if isinstance(event, Bye):
            raise ServerBye(f"server said BYE: {event.text[:200]}")
        if isinstance(event, Continuation):
            if not answered:
                answered = True
                await conn.send(
                    protocol.authenticate_continue(xoauth2_initial_response(username, token))
                )
            else:
                # The error challenge (base64 JSON with a status): acknowledge with an empty
                # line; the tagged NO follows.
                await conn.send(protocol.authenticate_continue(b""))
