"""kill -9 the engine process in the middle of a burst; a new one loses and repeats nothing."""

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
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from superimap.testing.chaos_server import ChaosImapServer
from tests.engine.conftest import loopback_connection

USERS = 20
BURST = 600


class ServerThread:
    """The chaos server on its own event loop in a thread, so engine subprocesses reach it."""

    def __init__(self, users: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = ChaosImapServer(users=users, seed=3)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def call(self, fn, *args):
        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _start_engine(log_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "SUPERIMAP_ENV": "test",
        "DATABASE_URL": f"sqlite:///{settings.DATABASES['default']['NAME']}",
        "VAR_DIR": str(settings.VAR_DIR),
        "ALLOW_LOOPBACK_IMAP": "true",
        "ENGINE_LEASE_SECONDS": "2",
        "ENGINE_REFRESH_SECONDS": "1",
    }
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "superimap.cli", "imap-client"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _count(**filters) -> int:
    close_old_connections()
    return Delivery.objects.filter(kind="new_mail", **filters).count()


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.1)


@pytest.mark.slow
def test_it_loses_and_duplicates_nothing_when_the_engine_is_killed(mail_partner, tmp_path):
    with ServerThread(USERS) as chaos:
        server = chaos.server
        connection = loopback_connection(mail_partner, server.port)
        MailboxUser.objects.bulk_create(
            MailboxUser(
                connection=connection,
                tag=f"user{i}",
                login_username=f"user{i}",
                password=f"pass{i}",
                connected_at=timezone.now(),
            )
            for i in range(USERS)
        )
        log_path = tmp_path / "engine.log"
        engine = _start_engine(log_path)
        try:
            _wait(lambda: MailboxUser.objects.filter(last_uid__isnull=False).count() == USERS, 30)
            for _ in range(BURST):
                chaos.call(server.generate_message)
            _wait(lambda: _count() >= BURST // 10, 30)
            engine.send_signal(signal.SIGKILL)
            engine.wait(10)
            killed_at = _count()
            assert killed_at < BURST, "the burst finished before the kill; make it bigger"
            engine = _start_engine(log_path)
            _wait(lambda: _count() >= BURST, 60)
            time.sleep(1.5)  # anything delivered twice would show up now
        finally:
            engine.kill()
            engine.wait(10)
        expected = set(server.generated)
    close_old_connections()
    delivered = list(Delivery.objects.filter(kind="new_mail").values_list("message_id", flat=True))
    assert len(expected) == BURST
    assert len(delivered) == len(set(delivered)) == BURST
    assert set(delivered) == expected
