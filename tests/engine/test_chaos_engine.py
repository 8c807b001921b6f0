"""The engine against our chaos IMAP server: faults on the wire never lose or duplicate mail."""

from __future__ import annotations

import asyncio
import os
import time

from django.db import close_old_connections

from superimap.delivery.models import Delivery
from superimap.engine.session import SessionSettings
from superimap.mailboxes.models import MailboxUser
from superimap.testing.chaos_server import ChaosImapServer
from tests.engine.conftest import RunningEngine, loopback_users, wait_for

MAILBOXES = 200
CHAOS_SECONDS = 60
EMAILS_PER_SECOND = 10
CHAOS_SETTINGS = SessionSettings(
    command_timeout=3, fetch_timeout=5, idle_reissue=30, poll_interval=1, max_backoff=2
)


def _open_sockets() -> int:
    """Sockets this process holds (DB files are opened by helper threads and don't count)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # the descriptor used by listdir itself is gone already
    return count


def _baselined() -> int:
    close_old_connections()
    return MailboxUser.objects.filter(last_uid__isnull=False).count()


def _delivered_ids() -> list[str]:
    close_old_connections()
    return list(Delivery.objects.filter(kind="new_mail").values_list("message_id", flat=True))


def test_it_delivers_every_message_exactly_once_under_chaos(mail_partner):
    sockets_before = _open_sockets()

    async def scenario():
        server = ChaosImapServer(users=MAILBOXES, chaos=False, seed=7, chaos_rate=0.03)
        await server.start()
        await asyncio.to_thread(loopback_users, mail_partner, server.port, MAILBOXES)
        try:
            async with RunningEngine(session_settings=CHAOS_SETTINGS, refresh_interval=1):
                await wait_for(lambda: _baselined() == MAILBOXES, timeout=60, interval=0.5)
                server.chaos = True
                deadline = time.monotonic() + CHAOS_SECONDS
                while time.monotonic() < deadline:
                    for _ in range(EMAILS_PER_SECOND):
                        server.generate_message()
                    await asyncio.sleep(1)
                server.chaos = False
                expected = set(server.generated)
                await wait_for(lambda: set(_delivered_ids()) >= expected, timeout=90, interval=0.5)
                await asyncio.sleep(2)  # anything extra would show up now
                tasks = len(asyncio.all_tasks())
        finally:
            await server.stop()
        return server, expected, tasks

    server, expected, tasks_while_running = asyncio.run(scenario())
    delivered = _delivered_ids()
    assert len(expected) == CHAOS_SECONDS * EMAILS_PER_SECOND
    assert len(delivered) == len(set(delivered)) == len(expected)
    assert set(delivered) == expected
    # Chaos really happened: many faults of many kinds were thrown at the engine.
    assert sum(server.fault_counts.values()) >= 20, server.fault_counts
    assert len(server.fault_counts) >= 5, server.fault_counts
    assert tasks_while_running <= MAILBOXES + 10
    # No leaked sockets: every IMAP connection the engine opened is closed again.
    assert _open_sockets() == sockets_before
