"""Round trips per new message: after IDLE, the DONE goes out in the same write as the
catch-up's UID FETCH of sizes, which replaces the UID SEARCH while few messages arrived;
many at once still get the UID SEARCH. Seen on the wire by a recording TCP proxy."""

from __future__ import annotations

import asyncio

from django.db import close_old_connections

from devtools.testing.chaos_server import ChaosImapServer
from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.engine import LoopbackServer, RunningEngine, loopback_users, wait_for


class RecordingProxy(LoopbackServer):
    """Forwards 127.0.0.1 TCP to ``port``; keeps each chunk the client wrote."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.chunks: list[bytes] = []

    async def serve(self, client_reader, client_writer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(source, sink, record: bool) -> None:
            try:
                while data := await source.read(65536):
                    if record:
                        self.chunks.append(data)
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(client_reader, writer, True), pipe(reader, client_writer, False))

    def commands_since(self, index: int) -> list[bytes]:
        return self.chunks[index:]


def _counts() -> tuple[int, int]:
    close_old_connections()
    return Delivery.objects.filter(kind="new_mail").count(), MailLog.objects.count()


def test_a_new_message_costs_done_with_fetch_then_body_then_idle(mail_partner):
    async def scenario():
        server = ChaosImapServer(users=1, chaos=False, seed=3)
        await server.start()
        proxy = RecordingProxy(server.port)
        port = await proxy.start()
        await asyncio.to_thread(loopback_users, mail_partner, port, 1)
        try:
            async with RunningEngine():
                await wait_for(
                    lambda: MailboxUser.objects.filter(status="idle").exists(), timeout=10
                )
                await asyncio.sleep(0.2)
                mark = len(proxy.chunks)
                raw = make_message("one", "a@example.test", "user0@x", "hello", "<one@t>")
                server.add_message("user0", raw)
                await wait_for(lambda: _counts()[0] == 1, timeout=10)
                await asyncio.sleep(0.3)  # the IDLE that follows
                one = proxy.commands_since(mark)
                mark = len(proxy.chunks)
                for i in range(150):  # more than BATCH_SIZE at once: UID SEARCH
                    raw = make_message(f"m{i}", "a@example.test", "user0@x", "x", f"<m{i}@t>")
                    server.add_message("user0", raw)
                await wait_for(lambda: _counts()[0] == 151, timeout=20)
                many = proxy.commands_since(mark)
        finally:
            await proxy.stop()
            await server.stop()
        return server, one, many

    server, one, many = asyncio.run(scenario())
    words = [chunk.decode(errors="replace") for chunk in one]
    # Three writes for one new message: DONE + UID FETCH of sizes, the body, IDLE.
    assert len(words) == 3, words
    first = words[0]
    assert first.startswith("DONE\r\n") and "UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE)" in first
    assert "UID SEARCH" not in "".join(words)
    assert "BODY.PEEK[]" in words[1] and words[2].rstrip().endswith("IDLE")
    assert any("UID SEARCH" in chunk.decode(errors="replace") for chunk in many)
    # Count, don't assume: every message in the folder is one delivery, no skips.
    delivered, rows = _counts()
    assert len(server.messages_of("user0")) == delivered == rows == 151


async def _until_idle(proxy: RecordingProxy, mark: int, timeout: float = 10.0) -> list[str]:
    """The commands written since ``mark``, once the session has gone into IDLE."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        words = [chunk.decode(errors="replace") for chunk in proxy.commands_since(mark)]
        if words and words[-1].rstrip().endswith("IDLE"):
            return words
        assert loop.time() < deadline, words
        await asyncio.sleep(0.05)


def test_a_connect_searches_only_when_the_select_says_mail_is_past_the_checkpoint(
    mail_partner,
):
    """A first connection takes its baseline from the SELECT's UIDNEXT and goes into IDLE
    without a UID SEARCH; a reconnect after mail arrived searches and delivers it; one with
    nothing new does not search."""

    async def scenario():
        server = ChaosImapServer(users=1, chaos=False, seed=5)
        await server.start()
        proxy = RecordingProxy(server.port)
        port = await proxy.start()
        await asyncio.to_thread(loopback_users, mail_partner, port, 1)
        runs = []
        try:
            for news in (False, True, False):
                if news:
                    raw = make_message("late", "a@example.test", "user0@x", "hi", "<late@t>")
                    server.add_message("user0", raw)
                mark = len(proxy.chunks)
                async with RunningEngine():
                    runs.append(await _until_idle(proxy, mark))
                    if news:
                        await wait_for(lambda: _counts()[0] == 1, timeout=10)
        finally:
            await proxy.stop()
            await server.stop()
        return server, runs

    server, (first, late, quiet) = asyncio.run(scenario())
    verbs = [" ".join(word.split()[1:2]) for word in first]
    assert verbs == ["LOGIN", "LIST", "SELECT", "IDLE"], first
    assert "UID SEARCH UID 1:*" in "".join(late), late
    assert "UID SEARCH" not in "".join(quiet), quiet
    assert quiet[-1].rstrip().endswith("IDLE")
    delivered, rows = _counts()
    assert len(server.messages_of("user0")) == delivered == rows == 1
