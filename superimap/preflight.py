"""Start-up checks, before anything is served: the database answers and the web port is
free. Each problem stops the process with one line naming the variable or the cause
(cli.main prints it, exit status 2), within seconds, instead of a traceback after the
"listening" line.

The web port is bound here and the socket handed to uvicorn, so nothing is announced
before the port is ours. A running web process keeps a lock file per port in VAR_DIR
(`web-port-8000.pid`, its pid inside, locked for its whole life), so a second start on a
taken port names the SuperIMAP process that holds it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import sqlite3
from pathlib import Path

import psycopg
from django.conf import settings

from superimap.platform.config import ConfigError, StartupError

DATABASE_TIMEOUT_SECONDS = 5

# The pid file of this process's web port: open (and locked) while the process lives.
_held: list[int] = []


def check_database(timeout: int = DATABASE_TIMEOUT_SECONDS) -> str:
    """Connect once; a ConfigError naming DATABASE_URL if that fails. Returns a label."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        name = db["NAME"]
        try:
            connection = sqlite3.connect(name, timeout=timeout)
            try:
                connection.execute("SELECT 1").fetchone()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            raise ConfigError(
                "DATABASE_URL", f"cannot open the SQLite file {name}: {exc}"
            ) from None
        return f"SQLite {name}"
    host = db.get("HOST") or "the local socket"
    where = f"{host}:{db.get('PORT') or 5432}" if db.get("HOST") else host
    try:
        connection = psycopg.connect(
            dbname=db["NAME"],
            user=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            host=db.get("HOST") or None,
            port=db.get("PORT") or None,
            connect_timeout=timeout,
            application_name="superimap-check",
        )
    except psycopg.Error as exc:
        raise ConfigError(
            "DATABASE_URL",
            f"cannot connect to PostgreSQL at {where} (database {db['NAME']!r}): "
            f"{_one_line(exc)}; is the server running, and is DATABASE_URL right?",
        ) from None
    connection.close()
    return f"PostgreSQL {where}/{db['NAME']}"


def _one_line(exc: Exception, limit: int = 300) -> str:
    """psycopg's message on one line, without its repeated "connection failed" prefix."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for prefix in ("connection failed: ", "connection is bad: "):
        text = text.removeprefix(prefix)
    # 'connection to server at "127.0.0.1", port 9 failed: Connection refused': we name the
    # server already.
    text = re.sub(r"^connection to server (at|on) .*? failed: ", "", text)
    return text[:limit] or type(exc).__name__


def bind_web(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a StartupError naming PORT or HOST, or the
    SuperIMAP process that already runs there."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError("HOST", f"cannot listen on {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            pid = running_pid(port)
            if pid is not None:
                raise StartupError(
                    f"SuperIMAP is already running (pid {pid}) on port {port}; "
                    f"stop it first (kill {pid}) or choose another PORT"
                ) from None
            raise ConfigError(
                "PORT",
                f"{host}:{port} is in use; stop what listens there or choose another "
                "port (PORT=8002, or --port 8002)",
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ConfigError(
                "PORT", f"no permission to listen on port {port}; use a port above 1023"
            ) from None
        raise ConfigError("HOST", f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def port_free(host: str, port: int) -> None:
    """`superimap check`: bind and let go at once."""
    bind_web(host, port).close()


def _pid_file(port: int) -> Path:
    return Path(settings.VAR_DIR) / f"web-port-{port}.pid"


def hold_pid_file(port: int) -> None:
    """Record this process as the web server of `port` until it exits (the kernel drops the
    lock with the process, kill -9 included)."""
    path = _pid_file(port)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)  # another process on this port in a different network namespace
        return
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held.append(fd)


def running_pid(port: int) -> int | None:
    """The pid of the live SuperIMAP web process on `port` (same VAR_DIR), if any."""
    try:
        fd = os.open(_pid_file(port), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.read(fd, 32).decode(errors="replace").strip()
            return int(raw) if raw.isdigit() else None
        return None  # nobody holds it: a leftover of a process that is gone
    finally:
        os.close(fd)
