"""A dead part is seen (issue 16 item 6), with real processes: `superimap web`,
`imap-client` and `worker` on one box; kill -9 the engine and the worker, and within
seconds /healthz answers 503 naming both, the API shows engine_down for every mailbox,
and /metrics counts them unwatched. SQLite and PostgreSQL."""

from __future__ import annotations

import http.client
import json
import signal
import time

import pytest

from devtools.testing import free_port
from tests.helpers.engine import ServerThread
from tests.helpers.processes import (
    CHAOS_USERS_SCRIPT,
    Processes,
    query,
    run_cli,
    superimap_env,
    wait_until,
)

USERS = 3
API_KEY_SCRIPT = (
    "from superimap.partners.models import Partner; print(Partner.objects.get().api_key)"
)


@pytest.fixture
def database_url(migrated_database_url) -> str:
    """Migrated already (a copy of one migrated template), not by each test."""
    return migrated_database_url


def get(port: int, path: str, api_key: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"x-api-key": api_key} if api_key else {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_a_killed_engine_and_worker_are_seen_in_seconds(database_url, tmp_path):
    with ServerThread(USERS) as chaos, Processes(tmp_path) as procs:
        env = superimap_env(
            database_url, tmp_path / "var", ALLOW_LOOPBACK_IMAP="true", ENGINE_NODE_NAME="box"
        )
        setup = {**env, "CHAOS_PORT": str(chaos.server.port), "USERS": str(USERS)}
        run_cli(setup, "manage", "shell", "-c", CHAOS_USERS_SCRIPT)
        api_key = run_cli(env, "manage", "shell", "-c", API_KEY_SCRIPT).split()[-1]
        port = free_port()
        web = procs.start(env, "web", "--port", str(port))
        engine = procs.start(env, "imap-client")
        worker = procs.start(env, "worker")

        def healthz() -> tuple[int, dict]:
            try:
                status, body = get(port, "/healthz")
            except OSError:
                return 0, {}
            return status, json.loads(body)

        def statuses() -> list[str]:
            status, body = get(port, "/api/v1/connections/LOOPBACK_PLAIN/users", api_key)
            assert status == 200, body
            return sorted(u["status"] for u in json.loads(body))

        def healthy() -> bool:
            status, body = healthz()
            return status == 200 and body["engines"] and body["workers"]

        wait_until(healthy, 60, "/healthz ok with the engine and the worker")
        wait_until(lambda: statuses() == ["idle"] * USERS, 30, "every mailbox idle")
        status, body = healthz()
        [engine_part] = body["engines"]
        assert engine_part["node"] == "box" and engine_part["alive"] and engine_part["this_box"]
        assert body["workers"][0]["alive"] and body["workers"][0]["this_box"]

        engine.send_signal(signal.SIGKILL)
        worker.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert engine.wait(10) == -signal.SIGKILL and worker.wait(10) == -signal.SIGKILL

        def both_seen() -> dict | None:
            status, body = healthz()
            problems = " ".join(body.get("problems", []))
            if status == 503 and "engine box" in problems and "worker" in problems:
                return body
            return None

        body = wait_until(both_seen, 30, "/healthz to see the engine and the worker dead")
        seen = time.monotonic() - killed_at
        assert statuses() == ["engine_down"] * USERS
        metrics = get(port, "/metrics")[1]
        assert f"superimap_mailboxes_unwatched {float(USERS)}" in metrics
        assert 'superimap_engine_node_heartbeat_age_seconds{node="box"}' in metrics
        procs.stop(web)

    print(f"dead engine and worker seen by /healthz after {seen:.1f} s: {body['problems']}")
    assert body["status"] == "failing"
    assert not body["engines"][0]["alive"] and not body["workers"][0]["alive"]
    assert seen < 20
    assert query(database_url, "SELECT count(*) FROM engine_enginenode")[0][0] == 1
