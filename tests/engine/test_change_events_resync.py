"""message_updated / message_deleted on a server without CONDSTORE or QRESYNC (our chaos
server): the bounded resync (design.md 4.14) finds flag changes and deletions, pushed in
IDLE, silent, or made while the engine was down; and kill -9 in the middle of a burst of
changes loses and repeats none."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import close_old_connections

from devtools.testing.chaos_server import ChaosImapServer
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser, MailLog, MessageState
from tests.helpers.engine import RunningEngine, ServerThread, loopback_users, wait_for

SEEN = "\\Seen"


@pytest.fixture
def change_partner(mail_partner):
    mail_partner.message_updated_webhook = "http://127.0.0.1:9/updated"
    mail_partner.message_deleted_webhook = "http://127.0.0.1:9/deleted"
    mail_partner.save()
    return mail_partner


def _events(kind: str) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(kind=kind).order_by("id"))


def _tracked() -> int:
    close_old_connections()
    return MessageState.objects.count()


def _status() -> str:
    close_old_connections()
    return MailboxUser.objects.get().status


def test_the_resync_finds_pushed_silent_and_offline_changes(change_partner, settings):
    settings.CHANGES_RESYNC_SECONDS = 2
    server = ChaosImapServer(users=1, seed=5)
    assert "CONDSTORE" not in server.capabilities and "QRESYNC" not in server.capabilities

    async def online():
        await server.start()
        await asyncio.to_thread(loopback_users, change_partner, server.port, 1)
        async with RunningEngine():
            await wait_for(lambda: _status() == "idle")
            for _ in range(4):
                server.generate_message("user0")
            await wait_for(lambda: _tracked() == 4)
            server.set_flags("user0", 1, {SEEN})  # pushed: * 1 FETCH (FLAGS (\Seen))
            await wait_for(lambda: _events("message_updated"), timeout=5)
            server.expunge("user0", 2)  # pushed: * 2 EXPUNGE
            await wait_for(lambda: _events("message_deleted"), timeout=5)
            # Silent: no unsolicited FETCH (a server that does not push flag changes).
            server.mailbox("user0").messages[1].flags = {"\\Flagged"}  # uid 3
            await wait_for(lambda: len(_events("message_updated")) == 2, timeout=8)

    async def offline_then_restart():
        async with RunningEngine():
            await wait_for(lambda: len(_events("message_updated")) == 3, timeout=8)
            await wait_for(lambda: len(_events("message_deleted")) == 2, timeout=8)
            await asyncio.sleep(2.5)  # one more resync: nothing new
        await server.stop()

    async def scenario():
        await online()
        # The engine is down: uid 1 loses \Seen, uid 4 is expunged, silently.
        mailbox = server.mailbox("user0")
        mailbox.messages[0].flags = set()
        mailbox.expunge(4)
        await offline_then_restart()

    asyncio.run(scenario())
    updated = [(e.payload["uid"], e.payload["new_flags"]) for e in _events("message_updated")]
    assert updated == [(1, [SEEN]), (3, ["\\Flagged"]), (1, [])]
    assert [e.payload["uid"] for e in _events("message_deleted")] == [2, 4]
    user = MailboxUser.objects.get()
    delivered = MailLog.objects.filter(user=user, skipped_reason="").count()
    assert delivered + MailLog.objects.filter(user=user).exclude(skipped_reason="").count() == 4


def test_condstore_without_qresync_flags_by_changedsince_deletions_by_resync(
    change_partner, settings
):
    settings.CHANGES_RESYNC_SECONDS = 3600  # only an EXPUNGE or a connect starts a resync
    server = ChaosImapServer(users=1, seed=6, condstore=True)
    assert "CONDSTORE" in server.capabilities and "QRESYNC" not in server.capabilities

    async def online():
        await server.start()
        await asyncio.to_thread(loopback_users, change_partner, server.port, 1)
        async with RunningEngine():
            await wait_for(lambda: _status() == "idle")
            for _ in range(3):
                server.generate_message("user0")
            await wait_for(lambda: _tracked() == 3)
            # The modseq came with each body FETCH.
            await wait_for(lambda: MessageState.objects.filter(modseq__isnull=False).count() == 3)
            server.set_flags("user0", 1, {SEEN})  # * 1 FETCH (FLAGS (\Seen) MODSEQ (n))
            await wait_for(lambda: _events("message_updated"), timeout=5)
            server.expunge("user0", 2)
            await wait_for(lambda: _events("message_deleted"), timeout=5)

    async def restart():
        async with RunningEngine():
            await wait_for(lambda: len(_events("message_updated")) == 2, timeout=8)
            await asyncio.sleep(1.0)
        await server.stop()

    async def scenario():
        await online()
        # While the engine is down: uid 3 flagged (a change with its modseq, not pushed).
        server.set_flags("user0", 3, {"\\Flagged"})
        await restart()

    asyncio.run(scenario())
    updated = [(e.payload["uid"], e.payload["new_flags"]) for e in _events("message_updated")]
    assert updated == [(1, [SEEN]), (3, ["\\Flagged"])]
    assert [e.payload["uid"] for e in _events("message_deleted")] == [2]


def test_an_expunge_before_the_idle_continuation_is_not_dropped(change_partner, settings):
    """Another client expunges as the engine goes back into IDLE: the EXPUNGE comes before
    "+ idling". It is news all the same: message_deleted follows at once, not at the next
    periodic resync (an hour away here)."""
    settings.CHANGES_RESYNC_SECONDS = 3600
    server = ChaosImapServer(users=1, seed=7, condstore=True)

    async def scenario():
        await server.start()
        await asyncio.to_thread(loopback_users, change_partner, server.port, 1)
        try:
            async with RunningEngine():
                await wait_for(lambda: _status() == "idle")
                for _ in range(3):
                    server.generate_message("user0")
                await wait_for(lambda: _tracked() == 3)
                await wait_for(
                    lambda: MessageState.objects.filter(modseq__isnull=False).count() == 3
                )
                server.expunge_at_next_idle("user0", 2)
                server.set_flags("user0", 1, {SEEN})  # out of IDLE and back in: the expunge
                await wait_for(lambda: _events("message_updated"), timeout=5)
                await wait_for(lambda: _events("message_deleted"), timeout=5)
        finally:
            await server.stop()

    asyncio.run(scenario())
    assert not server.expunge_at_idle
    assert [e.payload["uid"] for e in _events("message_deleted")] == [2]
    assert [e.payload["uid"] for e in _events("message_updated")] == [1]
    # Count, don't assume: every message that arrived is one new_mail delivery.
    assert len(_events("new_mail")) == 3 == len(server.messages_of("user0")) + 1


USERS = 10
PER_USER = 8
BURST_SECONDS = 4.0  # changes keep coming while the engine is killed and restarted


def _start_engine(log_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "SUPERIMAP_ENV": "test",
        "DATABASE_URL": f"sqlite:///{django_settings.DATABASES['default']['NAME']}",
        "VAR_DIR": str(django_settings.VAR_DIR),
        "ALLOW_LOOPBACK_IMAP": "true",
        "ENGINE_PROCESSES": "1",  # the engine itself is killed, not a supervising parent
        "ENGINE_LEASE_SECONDS": "2",
        "ENGINE_REFRESH_SECONDS": "1",
        "ENGINE_NODE_ALIVE_SECONDS": "3",
        "CHANGES_RESYNC_SECONDS": "3600",  # only the start of a session looks again
        # Its own node name: tests running beside it start engines with the same VAR_DIR.
        "ENGINE_NODE_NAME": f"changes-kill-{os.getpid()}",
    }
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "superimap.cli", "imap-client"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait(predicate, timeout: float, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            output = log_path.read_text() if log_path and log_path.exists() else ""
            raise AssertionError(f"condition not met within {timeout}s; engine log:\n{output}")
        time.sleep(0.1)


def _count(kind: str) -> int:
    close_old_connections()
    return Delivery.objects.filter(kind=kind).count()


def _change_burst(chaos: ServerThread) -> None:
    for uid in range(1, PER_USER + 1):
        for user in range(USERS):
            chaos.call(chaos.server.set_flags, f"user{user}", uid, {SEEN})
            time.sleep(BURST_SECONDS / (USERS * PER_USER))


def test_kill_9_in_a_burst_of_changes_loses_and_repeats_none(change_partner, tmp_path):
    with ServerThread(USERS) as chaos:
        loopback_users(change_partner, chaos.server.port, USERS)
        log_path = tmp_path / "engine.log"
        engine = _start_engine(log_path)
        try:
            _wait(lambda: MailboxUser.objects.filter(status="idle").count() == USERS, 30)
            for user in range(USERS):
                for _ in range(PER_USER):
                    chaos.call(chaos.server.generate_message, f"user{user}")
            _wait(lambda: _tracked() == USERS * PER_USER, 30)
            burst = threading.Thread(target=_change_burst, args=(chaos,), daemon=True)
            burst.start()
            _wait(lambda: _count("message_updated") >= 5, 20)
            engine.send_signal(signal.SIGKILL)
            engine.wait(10)
            killed_at = _count("message_updated")
            engine = _start_engine(log_path)
            burst.join(30)
            _wait(lambda: _count("message_updated") >= USERS * PER_USER, 60, log_path)
            time.sleep(1.5)  # anything sent twice would show up now
        finally:
            engine.kill()
            engine.wait(10)
    close_old_connections()
    assert 0 < killed_at < USERS * PER_USER, "the kill missed the burst"
    rows = list(Delivery.objects.filter(kind="message_updated"))
    changes = {(r.user_id, r.payload["uid"]) for r in rows}
    assert len(rows) == len(changes) == USERS * PER_USER
    assert len({r.event_id for r in rows}) == len(rows)
    assert all(r.payload["old_flags"] == [] and r.payload["new_flags"] == [SEEN] for r in rows)
    assert Delivery.objects.filter(kind="new_mail").count() == USERS * PER_USER
