"""Two engine processes on PostgreSQL share the mailboxes by rendezvous hashing; a mailbox is
never watched twice, and when one node is killed the other takes its mailboxes over without
losing or repeating mail."""

from __future__ import annotations

import time
from collections import Counter

import psycopg
import pytest

from tests.helpers.engine import ServerThread, SessionSampler
from tests.helpers.processes import (
    CHAOS_USERS_SCRIPT,
    Processes,
    run_cli,
    superimap_env,
    wait_until,
)

USERS = 20


@pytest.fixture
def postgres_url(migrated_postgres_url) -> str:
    """Migrated already (a copy of one migrated template), not by each test."""
    return migrated_postgres_url


def test_nodes_share_mailboxes_and_a_killed_nodes_are_taken_over(postgres_url, tmp_path):
    with ServerThread(USERS) as chaos, Processes(tmp_path) as procs:
        server = chaos.server
        env = superimap_env(
            postgres_url,
            tmp_path / "var",
            ALLOW_LOOPBACK_IMAP="true",
            ENGINE_LEASE_SECONDS="3",
            ENGINE_REFRESH_SECONDS="1",
            ENGINE_NODE_ALIVE_SECONDS="3",
        )
        setup_env = {**env, "CHAOS_PORT": str(server.port), "USERS": str(USERS)}
        run_cli(setup_env, "manage", "shell", "-c", CHAOS_USERS_SCRIPT)

        with psycopg.connect(postgres_url, autocommit=True) as db:

            def owners() -> Counter:
                rows = db.execute("SELECT owner_node FROM mailboxes_mailboxuser").fetchall()
                return Counter(owner for (owner,) in rows)

            def baselined() -> bool:
                (n,) = db.execute(
                    "SELECT count(*) FROM mailboxes_mailboxuser WHERE last_uid IS NOT NULL"
                ).fetchone()
                return n == USERS

            def delivered() -> list[str]:
                rows = db.execute(
                    "SELECT message_id FROM delivery_delivery WHERE kind = 'new_mail'"
                ).fetchall()
                return [m for (m,) in rows]

            with SessionSampler(chaos) as sampler:
                first = procs.start({**env, "ENGINE_NODE_NAME": "node-a"}, "imap-client")
                wait_until(baselined, 30, "the first node to baseline every mailbox")
                [(first_node, held)] = owners().items()
                assert held == USERS and first_node
                second = procs.start({**env, "ENGINE_NODE_NAME": "node-b"}, "imap-client")
                # Rendezvous hashing: the new node takes its share, handed over cleanly.
                split = wait_until(
                    lambda: (o := owners()) and len(o) == 2 and "" not in o and o,
                    20,
                    "the second node to take its share",
                )
                assert sum(split.values()) == USERS and min(split.values()) >= 3, split

                for _ in range(100):
                    chaos.call(server.generate_message)
                wait_until(lambda: len(delivered()) >= 20, 30, "some mail delivered")
                first.kill()  # kill -9: its leases stay until they expire
                first.wait(10)
                for _ in range(100):
                    chaos.call(server.generate_message)
                wait_until(lambda: len(delivered()) >= 200, 60, "all mail after the handover")
                time.sleep(1.5)  # anything delivered twice would show up now
                most_sessions = sampler.most

            final_owners = owners()
            messages = delivered()
        output = procs.stop(second)

    assert second.returncode == 0, output
    assert most_sessions == 1, "a mailbox was watched by two sessions at once"
    assert len(final_owners) == 1 and first_node not in final_owners
    assert len(messages) == len(set(messages)) == 200
    assert set(messages) == set(server.generated)
