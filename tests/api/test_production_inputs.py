"""Issue #15 items 4 and 8, in production mode: bad input never gets a 5xx (or a traceback
in the log), and a saved URL that is refused now does not block an unrelated change."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from superimap.accounts.partners import validate_partner
from superimap.partners.models import Partner
from tests.helpers.api import assert_error

SUPERIMAP = str(Path(sys.executable).with_name("superimap"))
# Hosts the IDNA encoder refuses (getaddrinfo raised UnicodeError: a 500 and a traceback).
IDNA_REFUSED = ["a" * 64 + ".example.com", "a..b", ".a", "x.a..b.example"]


@pytest.mark.parametrize("host", IDNA_REFUSED)
@pytest.mark.parametrize("field", ["new_mail_webhook", "user_error_webhook", "success_url"])
def test_put_partner_answers_422_for_a_host_the_idna_encoder_refuses(
    api, partner, production_mode, caplog, field, host
):
    with caplog.at_level(logging.ERROR):
        r = api.put("/partner", {field: f"https://{host}/hook"})
    error = assert_error(r, 422)
    assert "label" in str(error)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert getattr(Partner.objects.get(pk=partner.pk), field) != f"https://{host}/hook"


def _production_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "VAR_DIR": str(tmp_path),
        "SUPERIMAP_ENV": "production",
        "ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "SECRET_KEY_BASE": "s" * 40,
        "ALLOWED_HOSTS": "superimap.example",
    }


def test_createpartner_in_production_refuses_an_idna_refused_host_in_one_line(tmp_path):
    env = _production_env(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [SUPERIMAP, *args], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )

    assert run("migrate").returncode == 0
    for host in IDNA_REFUSED:
        result = run("createpartner", "--name", f"App {host[:8]}", "--webhook", f"https://{host}/")
        assert result.returncode == 2, (result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("superimap: --webhook:"), result.stderr
        assert "Traceback" not in result.stderr and "API key" not in result.stdout


@pytest.fixture
def stale_partner(partner, production_mode) -> Partner:
    """Saved while allowed (or before its name moved to an internal address): the fixture's
    webhooks point at 127.0.0.1, refused in production."""
    return partner


def test_a_stale_saved_url_does_not_block_an_unrelated_change(api, stale_partner):
    r = api.put("/partner", {"failure_url": "https://app.example/failed-again"})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["failure_url"] == "https://app.example/failed-again"
    stale = {w.split(":", 1)[0] for w in body["warnings"]}
    assert stale == {"new_mail_webhook", "user_connected_webhook", "user_disconnected_webhook"}
    assert all("private or reserved" in w for w in body["warnings"])
    assert api.get("/partner").json()["warnings"] == body["warnings"]


def test_a_stale_saved_url_is_still_refused_when_given_again(api, stale_partner):
    # (The worker refuses it when it sends: tests/delivery/test_safe_targets.py::
    # test_the_worker_refuses_internal_targets_at_connect_time.)
    r = api.put("/partner", {"new_mail_webhook": "http://127.0.0.1:9/new-mail"})
    assert_error(r, 422, "invalid_field")


def test_the_dashboard_saves_an_unrelated_change_next_to_a_stale_url(stale_partner):
    stale_partner.success_url = "https://app.example/welcome"
    validate_partner(stale_partner)
    stale_partner.new_mail_webhook = "http://10.0.0.1/changed"
    with pytest.raises(Exception) as error:
        validate_partner(stale_partner)
    assert "new_mail_webhook" in error.value.message_dict
