"""Waking webhook workers in other processes when the engine commits new deliveries.

Without it a worker in its own process (`superimap worker`) notices new rows only at its
poll (WEBHOOK_POLL_MS), which adds up to that much to push -> webhook latency.

- PostgreSQL: the engine sends `NOTIFY superimap_deliveries` right after each committed
  batch (through its DB pool, in the background; a burst of batches collapses into one
  NOTIFY in flight and one after it); workers LISTEN on a connection of their own.
- SQLite (one machine): each worker binds a UNIX datagram socket in VAR_DIR/wakeup; the
  engine sends one byte to every socket there (non-blocking: a full buffer means that
  worker is woken already). A socket left by a killed worker refuses the byte and is
  removed.

Both are best effort: a lost wake-up costs at most one poll interval (a quiet worker's poll
backs off to 1 s, worker.IDLE_POLL_MAX_SECONDS), never a delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import psycopg
from django.conf import settings
from django.db import connection
from psycopg.conninfo import make_conninfo

from superimap.platform import dboutage

log = logging.getLogger("superimap.worker")

CHANNEL = "superimap_deliveries"
SOCKET_SUFFIX = ".sock"
# sun_path holds 108 bytes; a deeper VAR_DIR uses a directory in the temp dir instead.
MAX_SOCKET_PATH = 100
LISTEN_RETRY_SECONDS = (1, 2, 5, 10, 30)
# DATABASE_URL query options passed on to the LISTEN connection (libpq's names).
LIBPQ_OPTIONS = {
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "connect_timeout",
    "application_name",
    "options",
    "target_session_attrs",
    "passfile",
    "service",
}


def _is_postgresql() -> bool:
    return connection.vendor == "postgresql"


def socket_dir() -> Path:
    directory = Path(settings.VAR_DIR) / "wakeup"
    if len(str(directory)) + 40 > MAX_SOCKET_PATH:
        digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
        directory = Path(tempfile.gettempdir()) / f"superimap-wakeup-{digest}"
    return directory


# --- the engine's side ------------------------------------------------------------------


def _notify() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"NOTIFY {CHANNEL}")


class WakeSender:
    """`notify()` after a batch with new deliveries committed; never blocks, never raises."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.postgresql = _is_postgresql()
        self.directory = socket_dir()
        self._socket: socket.socket | None = None
        self._in_flight: asyncio.Task | None = None
        self._again = False
        self.sent = 0

    def notify(self) -> None:
        try:
            if self.postgresql:
                self._notify_postgresql()
            else:
                self._notify_sockets()
        except Exception:
            log.exception("could not wake the webhook workers (they poll instead)")

    def _notify_postgresql(self) -> None:
        if self._in_flight is not None:
            self._again = True  # one more NOTIFY once this one is done covers them all
            return
        self._in_flight = asyncio.get_running_loop().create_task(self._send_notifies())

    async def _send_notifies(self) -> None:
        try:
            while True:
                self._again = False
                await self.pool.run(_notify)
                self.sent += 1
                if not self._again:
                    return
        except Exception as exc:
            if not dboutage.lost(exc):
                log.warning("NOTIFY %s failed (workers poll instead): %s", CHANNEL, exc)
        finally:
            self._in_flight = None

    def _notify_sockets(self) -> None:
        try:
            entries = [e.path for e in os.scandir(self.directory) if e.name.endswith(SOCKET_SUFFIX)]
        except FileNotFoundError:
            return  # no worker has started on this machine
        if not entries:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        for path in entries:
            try:
                self._socket.sendto(b"\x01", path)
                self.sent += 1
            except BlockingIOError:
                pass  # its buffer is full: that worker has wake-ups waiting already
            except ConnectionRefusedError:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # nobody bound: left by a worker that was killed
            except OSError:
                pass  # removed meanwhile (a worker stopping)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


# --- the worker's side ------------------------------------------------------------------


class WakeListener:
    """Calls `wake()` whenever an engine in another process says new deliveries are in."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.postgresql = _is_postgresql()
        self._socket: socket.socket | None = None
        self._path: Path | None = None
        self._task: asyncio.Task | None = None
        self.received = 0

    async def start(self) -> None:
        if self.postgresql:
            self._task = asyncio.create_task(self._listen_postgresql(), name="wakeup-listen")
            return
        try:
            self._bind_socket()
        except OSError as exc:
            # Best effort: without the socket the worker still polls.
            log.warning("worker cannot listen for wake-ups (polling only): %s", exc)
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._socket is not None:
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None
            with contextlib.suppress(OSError):
                os.unlink(self._path)

    # SQLite: a datagram socket of our own in the shared directory.

    def _bind_socket(self) -> None:
        directory = socket_dir()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path = directory / f"worker-{os.getpid()}-{secrets.token_hex(4)}{SOCKET_SUFFIX}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(str(self._path))
        self._socket = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain)
        log.info("worker listens for wake-ups on %s", self._path)

    def _drain(self) -> None:
        woken = False
        while self._socket is not None:
            try:
                self._socket.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            woken = True
        if woken:
            self.received += 1
            self.wake()

    # PostgreSQL: LISTEN on a connection of our own, reconnecting after errors.

    async def _listen_postgresql(self) -> None:
        failures = 0
        listened = False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(_conninfo(), autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    log.log(
                        logging.DEBUG if listened else logging.INFO,
                        "worker listens for wake-ups on PostgreSQL channel %s",
                        CHANNEL,
                    )
                    listened = True
                    dboutage.back()
                    failures = 0
                    # Deliveries committed while we were not listening: look now.
                    self.wake()
                    async for _ in conn.notifies():
                        self.received += 1
                        self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = str(exc)
                outage = dboutage.lost(exc)
            else:
                error = "the connection closed"
                dboutage.note(f"LISTEN {CHANNEL}: {error}")
                outage = True
            delay = LISTEN_RETRY_SECONDS[min(failures, len(LISTEN_RETRY_SECONDS) - 1)]
            failures += 1
            log.log(
                logging.DEBUG if outage else logging.WARNING,
                "LISTEN %s failed (polling meanwhile), again in %ss: %s",
                CHANNEL,
                delay,
                error,
            )
            await asyncio.sleep(delay)


def _conninfo() -> str:
    db = settings.DATABASES["default"]
    params = {
        "dbname": db.get("NAME"),
        "user": db.get("USER"),
        "password": db.get("PASSWORD"),
        "host": db.get("HOST"),
        "port": db.get("PORT"),
    }
    params.update(
        (key, value) for key, value in db.get("OPTIONS", {}).items() if key in LIBPQ_OPTIONS
    )
    return make_conninfo(**{key: value for key, value in params.items() if value not in (None, "")})
