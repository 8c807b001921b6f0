"""Races a real server can produce, played by a scripted IMAP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from tests.helpers.engine import (
    FAST,
    LoopbackServer,
    RunningEngine,
    answer_uid_command,
    loopback_connection,
    wait_for,
)

MESSAGE = make_message("raced", "a@example.test", "b@example.test", "hello")


class ScriptedServer(LoopbackServer):
    """Answers like a tiny IMAP server; on the first IDLE it announces mail *before* the
    continuation, the way a server does when mail lands between a SEARCH and the IDLE."""

    def __init__(self, idle: bool = True, login_replies: tuple[str, ...] = ()) -> None:
        self.login_replies = list(login_replies)
        self.logins = 0
        self.capabilities = "IMAP4rev1 IDLE" if idle else "IMAP4rev1"
        self.mail: list[bytes] = []
        self.idles = 0
        self.noops = 0

    async def serve(self, reader, writer) -> None:
        writer.write(f"* OK [CAPABILITY {self.capabilities}] ready\r\n".encode())
        try:
            while line := await reader.readline():
                tag, _, rest = line.decode().strip().partition(" ")
                command = rest.upper()
                if command.startswith("LOGIN") and self.login_replies:
                    self.logins += 1
                    writer.write(f"{tag} {self.login_replies.pop(0)}\r\n".encode())
                elif command.startswith("LOGIN"):
                    self.logins += 1
                    caps = self.capabilities
                    writer.write(f"{tag} OK [CAPABILITY {caps}] logged in\r\n".encode())
                elif command.startswith("SELECT"):
                    writer.write(
                        f"* {len(self.mail)} EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n"
                        f"* OK [UIDNEXT {len(self.mail) + 1}] ok\r\n{tag} OK selected\r\n".encode()
                    )
                elif command.startswith(("UID SEARCH", "UID FETCH")):
                    answer_uid_command(writer, tag, command, self.mail)
                elif command == "IDLE":
                    self.idles += 1
                    if self.idles == 1:
                        self.mail.append(MESSAGE)
                        writer.write(f"* {len(self.mail)} EXISTS\r\n".encode())
                    writer.write(b"+ idling\r\n")
                    await reader.readline()  # DONE
                    writer.write(f"{tag} OK idle done\r\n".encode())
                elif command == "NOOP":
                    self.noops += 1
                    if self.noops == 2:
                        self.mail.append(MESSAGE)
                        writer.write(f"* {len(self.mail)} EXISTS\r\n".encode())
                    writer.write(f"{tag} OK noop\r\n".encode())
                elif command == "LOGOUT":
                    writer.write(f"* BYE bye\r\n{tag} OK bye\r\n".encode())
                    break
                else:
                    writer.write(f"{tag} OK\r\n".encode())
                await writer.drain()
        finally:
            writer.close()


def _watch(partner, server: ScriptedServer, until, session_settings=FAST) -> MailboxUser:
    """Start `server`, point a user and an engine at it, and run until `until(user)`."""

    async def scenario() -> MailboxUser:
        port = await server.start()
        user = await asyncio.to_thread(
            lambda: MailboxUser.objects.create(
                connection=loopback_connection(partner, port),
                tag="scripted",
                login_username="u",
                password="p",
                connected_at=timezone.now(),
            )
        )
        try:
            async with RunningEngine(session_settings=session_settings):
                await wait_for(lambda: until(user), timeout=10)
        finally:
            await server.stop()
        return user

    return asyncio.run(scenario())


def _deliveries(user) -> int:
    close_old_connections()
    return Delivery.objects.filter(user=user).count()


def _status(user) -> str:
    close_old_connections()
    return MailboxUser.objects.get(id=user.id).status


def test_it_sees_mail_announced_before_the_idle_continuation(mail_partner):
    server = ScriptedServer()
    started = time.monotonic()
    # IDLE is re-issued only after 60 s: the mail must be seen long before that.
    user = _watch(
        mail_partner, server, _deliveries, session_settings=replace(FAST, idle_reissue=60)
    )
    assert time.monotonic() - started < 5
    assert server.idles >= 1
    assert _deliveries(user) == 1


def test_it_polls_with_noop_when_the_server_has_no_idle(mail_partner):
    server = ScriptedServer(idle=False)
    user = _watch(
        mail_partner, server, _deliveries, session_settings=replace(FAST, poll_interval=0.3)
    )
    assert server.idles == 0 and server.noops >= 2
    assert _deliveries(user) == 1


def test_it_backs_off_but_does_not_mark_auth_failed_when_login_is_unavailable(mail_partner):
    server = ScriptedServer(login_replies=("NO [UNAVAILABLE] try again later",))
    user = _watch(mail_partner, server, lambda user: _status(user) == "idle")
    assert server.logins == 2
    assert _status(user) != "auth_failed"
