"""A node's heartbeat comes from a thread of its own (engine/heartbeat.py, issue 20 item 5):
a node whose database threads and event loop are busy (starting thousands of sessions)
still beats every second, and a node whose event loop is wedged stops beating, so its
lease runs out as for a dead node. Real engine, database and name lock."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta

from django.db import close_old_connections

from superimap.engine import leases, supervisor
from superimap.engine.models import EngineNode
from superimap.engine.nodelock import NodeLock
from superimap.mailboxes.models import MailboxUser
from tests.helpers.engine import RunningEngine, ServerThread, loopback_users, wait_for
from tests.helpers.processes import run_cli, superimap_env

LEASE = timedelta(seconds=4)  # the stall limit is half of it


def _last_seen(node: str):
    close_old_connections()
    return EngineNode.objects.get(node_id=node).last_seen


def _spin(seconds: float) -> None:
    """Hold the event loop with CPU work, as a burst of session starts does."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sum(range(1000))


def test_a_node_whose_database_threads_and_loop_are_busy_still_beats(
    mail_partner, settings, tmp_path
):
    settings.VAR_DIR = tmp_path
    lock = NodeLock("busy").acquire()

    async def scenario():
        async with RunningEngine("busy", node_lock=lock, lease=LEASE) as engine:
            await wait_for(lambda: engine.heartbeat is not None and engine.heartbeat.beats >= 1)
            release = threading.Event()
            # Every database thread of the engine taken for 5 s: a beat through the pool
            # (as before) would wait all that time.
            blockers = [
                asyncio.ensure_future(engine.pool.run(release.wait, 10))
                for _ in range(engine.pool.size)
            ]
            beats_before = engine.heartbeat.beats
            seen = []
            until = time.monotonic() + 5.0
            while time.monotonic() < until:
                _spin(0.2)
                seen.append((time.monotonic(), await asyncio.to_thread(_last_seen, "busy")))
                await asyncio.sleep(0.05)
            release.set()
            await asyncio.gather(*blockers)
            return seen, engine.heartbeat.beats - beats_before

    seen, beats = asyncio.run(scenario())
    lock.release()
    # Each sample's heartbeat is at most ~2 beats old: written on time whatever the pool did.
    first = seen[0][1]
    ages = [(when - seen[0][0]) - (last_seen - first).total_seconds() for when, last_seen in seen]
    assert max(ages) < 2.5, ages
    assert beats >= 3


def test_a_wedged_event_loop_stops_the_heartbeat(mail_partner, settings, tmp_path, caplog):
    settings.VAR_DIR = tmp_path
    lock = NodeLock("wedged").acquire()

    async def scenario():
        async with RunningEngine("wedged", node_lock=lock, lease=LEASE) as engine:
            await wait_for(lambda: engine.heartbeat is not None and engine.heartbeat.beats >= 1)
            time.sleep(5.0)  # the loop runs nothing: past the stall limit (2 s)
            return time.monotonic() - engine.heartbeat.last_beat

    since_last_beat = asyncio.run(scenario())
    lock.release()
    # The beats stopped ~2 s into the 5 s wedge (the stall limit, plus up to a beat).
    assert since_last_beat >= 1.5
    assert "the event loop has not run for 2 s" in caplog.text


def test_between_refreshes_the_refresh_wait_is_the_liveness_tick(mail_partner, settings, tmp_path):
    """The event loop's liveness tick (read by the stall check) comes from the refresh's
    own wait between refreshes, so an idle engine has one timer every 5 s, not two: a tick
    task runs only while a refresh works (the busy test above: a refresh that waits 5 s on
    the database is not taken for a wedged loop), and the loop is never seen as stalled."""
    settings.VAR_DIR = tmp_path
    lock = NodeLock("ticks").acquire()
    lease = timedelta(seconds=12)  # a 6 s stall limit: a tick every 1 s, the refresh's

    async def scenario():
        async with RunningEngine(
            "ticks", node_lock=lock, lease=lease, refresh_interval=1.0
        ) as engine:
            await wait_for(lambda: engine.heartbeat is not None and engine.heartbeat.beats >= 1)
            heartbeat = engine.heartbeat
            assert heartbeat.tick_every == 1.0
            ages, ticking = [], 0
            for _ in range(40):
                await asyncio.sleep(0.1)
                ages.append(time.monotonic() - heartbeat.loop_seen)
                ticking += any(t.get_name() == "tick-ticks" for t in asyncio.all_tasks())
            return ages, ticking, heartbeat

    ages, ticking, heartbeat = asyncio.run(scenario())
    lock.release()
    assert max(ages) < 1.5, ages  # a tick (1 s) and scheduling
    assert ticking < 20, ticking  # present only while a refresh runs (it was always there)
    assert not heartbeat._stalled


def test_an_idle_node_skips_its_claims_and_still_picks_up_a_new_mailbox(
    mail_partner, settings, tmp_path
):
    """With the heartbeat beating, a refresh that finds no mailbox changed and none
    unowned skips claim_mailboxes() (Engine._quiet_refresh); a mailbox connected
    meanwhile is claimed and watched at the next refresh."""
    settings.VAR_DIR = tmp_path
    settings.ENGINE_JOIN_SECONDS = 0
    lock = NodeLock("quiet").acquire()

    async def scenario(port: int):
        async with RunningEngine("quiet", node_lock=lock, lease=LEASE) as engine:
            await wait_for(lambda: engine.quiet_refreshes >= 3)
            claims = engine._refreshes - engine.quiet_refreshes
            beats = engine.heartbeat.beats
            await asyncio.to_thread(loopback_users, mail_partner, port, 1)
            user = await asyncio.to_thread(lambda: MailboxUser.objects.get().id)
            await wait_for(lambda: user in engine.sessions, timeout=5)
            await wait_for(
                lambda: MailboxUser.objects.get(id=user).status == MailboxUser.Status.IDLE
            )
            owner = await asyncio.to_thread(lambda: MailboxUser.objects.get(id=user).owner_node)
            return claims, beats, owner

    with ServerThread(1) as chaos:
        claims, beats, owner = asyncio.run(scenario(chaos.server.port))
    lock.release()
    assert beats >= 1
    # Only the first claim (and the read-backs) ran before the mailbox came: 0.2 s refreshes.
    assert claims <= 2
    assert owner == "quiet"


def test_a_quiet_node_reads_its_mailboxes_back_only_at_each_recheck(
    mail_partner, settings, tmp_path, monkeypatch
):
    """The read-back of every held row (each FULL_READ_EVERY refreshes) comes only every
    RECHECK_EVERY refreshes while every refresh since the last one was quiet; after a
    refresh that claimed (a mailbox connected), the next FULL_READ_EVERY mark reads back."""
    settings.VAR_DIR = tmp_path
    settings.ENGINE_JOIN_SECONDS = 0
    monkeypatch.setattr(supervisor, "FULL_READ_EVERY", 2)
    monkeypatch.setattr(supervisor, "RECHECK_EVERY", 12)
    lock = NodeLock("readback").acquire()
    complete: list[tuple[bool, bool]] = []  # (read_all asked, read back) of every claim
    claim_mailboxes = leases.claim_mailboxes

    def recording(*args):
        claim = claim_mailboxes(*args)
        complete.append((args[-2], claim.complete))
        return claim

    monkeypatch.setattr(leases, "claim_mailboxes", recording)

    async def scenario(port: int):
        async with RunningEngine("readback", node_lock=lock, lease=LEASE) as engine:
            await wait_for(lambda: engine._refreshes >= 25, timeout=20)
            quiet = list(complete)
            await asyncio.to_thread(loopback_users, mail_partner, port, 1)
            user = await asyncio.to_thread(lambda: MailboxUser.objects.get().id)
            await wait_for(lambda: user in engine.sessions, timeout=5)
            mark = len(complete)
            await wait_for(lambda: any(full for _, full in complete[mark:]), timeout=5)
            return quiet, complete[mark - 1 :]

    with ServerThread(1) as chaos:
        quiet, after = asyncio.run(scenario(chaos.server.port))
    lock.release()
    # 25 refreshes: the first claim, the read-backs at 12 and 24, and the delta claim the
    # heartbeat's first news brings (a beat telling of this node's own join), which earns
    # the read-back at the next FULL_READ_EVERY mark; nothing else (there were 13
    # read-backs at FULL_READ_EVERY = 2 before).
    deltas = [full for asked, full in quiet if not asked]
    assert len(deltas) <= 1 and not any(deltas), quiet
    assert [full for _, full in quiet].count(True) <= 3 + len(deltas), quiet
    assert len(quiet) <= 4 + len(deltas), quiet
    # The claim that took the new mailbox was a delta; a read-back followed at once.
    assert after[0][1] is False and after[-1][1] is True, after


# The same on PostgreSQL, in a process of its own (as tests/engine/test_postgres_*.py): the
# heartbeat thread probes for changes on its name lock's connection, so an idle refresh
# makes no database call at all, and a mailbox connected meanwhile is still picked up.
PG_IDLE_SCENARIO = """
import asyncio, json, time
from datetime import timedelta
from django.conf import settings
from django.db import connection
from superimap.engine.nodelock import NodeLock
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Partner
from tests.helpers.engine import RunningEngine, ServerThread, loopback_users, wait_for

settings.ENGINE_JOIN_SECONDS = 0
partner = Partner.objects.create(name="p", new_mail_webhook="http://127.0.0.1:9/hook")

def probe_now(engine):
    connection.ensure_connection()
    return engine.heartbeat.probe.unchanged_on(connection.connection, engine._probe_since())
lock = NodeLock("pg-quiet").acquire()

async def scenario(port):
    async with RunningEngine("pg-quiet", node_lock=lock, lease=timedelta(seconds=4)) as engine:
        await wait_for(lambda: engine.quiet_refreshes >= 2)
        heartbeat, pool = engine.heartbeat, engine.pool
        quiet, claims = engine.quiet_refreshes, engine._refreshes - engine.quiet_refreshes
        calls, probes = pool.calls, heartbeat.probes
        await wait_for(lambda: engine.quiet_refreshes >= quiet + 5)
        window = {
            "quiet": engine.quiet_refreshes - quiet,
            "claims": engine._refreshes - engine.quiet_refreshes - claims,
            "pool_calls": pool.calls - calls,
            "probes": heartbeat.probes - probes,
        }
        window["probe_before"] = await asyncio.to_thread(probe_now, engine)
        await asyncio.to_thread(loopback_users, partner, port, 1)
        window["probe_after"] = await asyncio.to_thread(probe_now, engine)
        user = await asyncio.to_thread(lambda: MailboxUser.objects.get().id)
        connected = time.monotonic()
        await wait_for(lambda: user in engine.sessions, timeout=10)
        window["picked_up_seconds"] = time.monotonic() - connected
        await wait_for(lambda: MailboxUser.objects.get(id=user).status == "idle")
        row = await asyncio.to_thread(lambda: MailboxUser.objects.get(id=user))
        window["owner"] = row.owner_node
        return window

with ServerThread(1) as chaos:
    result = asyncio.run(scenario(chaos.server.port))
lock.release()
print("RESULT " + json.dumps(result))
"""


def test_on_postgresql_an_idle_refresh_asks_the_database_nothing(migrated_postgres_url, tmp_path):
    env = superimap_env(migrated_postgres_url, tmp_path / "var")
    out = run_cli(env, "manage", "shell", "-c", PG_IDLE_SCENARIO)
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result["quiet"] >= 5 and result["probes"] >= 1, result
    # The probe's statement itself: nothing changed, then a new watchable unowned row.
    assert result["probe_before"] is True and result["probe_after"] is False, result
    # One pool call per claim (the read-backs); none for the quiet refreshes.
    assert result["pool_calls"] == result["claims"], result
    # The heartbeat's probe (every beat at 0.2 s refreshes) finds the new row at once.
    assert result["picked_up_seconds"] < 5.0, result
    assert result["owner"] == "pg-quiet", result
