"""engine/nodelock.py in one process: one holder per node name (SQLite: a lock file)."""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest
from django.utils import timezone

from superimap.engine import nodelock
from superimap.engine.leases import beat_on
from superimap.engine.nodelock import NodeLock, advisory_key
from superimap.platform.config import ConfigError


def test_a_second_holder_of_a_name_is_refused_until_the_first_releases(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    first = NodeLock("node-1").acquire()
    with pytest.raises(ConfigError, match="ENGINE_NODE_NAME: 'node-1' is in use"):
        NodeLock("node-1").acquire()
    other = NodeLock("node-2").acquire()  # another name is another lock
    assert first.still_held() and other.still_held()
    first.release()
    NodeLock("node-1").acquire().release()
    other.release()


def test_names_that_differ_only_in_unsafe_characters_get_different_files(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    a, b = NodeLock("host:1").acquire(), NodeLock("host@1").acquire()
    assert len(list(tmp_path.glob("engine-node-*.lock"))) == 2
    a.release()
    b.release()


def test_advisory_keys_are_stable_signed_bigints() -> None:
    key = advisory_key("node-1")
    assert key == advisory_key("node-1") != advisory_key("node-2")
    assert -(2**63) <= key < 2**63


def test_postgresql_advisory_lock_is_lost_with_its_connection(monkeypatch, postgres_url):
    """A second process with the name is refused; when the holder's lock connection dies,
    the lock goes with it, another holder may take it, and the first one learns it lost it."""
    import psycopg

    from superimap.engine import nodelock

    monkeypatch.setattr(nodelock, "_is_postgresql", lambda: True)
    monkeypatch.setattr(
        nodelock,
        "_connect",
        lambda: psycopg.connect(
            postgres_url, autocommit=True, application_name="superimap-engine-node-lock"
        ),
    )
    first = NodeLock("pg-node").acquire()
    assert first.description == "PostgreSQL advisory lock"
    with pytest.raises(ConfigError, match="ENGINE_NODE_NAME"):
        NodeLock("pg-node").acquire()
    assert first.still_held()

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'superimap-engine-node-lock'"
        )
    second = _acquire_within(NodeLock("pg-node"), 10)  # the dead connection's lock is free
    assert not first.still_held()  # reconnects, finds the name taken: lost
    assert second.still_held()
    second.release()
    assert first.still_held()  # free again: re-taken on the next check
    first.release()


def _acquire_within(lock: NodeLock, seconds: float) -> NodeLock:
    """pg_terminate_backend only signals: the backend's exit frees the lock soon after."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return lock.acquire()
        except ConfigError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_the_heartbeat_beats_on_the_lock_connection_which_proves_the_lock(
    monkeypatch, migrated_postgres_url
):
    """NodeLock.run_held + leases.beat_on (the heartbeat on PostgreSQL): one statement on
    the lock's own connection renews the row and reads the others; an error of the
    statement keeps the lock; a dead connection is re-opened, and a name taken meanwhile
    is reported lost."""
    url = migrated_postgres_url
    monkeypatch.setattr(nodelock, "_is_postgresql", lambda: True)
    monkeypatch.setattr(
        nodelock,
        "_connect",
        lambda: psycopg.connect(
            url, autocommit=True, application_name="superimap-engine-node-lock"
        ),
    )
    now = timezone.now()
    with psycopg.connect(url, autocommit=True) as admin:
        for name, age in (("pg-node", 20), ("live", 1), ("dead", 61)):
            admin.execute(
                "INSERT INTO engine_enginenode (node_id, host, pid, version, started_at, "
                "last_seen, mailboxes_held, capacity, name_lock) "
                "VALUES (%s, 'h', 1, 'v', %s, %s, 0, 10, '')",
                (name, now, now - timedelta(seconds=age)),
            )
    lease, alive = timedelta(seconds=60), timedelta(seconds=10)

    def beat(conn):
        return beat_on(conn, "pg-node", lease, None, alive)

    lock = NodeLock("pg-node").acquire()
    held, seen = lock.run_held(beat)
    assert held and seen.present and seen.dead == ("dead",) and seen.live == {"pg-node", "live"}
    with psycopg.connect(url, autocommit=True) as admin:
        (last_seen,) = admin.execute(
            "SELECT last_seen FROM engine_enginenode WHERE node_id = 'pg-node'"
        ).fetchone()
    assert last_seen >= now  # renewed (it was 20 s old)

    with pytest.raises(psycopg.errors.UndefinedTable):
        lock.run_held(lambda conn: conn.execute("SELECT * FROM no_such_table"))
    with pytest.raises(ConfigError):  # a failed statement is no reason to let the lock go
        NodeLock("pg-node").acquire()

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'superimap-engine-node-lock'"
        )
    second = _acquire_within(NodeLock("pg-node"), 10)
    assert lock.run_held(beat) == (False, None)  # reconnects, finds the name taken: lost
    second.release()
    held, seen = lock.run_held(beat)  # free again: re-taken, and the beat done on it
    assert held and seen.present
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("DELETE FROM engine_enginenode WHERE node_id = 'pg-node'")
    held, seen = lock.run_held(beat)
    assert held and not seen.present and seen.live == {"live"}  # freed by another node
    lock.release()
