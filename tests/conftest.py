"""Shared fixtures: partners (owner / outsider personas) and API helpers."""

from __future__ import annotations

import importlib
import itertools
import json
import subprocess
import sys

import pytest
from django.db import connection
from django.test import Client

from superimap.partners.models import Connection, ImapProvider, Partner


@pytest.fixture
def partner(db) -> Partner:
    return Partner.objects.create(
        name="Owner app",
        new_mail_webhook="http://127.0.0.1:9/new-mail",
        user_connected_webhook="http://127.0.0.1:9/connected",
        user_disconnected_webhook="http://127.0.0.1:9/disconnected",
        success_url="http://app.example/connected",
        failure_url="http://app.example/failed",
    )


@pytest.fixture
def outsider(db) -> Partner:
    return Partner.objects.create(name="Outsider app")


@pytest.fixture
def plain_connection(partner) -> Connection:
    return Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="PLAIN"),
        imap_host="imap.example.com",
        imap_port=993,
        imap_tls="implicit",
    )


class ApiClient:
    """A Django test client that talks JSON with an API key."""

    def __init__(self, api_key: str | None) -> None:
        self.client = Client()
        self.api_key = api_key

    def _headers(self) -> dict:
        return {"HTTP_X_API_KEY": self.api_key} if self.api_key else {}

    def get(self, path: str, **params):
        return self.client.get(f"/api/v1{path}", params, **self._headers())

    def delete(self, path: str):
        return self.client.delete(f"/api/v1{path}", **self._headers())

    def post(self, path: str, body=None, raw: bytes | str | None = None):
        data = raw if raw is not None else json.dumps(body or {})
        return self.client.post(
            f"/api/v1{path}", data, content_type="application/json", **self._headers()
        )

    def put(self, path: str, body=None, raw: bytes | str | None = None):
        data = raw if raw is not None else json.dumps(body or {})
        return self.client.put(
            f"/api/v1{path}", data, content_type="application/json", **self._headers()
        )


@pytest.fixture
def api(partner) -> ApiClient:
    return ApiClient(partner.api_key)


@pytest.fixture
def outsider_api(outsider) -> ApiClient:
    return ApiClient(outsider.api_key)


@pytest.fixture
def seeded_providers(transactional_db) -> None:
    """transactional_db empties every table after each test; put the providers back."""
    from django.apps import apps

    for migration in ("0002_seed_providers", "0003_loopback_oauth2"):
        importlib.import_module(f"superimap.partners.migrations.{migration}").seed(apps, None)


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL on 127.0.0.1 for multi-process tests (make test installs it)."""
    from devtools.testing.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a fresh, empty database for this test."""
    return postgres_server.create_database(f"test_{next(_databases)}")


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A fresh database for superimap subprocesses: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'superimap.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def dovecot():
    """One private Dovecot on 127.0.0.1 for the whole run (make test installs it)."""
    from devtools.testing.dovecot import DovecotServer

    with DovecotServer() as server:
        yield server


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


@pytest.fixture
def production_mode(settings) -> None:
    """The settings SUPERIMAP_ENV=production changes for partner input: internal webhook,
    IMAP and SMTP targets refused, loopback providers off."""
    settings.PRODUCTION = True
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.IMAP_ALLOW_PRIVATE_HOSTS = False
    settings.ALLOW_LOOPBACK_IMAP = False
