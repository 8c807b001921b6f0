"""kill -9 the engine and start it again under the same ENGINE_NODE_NAME (issue 8 item 5):
it takes its own leases back at once (first webhook within 5 s, not after the 60 s lease),
a second live process with that name is refused at start, and no mailbox ever has two IMAP
sessions. On SQLite (lock file in VAR_DIR) and PostgreSQL (advisory lock)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.helpers.delivery import ThreadedReceiver
from tests.helpers.engine import ServerThread, SessionSampler
from tests.helpers.processes import (
    BASELINED,
    CHAOS_USERS_SCRIPT,
    Processes,
    query,
    run_cli,
    superimap_env,
    wait_until,
)

USERS = 5
OWNERS = "SELECT DISTINCT owner_node FROM mailboxes_mailboxuser"


@pytest.fixture
def database_url(migrated_database_url) -> str:
    """Migrated already (a copy of one migrated template), not by each test."""
    return migrated_database_url


def test_a_restarted_node_takes_its_leases_back_at_once(database_url, tmp_path):
    receiver = ThreadedReceiver()
    try:
        with ServerThread(USERS) as chaos, Processes(tmp_path) as procs:
            _run(database_url, tmp_path, chaos, procs, receiver)
    finally:
        receiver.close()


def _run(database_url, tmp_path, chaos, procs, receiver) -> None:
    server = chaos.server
    # The default 60 s lease: before issue 8 a restart sent nothing until it expired.
    env = superimap_env(
        database_url,
        tmp_path / "var",
        ALLOW_LOOPBACK_IMAP="true",
        ENGINE_NODE_NAME="restarting-node",
    )
    setup_env = {
        **env,
        "CHAOS_PORT": str(server.port),
        "USERS": str(USERS),
        "HOOK_URL": f"{receiver.url}/new-mail",
    }
    run_cli(setup_env, "manage", "shell", "-c", CHAOS_USERS_SCRIPT)

    with SessionSampler(chaos) as sampler:
        procs.start(env, "worker")
        first = procs.start(env, "imap-client")
        wait_until(
            lambda: query(database_url, BASELINED)[0][0] == USERS, 30, "every mailbox baselined"
        )
        assert query(database_url, OWNERS) == [("restarting-node",)]

        # A second live process with the same name is refused at start, naming the variable.
        twin = procs.start(env, "imap-client")
        assert twin.wait(30) == 2
        assert "ENGINE_NODE_NAME" in procs.output(twin)
        assert first.poll() is None

        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        for i in range(USERS):
            chaos.call(server.generate_message, f"user{i}")

        restarted_at = time.monotonic()
        second = procs.start(env, "imap-client")
        receiver.wait_for(1, timeout=30)
        first_webhook = time.monotonic() - restarted_at
        receiver.wait_for(USERS, timeout=30)
        time.sleep(1.0)  # anything sent twice would show up now
        most_sessions = sampler.most
        output = procs.stop(second)

    print(f"first webhook {first_webhook:.2f} s after the restart ({database_url[:10]})")
    assert first_webhook < 5.0, output
    assert second.returncode == 0, output
    assert most_sessions == 1, "a mailbox was watched by two sessions at once"
    tags = sorted(r.json["user_tag"] for r in receiver.received)
    assert tags == [f"user{i}" for i in range(USERS)]  # each once: none lost, none repeated
