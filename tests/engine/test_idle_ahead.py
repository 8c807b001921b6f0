"""The IDLE written behind a one-trip catch-up's FETCH (one write per new message), when
the server does something else than accept it: mail arrives before the continuation, BYE
instead of it, a refused IDLE, a refused FETCH. Played by a scripted IMAP server; each
case ends with every message of the folder delivered once."""

from __future__ import annotations

import asyncio

import pytest
from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.engine import (
    LoopbackServer,
    RunningEngine,
    answer_uid_command,
    loopback_connection,
    wait_for,
)


def _message(n: int) -> bytes:
    return make_message(f"m{n}", "a@example.test", "b@example.test", "hi", f"<m{n}@t>")


class AheadServer(LoopbackServer):
    """A tiny IMAP server; ``after_fetch`` says what it does once, right after answering
    the first one-trip FETCH (``BODY.PEEK[]<0.n>``): "exists" (another message arrives),
    "bye", "refuse" (the IDLE that follows), or "no" (refuse that FETCH instead)."""

    def __init__(self, after_fetch: str) -> None:
        self.after_fetch = after_fetch
        self.mail: list[bytes] = []
        self.idle_writer = None
        self.refuse_idle = False
        self.connections = 0
        self.idles_refused = 0
        self.lines: list[str] = []

    def add(self, raw: bytes) -> None:
        self.mail.append(raw)
        if self.idle_writer is not None:
            self.idle_writer.write(f"* {len(self.mail)} EXISTS\r\n".encode())

    async def serve(self, reader, writer) -> None:
        self.connections += 1
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
        try:
            while line := await reader.readline():
                tag, _, rest = line.decode().strip().partition(" ")
                command = rest.upper()
                self.lines.append(command)
                if command.startswith("LOGIN"):
                    writer.write(f"{tag} OK [CAPABILITY IMAP4rev1 IDLE] in\r\n".encode())
                elif command.startswith("SELECT"):
                    count = len(self.mail)
                    writer.write(
                        f"* {count} EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n"
                        f"* OK [UIDNEXT {count + 1}] ok\r\n{tag} OK selected\r\n".encode()
                    )
                elif command.startswith(("UID SEARCH", "UID FETCH")):
                    event = ""
                    if "BODY.PEEK[]<0." in command:  # a one-trip catch-up
                        event, self.after_fetch = self.after_fetch, ""
                    if event == "no":
                        writer.write(f"{tag} NO [UNAVAILABLE] try again later\r\n".encode())
                        continue
                    answer_uid_command(writer, tag, command, self.mail)
                    if event == "exists":
                        self.mail.append(_message(len(self.mail) + 1))
                        writer.write(f"* {len(self.mail)} EXISTS\r\n".encode())
                    elif event == "bye":
                        writer.write(b"* BYE going away\r\n")
                        await writer.drain()
                        break
                    elif event == "refuse":
                        self.refuse_idle = True
                elif command == "IDLE":
                    if self.refuse_idle:
                        self.refuse_idle = False
                        self.idles_refused += 1
                        writer.write(f"{tag} BAD IDLE behind another command\r\n".encode())
                        continue
                    writer.write(b"+ idling\r\n")
                    self.idle_writer = writer
                    await reader.readline()  # DONE
                    self.idle_writer = None
                    writer.write(f"{tag} OK idle done\r\n".encode())
                elif command == "LOGOUT":
                    writer.write(f"* BYE bye\r\n{tag} OK bye\r\n".encode())
                    break
                else:
                    writer.write(f"{tag} OK\r\n".encode())
                await writer.drain()
        finally:
            self.idle_writer = None
            writer.close()


def _counts(user) -> tuple[int, int]:
    close_old_connections()
    delivered = Delivery.objects.filter(user=user, kind="new_mail").count()
    return delivered, MailLog.objects.filter(user=user).exclude(skipped_reason="").count()


def _idle(user) -> bool:
    close_old_connections()
    return MailboxUser.objects.get(id=user.id).status == "idle"


@pytest.mark.parametrize(
    ("after_fetch", "connections"),
    [("exists", 1), ("bye", 2), ("refuse", 1), ("no", 2)],
)
def test_the_idle_behind_the_fetch_survives_what_the_server_does(
    mail_partner, after_fetch, connections
):
    server = AheadServer(after_fetch)

    async def scenario():
        port = await server.start()
        user = await asyncio.to_thread(
            lambda: MailboxUser.objects.create(
                connection=loopback_connection(mail_partner, port),
                tag="ahead",
                login_username="u",
                password="p",
                connected_at=timezone.now(),
            )
        )
        try:
            async with RunningEngine():
                await wait_for(lambda: _idle(user), timeout=10)
                await asyncio.sleep(0.2)  # the IDLE is written; now mail arrives
                server.add(_message(1))
                await wait_for(lambda: _counts(user)[0] == len(server.mail), timeout=10)
                await wait_for(lambda: server.idle_writer is not None, timeout=10)
                server.add(_message(len(server.mail) + 1))  # and the watch goes on
                await wait_for(lambda: _counts(user)[0] == len(server.mail), timeout=10)
        finally:
            await server.stop()
        return user

    user = asyncio.run(scenario())
    delivered, skipped = _counts(user)
    # Every message in the folder delivered once, none skipped.
    assert delivered == len(server.mail) and skipped == 0
    assert server.connections == connections
    assert server.idles_refused == (after_fetch == "refuse")
    assert any("BODY.PEEK[]<0." in line for line in server.lines), server.lines
