"""A 40 MB message through a real `superimap web` process: streamed, not held in memory."""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.request

import pytest
from django.conf import settings
from django.db import connection as db_connection
from django.utils import timezone

from devtools.testing import free_port
from devtools.testing.mail import make_message
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner
from tests.helpers.processes import Processes, superimap_env, wait_until

MESSAGE_BYTES = 40 * 1024 * 1024
MAX_RSS_GROWTH = 16 * 1024 * 1024


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _big_message() -> bytes:
    head = make_message("forty megabytes", "a@example.test", "b@example.test", "start")
    line = b"".join(b"%07d " % i for i in range(9)) + b"\r\n"  # 74 bytes, all different lines
    lines = (MESSAGE_BYTES - len(head)) // len(line)
    return head + line * lines


@pytest.mark.slow
def test_a_40_mb_message_streams_with_bounded_rss(seeded_providers, dovecot, tmp_path):
    partner = Partner.objects.create(name="Owner")
    dovecot.add_user("bigmail", "pw")
    connection = Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        imap_host="127.0.0.1",
        imap_port=dovecot.imap_port,
        imap_tls="none",
    )
    MailboxUser.objects.create(
        connection=connection,
        tag="big",
        login_username="bigmail",
        password="pw",
        connected_at=timezone.now(),
    )
    dovecot.deliver("bigmail", make_message("warm-up", "a@example.test", "b@x.test", "w"))
    raw = _big_message()
    dovecot.deliver("bigmail", raw)
    uid_validity = dovecot.uidvalidity("bigmail")

    port = free_port()
    env = superimap_env(
        f"sqlite:///{db_connection.settings_dict['NAME']}",
        settings.VAR_DIR,
        ALLOW_LOOPBACK_IMAP="true",
    )
    base = f"http://127.0.0.1:{port}/api/v1/connections/LOOPBACK_PLAIN/users/big/messages"

    def get(uid: int):
        request = urllib.request.Request(
            f"{base}/{uid_validity}/{uid}", headers={"x-api-key": partner.api_key}
        )
        return urllib.request.urlopen(request, timeout=60)

    with Processes(tmp_path) as procs:
        web = procs.start(env, "web", "--port", str(port))
        wait_until(lambda: _reachable(port), 30, "the web process to listen")
        with get(1) as response:  # warm-up: imports, first IMAP connection, DB
            assert response.status == 200 and b"warm-up" in response.read()
        time.sleep(0.5)
        baseline = _rss(web.pid)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss(web.pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        digest, received = hashlib.sha1(), 0
        with get(2) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "message/rfc822"
            while chunk := response.read(256 * 1024):
                digest.update(chunk)
                received += len(chunk)
        elapsed = time.monotonic() - started
        done.set()
        sampler.join(5)
        output = procs.stop(web)

    growth = peak[0] - baseline
    print(
        f"\n40 MB message route: {received} bytes in {elapsed:.2f}s "
        f"({received / elapsed / 1e6:.1f} MB/s); web RSS {baseline / 2**20:.1f} MiB -> "
        f"peak {peak[0] / 2**20:.1f} MiB (+{growth / 2**20:.1f} MiB)"
    )
    assert received == len(raw)
    assert digest.hexdigest() == hashlib.sha1(raw).hexdigest()
    assert growth < MAX_RSS_GROWTH, output[-2000:]


def _reachable(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return True
    except OSError:
        return False
