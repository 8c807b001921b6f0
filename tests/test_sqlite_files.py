"""The SQLite database and its WAL hold every email body: they are created owner-only."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from tests.helpers.processes import ROOT

SCRIPT = """
import os, stat
from superimap.platform import prepare
prepare.setup()
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE IF NOT EXISTS t (x)")
    cursor.execute("INSERT INTO t VALUES (1)")
    base = connection.settings_dict["NAME"]
    for path in (base, base + "-wal", base + "-shm"):
        print(path, oct(stat.S_IMODE(os.stat(path).st_mode)))
"""


def run_with_umask(tmp_path, umask: int) -> dict[str, str]:
    env = {
        **os.environ,
        "SUPERIMAP_ENV": "development",
        "VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "superimap.settings",
    }
    r = subprocess.run(
        [sys.executable, "-c", f"import os; os.umask({umask}); exec({SCRIPT!r})"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return dict(line.split() for line in r.stdout.splitlines())


def test_the_database_and_its_wal_are_created_owner_only(tmp_path):
    modes = run_with_umask(tmp_path, 0o022)
    assert len(modes) == 3
    assert set(modes.values()) == {"0o600"}


def test_an_existing_world_readable_database_is_tightened(tmp_path):
    db = tmp_path / "db.sqlite3"
    db.touch(mode=0o644)
    os.chmod(db, 0o644)
    modes = run_with_umask(tmp_path, 0o022)
    assert set(modes.values()) == {"0o600"}
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
