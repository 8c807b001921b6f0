"""ImapConnection's waits (next_event). It keeps one deadline timer from one wait to the
next: a wait with an earlier deadline than the armed timer still times out at its own
deadline, a timer armed for an earlier wait does not cut a later, longer wait short, and a
closed connection lets its timer go. A command's answer that comes apart (untagged
responses, a literal in pieces, the tagged OK later; these do not wake collect()) is
collected whole. Against a real loopback server under uvloop."""

from __future__ import annotations

import asyncio
import gc
import math
import time
import weakref

import pytest
import uvloop

from superimap.imap import RemoteProtocolError
from superimap.imapclient import ImapConnection
from superimap.imapclient.deadlines import shared_deadlines
from tests.helpers.engine import LoopbackServer


class SilentAfterLogin(LoopbackServer):
    """Greets and says OK to LOGIN; answers the n-th NOOP after ``noop_delays[n]`` seconds
    (the last one for the rest); never answers anything else."""

    def __init__(self, *noop_delays: float) -> None:
        self.noop_delays = list(noop_delays)

    async def serve(self, reader, writer) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
        while line := await reader.readline():
            tag, _, rest = line.decode().strip().partition(" ")
            if rest.upper().startswith("LOGIN"):
                writer.write(f"{tag} OK in\r\n".encode())
            elif rest.upper().startswith("SELECT"):
                writer.write(f"{tag} OK [READ-WRITE] selected\r\n".encode())
            elif rest.upper().startswith("UID FETCH"):
                body = b"x" * 3000
                writer.write(b"* 1 FETCH (UID 7 BODY[] {3000}\r\n" + body[:1000])
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.write(body[1000:] + b")\r\n* 2 FETCH (UID 8 FLAGS (\\Seen))\r\n")
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.write(f"{tag} OK done\r\n".encode())
            elif rest.upper().startswith("NOOP"):
                delay = (
                    self.noop_delays.pop(0) if len(self.noop_delays) > 1 else self.noop_delays[0]
                )
                await asyncio.sleep(delay)
                writer.write(f"{tag} OK done\r\n".encode())
        writer.close()


async def _connected(server: LoopbackServer, max_literal_size: int = 65536) -> ImapConnection:
    port = await server.start()
    conn = await ImapConnection.open(
        "127.0.0.1",
        port,
        implicit_tls=False,
        insecure=True,
        timeout=5,
        max_literal_size=max_literal_size,
    )
    await conn.command(*conn.protocol.login("u", "p"))
    return conn


def test_a_shorter_wait_after_a_long_one_times_out_at_its_own_deadline(settings) -> None:
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True

    async def scenario() -> float:
        server = SilentAfterLogin(60)
        conn = await _connected(server)
        try:
            with pytest.raises(TimeoutError):  # arms the timer 30 s ahead
                await asyncio.wait_for(conn.next_event(30), 0.05)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await conn.command(*conn.protocol.noop(), timeout=0.3)
            return time.monotonic() - started
        finally:
            conn.abort()
            await server.stop()

    elapsed = uvloop.run(scenario())
    assert 0.25 <= elapsed < 2.0


def _armed_at(conn: ImapConnection) -> float | None:
    """When the connection's deadline fires (loop time): its own timer's, or the shared
    second's it waits for (a wait whose deadline falls on a whole second of uvloop's
    millisecond clock, about 1 in 1,000 of the computed ones, takes the shared timer:
    imapclient/deadlines.py); None if none is armed."""
    if conn._timer is not None:
        return conn._timer_at
    return float(conn.shared_deadline) if conn.shared_deadline else None


def test_a_timer_armed_for_a_short_wait_does_not_cut_a_longer_one(settings) -> None:
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True

    async def scenario() -> tuple[float, str, bool]:
        server = SilentAfterLogin(0.05, 1.2)
        conn = await _connected(server)
        try:
            # Answered in time: its timer (1 s ahead) stays armed for the next wait, which
            # keeps it (it fires in the second half of that wait's 1.8 s).
            await conn.command(*conn.protocol.noop(), timeout=1.0)
            kept = _armed_at(conn) is not None
            armed_at = _armed_at(conn)
            started = time.monotonic()
            # That timer fires during this wait: the wait goes on to its answer.
            _, tagged = await conn.command(*conn.protocol.noop(), timeout=1.8)
            assert _armed_at(conn) != armed_at
            return time.monotonic() - started, tagged.status, kept
        finally:
            conn.abort()
            await server.stop()

    elapsed, status, kept = uvloop.run(scenario())
    assert kept
    assert status == "OK"
    assert elapsed >= 1.1


def test_a_long_wait_after_a_command_replaces_the_commands_timer(settings) -> None:
    """An IDLE's wait (minutes) after a command's (seconds) arms its own deadline: the
    command's timer would wake the loop seconds in only to arm the IDLE's."""
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True

    async def scenario() -> tuple[float, float]:
        server = SilentAfterLogin(0.05)
        conn = await _connected(server)
        try:
            await conn.command(*conn.protocol.noop(), timeout=30)
            command_timer = _armed_at(conn) - asyncio.get_running_loop().time()
            waiting = asyncio.ensure_future(conn.next_event(600))
            await asyncio.sleep(0.05)
            idle_timer = _armed_at(conn) - asyncio.get_running_loop().time()
            waiting.cancel()
            return command_timer, idle_timer
        finally:
            conn.abort()
            await server.stop()

    command_timer, idle_timer = uvloop.run(scenario())
    assert 25 < command_timer <= 30
    assert 590 < idle_timer <= 600


def test_a_closed_connection_lets_its_timer_go(settings) -> None:
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True

    async def scenario() -> tuple[bool, bool]:
        server = SilentAfterLogin(60)
        conn = await _connected(server)
        waiting = asyncio.ensure_future(conn.next_event(600))
        await asyncio.sleep(0.05)
        armed = conn._timer is not None
        conn.abort()
        with pytest.raises(Exception):  # noqa: B017, PT011 - the connection's closing error
            await waiting
        await server.stop()
        return armed, conn._timer is None

    armed, released = uvloop.run(scenario())
    assert armed and released


def test_an_answer_that_comes_apart_is_collected_whole(settings) -> None:
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True

    async def scenario():
        server = SilentAfterLogin(60)
        conn = await _connected(server)
        try:
            await conn.command(*conn.protocol.select("INBOX"))
            return await conn.command(*conn.protocol.uid_fetch("7:8", "(BODY.PEEK[])"))
        finally:
            conn.abort()
            await server.stop()

    untagged, tagged = uvloop.run(scenario())
    assert tagged.status == "OK"
    assert [(e.uid, len(e.body or b""), e.flags) for e in untagged] == [
        (7, 3000, None),
        (8, 0, ("\\Seen",)),
    ]


def test_a_malformed_answer_fails_the_command_at_once(settings) -> None:
    """A literal over the limit amid the answer (no tagged response yet): the command
    fails with the protocol error right away, not at its timeout."""
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True

    async def scenario() -> float:
        server = SilentAfterLogin(60)
        conn = await _connected(server, max_literal_size=1024)
        try:
            await conn.command(*conn.protocol.select("INBOX"))
            started = time.monotonic()
            with pytest.raises(RemoteProtocolError):
                await conn.command(*conn.protocol.uid_fetch("7:8", "(BODY.PEEK[])"), timeout=30)
            return time.monotonic() - started
        finally:
            conn.abort()
            await server.stop()

    assert uvloop.run(scenario()) < 5


def _until_next_second(extra: int = 1) -> tuple[int, float]:
    """A whole second of the loop's clock ``extra`` seconds ahead, and the wait until it
    (an IDLE's wait ends on one: engine/session.py idle_wait)."""
    now = asyncio.get_running_loop().time()
    second = math.ceil(now) + extra
    return second, second - now


async def _wait_until(conn: ImapConnection, second: int):
    """next_event until ``second``, the timeout computed in the same step of the loop as
    next_event reads the clock (as the session's watch loop does): computed before a task
    starts, the loop's clock may have moved a millisecond and the deadline is no longer a
    whole second."""
    return await conn.next_event(second - conn.loop.time())


def test_waits_until_one_whole_second_share_one_timer(settings) -> None:
    """Connections whose wait ends on the same second share that second's timer and hold
    none of their own (imapclient/deadlines.py); each times out then, not before."""
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True

    async def scenario() -> tuple[list[float], int, bool, int]:
        loop = asyncio.get_running_loop()
        server = SilentAfterLogin(60)
        conns = [await _connected(server) for _ in range(3)]
        try:
            second, _ = _until_next_second()
            waits = [asyncio.ensure_future(_wait_until(c, second)) for c in conns]
            await asyncio.sleep(0.05)
            own_timers = any(c._timer is not None for c in conns)
            seconds = len(shared_deadlines(loop))
            ended = []
            for waiting in waits:
                with pytest.raises(TimeoutError):
                    await waiting
                ended.append(loop.time() - second)
            return ended, seconds, own_timers, len(shared_deadlines(loop))
        finally:
            for conn in conns:
                conn.abort()
            await server.stop()

    ended, seconds, own_timers, seconds_after = uvloop.run(scenario())
    assert seconds == 1 and not own_timers
    assert all(-0.002 <= late < 0.5 for late in ended)
    assert seconds_after == 0


def test_a_wait_that_moved_on_is_not_cut_by_the_second_it_left(settings) -> None:
    """A wait until a whole second ends early; the next one (a command's, with a timer of
    its own) still runs when that second comes, and is answered."""
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        server = SilentAfterLogin(2.5)
        conn = await _connected(server)
        try:
            second, _ = _until_next_second()  # at most 2 s ahead
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(_wait_until(conn, second), 0.05)
            _, tagged = await conn.command(*conn.protocol.noop(), timeout=3.5)
            assert loop.time() > second
            return tagged.status
        finally:
            conn.abort()
            await server.stop()

    assert uvloop.run(scenario()) == "OK"


def test_a_closed_connection_is_not_kept_for_its_second(settings) -> None:
    settings.IMAP_ALLOW_PRIVATE_HOSTS = True

    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        server = SilentAfterLogin(60)
        conn = await _connected(server)
        second, _ = _until_next_second(5)
        waiting = asyncio.ensure_future(_wait_until(conn, second))
        await asyncio.sleep(0.05)
        shared = conn.shared_deadline == second and conn._timer is None
        conn.abort()
        with pytest.raises(Exception):  # noqa: B017, PT011 - the connection's closing error
            await waiting
        await server.stop()
        await asyncio.sleep(0.05)  # the transport lets its protocol go
        gone = weakref.ref(conn)
        del conn, waiting
        gc.collect()
        return shared, gone() is None and loop.time() < second

    shared, released = uvloop.run(scenario())
    assert shared and released
