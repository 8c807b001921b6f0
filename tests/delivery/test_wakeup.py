"""The engine wakes a worker in another process when new deliveries commit (issue 12 item 2):
with the worker's poll at 5 s, a pushed mail is posted well under a second later. SQLite
(UNIX datagram sockets in VAR_DIR) and PostgreSQL (LISTEN/NOTIFY), real processes."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from superimap.delivery.wakeup import SOCKET_SUFFIX, WakeListener, WakeSender, socket_dir
from tests.helpers.delivery import ThreadedReceiver
from tests.helpers.engine import ServerThread
from tests.helpers.processes import (
    BASELINED,
    CHAOS_USERS_SCRIPT,
    Processes,
    query,
    run_cli,
    superimap_env,
    wait_until,
)

USERS = 3
PUSHES = 6
POLL_MS = 5000


@pytest.fixture
def database_url(migrated_database_url) -> str:
    """Migrated already (a copy of one migrated template), not by each test."""
    return migrated_database_url


def test_it_posts_a_new_mail_well_before_the_workers_poll(database_url, tmp_path):
    receiver = ThreadedReceiver()
    arrivals: list[float] = []
    receiver.receiver.on_request = lambda event: arrivals.append(time.monotonic())
    try:
        with ServerThread(USERS) as chaos, Processes(tmp_path) as procs:
            latencies, outputs = _run(database_url, tmp_path, chaos, procs, receiver, arrivals)
    finally:
        receiver.close()
    print(f"push -> webhook {[round(x * 1000) for x in latencies]} ms ({database_url[:10]})")
    assert len(latencies) == PUSHES
    # Polling alone would take 0-5 s (2.5 s on average) for each of them.
    assert max(latencies) < 1.0, outputs


def _run(database_url, tmp_path, chaos, procs, receiver, arrivals):
    server = chaos.server
    env = superimap_env(
        database_url,
        tmp_path / "var",
        ALLOW_LOOPBACK_IMAP="true",
        ENGINE_NODE_NAME="wakeup-node",
        WEBHOOK_POLL_MS=str(POLL_MS),
    )
    setup_env = {
        **env,
        "CHAOS_PORT": str(server.port),
        "USERS": str(USERS),
        "HOOK_URL": f"{receiver.url}/new-mail",
    }
    run_cli(setup_env, "manage", "shell", "-c", CHAOS_USERS_SCRIPT)

    worker = procs.start(env, "worker")
    engine = procs.start(env, "imap-client")
    wait_until(lambda: "listens for wake-ups" in procs.output(worker), 30, "the worker to listen")
    wait_until(lambda: query(database_url, BASELINED)[0][0] == USERS, 30, "every mailbox baselined")
    # The worker's first claims and polls happen now; let it settle into its 5 s poll.
    time.sleep(1.0)

    latencies = []
    for i in range(PUSHES):
        pushed = time.monotonic()
        chaos.call(server.generate_message, f"user{i % USERS}")
        receiver.wait_for(i + 1, timeout=2 * POLL_MS / 1000)
        latencies.append(arrivals[i] - pushed)
        time.sleep(0.3)
    outputs = [procs.stop(engine), procs.stop(worker)]
    assert [engine.returncode, worker.returncode] == [0, 0], outputs
    return latencies, outputs


# --- the two ends in one process -----------------------------------------------------------


def test_a_datagram_wakes_the_listener_and_a_dead_workers_socket_is_removed(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    directory = socket_dir()
    directory.mkdir(parents=True)
    stale = directory / f"worker-1-dead{SOCKET_SUFFIX}"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()  # bound once, nobody listens now: a killed worker's leftover

    async def scenario() -> tuple[int, int]:
        woken = asyncio.Event()
        listener = WakeListener(woken.set)
        await listener.start()
        sender = WakeSender(pool=None)
        try:
            sender.notify()
            await asyncio.wait_for(woken.wait(), 2)
            return listener.received, sender.sent
        finally:
            sender.close()
            await listener.stop()

    received, sent = asyncio.run(scenario())
    assert (received, sent) == (1, 1)
    assert not stale.exists()
    assert not [name for name in os.listdir(directory) if name.endswith(SOCKET_SUFFIX)]


def test_the_sender_does_nothing_when_no_worker_ever_started(settings, tmp_path):
    settings.VAR_DIR = tmp_path / "never-used"
    sender = WakeSender(pool=None)
    sender.notify()
    assert sender.sent == 0
    sender.close()


def test_a_deep_var_dir_uses_a_short_socket_directory(settings, tmp_path):
    settings.VAR_DIR = tmp_path / ("d" * 120)
    directory = socket_dir()
    assert len(str(directory)) + 40 <= 100
    assert directory != settings.VAR_DIR / "wakeup"


def test_a_worker_that_cannot_bind_its_socket_still_starts(monkeypatch, tmp_path):
    from superimap.delivery import wakeup

    blocker = tmp_path / "var"
    blocker.write_text("a file where the socket directory would go")
    monkeypatch.setattr(wakeup, "socket_dir", lambda: blocker / "wakeup")

    async def scenario() -> None:
        listener = WakeListener(lambda: None)
        await listener.start()  # logs a warning; the worker polls
        await listener.stop()

    asyncio.run(scenario())
