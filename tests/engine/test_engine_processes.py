"""Several engine processes per box (issue 20 item 1): `superimap imap-client --engines 2`
starts two engine processes named box-1 and box-2 that share the mailboxes; kill -9 of one
in the middle of a burst loses and repeats nothing (per mailbox: messages in the folder =
deliveries + recorded skips), the parent starts it again under the same name, and a SIGTERM
to the parent stops them all. Real processes, SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from tests.helpers.engine import ServerThread, SessionSampler, idling
from tests.helpers.processes import (
    CHAOS_USERS_SCRIPT,
    Processes,
    query,
    run_cli,
    superimap_env,
    wait_until,
)

USERS = 20
BURST = 150
BURST_SECONDS = 3.0
NAMES = {"box-1", "box-2"}
FAST = {
    "ALLOW_LOOPBACK_IMAP": "true",
    "ENGINE_REFRESH_SECONDS": "1",
    "ENGINE_LEASE_SECONDS": "10",
    "ENGINE_NODE_ALIVE_SECONDS": "3",
    "ENGINE_NODE_NAME": "box",
}


@pytest.fixture
def database_url(migrated_database_url) -> str:
    return migrated_database_url


def _pids(database_url: str) -> dict[str, int]:
    return dict(query(database_url, "SELECT node_id, pid FROM engine_enginenode"))


def _alive(pid: int) -> bool:
    """Running (not a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _per_mailbox(database_url: str, sql: str) -> Counter:
    return Counter(dict(query(database_url, sql)))


DELIVERED = (
    "SELECT u.tag, count(*) FROM delivery_delivery d JOIN mailboxes_mailboxuser u "
    "ON u.id = d.user_id WHERE d.kind = 'new_mail' GROUP BY u.tag"
)
SKIPPED = (
    "SELECT u.tag, count(*) FROM mailboxes_maillog l JOIN mailboxes_mailboxuser u "
    "ON u.id = l.user_id WHERE l.skipped_reason <> '' GROUP BY u.tag"
)


def test_it_delivers_each_mail_once_when_one_of_two_engine_processes_is_killed(
    database_url, tmp_path
):
    with ServerThread(USERS) as chaos, Processes(tmp_path) as procs:
        server = chaos.server
        env = superimap_env(database_url, tmp_path / "var", **FAST)
        setup = {**env, "CHAOS_PORT": str(server.port), "USERS": str(USERS)}
        run_cli(setup, "manage", "shell", "-c", CHAOS_USERS_SCRIPT)

        def owners() -> Counter:
            rows = query(database_url, "SELECT owner_node FROM mailboxes_mailboxuser")
            return Counter(owner for (owner,) in rows)

        def all_idle() -> bool:
            return len(chaos.call(lambda: idling(server))) == USERS

        with SessionSampler(chaos) as sampler:
            parent = procs.start(env, "imap-client", "--engines", "2")
            wait_until(
                lambda: set(owners()) == NAMES and all_idle(),
                60,
                "two engine processes sharing the mailboxes, every one in IDLE",
            )
            shares = owners()
            before = _pids(database_url)
            burst = threading.Thread(
                target=lambda: [
                    (chaos.call(server.generate_message), time.sleep(BURST_SECONDS / BURST))
                    for _ in range(BURST)
                ],
                daemon=True,
            )
            burst.start()
            time.sleep(BURST_SECONDS / 4)
            os.kill(before["box-2"], signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(
                lambda: _pids(database_url).get("box-2") not in (None, before["box-2"]),
                30,
                "the parent to start box-2 again",
            )
            restarted = time.monotonic() - killed_at
            burst.join(30)
            wait_until(
                lambda: set(owners()) == NAMES and all_idle(),
                60,
                "both nodes sharing the mailboxes again",
            )
            generated = Counter(chaos.call(lambda: dict(server.generated)).values())

            def recorded() -> bool:
                both = _per_mailbox(database_url, DELIVERED) + _per_mailbox(database_url, SKIPPED)
                return both.total() >= BURST

            wait_until(recorded, 60, "every generated mail recorded")
            time.sleep(1.5)  # anything recorded twice would show now
            most_sessions = sampler.most
        delivered = _per_mailbox(database_url, DELIVERED)
        skipped = _per_mailbox(database_url, SKIPPED)
        messages = [m for (m,) in query(database_url, "SELECT message_id FROM delivery_delivery")]
        after = _pids(database_url)
        output = procs.stop(parent, timeout=30)

    print(f"shares {dict(shares)}; box-2 restarted {restarted:.1f} s after kill -9")
    assert parent.returncode == 0, output
    assert min(shares.values()) >= 3, shares
    assert "engine box-2 exited (killed by SIGKILL)" in output
    assert after["box-1"] == before["box-1"]
    assert most_sessions == 1, "a mailbox was watched by two sessions at once"
    assert generated.total() == BURST
    for user in generated:
        assert generated[user] == delivered[user] + skipped[user], user
    assert len(messages) == len(set(messages))
    assert not [pid for pid in after.values() if _alive(pid)], "a child outlived the parent"


def test_a_child_that_cannot_start_stops_the_parent_with_one_line(migrated_sqlite_url, tmp_path):
    """box-2 is taken by a live process: the child stops at start naming ENGINE_NODE_NAME,
    the parent stops its other children and exits 2, without a line of its own."""
    env = superimap_env(migrated_sqlite_url, tmp_path / "var", ENGINE_NODE_NAME="box")
    with Processes(tmp_path) as procs:
        holder = procs.start({**env, "ENGINE_NODE_NAME": "box-2"}, "imap-client")
        wait_until(lambda: "box-2" in _pids(migrated_sqlite_url), 30, "box-2 to run")
        parent = procs.start(env, "imap-client", "--engines", "2")
        assert parent.wait(60) == 2, procs.output(parent)
        output = procs.output(parent)
        procs.stop(holder)
    errors = [line for line in output.splitlines() if line.startswith("superimap:")]
    assert len(errors) == 1 and "ENGINE_NODE_NAME" in errors[0], output
    assert "'box-2' is in use" in errors[0]
    assert _pids(migrated_sqlite_url) == {}, "box-1 did not stop cleanly"


def test_the_children_stop_when_the_parent_is_killed(migrated_sqlite_url, tmp_path):
    """kill -9 of the parent closes the pipe each child watches: they stop cleanly (their
    heartbeat rows removed), none is left running."""
    env = superimap_env(migrated_sqlite_url, tmp_path / "var", ENGINE_NODE_NAME="box")
    with Processes(tmp_path) as procs:
        parent = procs.start(env, "imap-client", "--engines", "2")
        pids = wait_until(
            lambda: (p := _pids(migrated_sqlite_url)).keys() == {"box-1", "box-2"} and p,
            30,
            "both children to run",
        )
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in pids.values()), 20, "the children")
        output = procs.output(parent)
    assert output.count("the parent process asked to stop (or is gone)") == 2, output
    assert _pids(migrated_sqlite_url) == {}
