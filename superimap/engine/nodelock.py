"""One live engine process per node name (issue 8 item 5).

An engine node keeps its name across restarts (ENGINE_NODE_NAME, default: the host name),
so a node restarted after a crash finds the leases its dead predecessor held under that
name and renews them at once instead of waiting ENGINE_LEASE_SECONDS for them to expire.
That is only safe if two live processes can never share a name: each takes an exclusive
lock held for its whole life, released by the operating system (SQLite: an fcntl lock on a
file in VAR_DIR) or by PostgreSQL (a session advisory lock) when the process dies, kill -9
included. A second process with the same name stops at start with one line naming
ENGINE_NODE_NAME.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from pathlib import Path

from django.conf import settings

from superimap.config import ConfigError

# Key space of our advisory locks: the first 8 bytes of sha256("superimap-engine-node:" +
# name), as PostgreSQL's signed bigint.
_PREFIX = "superimap-engine-node:"


class NodeLock:
    """Held until release() or the process's death."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._file: int | None = None
        self._connection = None
        self.description = ""

    # --- acquiring ------------------------------------------------------------------------

    def acquire(self) -> NodeLock:
        """Take the lock or raise ConfigError("ENGINE_NODE_NAME", ...)."""
        if _is_postgresql():
            self._acquire_advisory()
        else:
            self._acquire_file()
        return self

    def _acquire_file(self) -> None:
        path = Path(settings.VAR_DIR) / f"engine-node-{_file_safe(self.name)}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                "ENGINE_NODE_NAME",
                f"{self.name!r} is in use by another live engine process ({path} is locked); "
                "give each engine process its own name",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._file = fd
        self.description = f"lock file {path}"

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

    # --- while running --------------------------------------------------------------------

    def still_held(self) -> bool:
        """False if the lock is proven lost (PostgreSQL: the lock's connection broke and
        another process holds the name now). A broken connection is re-opened and the lock
        taken again; while the database is unreachable the lock counts as held (this
        engine cannot renew its leases then either, and they expire)."""
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
    import psycopg

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
