"""Django's SQLite backend, with the write lock handed over in turn between processes.

SQLite has one write lock per database file. A writer that finds it taken does not queue:
its busy handler sleeps and tries again (1, 2, 5, 10 ... up to 100 ms between tries). When
one process writes back to back, as the engine does at 1,000 mails/s (a group commit every
few milliseconds), another process's writer keeps waking into a held lock: the worker's
claim was seen waiting 20-37 s while the engine committed (issue 20, `bench.e2e` at 1,000/s).

The gate is an `flock` on `<database>-gate`, taken before `BEGIN IMMEDIATE` and released at
commit or rollback. A blocked `flock` is woken the moment the holder releases it, so a waiting
writer gets the next turn instead of sleeping through it. Each connection opens the gate file
itself, so two connections of one process queue like two processes; the kernel drops the
lock when a process dies. Writes outside a transaction (autocommit) do not take the gate and
still rely on SQLite's busy timeout; every write the engine, the worker and the API make in
bulk runs in `transaction.atomic`.
"""

from __future__ import annotations

import fcntl
import functools
import os
import time

from django.db.backends.sqlite3 import base

from superimap.platform.metrics import (
    SQLITE_GATE_HELD_SECONDS,
    SQLITE_GATE_TURNS,
    SQLITE_GATE_WAIT_SECONDS,
    SQLITE_GATE_WAITS,
)


@functools.lru_cache(maxsize=1024)
def _qmark(query: str) -> str:
    """Django's "format" -> "qmark" conversion (%s -> ?), once per statement text: Django
    runs its regex over the whole text at every execute, ~4 us for the worker's claim
    SELECTs, which run again and again with the same text."""
    return base.FORMAT_QMARK_REGEX.sub("?", query).replace("%%", "%")


class SQLiteCursorWrapper(base.SQLiteCursorWrapper):
    def convert_query(self, query, *, param_names=None):
        if param_names is None:
            return _qmark(query)
        return super().convert_query(query, param_names=param_names)


class DatabaseWrapper(base.DatabaseWrapper):
    _gate_fd: int | None = None
    _gate_held = False
    _gate_taken_at = 0.0

    def create_cursor(self, name=None):
        return self.connection.cursor(factory=SQLiteCursorWrapper)

    def _gate_path(self) -> str | None:
        name = str(self.settings_dict.get("NAME") or "")
        if not name or self.is_in_memory_db():
            return None
        return f"{name}-gate"

    def _take_gate(self) -> None:
        if self._gate_fd is None:
            path = self._gate_path()
            if path is None:
                return
            self._gate_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._gate_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._gate_taken_at = time.monotonic()
        except BlockingIOError:
            # Another process's turn: wait, counted (superimap_sqlite_gate_wait_seconds).
            asked = time.monotonic()
            fcntl.flock(self._gate_fd, fcntl.LOCK_EX)
            self._gate_taken_at = time.monotonic()
            SQLITE_GATE_WAITS.inc()
            SQLITE_GATE_WAIT_SECONDS.inc(self._gate_taken_at - asked)
        self._gate_held = True

    def _release_gate(self) -> None:
        if self._gate_held:
            self._gate_held = False
            fcntl.flock(self._gate_fd, fcntl.LOCK_UN)
            SQLITE_GATE_TURNS.inc()
            SQLITE_GATE_HELD_SECONDS.inc(time.monotonic() - self._gate_taken_at)

    def _start_transaction_under_autocommit(self) -> None:
        self._take_gate()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_gate()
            raise

    def _commit(self) -> None:
        try:
            super()._commit()
        finally:
            self._release_gate()

    def _rollback(self) -> None:
        try:
            super()._rollback()
        finally:
            self._release_gate()

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            self._release_gate()
            if self._gate_fd is not None:
                os.close(self._gate_fd)
                self._gate_fd = None
