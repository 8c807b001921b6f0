"""Start-up problems stop `superimap` with one line that names the variable or the cause,
exit status 2, within seconds (issue 18 item 2). Real subprocesses, a real port held by a
socket, a PostgreSQL URL to a closed port, a real `superimap up` already running."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.testing import free_port
from tests.helpers.processes import ROOT, Processes, answers, wait_until

SUPERIMAP = str(Path(sys.executable).with_name("superimap"))


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SUPERIMAP_", "DATABASE_", "DJANGO_", "LOG_", "PORT", "HOST"))
    }
    env.update({"VAR_DIR": str(tmp_path / "var"), "LOG_LEVEL": "WARNING", **extra})
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 30):
    started = time.monotonic()
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def assert_one_line(done: subprocess.CompletedProcess, *words: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture
def held_port():
    """A real port taken by a plain listening socket (not SuperIMAP)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("command", [["check"], ["up"], ["web"], ["migrate"], ["worker"]])
def test_an_unreachable_postgresql_is_one_line_naming_database_url(tmp_path, command):
    closed = free_port()
    env = env_for(tmp_path, DATABASE_URL=f"postgresql://me:s3cret-pw@127.0.0.1:{closed}/mail")
    done, elapsed = run([SUPERIMAP, *command], env)
    line = assert_one_line(done, "DATABASE_URL", f"127.0.0.1:{closed}", "Connection refused")
    assert "s3cret-pw" not in line  # the password is not printed
    assert "configuration OK" not in done.stdout
    assert elapsed < 15


@pytest.mark.parametrize("command", [["check"], ["up"]])
def test_a_bad_log_level_is_one_line_naming_it(tmp_path, command):
    done, _ = run([SUPERIMAP, *command], env_for(tmp_path, LOG_LEVEL="LOUD"))
    assert_one_line(done, "LOG_LEVEL", "'LOUD'", "WARNING")


@pytest.mark.parametrize("command", [["check"], ["up"]])
def test_a_bad_imap_login_limits_is_one_line_naming_it(tmp_path, command):
    env = env_for(tmp_path, IMAP_LOGIN_LIMITS="imap.gmail.com=500/50,imap.example.com=fast")
    done, _ = run([SUPERIMAP, *command], env)
    assert_one_line(done, "IMAP_LOGIN_LIMITS", "'imap.example.com=fast'", "host=burst/rate")


@pytest.mark.parametrize("command", ["up", "web", "check"])
def test_a_taken_port_is_one_line_naming_port_before_anything_is_announced(
    tmp_path, held_port, command
):
    done, elapsed = run([SUPERIMAP, command, "--port", str(held_port)], env_for(tmp_path))
    assert_one_line(done, "PORT", f"127.0.0.1:{held_port}", "in use")
    assert "listening" not in done.stdout + done.stderr
    assert "is running" not in done.stdout  # no banner
    assert elapsed < 15


def test_a_mistyped_sqlite_folder_is_refused_and_not_created(tmp_path):
    missing = tmp_path / "dta" / "superimap.sqlite3"
    done, _ = run([SUPERIMAP, "check"], env_for(tmp_path, DATABASE_URL=f"sqlite:///{missing}"))
    assert_one_line(done, "DATABASE_URL", str(missing.parent), "does not exist")
    assert not missing.parent.exists()
    # An existing folder is fine, and VAR_DIR itself is made on demand (the default).
    (tmp_path / "data").mkdir()
    url = f"sqlite:///{tmp_path / 'data' / 'superimap.sqlite3'}"
    done, _ = run([SUPERIMAP, "check", "--skip-port"], env_for(tmp_path, DATABASE_URL=url))
    assert done.returncode == 0, done.stderr
    env = env_for(tmp_path, VAR_DIR=str(tmp_path / "new" / "var"))
    done, _ = run([SUPERIMAP, "check", "--skip-port"], env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "new" / "var" / "superimap.sqlite3").exists()


def test_check_tries_the_database_and_the_port(tmp_path):
    port = free_port()
    done, _ = run([SUPERIMAP, "check", "--port", str(port)], env_for(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "database reachable (SQLite" in done.stdout
    assert f"port 127.0.0.1:{port} is free" in done.stdout


@pytest.mark.slow
def test_a_second_make_run_says_already_running_with_the_pid(tmp_path):
    port = free_port()
    env = env_for(tmp_path, PORT=str(port))
    with Processes(tmp_path) as procs:
        first = procs.start(env, "up", "--port", str(port))
        wait_until(lambda: answers(port) or first.poll() is not None, 60, "superimap up")
        assert first.poll() is None, procs.output(first)
        # The Makefile's own run target (-o: the venv is installed already, no network).
        done, elapsed = run(["make", "-s", "-o", ".venv/.installed", "run"], env)
        assert f"already running (pid {first.pid}) on port {port}" in done.stderr, done.stderr
        assert done.returncode != 0 and elapsed < 20
        done, _ = run([SUPERIMAP, "up", "--port", str(port)], env)
        line = assert_one_line(done, f"already running (pid {first.pid}) on port {port}")
        # The README's Quick start quotes this line (with pid 4242, port 8000).
        readme = " ".join((ROOT / "README.md").read_text().split())
        quoted = line.replace(str(first.pid), "4242").replace(str(port), "8000")
        assert f"`{quoted}`" in readme, quoted
        # On another port the engine's node name is the clash: named, with the pid of the
        # engine process holding it (a child of the first `up` on a box with several cores).
        done, _ = run([SUPERIMAP, "up", "--port", str(free_port())], env)
        line = assert_one_line(done, "ENGINE_NODE_NAME")
        holder = int(re.search(r"\(pid (\d+),", line).group(1))
        assert holder == first.pid or parent_of(holder) == first.pid, line
        assert first.poll() is None  # the running one is untouched
        assert answers(port)
        procs.stop(first)
    # Gone: the port is free again and a new start works.
    done, _ = run([SUPERIMAP, "check", "--port", str(port)], env)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", ["chaos-server", "webhook-inspector"])
def test_the_try_it_helpers_say_their_port_is_taken_in_one_line(tmp_path, held_port, command):
    done, elapsed = run([SUPERIMAP, command, "--port", str(held_port)], env_for(tmp_path))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "in use" in line]
    what = "a chaos server" if command == "chaos-server" else "an inspector"
    assert errors == [
        f"superimap {command}: port {held_port} is in use ({what} running already?); "
        "stop it or choose another --port"
    ], done.stderr
    assert elapsed < 15
