"""docs/deploy.md's files and commands, run here: its systemd units pass
`systemd-analyze verify`, its nginx site passes `nginx -t` and proxies a real `superimap web`
over TLS, and its backup and restore commands (SQLite online backup, pg_dump/pg_restore)
bring a real database back."""

from __future__ import annotations

import getpass
import grp
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from devtools.testing import free_port
from tests.helpers.processes import (
    ROOT,
    Processes,
    answers,
    query,
    run_cli,
    superimap_env,
    wait_until,
)

DOC = ROOT / "docs" / "deploy.md"
SUPERIMAP = str(Path(sys.executable).with_name("superimap"))


def files(prefix: str) -> dict[str, str]:
    """The doc's files under ``prefix``: each is a `path`: line, then a fenced block."""
    found = re.findall(
        r"`(" + re.escape(prefix) + r"[^`]+)`:\n\n```\w*\n(.*?)```", DOC.read_text(), re.S
    )
    return dict(found)


def commands(first: str) -> str:
    """The doc's ```sh block whose first line starts with ``first``."""
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S):
        if block.startswith(first):
            return block
    raise AssertionError(f"no sh block starting with {first!r} in docs/deploy.md")


def sh(script: str, **env: str) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (script, done.stdout, done.stderr)
    return done.stdout


def test_the_systemd_units_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    units = files("/etc/systemd/system/")
    assert set(units) == {
        f"/etc/systemd/system/superimap{name}.service"
        for name in ("", "-web", "-imap-client", "-worker")
    }
    for path, text in units.items():
        assert "/opt/superimap/.venv/bin/superimap " in text
        unit = tmp_path / Path(path).name
        unit.write_text(text.replace("/opt/superimap/.venv/bin/superimap", SUPERIMAP))
        done = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        # Unknown keys are only warnings: any output at all fails.
        assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
            path,
            done.stdout,
            done.stderr,
        )
        subcommand = re.search(r"ExecStart=\S+ (\S+)", text).group(1)
        assert subcommand in {"up", "web", "imap-client", "worker"}


def test_the_nginx_site_passes_nginx_t_and_proxies_superimap_over_tls(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.fail("nginx is missing: scripts/install-system-deps.sh installs it")
    [(path, site)] = files("/etc/nginx/").items()
    assert "proxy_pass http://127.0.0.1:8000;" in site
    sh(
        f"openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=superimap.example.com "
        f"-keyout {tmp_path}/key.pem -out {tmp_path}/cert.pem 2>/dev/null"
    )
    web_port, http_port, https_port = free_port(), free_port(), free_port()
    site = (
        site.replace(
            "/etc/letsencrypt/live/superimap.example.com/fullchain.pem", f"{tmp_path}/cert.pem"
        )
        .replace("/etc/letsencrypt/live/superimap.example.com/privkey.pem", f"{tmp_path}/key.pem")
        .replace("listen 80;", f"listen 127.0.0.1:{http_port};")
        .replace("listen 443 ssl", f"listen 127.0.0.1:{https_port} ssl")
        .replace("127.0.0.1:8000", f"127.0.0.1:{web_port}")
    )
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\ndaemon off;\n"
        f"events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {tmp_path}/body;\n"
        f" proxy_temp_path {tmp_path}/proxy;\n include {tmp_path}/site.conf;\n}}\n"
    )
    conf = ["-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    checked = subprocess.run([nginx, "-t", *conf], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr and "[warn]" not in checked.stderr, checked.stderr

    env = superimap_env(
        f"sqlite:///{tmp_path / 'db.sqlite3'}", tmp_path, TRUSTED_PROXIES="127.0.0.1"
    )
    run_cli(env, "migrate")
    proxy = subprocess.Popen([nginx, *conf], stderr=subprocess.PIPE)
    try:
        with Processes(tmp_path) as procs:
            web = procs.start(env, "web", "--port", str(web_port))
            wait_until(lambda: answers(web_port) or web.poll() is not None, 30, "the web process")
            context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
            context.check_hostname = False
            request = urllib.request.Request(
                f"https://127.0.0.1:{https_port}/healthz", headers={"Host": "127.0.0.1"}
            )
            body = wait_until(lambda: _get(request, context), 20, "healthz through nginx")
            assert "status" in json.loads(body)
            # Port 80 sends browsers to https.
            plain = urllib.request.Request(f"http://127.0.0.1:{http_port}/healthz")
            opener = urllib.request.build_opener(_NoRedirect)
            with pytest.raises(urllib.error.HTTPError) as redirect:
                opener.open(plain, timeout=10)
            assert redirect.value.code == 301
            assert redirect.value.headers["Location"].startswith("https://")
    finally:
        proxy.terminate()
        proxy.wait(10)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(request, context) -> bytes | None:
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as answer:
            return answer.read()
    except urllib.error.HTTPError as exc:
        return exc.read()
    except OSError:
        return None


def _localised(script: str, var: Path, backups: Path) -> str:
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    lines = [line for line in script.splitlines() if not line.startswith("systemctl ")]
    return (
        "\n".join(lines)
        .replace("/var/lib/superimap", str(var))
        .replace("/var/backups", str(backups))
        .replace("-o superimap -g superimap", f"-o {user} -g {group}")
    )


def test_sqlite_online_backup_and_restore(tmp_path):
    var, backups = tmp_path / "var", tmp_path / "backups"
    backups.mkdir()
    database = var / "superimap.sqlite3"
    url = f"sqlite:///{database}"
    env = superimap_env(url, var)
    run_cli(env, "migrate")
    run_cli(env, "createpartner", "--name", "Before the backup")
    port = free_port()
    with Processes(tmp_path) as procs:
        web = procs.start(env, "web", "--port", str(port))  # online: the service runs
        wait_until(lambda: answers(port) or web.poll() is not None, 30, "the web process")
        sh(_localised(commands("sqlite3 "), var, backups))
        run_cli(env, "createpartner", "--name", "After the backup")
        procs.stop(web)
    copy = backups / "superimap.sqlite3"
    assert oct(copy.stat().st_mode & 0o777) == "0o600"
    sh(_localised(commands("systemctl stop superimap\nrm -f"), var, backups))
    names = {row[0] for row in query(url, "SELECT name FROM partners_partner")}
    assert names == {"Before the backup"}
    assert oct(database.stat().st_mode & 0o777) == "0o600"
    # The restored database serves: the service starts on it.
    run_cli(env, "check")


def test_pg_dump_and_restore(tmp_path, postgres_server):
    source = postgres_server.create_database("deploy_backup_source")
    target = postgres_server.create_database("deploy_backup_target")
    env = superimap_env(source, tmp_path)
    run_cli(env, "migrate")
    run_cli(env, "createpartner", "--name", "Dumped")
    backups = tmp_path / "backups"
    backups.mkdir()
    sh(_localised(commands("pg_dump "), tmp_path, backups), DATABASE_URL=source)
    sh(_localised(commands("pg_restore "), tmp_path, backups), DATABASE_URL=target)
    assert query(target, "SELECT name FROM partners_partner") == [("Dumped",)]
