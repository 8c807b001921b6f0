"""A node's heartbeat, beaten from a thread of its own (design.md 8, issue 20 item 5).

A node with a name lock renews its heartbeat row every second. Those beats used to go
through the engine's event loop and its database pool, behind whatever the sessions asked
of the pool; a node starting thousands of sessions let its heartbeat lapse past the 60 s
lease and the other nodes freed a live node's mailboxes. Here a thread with a database
connection of its own beats on time whatever the loop and the pool are doing, and tells
the loop (a callback through call_soon_threadsafe) when a refresh should come at once: this
node's row was gone, a node died, or the set of live nodes changed (a node joined, or
another node freed a dead one first).

It still stops beating when the process cannot work: a frozen process (SIGSTOP) beats no
more than a killed one, and an event loop that has not run for ``stall_limit`` (half the
lease) is taken as wedged: the beats stop and the lease runs out as for a dead node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import connections

from superimap.engine import leases
from superimap.platform import dboutage

log = logging.getLogger("superimap.engine")

# The event loop's "I run" ticks per stall limit (5 s at the default 60 s lease).
TICKS_PER_STALL = 6


class Heartbeat:
    """Beats ``every`` seconds from its own thread until stop(). ``judge()`` gives the lock
    grace this node may judge others by (Engine._judge_locks); ``on_news()`` is called in
    the event loop ``loop`` when a refresh should come at once or the name lock was lost
    (``lock_lost``)."""

    def __init__(
        self,
        node_id: str,
        *,
        lease: timedelta,
        node_alive: timedelta,
        node_lock,
        judge: Callable[[], timedelta | None],
        loop,
        on_news: Callable[[], None],
        every: float = 1.0,
        probe: leases.ChangeProbe | None = None,
        probe_since: Callable[[], datetime | None] | None = None,
        probe_every: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self.lease = lease
        self.node_alive = node_alive
        self.node_lock = node_lock
        self.judge = judge
        self.loop = loop
        self.on_news = on_news
        self.every = every
        self.stall_limit = lease.total_seconds() / 2
        # How often the event loop says it runs (Engine._tick): well inside the stall limit,
        # and no more often than that needs. Every second it was a wake-up of the loop for
        # nothing, and an idle wake-up is dear on a virtual machine (design.md 8, "Idle cost").
        self.tick_every = self.stall_limit / TICKS_PER_STALL
        now = time.monotonic()
        self.loop_seen = now  # set by the event loop (Engine._tick) while it runs
        self.live: frozenset[str] = frozenset()  # live node names at the last beat
        self.live_changed = now  # monotonic: when ``live`` last changed
        self.lock_lost = False
        self.lock_checked = 0.0  # monotonic: when the name lock was last found held
        self.beats = 0
        self.last_beat = 0.0  # monotonic: the last beat written
        self._stalled = False
        # The change probe (leases.ChangeProbe, PostgreSQL) run after a beat once every
        # ``probe_every`` seconds with the ``since`` the engine gives (probe_since(); None:
        # not yet): ``unchanged`` is that since when the last probe found nothing changed
        # (else None), ``probed_at`` when (monotonic). The engine's idle refresh reads them
        # instead of asking the database itself (Engine._quiet_refresh).
        self.probe = probe
        self.probe_since = probe_since
        self.probe_beats = max(1, round(probe_every / every))
        self.unchanged: datetime | None = None
        self.probed_at = 0.0
        self.probes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{node_id}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        next_at = time.monotonic()
        try:
            while not self._stop.wait(max(0.0, next_at - time.monotonic())):
                # On schedule, but never a burst of beats to catch up after a pause.
                next_at = max(next_at + self.every, time.monotonic())
                self._beat_once()
        finally:
            connections.close_all()  # this thread's connections only

    def _beat_once(self) -> None:
        stalled = time.monotonic() - self.loop_seen > self.stall_limit
        if stalled != self._stalled:
            self._stalled = stalled
            if stalled:
                log.warning(
                    "engine %s: the event loop has not run for %.0f s: no more heartbeats "
                    "until it does (the lease runs out as for a dead node)",
                    self.node_id,
                    self.stall_limit,
                )
        if stalled:
            return
        try:
            # No close_old_connections() per beat: with CONN_HEALTH_CHECKS it would add a
            # SELECT 1 to every beat. A connection that broke fails the beat and is closed
            # below; the next beat opens a new one.
            beat = self._beat()
        except Exception as exc:  # noqa: BLE001 - the refresh reports database trouble
            if not dboutage.lost(exc):
                log.warning("engine %s: heartbeat failed: %s", self.node_id, exc)
            connections.close_all()  # this thread's: the next beat connects again
            return
        if beat is None:
            return  # the lock lost (told), or its database unreachable
        self.beats += 1
        self.last_beat = time.monotonic()
        changed = beat.live != self.live
        if changed:
            self.live = beat.live
            self.live_changed = self.last_beat
        if changed or beat.dead or not beat.present:
            self._tell()

    def _beat(self) -> leases.Beat | None:
        """One beat, after making sure this process still holds its name (else lock_lost
        and the loop told). PostgreSQL: one statement on the lock's own connection, which
        proves the lock and beats at once (NodeLock.run_held); otherwise (a lock file) the
        lock check costs nothing and the beat runs on the thread's Django connection."""
        lock = self.node_lock
        judge = self.judge()
        if lock.kind == "advisory":
            since = self._probe_due()
            held, beat = lock.run_held(lambda conn: self._beat_and_probe(conn, judge, since))
        else:
            held = lock.still_held()
            beat = leases.beat(self.node_id, self.lease, judge, self.node_alive) if held else None
        if not held:
            self.lock_lost = True
            self._stop.set()
            self._tell()
            return None
        self.lock_checked = time.monotonic()
        return beat

    def _probe_due(self) -> datetime | None:
        """The since to probe with in this beat, or None (no probe due, or none yet)."""
        if self.probe is None or self.probe_since is None or self.beats % self.probe_beats:
            return None
        return self.probe_since()

    def _beat_and_probe(self, conn, judge: timedelta | None, since: datetime | None):
        beat = leases.beat_on(conn, self.node_id, self.lease, judge, self.node_alive)
        if since is not None and self.probe is not None:
            try:
                unchanged = self.probe.unchanged_on(conn, since)
            except Exception as exc:  # noqa: BLE001 - the beat went through; the refresh claims
                log.debug("engine %s: change probe failed: %s", self.node_id, exc)
                unchanged = False
            was_quiet = self.unchanged is not None
            self.unchanged = since if unchanged else None
            self.probed_at = time.monotonic()
            self.probes += 1
            if was_quiet and not unchanged:
                # The first change after a quiet spell: the engine refreshes now rather than
                # at its next refresh after the next probe.
                self._tell()
        return beat

    def _tell(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.on_news)
        except RuntimeError:  # the loop closed meanwhile: nothing to tell
            pass
