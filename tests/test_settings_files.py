"""Importing the settings makes no file (issue 19: settings without file side effects); the
entry points (the `superimap` command, the ASGI application run by uvicorn) make them at
start, with their modes: VAR_DIR, the SQLite file 0600, STATIC_ROOT, the development
secrets 0600. Real subprocesses, each with a fresh VAR_DIR and a fresh SQLite URL."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.helpers.processes import ROOT

SUPERIMAP = str(Path(sys.executable).with_name("superimap"))
READ_SETTINGS = (
    "import superimap.settings\n"
    "from django.conf import settings\n"
    "print(settings.DATABASES['default']['NAME'], settings.STATIC_ROOT)\n"
)


def fresh_env(var: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SUPERIMAP_", "DATABASE_", "DJANGO_", "ENCRYPTION_", "SECRET_"))
    }
    env.update(
        SUPERIMAP_ENV="development",
        VAR_DIR=str(var),
        DATABASE_URL=f"sqlite:///{var / 'db.sqlite3'}",
        DJANGO_SETTINGS_MODULE="superimap.settings",
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_importing_the_settings_creates_no_file_or_folder(tmp_path):
    var = tmp_path / "var"
    keys = {"ENCRYPTION_KEY": Fernet.generate_key().decode(), "SECRET_KEY_BASE": "k" * 40}
    done = run([sys.executable, "-c", READ_SETTINGS], fresh_env(var, **keys))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(var / "db.sqlite3"), str(var / "static")]
    assert not var.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_file_in_an_existing_folder_is_not_created_by_the_settings(tmp_path):
    keys = {"ENCRYPTION_KEY": Fernet.generate_key().decode(), "SECRET_KEY_BASE": "k" * 40}
    env = fresh_env(tmp_path / "var", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", **keys)
    done = run([sys.executable, "-c", READ_SETTINGS], env)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_without_development_secrets_the_settings_name_the_fix_and_create_nothing(tmp_path):
    var = tmp_path / "var"
    done = run([sys.executable, "-c", READ_SETTINGS], fresh_env(var))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "ConfigError: ENCRYPTION_KEY" in last
    assert str(var / "secrets.json") in last and "superimap check" in last
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "entry",
    [
        [SUPERIMAP, "check", "--skip-port"],
        # uvicorn runs `superimap.asgi:application`: importing it is the web entry point.
        [sys.executable, "-c", "import superimap.asgi"],
    ],
    ids=["superimap-check", "asgi"],
)
def test_the_entry_point_creates_the_files_with_their_modes(tmp_path, entry):
    var = tmp_path / "var"
    env = fresh_env(var)
    done = run(["sh", "-c", 'umask 022 && exec "$@"', "sh", *entry], env)
    assert done.returncode == 0, done.stderr
    assert var.is_dir() and (var / "static").is_dir()
    assert mode(var / "db.sqlite3") == 0o600
    secrets = json.loads((var / "secrets.json").read_text())
    Fernet(secrets["ENCRYPTION_KEY"])
    assert mode(var / "secrets.json") == 0o600
    # The settings now find everything they read; a second start keeps the same keys.
    again = run([sys.executable, "-c", READ_SETTINGS], env)
    assert again.returncode == 0, again.stderr
    assert json.loads((var / "secrets.json").read_text()) == secrets


def test_production_makes_the_database_and_no_secrets_file(tmp_path):
    var = tmp_path / "var"
    env = fresh_env(
        var,
        SUPERIMAP_ENV="production",
        ENCRYPTION_KEY=Fernet.generate_key().decode(),
        SECRET_KEY_BASE="p" * 40,
        ALLOWED_HOSTS="mail.example.com",
    )
    assert run([sys.executable, "-c", READ_SETTINGS], env).returncode == 0
    assert not var.exists()
    done = run([SUPERIMAP, "check", "--skip-port"], env)
    assert done.returncode == 0, done.stderr
    assert mode(var / "db.sqlite3") == 0o600
    assert not (var / "secrets.json").exists()
