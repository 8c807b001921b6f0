"""A private, throw-away PostgreSQL cluster on 127.0.0.1 for integration tests.

    with PostgresServer() as pg:
        psycopg.connect(pg.url)

The cluster lives in a temp dir, runs with fsync off and trust auth, and is removed on stop.
When running as root, the server runs as the ``postgres`` system user (it refuses root).
The ``postgres`` process is our child, so it is reaped even where PID 1 reaps nothing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from devtools.testing import free_port

START_TIMEOUT = 15
SERVER_USER_WHEN_ROOT = "postgres"
_INITDB_OPTIONS = ("-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")


class PostgresError(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory holding initdb/pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent  # e.g. /usr/local/bin/initdb is a symlink
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if candidates:
        newest = max(candidates, key=lambda path: int(Path(path).parts[-3]))
        return Path(newest).parent
    raise PostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL "
        "(Debian: apt-get install postgresql) to run the PostgreSQL integration tests"
    )


class PostgresServer:
    host = "127.0.0.1"
    user = "postgres"

    def __init__(self, database: str = "superimap", **settings: str) -> None:
        """``settings``: more server settings (-c NAME=VALUE), e.g. shared_preload_libraries."""
        self.database = database
        self.settings = settings
        self.bindir = find_bindir()
        self.root: Path | None = None
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._account: pwd.struct_passwd | None = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @property
    def pid(self) -> int | None:
        """The postmaster's process id (its children are the backends), None when stopped."""
        return self._process.pid if self._process is not None else None

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database on this server (one per test keeps tests apart), empty or a copy
        of `template` (which nobody may be connected to); its URL."""
        connection = ("-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user)
        copy = ("--template", template) if template else ()
        self._run("createdb", *connection, *copy, name)
        return self.url_for(name)

    @property
    def data_dir(self) -> Path:
        return self._root / "data"

    @property
    def socket_dir(self) -> Path:
        return self._root / "run"

    @property
    def log_path(self) -> Path:
        return self._root / "postgres.log"

    @property
    def _root(self) -> Path:
        if self.root is None:
            raise PostgresError("PostgresServer is not started")
        return self.root

    def start(self) -> None:
        if self.root is not None:
            raise PostgresError("PostgresServer already started")
        self.root = Path(tempfile.mkdtemp(prefix="superimap-postgres-"))
        try:
            self.socket_dir.mkdir()
            if os.geteuid() == 0:
                account = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
                self._account = account
                for path in (self.root, self.socket_dir):
                    os.chown(path, account.pw_uid, account.pw_gid)
            self._run("initdb", "-D", str(self.data_dir), "-U", self.user, *_INITDB_OPTIONS)
            self.port = free_port()
            self._start_postgres()
            connection = ("-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user)
            self._run("createdb", *connection, self.database)
        except BaseException:
            self.stop()
            raise

    def _start_postgres(self) -> None:
        # Started as our own child (not daemonized by pg_ctl) so that it is always reaped.
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data_dir), *self._server_options()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                **self._privileges(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._accepts_connections():
            if self._process.poll() is not None:
                raise PostgresError(f"postgres exited ({self._process.returncode}):\n{self._log()}")
            if time.monotonic() > deadline:
                raise PostgresError(f"postgres not ready in {START_TIMEOUT}s:\n{self._log()}")
            time.sleep(0.05)

    def _server_options(self) -> list[str]:
        settings = {
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "listen_addresses": self.host,
            # Throw-away data: durability only costs time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            **self.settings,
        }
        return [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]

    def _accepts_connections(self) -> bool:
        ready = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=START_TIMEOUT,
        )
        return ready.returncode == 0

    def stop(self) -> None:
        """Shut down at once (no checkpoint: the data is thrown away) and remove the dir."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGQUIT)  # what ``pg_ctl stop -m immediate`` sends
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def restart(self, down_seconds: float = 0.0, while_down=None) -> None:
        """Stop the server as ``pg_ctl restart`` does (fast shutdown: every client session
        is ended), stay down ``down_seconds`` (calling ``while_down()`` first, if given),
        and start it again on the same port."""
        process = self._process
        if process is None:
            raise PostgresError("PostgresServer is not started")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        started = time.monotonic()
        if while_down is not None:
            while_down()
        time.sleep(max(0.0, down_seconds - (time.monotonic() - started)))
        self._start_postgres()

    def _privileges(self) -> dict[str, Any]:
        """Popen arguments that run a program as the server user (PostgreSQL refuses root)."""
        if self._account is None:
            return {"cwd": self.root}
        return {
            "cwd": self.root,
            "user": self._account.pw_uid,
            "group": self._account.pw_gid,
            "extra_groups": [],
            "env": {**os.environ, "HOME": self._account.pw_dir, "USER": self._account.pw_name},
        }

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / program), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=START_TIMEOUT + 15,
            **self._privileges(),
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise PostgresError(f"{program} failed ({result.returncode}):\n{output}{self._log()}")
