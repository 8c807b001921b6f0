"""Issue #15 item 8: partner names are unique ignoring case, in the API, the dashboard, the CLI
and the database."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from django.db import IntegrityError, transaction
from django.test import Client

from superimap import cli, commands
from superimap.partners.models import Partner
from tests.helpers.api import assert_error
from tests.helpers.processes import ROOT, superimap_env


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
        commands.cmd_createpartner(
            cli.build_parser().parse_args(["createpartner", "--name", "Owner APP"])
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("superimap: --name: A partner with this name")
    assert Partner.objects.count() == 1


def test_the_database_refuses_a_duplicate_name(partner):
    with pytest.raises(IntegrityError), transaction.atomic():
        Partner.objects.create(name="OWNER APP")


CASE_CHECK_SCRIPT = """
from django.core.management import call_command
from superimap.partners.models import Partner

call_command("migrate", verbosity=0)
for name in ["Acme", "Other"]:
    Partner.objects.create(name=name, api_key_hash="h-" + name, api_key="", webhook_secret="")
print(list(Partner.objects.order_by("id").values_list("name", flat=True)))
"""


def test_postgresql_refuses_a_name_that_differs_only_in_case(postgres_url, tmp_path):
    env = superimap_env(postgres_url, tmp_path / "var")
    done = subprocess.run(
        [sys.executable, "-m", "superimap.cli", "manage", "shell", "-c", CASE_CHECK_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last == str(["Acme", "Other"])
    with psycopg.connect(postgres_url, autocommit=True) as db:
        with pytest.raises(psycopg.errors.UniqueViolation):
            db.execute("UPDATE partners_partner SET name = 'OTHER' WHERE name = 'Acme'")
