"""kill -9 the engine process in the middle of a backfill (real Dovecot): the next one continues
after the stored position, and nothing is sent twice or counted twice (design.md 4.12)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.mail import make_message
from superimap.accounts import users as accounts_users
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser, MailLog

COUNT = 40
RATE = 8  # messages a second: steps of 2, the backfill takes ~5 s


def _start_engine(log_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "SUPERIMAP_ENV": "test",
        "DATABASE_URL": f"sqlite:///{settings.DATABASES['default']['NAME']}",
        "VAR_DIR": str(settings.VAR_DIR),
        "ALLOW_LOOPBACK_IMAP": "true",
        "ENGINE_LEASE_SECONDS": "2",
        "ENGINE_REFRESH_SECONDS": "1",
        "ENGINE_NODE_ALIVE_SECONDS": "3",
        "BACKFILL_RATE_PER_MAILBOX": str(RATE),
        "ENGINE_PROCESSES": "1",  # the engine itself is killed, not a supervising parent
        # Its own node name: tests running beside it start engines with the same VAR_DIR.
        "ENGINE_NODE_NAME": f"backfill-crash-{os.getpid()}",
    }
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "superimap.cli", "imap-client"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _user(user_id: int) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id)


def _wait(predicate, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            output = log_path.read_text() if log_path.exists() else "(no engine log)"
            raise AssertionError(f"condition not met within {timeout}s; engine log:\n{output}")
        time.sleep(0.05)


def test_a_backfill_killed_midway_resumes_without_duplicates(mailbox, dovecot, tmp_path):
    user = mailbox()
    start = timezone.now() - timedelta(days=3)
    for i in range(COUNT):
        raw = make_message(f"old {i}", "a@example.test", user.email, "x", f"<old{i}@t>")
        dovecot.append(user.tag, raw, start + timedelta(minutes=i))
    accounts_users.request_backfill(user, None)
    log_path = tmp_path / "engine.log"
    engine = _start_engine(log_path)
    try:
        _wait(lambda: _user(user.id).backfill_done >= 10, 30, log_path)
        engine.send_signal(signal.SIGKILL)
        engine.wait(10)
        killed = _user(user.id)
        assert killed.backfill_finished_at is None, "the backfill ended before the kill"
        assert killed.backfill_position is not None
        engine = _start_engine(log_path)
        _wait(lambda: _user(user.id).backfill_finished_at is not None, 60, log_path)
        time.sleep(1.0)  # anything sent twice would show up now
    finally:
        engine.kill()
        engine.wait(10)
    output = log_path.read_text()
    resumed = re.findall(r"backfill of all mail: (\d+) message\(s\) to send, (\d+) done", output)
    assert len(resumed) == 2 and resumed[0] == (str(COUNT), "0"), output
    to_send, done = map(int, resumed[1])
    assert done == killed.backfill_done and to_send + done == COUNT  # continued, not restarted
    close_old_connections()
    rows = list(Delivery.objects.filter(user_id=user.id, kind="new_mail"))
    assert sorted(d.message_id for d in rows) == sorted(f"<old{i}@t>" for i in range(COUNT))
    assert all(d.backfill and d.payload["backfill"] is True for d in rows)
    # The count identity: the window's messages = deliveries + recorded skips (none here).
    logs = MailLog.objects.filter(user_id=user.id)
    assert logs.count() == COUNT and not logs.exclude(skipped_reason="").exists()
    finished = _user(user.id)
    assert (finished.backfill_done, finished.backfill_total) == (COUNT, COUNT)
