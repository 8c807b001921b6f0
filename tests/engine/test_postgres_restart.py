"""A PostgreSQL restart under two engine nodes and a worker (issue 16 items 5 and 8): each
process logs it as one WARNING and, once the database is back, one INFO line, with no
ERROR and no traceback; no node takes another's mailboxes over (every advisory lock is free
for a moment after a restart, which proves nothing); and mail before and after is
delivered once, mail that came while the database was down included."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest

from devtools.testing.postgres import PostgresError, PostgresServer
from tests.helpers.delivery import ThreadedReceiver
from tests.helpers.engine import ServerThread, idling
from tests.helpers.processes import (
    CHAOS_USERS_SCRIPT,
    Processes,
    query,
    run_cli,
    superimap_env,
    wait_until,
)

USERS = 10
OUTAGE = "database unavailable"
BACK = "database available again"


@pytest.fixture
def restartable_postgres():
    """A server of this test's own: restarting the shared one would disturb other tests."""
    try:
        server = PostgresServer()
    except PostgresError as exc:
        pytest.skip(str(exc))
    with server:
        yield server


def test_a_postgresql_restart_is_one_warning_and_one_info_line_per_process(
    restartable_postgres, tmp_path
):
    pg = restartable_postgres
    url = pg.url
    receiver = ThreadedReceiver()
    try:
        with ServerThread(USERS) as chaos, Processes(tmp_path) as procs:
            server = chaos.server
            env = superimap_env(url, tmp_path / "var", ALLOW_LOOPBACK_IMAP="true")
            run_cli(env, "migrate")
            setup = {
                **env,
                "CHAOS_PORT": str(server.port),
                "USERS": str(USERS),
                "HOOK_URL": f"{receiver.url}/new-mail",
            }
            run_cli(setup, "manage", "shell", "-c", CHAOS_USERS_SCRIPT)

            def owners() -> dict[str, str]:
                return dict(query(url, "SELECT tag, owner_node FROM mailboxes_mailboxuser"))

            def settled() -> bool:
                nodes = set(owners().values())
                idle = chaos.call(lambda: idling(server))
                return nodes == {"node-a", "node-b"} and len(idle) == USERS

            worker = procs.start(env, "worker")
            engines = [
                procs.start({**env, "ENGINE_NODE_NAME": name}, "imap-client")
                for name in ("node-a", "node-b")
            ]
            wait_until(settled, 60, "both nodes sharing the mailboxes, all in IDLE")
            for i in range(USERS):
                chaos.call(server.generate_message, f"user{i}")
            receiver.wait_for(USERS, timeout=30)
            before = owners()

            def mail_while_down() -> None:
                for i in range(USERS):
                    chaos.call(server.generate_message, f"user{i}")

            pg.restart(down_seconds=3, while_down=mail_while_down)
            everyone = [worker, *engines]
            wait_until(
                lambda: all(BACK in procs.output(p) for p in everyone),
                60,
                "every process to see the database back",
            )
            # Past the lock grace after the restart: a node that misread the free advisory
            # locks would have taken the other's mailboxes by now.
            time.sleep(9)
            after = owners()
            for i in range(USERS):
                chaos.call(server.generate_message, f"user{i}")
            receiver.wait_for(3 * USERS, timeout=60)
            time.sleep(1.5)  # anything sent twice would show now
            outputs = {p.pid: procs.stop(p) for p in everyone}
    finally:
        receiver.close()

    for pid, output in outputs.items():
        print(f"--- process {pid}: {len(output.splitlines())} lines")
        assert "Traceback" not in output, output
        assert not re.search(r" (ERROR|CRITICAL) ", output), output
        assert output.count(OUTAGE) == 1, output
        assert output.count(BACK) == 1, output
        warnings = [line for line in output.splitlines() if " WARNING " in line]
        assert len(warnings) == 1 and OUTAGE in warnings[0], warnings
    assert after == before, "a node took mailboxes over after the restart"
    ids = Counter(e.json["event_id"] for e in receiver.received)
    assert len(ids) == 3 * USERS and set(ids.values()) == {1}
