"""One live engine process per node name (issue 8 item 5).

An engine node keeps its name across restarts (ENGINE_NODE_NAME, default: the host name),
so a node restarted after a crash finds the leases its dead predecessor held under that
name and renews them at once instead of waiting ENGINE_LEASE_SECONDS for them to expire.
That is only safe if two live processes can never share a name: each takes an exclusive
lock held for its whole life, released by the operating system (SQLite: an fcntl lock on a
file in VAR_DIR) or by PostgreSQL (a session advisory lock) when the process dies, kill -9
included. A second process with the same name stops at start with one line naming
ENGINE_NODE_NAME.

The same locks tell the other nodes that a process died (free_names()): its heartbeat row
says which lock it held, and a free one proves the process gone, so the survivors take its
mailboxes over in seconds instead of after ENGINE_LEASE_SECONDS (design.md 8).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.db import connection

from superimap.platform.config import ConfigError

T = TypeVar("T")

# Key space of our advisory locks: the first 8 bytes of sha256("superimap-engine-node:" +
# name), as PostgreSQL's signed bigint.
_PREFIX = "superimap-engine-node:"
# A restarting process may find its lock file briefly held by another node's probe
# (free_names()): it tries again for this long before calling the name taken.
ACQUIRE_RETRY_SECONDS = 0.5


class NodeLock:
    """Held until release() or the process's death."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._file: int | None = None
        self._connection = None
        self.description = ""
        self.kind = ""  # "flock" or "advisory", published in the node's heartbeat row
        self._since = 0.0  # monotonic: when the lock was (re)taken
        # still_held() runs in the heartbeat thread and in a database thread of the refresh.
        self._guard = threading.Lock()

    # --- acquiring ------------------------------------------------------------------------

    def acquire(self) -> NodeLock:
        """Take the lock or raise ConfigError("ENGINE_NODE_NAME", ...)."""
        if _is_postgresql():
            self._acquire_advisory()
        else:
            self._acquire_file()
        return self

    def _acquire_file(self) -> None:
        path = _lock_path(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + ACQUIRE_RETRY_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = f"pid {holder}, " if holder.isdigit() else ""
            raise ConfigError(
                "ENGINE_NODE_NAME",
                f"{self.name!r} is in use by another live engine process ({pid}{path} is "
                "locked); stop it first, or give each engine process its own name",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._file = fd
        self.description = f"lock file {path}"
        self.kind = "flock"
        self._since = time.monotonic()

    def _acquire_advisory(self) -> None:
        self._connection = _connect()
        (taken,) = self._connection.execute(
            "SELECT pg_try_advisory_lock(%s)", (advisory_key(self.name),)
        ).fetchone()
        if not taken:
            self._connection.close()
            self._connection = None
            raise ConfigError(
                "ENGINE_NODE_NAME",
                f"{self.name!r} is in use by another live engine process (PostgreSQL "
                "advisory lock held); give each engine process its own name",
            )
        self.description = "PostgreSQL advisory lock"
        self.kind = "advisory"
        self._since = time.monotonic()

    # --- while running --------------------------------------------------------------------

    def still_held(self) -> bool:
        """False if the lock is proven lost (PostgreSQL: the lock's connection broke and
        another process holds the name now). A broken connection is re-opened and the lock
        taken again; while the database is unreachable the lock counts as held (this
        engine cannot renew its leases then either, and they expire)."""
        with self._guard:
            return self._still_held()

    def _still_held(self) -> bool:
        if not _is_postgresql():
            return self._file is not None
        if self._connection is not None:
            try:
                (held,) = self._connection.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = pg_backend_pid()"
                ).fetchone()
                return held > 0
            except Exception:  # noqa: BLE001 - any database error: reconnect below
                self._close_connection()
        try:
            self._acquire_advisory()
        except ConfigError:
            return False
        except Exception:  # noqa: BLE001 - database still unreachable: not proven lost
            self._close_connection()
        return True

    def run_held(self, fn: Callable[[Any], T]) -> tuple[bool, T | None]:
        """``fn(connection)`` on the lock's own connection (PostgreSQL advisory locks only),
        as ``(held, result)``: one round trip both proves the lock held (a session lock
        lives as long as its connection) and does the work, where still_held() and a
        statement on another connection took two (the heartbeat, engine/heartbeat.py).
        A broken connection is re-opened and the lock taken again, as in still_held():
        ``(False, None)`` when the name is taken meanwhile; ``(True, None)`` while the
        database is unreachable (nothing done). An error of ``fn`` on a sound connection
        is raised: the connection and the lock stay."""
        with self._guard:
            for _ in range(2):
                connection = self._connection
                if connection is None:
                    if not self._still_held():
                        return False, None
                    if self._connection is None:  # unreachable: not proven lost
                        return True, None
                    continue
                try:
                    return True, fn(connection)
                except Exception:
                    if not (connection.closed or connection.broken):
                        raise
                    self._close_connection()
            return True, None

    def steady(self, seconds: float) -> bool:
        """Held without a break for ``seconds``. A PostgreSQL restart drops every advisory
        lock at once: until the other live nodes have had a refresh to take theirs back, a
        free lock proves nothing."""
        if self.kind == "advisory" and self._connection is None:
            return False
        return bool(self.kind) and time.monotonic() - self._since >= seconds

    def release(self) -> None:
        if self._file is not None:
            os.close(self._file)  # closing the descriptor drops the flock
            self._file = None
        self._close_connection()

    def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass


def free_names(nodes: Iterable[tuple[str, str]], own: str) -> set[str]:
    """Of ``nodes`` ((name, lock kind) from heartbeat rows), the names whose lock is
    provably free: their process is dead. ``own``: this node's name; on PostgreSQL nothing
    is judged unless its own advisory lock shows (else the server restarted, or this node's
    lock connection broke, and every lock is free for a moment). Runs in a database thread
    (PostgreSQL: Django's connection there)."""
    nodes = list(nodes)
    if _is_postgresql():
        held = _held_advisory_keys()
        if advisory_key(own) not in held:
            return set()
        return {n for n, kind in nodes if kind == "advisory" and advisory_key(n) not in held}
    return {n for n, kind in nodes if kind == "flock" and _flock_free(n)}


def _held_advisory_keys() -> set[int]:
    with connection.cursor() as cursor:
        # A bigint advisory key shows as classid (high 32 bits) and objid (low), objsubid 1.
        cursor.execute(
            "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        keys = set()
        for high, low in cursor.fetchall():
            key = (high << 32) | low
            keys.add(key - (1 << 64) if key >= 1 << 63 else key)
        return keys


def _flock_free(name: str) -> bool:
    """Whether no process holds ``name``'s lock file: taken shared for a moment and let go
    (a process starting under that name meanwhile retries, ACQUIRE_RETRY_SECONDS). No file:
    not known here (another VAR_DIR), so not free."""
    try:
        fd = os.open(_lock_path(name), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # drops the shared lock if it was taken
    return True


def _lock_path(name: str) -> Path:
    return Path(settings.VAR_DIR) / f"engine-node-{_file_safe(name)}.lock"


def advisory_key(name: str) -> int:
    digest = hashlib.sha256((_PREFIX + name).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _file_safe(name: str) -> str:
    """A file name for any node name: readable part plus a hash, so names never collide."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _is_postgresql() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def _connect():
    """A connection of its own (not Django's per-thread ones) that lives with the lock."""
    db = settings.DATABASES["default"]
    return psycopg.connect(
        dbname=db["NAME"],
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=db.get("PORT") or None,
        autocommit=True,
        application_name="superimap-engine-node-lock",
    )
