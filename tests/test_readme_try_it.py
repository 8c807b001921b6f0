"""The README's "Try it" commands, taken from README.md itself, work top to bottom: they start
the service, a test IMAP server and the webhook inspector, and webhooks arrive, signed."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from pathlib import Path

import pytest

from superimap.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def try_it_commands() -> str:
    """The first ```sh block of the README's "## Try it" section."""
    text = README.read_text()
    section = text.split("\n## Try it", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "no sh block in the README's Try it section"
    return match.group(1)


def for_this_machine(commands: str, ports: dict[int, int]) -> str:
    """The README's commands on free ports (others run tests here too), with `make run`
    replaced by the command the Makefile's run target runs (its venv install step needs
    the network and is not what this test is about)."""
    assert "$(BIN)/superimap up" in (ROOT / "Makefile").read_text()
    assert "make run" in commands
    commands = commands.replace("make run", ".venv/bin/superimap up")
    for readme_port, port in ports.items():
        commands = re.sub(rf"\b{readme_port}\b", str(port), commands)
    return commands


def test_it_extracts_the_commands_from_the_readme():
    commands = try_it_commands()
    assert "createpartner" in commands and "webhook-inspector" in commands
    assert "--secret" in commands and "ALLOW_LOOPBACK_IMAP=true" in commands


@pytest.mark.slow
def test_the_readme_try_it_commands_deliver_signed_webhooks(tmp_path):
    web, hook, imap = free_port(), free_port(), free_port()
    script = for_this_machine(try_it_commands(), {8000: web, 8001: hook, 1143: imap})
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SUPERIMAP_", "DATABASE_", "DJANGO_", "ALLOW_"))
    }
    # A fresh machine: development settings, nothing in the data folder yet.
    env.update(VAR_DIR=str(tmp_path / "var"), PORT=str(web), LOG_LEVEL="WARNING")
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
        lines = read_until(proc, new_mail_seen, timeout=90)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    output = "\n".join(lines)
    elapsed = time.monotonic() - started
    assert new_mail_seen(lines), output
    assert "is running" in output and "Stop        Ctrl-C" in output, output  # the banner
    assert "admin / " in output, output  # first start: the generated password
    connected = [line for line in lines if line.startswith("user_connected")]
    assert connected and "signature OK  webhook-signature OK" in connected[0], output
    print(f"Try it: first new_mail {elapsed:.1f} s after the script started")


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
