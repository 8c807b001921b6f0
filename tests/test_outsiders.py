"""Outsiders (no key, no account) against a real `superimap up` with SUPERIMAP_ENV=production:
slow bodies cannot pin memory, idle connections are capped and timed out, request paths
cannot forge log lines. (The full-size figure: python -m devtools.bench.slowbody.)"""

from __future__ import annotations

import asyncio
import http.client
import re
import socket
import time

import pytest
from cryptography.fernet import Fernet

from devtools.bench.slowbody import tree_rss_mb
from devtools.testing import free_port
from tests.helpers.processes import Processes, superimap_env, wait_until

CHUNK = 16 * 1024
BODY = 1024 * 1024


def production_env(tmp_path, **extra: str) -> dict[str, str]:
    env = superimap_env(f"sqlite:///{tmp_path / 'db.sqlite3'}", tmp_path, **extra)
    env.update(
        SUPERIMAP_ENV="production",
        ENCRYPTION_KEY=Fernet.generate_key().decode(),
        SECRET_KEY_BASE="s" * 40,
        ALLOWED_HOSTS="127.0.0.1",
        # Behind a TLS-terminating proxy on this host, as production runs.
        TRUSTED_PROXIES="127.0.0.1",
        LOG_FORMAT="text",
    )
    return env


def get(port: int, path: str, headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"X-Forwarded-Proto": "https", **(headers or {})})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


@pytest.fixture
def start_up(tmp_path):
    with Processes(tmp_path) as procs:

        def start(*command: str, **extra: str):
            port = free_port()
            proc = procs.start(production_env(tmp_path, **extra), *command, "--port", str(port))

            def healthy() -> bool:
                try:
                    return get(port, "/healthz") == 200
                except OSError:
                    return False

            wait_until(healthy, 60, "superimap")
            return proc, port, lambda: procs.output(proc)

        yield start


async def slow_post(port: int, path: str) -> tuple[str, int]:
    """POST a chunked 1 MiB body without credentials, 16 KiB every 10 ms, until answered.
    Returns (status or "none", body bytes sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n\r\n".encode()
    )
    answer = asyncio.ensure_future(reader.read(12))
    sent = 0
    try:
        while sent < BODY and not answer.done():
            writer.write(b"%x\r\n%s\r\n" % (CHUNK, b"a" * CHUNK))
            await writer.drain()
            sent += CHUNK
            await asyncio.wait([answer], timeout=0.01)
        writer.write(b"0\r\n\r\n")
        await asyncio.wait_for(answer, 30)
    except OSError:
        pass
    writer.close()
    head = answer.result() if answer.done() and not answer.exception() else b""
    return (head[9:12].decode() or "none"), sent


def test_slow_bodies_without_credentials_do_not_pin_memory(start_up):
    proc, port, output = start_up("up")
    for _ in range(3):  # imports made on first use are not the attack's
        for path in ("/admin/login/", "/nonexistent"):
            asyncio.run(slow_post(port, path))
    time.sleep(1.0)
    before = tree_rss_mb(proc.pid)
    peak = [before]

    async def attack():
        async def sample():
            while True:
                peak.append(tree_rss_mb(proc.pid))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(
            *(slow_post(port, ("/admin/login/", "/nonexistent")[i % 2]) for i in range(200))
        )
        sampler.cancel()
        return results

    results = asyncio.run(asyncio.wait_for(attack(), 120))
    time.sleep(2.0)
    after = tree_rss_mb(proc.pid)
    # The process holds no body during the attack or after (main read each whole body: RSS
    # +409 MiB during, +235 MiB after), every request is refused long before its body ends
    # (main read all of it, then redirected to https).
    assert max(peak) - before < 24, (before, max(peak), after)
    assert after - before < 16, (before, max(peak), after)
    # "none": the connection ended (a reset after the server's lingering close, up to 2 s or
    # 256 KiB, had dropped what still came) before this client, one of 200 in one loop on a
    # loaded box, read the 413: refused all the same, as max(sent) < BODY shows. Never a hang
    # (slow_post would raise). Seen in 1 of 200 under the full suite's load.
    statuses = [status for status, _ in results]
    assert set(statuses) <= {"413", "none"}, results[:5]
    assert statuses.count("none") <= 10, [r for r in results if r[0] != "413"]
    assert max(sent for _, sent in results) < BODY
    assert get(port, "/healthz") == 200
    assert proc.poll() is None and "Traceback" not in output()


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_connections_are_capped_and_silent_ones_time_out(start_up):
    _, port, _ = start_up(
        "up", WEB_MAX_CONNECTIONS="5", WEB_HEADER_TIMEOUT="2", WEB_MAX_HEADER_BYTES="4096"
    )
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
    time.sleep(0.3)
    extra = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert extra.recv(100).startswith(b"HTTP/1.1 503")
    extra.close()
    idle[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never ends
    started = time.monotonic()
    for sock in idle:
        assert read_to_end(sock).startswith(b"HTTP/1.1 408")  # and closed
        sock.close()
    assert time.monotonic() - started < 5
    assert get(port, "/healthz") == 200
    assert get(port, "/healthz", {"X-Fits": "b" * 1024}) == 200
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: %s\r\n\r\n" % (b"b" * 8192)
        )
        assert read_to_end(sock).startswith(b"HTTP/1.1 431")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        # In pieces, never complete, and still sending after the server has answered: the
        # close lingers, so the client reads the 431 rather than a reset or a broken pipe.
        for _ in range(32):
            sock.sendall(b"b" * 1024)
            time.sleep(0.01)
        assert read_to_end(sock).startswith(b"HTTP/1.1 431")


def test_a_request_path_cannot_forge_a_log_line(start_up):
    _, port, output = start_up("up")
    forged = "%0d%0a2026-12-06%2020:00:00,000%20CRITICAL%20superimap%20forged%0d%0a"
    # Refused by the front door (a body where none is taken), then a 404 from Django.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", f"/nothing{forged}", body=b"x=1", headers={"X-Forwarded-Proto": "https"})
    assert conn.getresponse().status == 413
    conn.close()
    assert get(port, f"/nothing{forged}") == 404
    assert get(port, f"/admin/{forged}") in (302, 404)

    def logged() -> list[str]:
        return [line for line in output().splitlines() if "forged" in line]

    lines = wait_until(lambda: len(logged()) >= 2 and logged(), 10, "the log lines")
    assert not [line for line in output().splitlines() if re.match(r"\S+ \S+ CRITICAL", line)]
    assert all("\\r\\n2026-12-06 20:00:00,000 CRITICAL" in line for line in lines), lines
