"""Expected database outages in one line each (design.md 9).

A PostgreSQL restart or a lost connection is not a bug: every database call of the engine,
the worker and their sessions fails for a while with the same error. Each process logs
it once, as one WARNING when the first call fails, and one INFO line when a connection is
made again (Django's connection_created: a call that made no query proves nothing); the
callers that would log a traceback ask ``lost()`` first and stay quiet for these.
Anything else (a bug, a constraint violation, SQLite's "database is locked") still gets its
traceback where it happens.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from django.db.backends.signals import connection_created

log = logging.getLogger("superimap.database")

# PostgreSQL error classes that mean "the server went away or is not there yet".
_CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03")

_lock = threading.Lock()
_down_since: float | None = None


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: Django wraps psycopg's errors) says the database
    connection is lost or cannot be made, rather than that a statement failed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, psycopg.InterfaceError):
            return True
        if isinstance(current, psycopg.OperationalError):
            state = current.sqlstate
            return state is None or state.startswith(_CONNECTION_SQLSTATES)
        current = current.__cause__ or current.__context__
    return False


def lost(exc: BaseException) -> bool:
    """If ``exc`` is a lost database connection: note the outage (one WARNING per outage
    and process) and return True, so the caller logs nothing more. Otherwise False."""
    if not is_connection_error(exc):
        return False
    note(_first_line(exc))
    return True


def note(reason: str) -> None:
    """A database connection was lost (``reason``): one WARNING per outage and process."""
    global _down_since
    with _lock:
        if _down_since is not None:
            return
        _down_since = time.monotonic()
    log.warning("database unavailable, retrying until it is back: %s", reason)


def back() -> None:
    """A database connection was made: one INFO line if an outage was noted."""
    global _down_since
    if _down_since is None:
        return
    with _lock:
        since, _down_since = _down_since, None
    if since is not None:
        log.info("database available again after %.1f s", time.monotonic() - since)


def _connected(sender, connection, **kwargs) -> None:
    back()


connection_created.connect(_connected, dispatch_uid="superimap.platform.dboutage")


def is_down() -> bool:
    return _down_since is not None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
