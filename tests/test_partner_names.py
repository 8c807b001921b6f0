"""Issue #15 item 8: partner names are unique ignoring case, in the API, the dashboard, the CLI
and the database (migration 0012 renames existing duplicates first)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import psycopg
import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from superimap import cli
from superimap.partners.models import Partner
from tests.helpers.api import assert_error
from tests.helpers.processes import ROOT, superimap_env

MIGRATION = "0012_partner_names_and_host_names"


def test_the_api_refuses_another_partners_name_in_any_case(outsider_api, partner, outsider):
    error = assert_error(outsider_api.put("/partner", {"name": "OWNER app"}), 409, "name_taken")
    assert "exists already" in error["message"]
    assert Partner.objects.get(pk=outsider.pk).name == "Outsider app"


def test_the_api_lets_a_partner_change_the_case_of_its_own_name(api, partner):
    r = api.put("/partner", {"name": "OWNER APP"})
    assert r.status_code == 200, r.content
    assert r.json()["name"] == "OWNER APP"


def test_the_api_refuses_a_blank_name(api, partner):
    assert_error(api.put("/partner", {"name": "   "}), 422, "invalid_field")


def test_the_dashboard_refuses_a_duplicate_name(partner, django_user_model):
    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-boss-1")
    admin = Client()
    admin.force_login(boss, backend="django.contrib.auth.backends.ModelBackend")
    r = admin.post("/admin/partners/partner/add/", {"name": "owner APP"})
    assert r.status_code == 200  # the form again
    assert "exists already" in r.content.decode()
    assert Partner.objects.count() == 1


def test_the_cli_refuses_a_duplicate_name_in_one_line(partner, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.cmd_createpartner(
            cli.build_parser().parse_args(["createpartner", "--name", "Owner APP"])
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("superimap: --name: A partner with this name")
    assert Partner.objects.count() == 1


def test_the_database_refuses_a_duplicate_name(partner):
    with pytest.raises(IntegrityError), transaction.atomic():
        Partner.objects.create(name="OWNER APP")


def test_the_migration_renames_existing_duplicates_and_keeps_every_partner(seeded_providers):
    executor = MigrationExecutor(connection)
    executor.migrate([("partners", "0011_connection_folders")])
    old = executor.loader.project_state([("partners", "0011_connection_folders")]).apps
    Old = old.get_model("partners", "Partner")
    names = ["Acme", "ACME", "acme", "Acme (2)", "Other", "x" * 200, "X" * 200]
    for name in names:
        Old.objects.create(name=name, api_key_hash=f"h-{name}", api_key="", webhook_secret="")
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    got = list(Partner.objects.order_by("id").values_list("name", flat=True))
    assert len(got) == len(names)
    assert len({n.lower() for n in got}) == len(got)
    assert got[:5] == ["Acme", "ACME (3)", "acme (4)", "Acme (2)", "Other"]
    assert got[5] == "x" * 200 and got[6] == "X" * 196 + " (2)"


def test_the_migrations_renaming_step_leaves_distinct_names_alone(db):
    module = importlib.import_module(f"superimap.partners.migrations.{MIGRATION}")
    Partner.objects.create(name="One")
    Partner.objects.create(name="Two")
    from django.apps import apps

    module.rename_duplicate_names(apps, None)
    assert sorted(Partner.objects.values_list("name", flat=True)) == ["One", "Two"]


MIGRATE_WITH_DUPLICATES = """
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

executor = MigrationExecutor(connection)
executor.migrate([("partners", "0011_connection_folders")])
Old = executor.loader.project_state([("partners", "0011_connection_folders")]).apps.get_model(
    "partners", "Partner"
)
for name in ["Acme", "ACME", "acme", "Acme (2)", "Other"]:
    Old.objects.create(name=name, api_key_hash="h-" + name, api_key="", webhook_secret="")
executor.loader.build_graph()
executor.migrate(executor.loader.graph.leaf_nodes())
from superimap.partners.models import Partner
print(list(Partner.objects.order_by("id").values_list("name", flat=True)))
"""


def test_the_migration_renames_duplicates_on_postgresql_too(postgres_url, tmp_path):
    env = superimap_env(postgres_url, tmp_path / "var")
    done = subprocess.run(
        [sys.executable, "-m", "superimap.cli", "manage", "shell", "-c", MIGRATE_WITH_DUPLICATES],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last == str(["Acme", "ACME (3)", "acme (4)", "Acme (2)", "Other"])
    with psycopg.connect(postgres_url, autocommit=True) as db:
        with pytest.raises(psycopg.errors.UniqueViolation):
            db.execute("UPDATE partners_partner SET name = 'OTHER' WHERE name = 'Acme'")
