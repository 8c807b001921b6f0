"""Shared fixtures: partners (owner / outsider personas) and API helpers."""

from __future__ import annotations

import importlib
import itertools
import time

import pytest
from django.utils import timezone

from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner
from tests.helpers.api import ApiClient
from tests.helpers.engine import loopback_connection
from tests.helpers.processes import migrated_sqlite, run_cli, superimap_env


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

    importlib.import_module("superimap.partners.migrations.0001_initial").seed(apps, None)


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


@pytest.fixture
def migrated_sqlite_url(tmp_path) -> str:
    """A SQLite file for this test as `superimap migrate` leaves it (a copy of a template)."""
    return migrated_sqlite(tmp_path / "superimap.sqlite3")


@pytest.fixture(scope="session")
def migrated_postgres(postgres_server, tmp_path_factory) -> str:
    """A PostgreSQL database `superimap migrate` made, once per run: the template of each
    test's copy."""
    url = postgres_server.create_database("migrated_template")
    run_cli(superimap_env(url, tmp_path_factory.mktemp("migrated-postgres")), "migrate")
    return "migrated_template"


@pytest.fixture
def migrated_postgres_url(postgres_server, migrated_postgres) -> str:
    """A fresh database for this test, as `superimap migrate` leaves it (a template copy:
    the same tables and seeded providers, without each test paying for the migrations)."""
    name = f"test_{next(_databases)}"
    return postgres_server.create_database(name, template=migrated_postgres)


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_database_url(request, tmp_path) -> str:
    """database_url as `superimap migrate` leaves it: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("migrated_sqlite_url")
    return request.getfixturevalue("migrated_postgres_url")


@pytest.fixture(scope="session")
def dovecot():
    """One private Dovecot on 127.0.0.1 for the whole run (make test installs it)."""
    from devtools.testing.dovecot import DovecotServer

    with DovecotServer() as server:
        yield server


@pytest.fixture
def production_mode(settings) -> None:
    """The settings SUPERIMAP_ENV=production changes for partner input: internal webhook,
    IMAP and SMTP targets refused, loopback providers off."""
    settings.PRODUCTION = True
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.IMAP_ALLOW_PRIVATE_HOSTS = False
    settings.ALLOW_LOOPBACK_IMAP = False


_names = itertools.count()


@pytest.fixture
def mail_partner(seeded_providers) -> Partner:
    return Partner.objects.create(name="Mail app", new_mail_webhook="http://127.0.0.1:9/hook")


@pytest.fixture
def mailbox(mail_partner, dovecot):
    """A fresh Dovecot user and a connected MailboxUser watching it over plain IMAP."""

    def make(tls: str = "none", password: str | None = None) -> MailboxUser:
        name = f"user{next(_names)}-{int(time.time() * 1000) % 100000}"
        dovecot.add_user(name, "secret-pw")
        port = dovecot.imaps_port if tls == "implicit" else dovecot.imap_port
        connection = Connection.objects.filter(partner=mail_partner).first()
        if connection is None:
            connection = loopback_connection(mail_partner, port, tls)
        return MailboxUser.objects.create(
            connection=connection,
            tag=name,
            email=f"{name}@example.test",
            login_username=name,
            password=password or "secret-pw",
            connected_at=timezone.now(),
        )

    return make
