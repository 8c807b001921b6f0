"""The `superimap` command: first-start admin, configuration errors, dev secrets, genkey."""

import argparse
import io
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model

from superimap.commands import ensure_default_admin
from tests.helpers.cli import run


@pytest.fixture(autouse=True)
def fast_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_it_creates_the_first_admin_once(db):
    out = io.StringIO()
    password = ensure_default_admin(out=out)
    admin = get_user_model().objects.get()
    assert admin.is_superuser and admin.username == "admin"
    assert admin.check_password(password)
    assert out.getvalue().count(password) == 1
    again = io.StringIO()
    assert ensure_default_admin(out=again) is None
    assert again.getvalue() == ""
    assert get_user_model().objects.count() == 1


def test_it_makes_a_different_password_each_time(db):
    first = ensure_default_admin(out=io.StringIO())
    get_user_model().objects.all().delete()
    assert ensure_default_admin(out=io.StringIO()) != first


def test_it_leaves_an_existing_superuser_alone(db):
    get_user_model().objects.create_superuser("owner", "o@example.com", "pw")
    assert ensure_default_admin(out=io.StringIO()) is None
    assert not get_user_model().objects.filter(username="admin").exists()


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"SUPERIMAP_ENV": "production"}, "ENCRYPTION_KEY"),
        ({"ENCRYPTION_KEY": "not-a-fernet-key"}, "ENCRYPTION_KEY"),
        ({"MAX_USER_THREADS": "abc"}, "MAX_USER_THREADS"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "::::"}, "DATABASE_URL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"SUPERIMAP_ENV": "staging"}, "SUPERIMAP_ENV"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"ENGINE_NODE_NAME": "two words"}, "ENGINE_NODE_NAME"),
        ({"ENGINE_NODE_NAME": "x" * 101}, "ENGINE_NODE_NAME"),
        ({"WEBHOOK_RETRY_SCHEDULE": "10,1m,6m"}, "WEBHOOK_RETRY_SCHEDULE"),
        ({"WEBHOOK_RETRY_SCHEDULE": "10,0"}, "WEBHOOK_RETRY_SCHEDULE"),
        ({"WEBHOOK_RETRY_SCHEDULE": ",".join(["10"] * 51)}, "WEBHOOK_RETRY_SCHEDULE"),
        ({"WEBHOOK_FAILING_AFTER": "0"}, "WEBHOOK_FAILING_AFTER"),
        ({"WEBHOOK_AUTO_REPLAY_HOURS": "-1"}, "WEBHOOK_AUTO_REPLAY_HOURS"),
        (
            {"WEBHOOK_RETENTION_DAYS": "30", "WEBHOOK_FAILED_RETENTION_DAYS": "7"},
            "WEBHOOK_FAILED_RETENTION_DAYS",
        ),
        ({"WEBHOOK_ALLOW_PRIVATE": "sometimes"}, "WEBHOOK_ALLOW_PRIVATE"),
    ],
)
def test_it_stops_with_one_line_naming_the_bad_variable(tmp_path, env, variable):
    result = run(["check"], tmp_path, **env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_it_checks_a_good_configuration(tmp_path):
    result = run(["check"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_it_generates_dev_secrets_once_and_reuses_them(tmp_path):
    assert run(["check"], tmp_path).returncode == 0
    path = tmp_path / "secrets.json"
    first = json.loads(path.read_text())
    Fernet(first["ENCRYPTION_KEY"])
    assert len(first["SECRET_KEY_BASE"]) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert run(["check"], tmp_path).returncode == 0
    assert json.loads(path.read_text()) == first


def test_it_uses_no_dev_secrets_in_production(tmp_path):
    run(["check"], tmp_path, SUPERIMAP_ENV="production")
    assert not (tmp_path / "secrets.json").exists()


def test_it_prints_a_valid_fernet_key(tmp_path):
    result = run(["genkey"], tmp_path)
    assert result.returncode == 0
    key = result.stdout.strip()
    Fernet(key)
    assert run(["genkey"], tmp_path).stdout.strip() != key


def test_it_prints_a_new_partners_key_and_secret_as_shell_exports(tmp_path):
    assert run(["migrate"], tmp_path).returncode == 0
    args = ["createpartner", "--name", "My app", "--webhook", "http://127.0.0.1:9/h", "--export"]
    result = run(args, tmp_path)
    assert result.returncode == 0, result.stderr
    shell = subprocess.run(
        ["bash", "-c", result.stdout + '\nprintf "%s\\n%s\\n" "$API_KEY" "$WEBHOOK_SECRET"'],
        capture_output=True,
        text=True,
        check=True,
    )
    api_key, secret = shell.stdout.splitlines()
    assert secret.startswith("whsec_") and len(api_key) > 20


def test_it_ends_start_up_with_a_banner_naming_url_login_and_how_to_stop(db):
    from superimap.commands import startup_banner

    first = startup_banner("127.0.0.1", 8123, "s3cret-pw", "web + engine + worker")
    assert "http://127.0.0.1:8123/admin/" in first
    assert "admin / s3cret-pw" in first and "Ctrl-C" in first
    later = startup_banner("127.0.0.1", 8123, None, "web")
    assert "s3cret-pw" not in later and "superimap createadmin" in later
    assert len(first.splitlines()) <= 12


@pytest.mark.parametrize(
    "webhook",
    ["javascript:alert(1)", "file:///etc/passwd", "ftp://example.com/x", "not a url", "http://"],
)
def test_createpartner_validates_the_webhook_url_like_the_dashboard(tmp_path, webhook):
    assert run(["migrate"], tmp_path).returncode == 0
    result = run(["createpartner", "--name", "Bad", "--webhook", webhook], tmp_path)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "--webhook" in lines[0], result.stderr
    assert "API key" not in result.stdout


def test_createpartner_accepts_a_good_webhook_url(tmp_path):
    assert run(["migrate"], tmp_path).returncode == 0
    result = run(
        ["createpartner", "--name", "Good", "--webhook", "https://app.example/hook"], tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "API key: " in result.stdout


def partner_rows(tmp_path: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(tmp_path / "superimap.sqlite3") as db:
        return db.execute(
            "SELECT name, api_key_hash, previous_api_key_hash, new_mail_webhook, "
            "user_error_webhook FROM partners_partner"
        ).fetchall()


def exported(stdout: str) -> tuple[str, str]:
    shell = subprocess.run(
        ["bash", "-c", stdout + '\nprintf "%s\\n%s\\n" "$API_KEY" "$WEBHOOK_SECRET"'],
        capture_output=True,
        text=True,
        check=True,
    )
    api_key, secret = shell.stdout.splitlines()
    return api_key, secret


def test_createpartner_if_exists_rotate_gives_the_same_partner_new_credentials(tmp_path):
    """The README's Try it, run again: one partner "My app", a new key and secret that work
    at once, the old ones stop (no grace), nothing stored in plain text."""
    from superimap.partners.models import hash_api_key

    assert run(["migrate"], tmp_path).returncode == 0
    hook = "http://127.0.0.1:8001/webhook"
    args = ["createpartner", "--name", "My app", "--webhook", hook, "--export"]
    first = run([*args, "--if-exists", "rotate"], tmp_path)  # none yet: created
    assert first.returncode == 0, first.stderr
    assert "# Created partner 'My app'" in first.stdout
    key1, secret1 = exported(first.stdout)

    again = run(args, tmp_path)  # the default: an existing name is an error
    assert again.returncode == 2
    assert len(again.stderr.splitlines()) == 1 and "--if-exists rotate" in again.stderr

    moved = "http://127.0.0.1:8002/webhook"
    rotated = run(
        [
            "createpartner",
            "--name",
            "my APP",
            "--webhook",
            moved,
            "--export",
            "--if-exists",
            "rotate",
        ],
        tmp_path,
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "exists: new API key and webhook secret" in rotated.stdout
    key2, secret2 = exported(rotated.stdout)
    assert key2 != key1 and secret2 != secret1 and secret2.startswith("whsec_")
    [(name, key_hash, previous_hash, new_mail, user_error)] = partner_rows(tmp_path)
    assert name == "My app"
    assert key_hash == hash_api_key(key2) and previous_hash == ""  # the old key is gone
    assert new_mail == user_error == moved
    stored = (tmp_path / "superimap.sqlite3").read_bytes()
    assert key2.encode() not in stored and secret2.encode() not in stored


def help_options(text: str) -> dict[str, str]:
    """argparse --help output: each option (and positional) with its help text."""
    options: dict[str, str] = {}
    lines = text.splitlines()
    section = False
    for index, line in enumerate(lines):
        if line.endswith(":") and not line.startswith(" "):
            section = line in {"options:", "positional arguments:"}
            continue
        if not section or not line.startswith("  ") or line.startswith("   "):
            continue
        invocation, _, help_text = line.strip().partition("  ")
        if not help_text.strip() and index + 1 < len(lines):
            following = lines[index + 1]
            if following.startswith("      "):
                help_text = following.strip()
        options[invocation] = help_text.strip()
    return options


def test_version_and_every_subcommand_has_help_for_every_option(tmp_path):
    from superimap import __version__
    from superimap.cli import build_parser

    version = run(["--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"superimap {__version__}"
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    names = list(subparsers.choices)
    assert {"up", "web", "check", "createpartner", "chaos-server", "webhook-inspector"} <= set(
        names
    )
    for name in names:
        result = run([name, "--help"], tmp_path)
        assert result.returncode == 0, (name, result.stderr)
        if name == "manage":  # Django's own commands and options
            continue
        assert result.stdout.startswith(f"usage: superimap {name} "), (name, result.stdout)
        options = help_options(result.stdout)
        assert options, (name, result.stdout)
        for option, text in options.items():
            assert text, f"superimap {name}: {option} has no help text"
    assert "(default: 127.0.0.1)" in run(["up", "--help"], tmp_path).stdout
    assert "(default: 1143)" in run(["chaos-server", "--help"], tmp_path).stdout
