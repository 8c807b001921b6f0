"""One message's raw bytes, read from the IMAP server on demand, a slice at a time.

The API's message route (GET .../messages/{uid_validity}/{uid}) streams mail that new_mail
did not carry (over MAX_EMAIL_SIZE) or that the partner wants again. It opens its own
connection with the one connection and login code (login.py: password or XOAUTH2), EXAMINEs the
folder (read-only: nothing is marked \\Seen), and reads the message with partial fetches,
``UID FETCH uid BODY.PEEK[]<offset.length>``, CHUNK_BYTES each: the web process never holds
more than one slice, however large the message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from superimap.imap import Fetch, TaggedResponse, UntaggedStatus
from superimap.imapclient.account import Account
from superimap.imapclient.connection import ImapConnection
from superimap.imapclient.errors import CommandFailed
from superimap.imapclient.login import authenticate, open_connection
from superimap.imapclient.tokens import AccessTokens

log = logging.getLogger("superimap.messages")

CHUNK_BYTES = 1024 * 1024
COMMAND_TIMEOUT = 30.0
_PARTIAL = re.compile(r"BODY\[\]<(\d+)>")


class MessageGone(Exception):
    """No such message: expunged, never existed, or its UIDVALIDITY is no longer current."""


@dataclass
class OpenMessage:
    """A message found on the server: iterate it (async) for its bytes. close() drops the
    connection; Django's StreamingHttpResponse calls it when the response ends, also when
    the body was never read."""

    conn: ImapConnection
    uid: int
    size: int
    user_id: int

    async def chunks(self) -> AsyncIterator[bytes]:
        """The raw message, CHUNK_BYTES at a time; the connection is closed at the end."""
        offset = 0
        try:
            while True:
                data = await self._slice(offset)
                if data:
                    yield data
                offset += len(data)
                if len(data) < CHUNK_BYTES:
                    break
            await self.conn.logout()
            log.info("mailbox %s: streamed uid %d (%d bytes)", self.user_id, self.uid, offset)
        finally:
            self.conn.abort()

    async def _slice(self, offset: int) -> bytes:
        protocol = self.conn.protocol
        untagged, _ = await self.conn.command(
            *protocol.uid_fetch(str(self.uid), f"(UID BODY.PEEK[]<{offset}.{CHUNK_BYTES}>)")
        )
        for event in untagged:
            if isinstance(event, Fetch) and event.uid == self.uid:
                data = partial_body(event, offset)
                if data is not None:
                    return data
        # Expunged while streaming: the status line is sent already, so the stream breaks.
        raise MessageGone(f"uid {self.uid} vanished at byte {offset}")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks()

    def close(self) -> None:
        self.conn.abort()


def partial_body(event: Fetch, origin: int) -> bytes | None:
    """The bytes of a ``BODY[]<origin>`` answer; b"" past the end; None if absent."""
    for key, value in event.attributes.items():
        match = _PARTIAL.fullmatch(key)
        if match is None or int(match.group(1)) != origin:
            continue
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode("utf-8")
        return b"" if value is None else None
    if origin == 0 and event.body is not None:
        return event.body  # a server that ignores the partial range and sends it all
    return None


async def open_message(
    config: Account,
    uid_validity: int,
    uid: int,
    tokens: AccessTokens,
    folder: str,
    *,
    missing_folder_is_gone: bool,
) -> OpenMessage:
    """Connect, log in, EXAMINE ``folder`` and find the message; MessageGone if it is not
    there (any more). ``missing_folder_is_gone``: the folder was named by the caller, so
    its absence means no such message (the mailbox's own folder missing is a failure)."""
    conn = await open_connection(
        config, timeout=COMMAND_TIMEOUT, max_literal_size=CHUNK_BYTES + 64 * 1024
    )
    try:
        await authenticate(conn, config, tokens)
        try:
            current = await _examine(conn, folder)
        except CommandFailed as exc:
            if not missing_folder_is_gone:
                raise
            raise MessageGone(f"no folder {folder!r}: {exc}") from None
        if current != uid_validity:
            raise MessageGone(f"UIDVALIDITY is {current}, not {uid_validity}")
        untagged, _ = await conn.command(*conn.protocol.uid_fetch(str(uid), "(UID RFC822.SIZE)"))
        sizes = [e.size for e in untagged if isinstance(e, Fetch) and e.uid == uid]
        if not sizes:
            raise MessageGone(f"no message with uid {uid}")
        return OpenMessage(conn=conn, uid=uid, size=sizes[0] or 0, user_id=config.user_id)
    except BaseException:
        await conn.logout()
        conn.abort()
        raise


async def _examine(conn: ImapConnection, folder: str) -> int | None:
    untagged, tagged = await conn.command(*conn.protocol.select(folder, readonly=True))
    for event in [*untagged, tagged]:
        if isinstance(event, UntaggedStatus | TaggedResponse):
            code = event.code
            if code and code[0] == "UIDVALIDITY":
                return int(code[1])
    return None
