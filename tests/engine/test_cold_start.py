"""Nodes starting together (issue 20 item 5, design.md 8 "Cold start"): each engine process
writes its heartbeat row first and claims nothing unowned until the live nodes have stayed
the same for ENGINE_JOIN_SECONDS, then only what rendezvous ranks to it. So three nodes
starting at once on one database log in about once per mailbox (the chaos server counts
the logins) and end with the rendezvous shares, within 10 % of equal, nobody freed as dead.
And a frozen node (SIGSTOP: its name lock still held) beats no more: the others free it
by the lease, even when frozen inside a transaction. Real processes, SQLite and PostgreSQL."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter

import pytest

from superimap.engine.leases import rendezvous_owners
from tests.helpers.engine import ServerThread, idling
from tests.helpers.processes import (
    CHAOS_USERS_SCRIPT,
    Processes,
    query,
    run_cli,
    superimap_env,
    wait_until,
)

NODES = ("node-1", "node-2", "node-3")
USERS = 600


@pytest.fixture
def database_url(migrated_database_url) -> str:
    return migrated_database_url


def _setup(chaos: ServerThread, env: dict[str, str], users: int) -> None:
    setup = {**env, "CHAOS_PORT": str(chaos.server.port), "USERS": str(users)}
    run_cli(setup, "manage", "shell", "-c", CHAOS_USERS_SCRIPT)


def _freeze_outside_the_sqlite_gate(proc: subprocess.Popen, database_url: str) -> None:
    """SIGSTOP `proc`; on SQLite, not while it holds the write gate (design.md: a process
    frozen inside a write stops every writer until it is thawed, SQLite's single writer; no
    lease can free that). Frozen holding the gate, it is thawed and frozen again a moment
    later: the test is about the lease freeing a frozen node, which it can only do outside."""
    if not database_url.startswith("sqlite:///"):
        proc.send_signal(signal.SIGSTOP)
        return
    path = database_url.removeprefix("sqlite:///")
    gate = path + "-gate"
    deadline = time.monotonic() + 10
    while True:
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.05)  # the signal has landed
        fd = os.open(gate, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:  # and not inside an autocommit write, which skips the gate
                db = sqlite3.connect(path, timeout=0, isolation_level=None)
                try:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("ROLLBACK")
                finally:
                    db.close()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            return
        except (BlockingIOError, sqlite3.OperationalError):
            assert time.monotonic() < deadline, "the node never left the SQLite write gate"
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.1)
        finally:
            os.close(fd)


def test_nodes_starting_together_log_in_once_per_mailbox_and_share_evenly(database_url, tmp_path):
    with ServerThread(USERS) as chaos, Processes(tmp_path) as procs:
        server = chaos.server
        env = superimap_env(
            database_url,
            tmp_path / "var",
            ALLOW_LOOPBACK_IMAP="true",
            ENGINE_JOIN_SECONDS="3",
            # Nodes freed as dead would show within the test: a short lease.
            ENGINE_LEASE_SECONDS="10",
        )
        _setup(chaos, env, USERS)

        def owners() -> dict[int, str]:
            return dict(query(database_url, "SELECT id, owner_node FROM mailboxes_mailboxuser"))

        def settled() -> bool:
            held = owners()
            return "" not in held.values() and len(chaos.call(lambda: idling(server))) == USERS

        started = [procs.start({**env, "ENGINE_NODE_NAME": name}, "imap-client") for name in NODES]
        wait_until(settled, 120, "every mailbox owned and in IDLE")
        time.sleep(2.0)  # a handover would show now
        held = owners()
        logins = chaos.call(lambda: server.stats["logins"])
        outputs = [procs.stop(proc) for proc in started]

    ids = sorted(held)
    assert held == rendezvous_owners(ids, dict.fromkeys(NODES, 20_000))
    shares = Counter(held.values())
    equal = USERS / len(NODES)
    assert all(abs(count - equal) <= 0.10 * equal for count in shares.values()), shares
    # Once per mailbox; a node slow to start may cost a few handed-over logins at most.
    assert USERS <= logins <= USERS * 1.05, logins
    assert not [line for out in outputs for line in out.splitlines() if " is dead" in line]


def test_a_frozen_node_is_freed_by_the_lease(database_url, tmp_path):
    users = 20
    with ServerThread(users) as chaos, Processes(tmp_path) as procs:
        server = chaos.server
        env = superimap_env(
            database_url,
            tmp_path / "var",
            ALLOW_LOOPBACK_IMAP="true",
            ENGINE_JOIN_SECONDS="1",
            ENGINE_REFRESH_SECONDS="2",
            ENGINE_LEASE_SECONDS="4",
        )
        _setup(chaos, env, users)

        def owners() -> set[str]:
            rows = query(database_url, "SELECT owner_node FROM mailboxes_mailboxuser")
            return {owner for (owner,) in rows}

        frozen = procs.start({**env, "ENGINE_NODE_NAME": "node-a"}, "imap-client")
        other = procs.start({**env, "ENGINE_NODE_NAME": "node-b"}, "imap-client")
        wait_until(lambda: owners() == {"node-a", "node-b"}, 60, "both nodes to share")
        _freeze_outside_the_sqlite_gate(frozen, database_url)
        stopped_at = time.monotonic()
        wait_until(lambda: owners() == {"node-b"}, 30, "node-b to free the frozen node")
        freed_after = time.monotonic() - stopped_at
        wait_until(lambda: len(chaos.call(lambda: idling(server))) == users, 30, "all in IDLE")
        frozen.send_signal(signal.SIGCONT)
        # Thawed, it finds its row gone, comes back as a new node and gets its share again.
        wait_until(lambda: owners() == {"node-a", "node-b"}, 60, "node-a back with its share")
        output = procs.stop(other)
        procs.stop(frozen)

    # Its lock was held all along: only the lease (4 s) frees it, plus a beat and a refresh;
    # frozen inside a transaction (PostgreSQL), once the server ends that after the lease.
    assert 3.0 <= freed_after <= 2 * 4.0 + 5.0, freed_after
    assert "engine node node-a is dead" in output
