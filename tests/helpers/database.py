"""What is on disk of the test database, read without touching its locks."""

from __future__ import annotations

import subprocess
import sys

from django.db import connection

# Prints the bytes of every file named that exists.
_CAT = """
import sys
for name in sys.argv[1:]:
    try:
        with open(name, "rb") as file:
            sys.stdout.buffer.write(file.read())
    except FileNotFoundError:
        pass
"""


def database_file_bytes() -> bytes:
    """The test SQLite database file and its WAL as they are on disk, read by a child process.

    Never read here: closing any file descriptor of the database file drops every POSIX lock
    this process holds on it, those of SQLite connections still open in other threads
    included (sqlite.org/howtocorrupt.html, 2.2). A worker or engine subprocess closing its
    connection then believes it is the last one and deletes the WAL and shared-memory files
    under them, and later tests fail with "disk I/O error".
    """
    name = connection.settings_dict["NAME"]
    files = [name, f"{name}-wal"]
    return subprocess.run(
        [sys.executable, "-c", _CAT, *files], capture_output=True, check=True
    ).stdout
