"""Running superimap commands as real subprocesses in tests."""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# `superimap manage shell -c` script: a partner (webhook HOOK_URL, if set), one loopback
# connection to the chaos server on CHAOS_PORT and USERS connected users user{i}/pass{i}.
CHAOS_USERS_SCRIPT = """
import os
from django.utils import timezone
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner

partner = Partner.objects.create(
    name="chaos", new_mail_webhook=os.environ.get("HOOK_URL", "http://127.0.0.1:9/hook"))
connection = Connection.objects.create(
    partner=partner, provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
    imap_host="127.0.0.1", imap_port=int(os.environ["CHAOS_PORT"]), imap_tls="none")
MailboxUser.objects.bulk_create(
    MailboxUser(connection=connection, tag=f"user{i}", login_username=f"user{i}",
                password=f"pass{i}", connected_at=timezone.now())
    for i in range(int(os.environ["USERS"])))
"""


BASELINED = "SELECT count(*) FROM mailboxes_mailboxuser WHERE last_uid IS NOT NULL"


def query(database_url: str, sql: str) -> list[tuple]:
    """Rows of ``sql`` read straight from a SQLite file or a PostgreSQL database."""
    if database_url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30) as db:
            return db.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as db:
        return db.execute(sql).fetchall()


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """``python -m superimap.cli ARGS`` to the end; its stdout (the test fails on an error)."""
    done = subprocess.run(
        [sys.executable, "-m", "superimap.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@functools.cache
def _migrated_sqlite_template() -> Path:
    """A SQLite file `superimap migrate` made, once per test process."""
    folder = Path(tempfile.mkdtemp(prefix="superimap-migrated-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    database = folder / "superimap.sqlite3"
    run_cli(superimap_env(f"sqlite:///{database}", folder / "var"), "migrate")
    return database


def migrated_sqlite(path: Path) -> str:
    """The URL of a SQLite file at `path` as `superimap migrate` leaves it: a copy of one
    migrated template, so that each test does not pay for the migrations."""
    shutil.copy(_migrated_sqlite_template(), path)  # its mode too
    return f"sqlite:///{path}"


def superimap_env(database_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOK_", "DATABASE_"))}
    env.update(
        SUPERIMAP_ENV="test",
        DATABASE_URL=database_url,
        VAR_DIR=str(var_dir),
        LOG_LEVEL="INFO",
        DJANGO_SETTINGS_MODULE="superimap.settings",
        # One engine process per command, as before issue 20 (its tests ask for more).
        ENGINE_PROCESSES="1",
    )
    env.update(extra)
    return env


class Processes:
    """Started subprocesses; every one is killed (by its own pid) when the block ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, env: dict[str, str], *args: str) -> subprocess.Popen:
        log = self.log_dir / f"proc-{len(self.started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "superimap.cli", *args],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.append((proc, log))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 15) -> str:
        """SIGTERM (a clean shutdown), wait, and return the process's output."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        return self.output(proc)

    def output(self, proc: subprocess.Popen) -> str:
        log = next(path for p, path in self.started if p is proc)
        return log.read_text(errors="replace")

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        for proc, _ in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def answers(port: int, path: str = "/healthz") -> bool:
    """True once something on ``port`` answers an HTTP GET of ``path`` (any status)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def web_server(tmp_path: Path, **extra: str) -> Iterator[dict]:
    """A migrated SQLite database with a dashboard admin (`boss`) and a partner ("Web app"),
    and a real `superimap web` process on a free port serving it until the block ends.

    Yields port, base_url, password (boss's), api_key, env, procs and output() (the
    process's log so far)."""
    from devtools.testing import free_port

    env = superimap_env(migrated_sqlite(tmp_path / "db.sqlite3"), tmp_path, **extra)
    password = re.search(r"password: (\S+)", run_cli(env, "createadmin", "--username", "boss"))
    api_key = re.search(r"API key: (\S+)", run_cli(env, "createpartner", "--name", "Web app"))
    port = free_port()
    with Processes(tmp_path) as procs:
        proc = procs.start(env, "web", "--port", str(port))
        wait_until(lambda: answers(port) or proc.poll() is not None, 30, "the web process")
        assert proc.poll() is None, procs.output(proc)
        yield {
            "port": port,
            "base_url": f"http://127.0.0.1:{port}",
            "password": password.group(1),
            "api_key": api_key.group(1),
            "env": env,
            "procs": procs,
            "output": lambda: procs.output(proc),
        }
