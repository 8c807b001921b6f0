"""The files a process needs, made at its start: the one place that writes them.

Importing the settings only reads (the environment, and outside production
VAR_DIR/secrets.json if it exists). Every entry point (the `superimap` command, the ASGI
application run by uvicorn, the test run, the development tools) calls `setup()` instead of
`django.setup()`, before anything touches the database or the secrets:

1. `prepare_secrets()`: outside production, VAR_DIR/secrets.json (0600) with generated
   ENCRYPTION_KEY and SECRET_KEY_BASE, once; before the settings are read, so they find it.
2. the settings are read (a ConfigError names a bad variable);
3. `prepare_files(settings)`: VAR_DIR, the SQLite database file 0600 (its -wal, -shm and
   -journal tightened too), STATIC_ROOT.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import django
from django.conf import settings as django_settings

from superimap.platform.config import ConfigError, superimap_env, var_dir, write_dev_secrets


def prepare_secrets() -> None:
    """Development and test: the generated keys in VAR_DIR/secrets.json, once. Production
    takes its keys from the environment only (no file)."""
    environment = superimap_env()
    if environment != "production":
        write_dev_secrets(var_dir(environment))


def private_sqlite_files(name: str) -> None:
    """The database holds every email body: owner-only (0600). SQLite creates the -wal and
    -shm files with the database file's mode, so creating that one 0600 is enough; files
    made before this rule are tightened too."""
    try:
        # Created only when missing, never opened when there: closing any descriptor of the
        # file drops the SQLite locks this process holds on it (POSIX fcntl locks), and
        # the ASGI application may be prepared in a process whose database is open.
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        for path in (name, f"{name}-wal", f"{name}-shm", f"{name}-journal"):
            if os.path.exists(path) and os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
    except OSError as exc:
        raise ConfigError("DATABASE_URL", f"cannot create {name}: {exc.strerror}") from None


def prepare_files(settings: Any) -> None:
    """VAR_DIR, the SQLite file (0600) and STATIC_ROOT, from read settings. The settings
    already refused a SQLite file in a missing folder other than VAR_DIR."""
    Path(settings.VAR_DIR).mkdir(parents=True, exist_ok=True)
    database = settings.DATABASES["default"]
    name = database.get("NAME") or ""
    if database["ENGINE"].endswith("sqlite3") and name and name != ":memory:":
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        private_sqlite_files(name)
    Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)


# Set once this process has prepared its files (`superimap up` prepares, then imports
# superimap.asgi, which prepares too).
_prepared: list[bool] = []


def prepare() -> None:
    """The secrets file, the settings, the files: what an entry point does before
    `django.setup()` (or `get_asgi_application()`, which runs it). Raises StartupError
    (ConfigError) with one line naming the cause."""
    if _prepared:
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "superimap.settings")
    prepare_secrets()
    prepare_files(django_settings)
    _prepared.append(True)


def setup() -> None:
    """`django.setup()` for an entry point: `prepare()`, then the apps."""
    prepare()
    django.setup()
