"""The guard of tests/unit/ (its conftest) refuses each kind of I/O."""

from __future__ import annotations

import asyncio
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


def test_an_event_loop_runs_but_cannot_connect():
    async def connect():
        await asyncio.open_connection("127.0.0.1", 9)

    assert asyncio.run(asyncio.sleep(0, "ran")) == "ran"
    with pytest.raises(UnitTestUsedIO):
        asyncio.run(connect())


def test_the_database_stays_blocked():
    with pytest.raises(RuntimeError, match="Database access not allowed"):
        connection.cursor()
