"""kill -9 the engine process in the middle of a burst; a new one loses and repeats nothing."""

from __future__ import annotations

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

from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from tests.helpers.engine import ServerThread, loopback_users

USERS = 20
BURST = 600
BURST_SECONDS = 4.0  # mail keeps arriving while the engine is killed and restarted


def _start_engine(log_path: Path, group_commit: tuple[int, int]) -> subprocess.Popen:
    env = {
        **os.environ,
        "SUPERIMAP_ENV": "test",
        "DATABASE_URL": f"sqlite:///{settings.DATABASES['default']['NAME']}",
        "VAR_DIR": str(settings.VAR_DIR),
        "ALLOW_LOOPBACK_IMAP": "true",
        "ENGINE_PROCESSES": "1",  # the engine itself is killed, not a supervising parent
        "ENGINE_LEASE_SECONDS": "2",
        "ENGINE_REFRESH_SECONDS": "1",
        "ENGINE_NODE_ALIVE_SECONDS": "3",
        "ENGINE_GROUP_COMMIT_MS": str(group_commit[0]),
        "ENGINE_GROUP_COMMIT_MESSAGES": str(group_commit[1]),
        # Its own node name: tests running beside it start engines with the same VAR_DIR.
        "ENGINE_NODE_NAME": f"engine-crash-{os.getpid()}",
    }
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "superimap.cli", "imap-client"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _send_burst(chaos: ServerThread) -> None:
    for _ in range(BURST):
        chaos.call(chaos.server.generate_message)
        time.sleep(BURST_SECONDS / BURST)


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
# (ms, messages): the default group commit; and groups of many sessions' batches, 200 ms or
# 50 messages apart, so the kill lands while a group is collected or committed.
@pytest.mark.parametrize("group_commit", [(2, 500), (200, 50)], ids=["default", "wide"])
def test_it_loses_and_duplicates_nothing_when_the_engine_is_killed(
    mail_partner, tmp_path, group_commit
):
    with ServerThread(USERS) as chaos:
        server = chaos.server
        loopback_users(mail_partner, server.port, USERS)
        log_path = tmp_path / "engine.log"
        engine = _start_engine(log_path, group_commit)
        try:
            _wait(lambda: MailboxUser.objects.filter(last_uid__isnull=False).count() == USERS, 30)
            # The burst is spread over BURST_SECONDS so the kill lands in it whatever the
            # group size (a wide group can persist a burst sent all at once in one commit).
            burst = threading.Thread(target=_send_burst, args=(chaos,), daemon=True)
            burst.start()
            _wait(lambda: _count() >= BURST // 20, 30)
            engine.send_signal(signal.SIGKILL)
            engine.wait(10)
            assert burst.is_alive(), "the burst ended before the kill; spread it longer"
            engine = _start_engine(log_path, group_commit)
            burst.join(30)
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
