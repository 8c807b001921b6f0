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


def _socket_guard(original):
    def init(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None:
            raise UnitTestUsedIO("a socket in tests/unit/: move the test out of tests/unit/")
        # Wrapping a descriptor that exists already: socketpair()'s two ends, which is how
        # an asyncio event loop wakes itself up. No network endpoint is made.
        original(self, family, type, proto, fileno)

    return init


def refuse_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """New sockets, connections and name lookups, threads and subprocesses raise
    UnitTestUsedIO until the monkeypatch is undone. An asyncio event loop may run (its
    self-pipe is a socket pair, made without a socket() of its own): a coroutine that
    connects anywhere still fails."""
    monkeypatch.setattr(socket.socket, "__init__", _socket_guard(socket.socket.__init__))
    monkeypatch.setattr(socket, "create_connection", _refuse("a connection"))
    monkeypatch.setattr(socket, "getaddrinfo", _refuse("a name lookup"))
    monkeypatch.setattr(threading.Thread, "start", _refuse("a thread"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("a subprocess"))
