"""Round trips per new message: after IDLE, the DONE goes out in the same write as the
catch-up's UID FETCH of sizes, dates and (for a few new messages) the bodies up to the
size limit, which replaces the UID SEARCH and the body FETCH, and the next IDLE: one
write per new message. A message over the limit then gets its header fetched (the IDLE
ended first); many at once still get the UID SEARCH. Seen on the wire by
a recording TCP proxy, against the chaos server and Dovecot."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

from django.db import close_old_connections

from devtools.testing.chaos_server import ChaosImapServer
from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser, MailLog
from superimap.partners.models import Connection
from tests.helpers.engine import (
    FAST,
    LoopbackServer,
    RunningEngine,
    loopback_users,
    wait_for,
)

ONE_TRIP = "UID FETCH {}:* (UID RFC822.SIZE INTERNALDATE BODY.PEEK[]<0.{}>)"


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


def _words(chunks: list[bytes]) -> list[str]:
    return [chunk.decode(errors="replace") for chunk in chunks]


def test_a_new_message_costs_one_write(mail_partner):
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
    words = _words(one)
    # One write for one new message: DONE + UID FETCH of size, date and body + IDLE.
    assert len(words) == 1, words
    first = words[0]
    assert first.startswith("DONE\r\n") and ONE_TRIP.format(1, FAST.max_email_size + 1) in first
    assert "UID SEARCH" not in first and first.rstrip().endswith("IDLE")
    assert any("UID SEARCH" in chunk for chunk in _words(many))
    # Count, don't assume: every message in the folder is one delivery, no skips.
    delivered, rows = _counts()
    assert len(server.messages_of("user0")) == delivered == rows == 151
    first_payload = Delivery.objects.filter(kind="new_mail").order_by("id").first().payload
    assert first_payload["envelope"]["subject"] == "one" and "truncated" not in first_payload


SMALL = replace(FAST, max_email_size=4096)


def test_over_the_limit_the_header_follows_and_an_expunge_race_is_recorded(mail_partner):
    """The one-trip FETCH cuts a big message at the limit + 1 octet: its header is fetched
    next and it is sent truncated. A message expunged as the FETCH is answered (NIL) is
    looked for again and recorded as expunged."""

    async def scenario():
        server = ChaosImapServer(users=1, chaos=False, seed=5)
        await server.start()
        proxy = RecordingProxy(server.port)
        port = await proxy.start()
        await asyncio.to_thread(loopback_users, mail_partner, port, 1)
        try:
            async with RunningEngine(session_settings=SMALL):
                await wait_for(
                    lambda: MailboxUser.objects.filter(status="idle").exists(), timeout=10
                )
                await asyncio.sleep(0.2)
                mark = len(proxy.chunks)
                big = make_message("big", "a@example.test", "user0@x", "x" * 20000, "<big@t>")
                server.add_message("user0", big)
                await wait_for(lambda: _counts()[0] == 1, timeout=10)
                await asyncio.sleep(0.3)
                writes = proxy.commands_since(mark)
                server.expunges_owed = 1  # the next body FETCH expunges what it asks for
                gone = make_message("gone", "a@example.test", "user0@x", "x", "<gone@t>")
                server.add_message("user0", gone)
                await wait_for(lambda: _counts()[1] == 2, timeout=10)
                server.add_message("user0", make_message("after", "a@t", "user0@x", "y"))
                await wait_for(lambda: _counts()[0] == 2, timeout=10)
        finally:
            await proxy.stop()
            await server.stop()
        return server, writes

    server, writes = asyncio.run(scenario())
    words = _words(writes)
    # DONE + the one-trip FETCH + IDLE; DONE + the header FETCH; IDLE.
    assert len(words) == 3, words
    assert ONE_TRIP.format(1, 4097) in words[0] and words[0].rstrip().endswith("IDLE")
    assert words[1].startswith("DONE\r\n") and "BODY.PEEK[HEADER]" in words[1]
    assert words[2].rstrip().endswith("IDLE")
    payloads = {
        d.payload["envelope"]["subject"]: d.payload
        for d in Delivery.objects.filter(kind="new_mail")
    }
    assert payloads["big"]["truncated"] is True and "rfc822" not in payloads["big"]
    assert "rfc822" in payloads["after"] and "truncated" not in payloads["after"]
    skipped = MailLog.objects.exclude(skipped_reason="").get()
    assert skipped.skipped_reason == "expunged"
    # Messages in the folder, and the one expunged, = deliveries + recorded skips.
    delivered, rows = _counts()
    assert len(server.messages_of("user0")) + len(server.expunged) == rows == 3
    assert delivered == 2 and server.expunged == [("user0", "<gone@t>")]


def test_dovecot_answers_the_one_trip_fetch_whole_or_cut(mailbox, dovecot):
    """Real Dovecot: a message within the limit arrives whole with its size in one FETCH
    (byte for byte), a bigger one is cut and then sent truncated from its header."""
    user = mailbox()

    async def scenario():
        proxy = RecordingProxy(dovecot.imap_port)
        port = await proxy.start()
        await asyncio.to_thread(_point_at, user, port)
        try:
            async with RunningEngine(session_settings=SMALL):
                await wait_for(lambda: _status(user) == "idle", timeout=10)
                await asyncio.sleep(0.2)
                mark = len(proxy.chunks)
                small = make_message("small", "a@example.test", user.email, "s" * 3000)
                await asyncio.to_thread(dovecot.deliver, user.tag, small)
                await wait_for(lambda: _counts()[0] == 1, timeout=10)
                await asyncio.sleep(0.3)
                one = proxy.commands_since(mark)
                big = make_message("big", "a@example.test", user.email, "b" * 9000)
                await asyncio.to_thread(dovecot.deliver, user.tag, big)
                await wait_for(lambda: _counts()[0] == 2, timeout=10)
        finally:
            await proxy.stop()
        return small, one

    small, one = asyncio.run(scenario())
    words = _words(one)
    assert len(words) == 1 and ONE_TRIP.format(1, 4097) in words[0], words
    assert words[0].startswith("DONE\r\n") and words[0].rstrip().endswith("IDLE")
    payloads = {
        d.payload["envelope"]["subject"]: d.payload
        for d in Delivery.objects.filter(kind="new_mail")
    }
    assert payloads["small"]["rfc822"].encode() == small
    assert payloads["big"]["truncated"] is True and payloads["big"]["size"] > 4096
    delivered, rows = _counts()
    assert len(dovecot.message_flags(user.tag)) == delivered == rows == 2


def _status(user: MailboxUser) -> str:
    close_old_connections()
    return MailboxUser.objects.get(id=user.id).status


def _point_at(user: MailboxUser, port: int) -> None:
    """Send the mailbox's connection through the proxy on ``port``."""
    Connection.objects.filter(id=user.connection_id).update(imap_port=port)


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


def test_an_idle_ended_by_its_period_is_issued_again_in_one_write(mail_partner):
    """The IDLE re-issue (every IDLE_REISSUE_SECONDS per mailbox, 67/s at 100,000): its
    DONE, the range FETCH that looks for mail the server did not announce, and the next
    IDLE go out in one write; mail the server never announced is still found by it."""

    async def scenario():
        server = ChaosImapServer(users=1, chaos=False, seed=5)
        await server.start()
        proxy = RecordingProxy(server.port)
        port = await proxy.start()
        await asyncio.to_thread(loopback_users, mail_partner, port, 1)
        try:
            async with RunningEngine(session_settings=replace(FAST, idle_reissue=0.5)):
                await wait_for(
                    lambda: MailboxUser.objects.filter(status="idle").exists(), timeout=10
                )
                await asyncio.sleep(0.2)
                mark = len(proxy.chunks)
                await asyncio.sleep(1.3)  # two periods end, nothing arrives
                quiet = proxy.commands_since(mark)
                # Into the folder without an EXISTS to the session: the re-issue's FETCH
                # finds it.
                raw = make_message("silent", "a@example.test", "user0@x", "hi", "<s@t>")
                server.mailbox("user0", "INBOX").append(raw, datetime.now(UTC))
                await wait_for(lambda: _counts()[0] == 1, timeout=10)
        finally:
            await proxy.stop()
            await server.stop()
        return server, quiet

    server, quiet = asyncio.run(scenario())
    words = _words(quiet)
    assert len(words) >= 2, words
    for chunk in words:
        assert chunk.startswith("DONE\r\n"), words
        assert "UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE)" in chunk, words
        assert chunk.rstrip().endswith("IDLE"), words
    delivered, rows = _counts()
    assert len(server.messages_of("user0")) == delivered == rows == 1


def test_an_idle_reissue_reports_no_status_and_mail_after_it_still_does(mail_partner):
    """A re-issue changes nothing the engine keeps per session: the session reports its
    IDLE status once, not again at every re-issue (each report touched the engine's
    tables of every session: design.md 8, "Idle cost"); the IDLEs are counted. Mail
    found by a re-issue's FETCH is reported (syncing, then idle) as before."""

    async def scenario():
        server = ChaosImapServer(users=1, chaos=False, seed=6)
        await server.start()
        await asyncio.to_thread(loopback_users, mail_partner, server.port, 1)
        reports: list[str] = []
        try:
            running = RunningEngine(session_settings=replace(FAST, idle_reissue=0.5))
            engine = running.engine
            report = engine.report

            def counted(user_id, status, error, failures):
                reports.append(str(status))
                report(user_id, status, error, failures)

            engine.report = counted
            async with running:
                await wait_for(
                    lambda: MailboxUser.objects.filter(status="idle").exists(), timeout=10
                )
                await asyncio.sleep(0.2)
                mark, idles = len(reports), engine.idles
                await asyncio.sleep(1.6)  # three periods end, nothing arrives
                quiet, reissues = reports[mark:], engine.idles - idles
                raw = make_message("silent", "a@example.test", "user0@x", "hi", "<r@t>")
                server.mailbox("user0", "INBOX").append(raw, datetime.now(UTC))
                await wait_for(lambda: _counts()[0] == 1, timeout=10)
                await asyncio.sleep(0.3)
                after_mail = reports[mark + len(quiet) :]
                await wait_for(
                    lambda: MailboxUser.objects.filter(status="idle").exists(), timeout=10
                )
        finally:
            await server.stop()
        return quiet, reissues, after_mail

    quiet, reissues, after_mail = asyncio.run(scenario())
    assert reissues >= 2, reissues
    assert quiet == [], quiet
    assert after_mail == ["syncing", "idle"], after_mail
