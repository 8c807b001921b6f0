"""The README's "Try it" commands, taken from README.md itself, work top to bottom: they start
the service, a test IMAP server and the webhook inspector, and webhooks arrive, signed. The
README's stop command stops every process they started, also outside an interactive shell,
and the block run a second time on the same checkout gives the same result: one partner,
every signature OK (issue 18 item 3)."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from pathlib import Path

import pytest

from devtools.testing import free_port
from tests.helpers.processes import query

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def try_it_commands() -> str:
    """The first ```sh block of the README's "## Try it" section."""
    text = README.read_text()
    section = text.split("\n## Try it", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "no sh block in the README's Try it section"
    return match.group(1)


def stop_command() -> str:
    """What the README's Try it section says stops everything."""
    text = README.read_text()
    section = text.split("\n## Try it", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"Stop everything with `([^`]+)`", section)
    assert match, "the README's Try it section does not say how to stop everything"
    return match.group(1)


def for_this_machine(commands: str, ports: dict[int, int]) -> str:
    """The README's commands on free ports (others run tests here too). `make run` is the
    Makefile's run target itself, with the venv taken as installed (-o: its install step
    needs the network and is not what this test is about)."""
    assert "make run" in commands
    commands = commands.replace("make run", "make -s -o .venv/.installed run")
    for readme_port, port in ports.items():
        commands = re.sub(rf"\b{readme_port}\b", str(port), commands)
    return commands


def test_it_extracts_the_commands_from_the_readme():
    commands = try_it_commands()
    assert "createpartner" in commands and "webhook-inspector" in commands
    assert "--secret" in commands and "ALLOW_LOOPBACK_IMAP=true" in commands
    assert stop_command() == "kill %1 %2 %3"


@pytest.mark.slow
def test_the_readme_try_it_commands_deliver_signed_webhooks_twice_and_stop(tmp_path):
    web, hook, imap = free_port(), free_port(), free_port()
    commands = for_this_machine(try_it_commands(), {8000: web, 8001: hook, 1143: imap})
    stopped = tmp_path / "stop-now"
    # After the block: wait until the test has seen the mail, then the README's stop command,
    # in this same non-interactive shell (its jobs %1 %2 %3), and wait for them.
    script = (
        f"{commands}\nuntil [ -e {stopped} ]; do sleep 0.2; done\n"
        f"{stop_command()}\nwait\necho 'all stopped'\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SUPERIMAP_", "DATABASE_", "DJANGO_", "ALLOW_", "MAKE"))
    }
    # A fresh machine: development settings, nothing in the data folder yet.
    env.update(VAR_DIR=str(tmp_path / "var"), PORT=str(web), LOG_LEVEL="WARNING")
    first = run_once(script, env, stopped)
    connected = [line for line in first if line.startswith("user_connected")]
    assert connected and "signature OK  webhook-signature OK" in connected[0], first
    assert "admin / " in "\n".join(first)  # first start: the generated password

    # The same block again, same checkout and data folder, same ports.
    stopped.unlink()
    second = run_once(script, env, stopped)
    output = "\n".join(second)
    assert "admin (password from the first start" in output, output
    # The same partner, with a new key (the inspector checks with the new secret: no BAD).
    assert api_key(second) != api_key(first), output
    rows = query(f"sqlite:///{tmp_path / 'var' / 'superimap.sqlite3'}", PARTNERS)
    assert rows == [("My app",)], rows


PARTNERS = "SELECT name FROM partners_partner"


def api_key(lines: list[str]) -> str:
    [line] = [line for line in lines if line.startswith("API key: ")]
    return line.split()[2]


def run_once(script: str, env: dict[str, str], stopped: Path) -> list[str]:
    """Run the script until new mail arrives, signed; then let it stop everything. Returns
    its output lines; fails if a signature is BAD or a process outlives the stop command."""
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the script's background jobs share its process group
    )
    lines: list[str] = []
    try:
        lines = read_until(proc, new_mail_seen, timeout=120)
        elapsed = time.monotonic() - started
        output = "\n".join(lines)
        assert new_mail_seen(lines), output
        stopped.touch()
        lines += read_until(proc, lambda seen: "all stopped" in seen, timeout=30)
        output = "\n".join(lines)
        assert "all stopped" in lines, output
        proc.wait(10)
        assert survivors(proc.pid) == [], output  # `kill %1` stopped make and superimap up
    finally:
        if survivors(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert "is running" in output and "Stop        Ctrl-C" in output, output  # the banner
    assert not [line for line in lines if "BAD" in line], output
    print(f"Try it: first new_mail {elapsed:.1f} s after the script started")
    return lines


def survivors(group: int) -> list[int]:
    """Processes still in the script's process group."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == group:
                    found.append(int(entry.name))
            except ProcessLookupError:
                continue
    return found


def test_the_readme_inspector_command_takes_a_key_that_begins_with_a_dash(tmp_path):
    """API keys are url-safe base64: one in 64 begins with "-", which `--api-key "$KEY"`
    would read as an option (a Try it run failed so)."""
    [line] = [line for line in try_it_commands().splitlines() if "webhook-inspector" in line]
    port = free_port()
    command = re.sub(r"\b8001\b", str(port), line.rstrip(" &"))
    env = {**os.environ, "API_KEY": "-starts-with-a-dash", "WEBHOOK_SECRET": "whsec_c2VjcmV0"}
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        lines = read_until(proc, lambda seen: any("Listening on" in x for x in seen), 30)
    finally:
        proc.terminate()
        proc.wait(10)
    assert any(f"Listening on http://127.0.0.1:{port}/" in x for x in lines), lines


def new_mail_seen(lines: list[str]) -> bool:
    return any(
        line.startswith("new_mail  user_tag='MY_USER'")
        and line.endswith("signature OK  webhook-signature OK")
        for line in lines
    )


def read_until(proc: subprocess.Popen, done, timeout: float) -> list[str]:
    lines: list[str] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and not done(lines):
            if not selector.select(timeout=0.5):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode(errors="replace").rstrip("\r") for line in complete)
    return lines
