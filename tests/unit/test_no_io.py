"""The guard of tests/unit/ (its conftest) refuses each kind of I/O."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
import threading

import pytest
from django.db import connection

from tests.helpers.noio import UnitTestUsedIO


@pytest.mark.parametrize(
    "attempt",
    [
        pytest.param(lambda: socket.socket(), id="socket"),
        pytest.param(lambda: socket.create_connection(("127.0.0.1", 9)), id="connect"),
        pytest.param(lambda: socket.getaddrinfo("localhost", 80), id="lookup"),
        pytest.param(lambda: threading.Thread(target=print).start(), id="thread"),
        pytest.param(lambda: subprocess.run([sys.executable, "-c", ""]), id="subprocess"),
    ],
)
def test_it_refuses(attempt):
    with pytest.raises(UnitTestUsedIO):
        attempt()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_it_refuses_an_event_loop():
    with pytest.raises(UnitTestUsedIO):
        asyncio.new_event_loop()  # its self-pipe is a socket pair
    gc.collect()  # the half-built loop's __del__ complains here, not in a later test


def test_the_database_stays_blocked():
    with pytest.raises(RuntimeError, match="Database access not allowed"):
        connection.cursor()
