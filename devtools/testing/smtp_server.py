"""A small real SMTP server on 127.0.0.1 for tests (tracer emails).

It speaks enough ESMTP for aiosmtplib and smtplib: EHLO/HELO, AUTH PLAIN and AUTH LOGIN
(with or without an initial response), AUTH XOAUTH2, MAIL, RCPT, DATA (dot-unstuffed), RSET,
NOOP, QUIT. ``users`` maps logins to passwords and ``tokens`` logins to access tokens (both
read live); when either is given, MAIL needs a successful AUTH first.
Every accepted message is handed to ``on_message(mail_from, recipients, raw)``: a coroutine
function is awaited on the server's loop; a plain function runs in a worker thread, so it
may block (``DovecotServer.deliver`` runs doveadm).
No TLS: the tracer sender uses it with ``smtp_tls`` "none" on a loopback provider.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAX_LINE = 8192
MAX_MESSAGE = 10 * 1024 * 1024


@dataclass
class ReceivedMessage:
    mail_from: str
    recipients: list[str]
    raw: bytes
    username: str | None


class SmtpServer:
    def __init__(
        self,
        on_message: Callable | None = None,
        users: Mapping[str, str] | None = None,
        tokens: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.on_message = on_message
        self.users = users
        self.tokens = tokens
        self.host = host
        self.port = port
        self.received: list[ReceivedMessage] = []
        self.auth_failures = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> SmtpServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SmtpServer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # --- one client ----------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await _Session(self, reader, writer).run()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _deliver(self, message: ReceivedMessage) -> None:
        self.received.append(message)
        if self.on_message is None:
            return
        args = (message.mail_from, message.recipients, message.raw)
        if inspect.iscoroutinefunction(self.on_message):
            await self.on_message(*args)
        else:
            await asyncio.to_thread(self.on_message, *args)


class _Session:
    def __init__(self, server: SmtpServer, reader, writer) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.username: str | None = None
        self.mail_from: str | None = None
        self.recipients: list[str] = []

    async def reply(self, *lines: str) -> None:
        out = b"".join(
            f"{line[:3]}{'-' if i < len(lines) - 1 else ' '}{line[4:]}\r\n".encode()
            for i, line in enumerate(lines)
        )
        self.writer.write(out)
        await self.writer.drain()

    async def readline(self) -> str:
        line = await self.reader.readuntil(b"\n")
        if len(line) > MAX_LINE:
            raise ConnectionError("line too long")
        return line.decode("utf-8", "replace").rstrip("\r\n")

    async def run(self) -> None:
        await self.reply("220 127.0.0.1 SuperIMAP test SMTP")
        while True:
            line = await self.readline()
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "QUIT":
                await self.reply("221 bye")
                return
            handler = getattr(self, f"do_{verb.lower()}", None) if verb.isalpha() else None
            if handler is None:
                await self.reply("502 command not implemented")
            else:
                await handler(arg.strip())

    async def do_ehlo(self, arg: str) -> None:
        self._reset()
        await self.reply(
            "250 127.0.0.1", "250 AUTH PLAIN LOGIN XOAUTH2", "250 8BITMIME", "250 SIZE"
        )

    async def do_helo(self, arg: str) -> None:
        self._reset()
        await self.reply("250 127.0.0.1")

    async def do_noop(self, arg: str) -> None:
        await self.reply("250 OK")

    async def do_rset(self, arg: str) -> None:
        self._reset()
        await self.reply("250 OK")

    async def do_auth(self, arg: str) -> None:
        if self.username is not None:
            await self.reply("503 already authenticated")
            return
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if mechanism == "XOAUTH2":
            await self._xoauth2(initial)
            return
        try:
            if mechanism == "PLAIN":
                if not initial:
                    await self.reply("334 ")
                    initial = await self.readline()
                _, username, password = _b64(initial).split("\x00", 2)
            elif mechanism == "LOGIN":
                if initial:
                    username = _b64(initial)
                else:
                    await self.reply("334 VXNlcm5hbWU6")
                    username = _b64(await self.readline())
                await self.reply("334 UGFzc3dvcmQ6")
                password = _b64(await self.readline())
            else:
                await self.reply("504 unrecognized authentication mechanism")
                return
        except ValueError:
            await self.reply("501 malformed authentication data")
            return
        users = self.server.users or {}
        if (self.server.users is not None or self.server.tokens is not None) and (
            users.get(username) != password
        ):
            self.server.auth_failures += 1
            await self.reply("535 authentication failed")
            return
        self.username = username
        await self.reply("235 authentication succeeded")

    async def _xoauth2(self, initial: str) -> None:
        if not initial:
            await self.reply("334 ")
            initial = await self.readline()
        try:
            fields = dict(part.split("=", 1) for part in _b64(initial).split("\x01") if "=" in part)
        except ValueError:
            await self.reply("501 malformed authentication data")
            return
        username, auth = fields.get("user", ""), fields.get("auth", "")
        tokens = self.server.tokens or {}
        if not tokens.get(username) or auth != f"Bearer {tokens[username]}":
            self.server.auth_failures += 1
            error = base64.b64encode(b'{"status":"401","schemes":"bearer"}').decode()
            await self.reply(f"334 {error}")
            await self.readline()
            await self.reply("535 authentication failed")
            return
        self.username = username
        await self.reply("235 authentication succeeded")

    async def do_mail(self, arg: str) -> None:
        needs_auth = self.server.users is not None or self.server.tokens is not None
        if needs_auth and self.username is None:
            await self.reply("530 authentication required")
            return
        if not arg.upper().startswith("FROM:"):
            await self.reply("501 syntax: MAIL FROM:<address>")
            return
        self._reset()
        self.mail_from = _address(arg[5:])
        await self.reply("250 OK")

    async def do_rcpt(self, arg: str) -> None:
        if self.mail_from is None:
            await self.reply("503 need MAIL first")
            return
        if not arg.upper().startswith("TO:"):
            await self.reply("501 syntax: RCPT TO:<address>")
            return
        self.recipients.append(_address(arg[3:]))
        await self.reply("250 OK")

    async def do_data(self, arg: str) -> None:
        if self.mail_from is None or not self.recipients:
            await self.reply("503 need MAIL and RCPT first")
            return
        await self.reply("354 end with <CRLF>.<CRLF>")
        lines: list[bytes] = []
        size = 0
        while True:
            line = await self.reader.readuntil(b"\n")
            if line in (b".\r\n", b".\n"):
                break
            if line.startswith(b"."):
                line = line[1:]
            size += len(line)
            if size > MAX_MESSAGE:
                raise ConnectionError("message too large")
            lines.append(line)
        message = ReceivedMessage(self.mail_from, list(self.recipients), b"".join(lines), None)
        message.username = self.username
        self._reset()
        try:
            await self.server._deliver(message)
        except Exception as exc:  # noqa: BLE001 - report it to the client, keep serving
            await self.reply(f"451 delivery failed: {type(exc).__name__}")
            return
        await self.reply("250 OK queued")

    def _reset(self) -> None:
        self.mail_from = None
        self.recipients = []


def _b64(data: str) -> str:
    try:
        return base64.b64decode(data.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("bad base64") from exc


def _address(arg: str) -> str:
    """The address of ``<a@b> SIZE=123`` (parameters after it are ignored)."""
    arg = arg.strip()
    if arg.startswith("<"):
        return arg[1 : arg.find(">")] if ">" in arg else arg[1:]
    return arg.split(" ", 1)[0]
