"""kill -9 one of two engine nodes (issue 16 item 5): the survivor watches the dead node's
mailboxes again (IDLE on the chaos server) within 10 s, with the default 60 s lease and
5 s refresh: the dead process's name lock is free (a lock file on SQLite, an advisory lock
on PostgreSQL), so it need not wait out the lease. No mailbox ever has two sessions, and
mail that arrives after the takeover is recorded once. Real processes, both databases."""

from __future__ import annotations

import signal
import time
import urllib.request

import pytest

from devtools.testing import free_port
from tests.helpers.engine import ServerThread, SessionSampler, idling
from tests.helpers.processes import (
    CHAOS_USERS_SCRIPT,
    Processes,
    query,
    run_cli,
    superimap_env,
    wait_until,
)

USERS = 20
TAKEOVER_LIMIT = 10.0


@pytest.fixture
def database_url(migrated_database_url) -> str:
    """Migrated already (a copy of one migrated template), not by each test."""
    return migrated_database_url


def test_a_killed_nodes_mailboxes_are_watched_by_the_survivor_in_seconds(database_url, tmp_path):
    with ServerThread(USERS) as chaos, Processes(tmp_path) as procs:
        server = chaos.server
        env = superimap_env(database_url, tmp_path / "var", ALLOW_LOOPBACK_IMAP="true")
        run_cli(
            {**env, "CHAOS_PORT": str(server.port), "USERS": str(USERS)},
            "manage",
            "shell",
            "-c",
            CHAOS_USERS_SCRIPT,
        )

        def owners() -> dict[str, str]:
            rows = query(database_url, "SELECT tag, owner_node FROM mailboxes_mailboxuser")
            return dict(rows)

        def all_idle() -> bool:
            return len(chaos.call(lambda: idling(server))) == USERS

        with SessionSampler(chaos) as sampler:
            doomed = procs.start({**env, "ENGINE_NODE_NAME": "node-a"}, "imap-client")
            wait_until(lambda: set(owners().values()) == {"node-a"}, 30, "node-a to claim all")
            metrics_port = free_port()
            survivor = procs.start(
                {**env, "ENGINE_NODE_NAME": "node-b", "METRICS_PORT": str(metrics_port)},
                "imap-client",
            )
            wait_until(
                lambda: set(owners().values()) == {"node-a", "node-b"} and all_idle(),
                60,
                "both nodes to share the mailboxes, every one in IDLE",
            )
            moving = {tag for tag, node in owners().items() if node == "node-a"}

            doomed.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            assert doomed.wait(10) == -signal.SIGKILL
            wait_until(
                lambda: set(owners().values()) == {"node-b"} and all_idle(),
                70,
                "the survivor to watch every mailbox",
            )
            takeover = time.monotonic() - killed_at
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as page:
                metrics = page.read().decode()

            for i in range(USERS):
                chaos.call(server.generate_message, f"user{i}")
            wait_until(
                lambda: (
                    query(database_url, "SELECT count(*) FROM delivery_delivery")[0][0] >= USERS
                ),
                30,
                "the new mail recorded",
            )
            time.sleep(1.0)  # anything recorded twice would show now
            most_sessions = sampler.most
        messages = [m for (m,) in query(database_url, "SELECT message_id FROM delivery_delivery")]
        output = procs.stop(survivor)

    print(f"takeover of {len(moving)} mailboxes: {takeover:.2f} s")
    assert survivor.returncode == 0, output
    assert 0 < len(moving) < USERS
    assert takeover < TAKEOVER_LIMIT, f"the survivor took {takeover:.1f} s"
    assert "engine node node-a is dead" in output
    assert "superimap_engine_nodes_taken_over_total 1.0" in metrics
    assert most_sessions == 1, "a mailbox was watched by two sessions at once"
    assert len(messages) == len(set(messages)) == USERS


MANY = 100
BURST, RATE = 10, 10.0


def test_mailboxes_moving_at_once_log_in_no_faster_than_the_host_limit(database_url, tmp_path):
    """The survivor's logins to the IMAP host stay within IMAP_LOGIN_BURST_PER_HOST and
    IMAP_LOGINS_PER_SECOND_PER_HOST however many mailboxes move at once."""
    with ServerThread(MANY) as chaos, Processes(tmp_path) as procs:
        server = chaos.server
        env = superimap_env(
            database_url,
            tmp_path / "var",
            ALLOW_LOOPBACK_IMAP="true",
            IMAP_LOGIN_BURST_PER_HOST=str(BURST),
            IMAP_LOGINS_PER_SECOND_PER_HOST=str(int(RATE)),
            # The chaos server is on 127.0.0.1: loopback's own limit applies to it.
            IMAP_LOGIN_LIMITS=f"loopback={BURST}/{int(RATE)}",
        )
        setup = {**env, "CHAOS_PORT": str(server.port), "USERS": str(MANY)}
        run_cli(setup, "manage", "shell", "-c", CHAOS_USERS_SCRIPT)

        def owners() -> dict[str, str]:
            return dict(query(database_url, "SELECT tag, owner_node FROM mailboxes_mailboxuser"))

        def all_idle() -> bool:
            return len(chaos.call(lambda: idling(server))) == MANY

        doomed = procs.start({**env, "ENGINE_NODE_NAME": "node-a"}, "imap-client")
        survivor = procs.start({**env, "ENGINE_NODE_NAME": "node-b"}, "imap-client")
        wait_until(
            lambda: set(owners().values()) == {"node-a", "node-b"} and all_idle(),
            120,
            "both nodes sharing the mailboxes, every one in IDLE",
        )
        moving = sum(1 for node in owners().values() if node == "node-a")
        time.sleep(BURST / RATE + 0.5)  # the survivor's host bucket is full again
        logins_before = chaos.call(lambda: server.stats["logins"])
        doomed.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: not all_idle(), 10, "the dead node's connections to close")
        samples: list[tuple[float, int]] = []
        while not all_idle():
            logins = chaos.call(lambda: server.stats["logins"]) - logins_before
            samples.append((time.monotonic() - killed_at, logins))
            assert samples[-1][0] < 90, "the survivor did not take every mailbox"
            time.sleep(0.1)
        took = time.monotonic() - killed_at
        samples.append((took, chaos.call(lambda: server.stats["logins"]) - logins_before))
        output = procs.stop(survivor)

    print(f"{moving} mailboxes moved, all in IDLE after {took:.1f} s; logins {samples[-1][1]}")
    assert moving > 2 * BURST, moving
    assert samples[-1][1] >= moving
    for elapsed, logins in samples:
        assert logins <= BURST + RATE * elapsed + 1, (elapsed, logins)
    assert took >= (moving - BURST) / RATE
    assert "engine node node-a is dead" in output


def test_a_paused_node_keeps_its_mailboxes(database_url, tmp_path):
    """SIGSTOP is not death: the paused process holds its name lock, so the other node does
    not take its mailboxes (the lease, 60 s, would); after SIGCONT it goes on alone."""
    with ServerThread(USERS) as chaos, Processes(tmp_path) as procs:
        server = chaos.server
        env = superimap_env(database_url, tmp_path / "var", ALLOW_LOOPBACK_IMAP="true")
        setup = {**env, "CHAOS_PORT": str(server.port), "USERS": str(USERS)}
        run_cli(setup, "manage", "shell", "-c", CHAOS_USERS_SCRIPT)

        def owners() -> dict[str, str]:
            return dict(query(database_url, "SELECT tag, owner_node FROM mailboxes_mailboxuser"))

        with SessionSampler(chaos) as sampler:
            paused = procs.start({**env, "ENGINE_NODE_NAME": "node-a"}, "imap-client")
            other = procs.start({**env, "ENGINE_NODE_NAME": "node-b"}, "imap-client")
            wait_until(
                lambda: (
                    set(owners().values()) == {"node-a", "node-b"}
                    and len(chaos.call(lambda: idling(server))) == USERS
                ),
                60,
                "both nodes sharing the mailboxes, every one in IDLE",
            )
            before = owners()
            paused.send_signal(signal.SIGSTOP)
            try:
                time.sleep(10)  # its heartbeat is 10 s old: dead by age, alive by its lock
                during = owners()
            finally:
                paused.send_signal(signal.SIGCONT)
            for i in range(USERS):
                chaos.call(server.generate_message, f"user{i}")
            wait_until(
                lambda: (
                    query(database_url, "SELECT count(*) FROM delivery_delivery")[0][0] >= USERS
                ),
                30,
                "the new mail recorded",
            )
            time.sleep(1.0)
            most_sessions = sampler.most
        messages = [m for (m,) in query(database_url, "SELECT message_id FROM delivery_delivery")]
        outputs = [procs.stop(paused), procs.stop(other)]

    assert during == before, "a paused node's mailboxes were taken over"
    assert most_sessions == 1
    assert len(messages) == len(set(messages)) == USERS
    assert not any("is dead" in output for output in outputs), outputs
