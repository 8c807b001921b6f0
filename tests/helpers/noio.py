"""The guard of tests/unit/: sockets, threads and subprocesses raise UnitTestUsedIO."""

from __future__ import annotations

import socket
import subprocess
import threading

import pytest


class UnitTestUsedIO(AssertionError):
    """A unit test opened a socket, started a thread or a process, or asked for the DB."""


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise UnitTestUsedIO(f"{what} in tests/unit/: move the test out of tests/unit/")

    return refuse


def refuse_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets (asyncio's event loops too: they open a socket pair), name lookups, threads
    and subprocesses raise UnitTestUsedIO until the monkeypatch is undone."""
    monkeypatch.setattr(socket.socket, "__init__", _refuse("a socket"))
    monkeypatch.setattr(socket, "create_connection", _refuse("a connection"))
    monkeypatch.setattr(socket, "getaddrinfo", _refuse("a name lookup"))
    monkeypatch.setattr(threading.Thread, "start", _refuse("a thread"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("a subprocess"))
