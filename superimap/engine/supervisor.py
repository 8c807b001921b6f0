"""The engine: starts and stops one MailboxSession task per mailbox this node holds.

Every refresh (5 s) it renews its leases, picks up mailboxes that were connected, archived
or deleted, publishes a heartbeat, saves status changes in one batch and logs the spec's
metrics in the Librato log format.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from superimap.engine import leases, store
from superimap.engine.backfill import BackfillPacer
from superimap.engine.gcfreeze import GcFreezer, tune_young_collections
from superimap.engine.heartbeat import Heartbeat
from superimap.engine.persister import GroupPersister
from superimap.engine.session import MailboxSession, SessionSettings
from superimap.engine.tracers import TracerSender
from superimap.imapclient import LoginLimiter
from superimap.mailboxes.models import MailLog
from superimap.platform import dboutage, rollups
from superimap.platform.dbpool import DbPool
from superimap.platform.metrics import (
    EMAILS_PROCESSED,
    ENGINE_METRICS,
    MAIL_SKIPPED,
    MAILBOX_SESSIONS,
    NODES_TAKEN_OVER,
    PUSH_TO_COMMIT,
    expose,
)
from superimap.sync.persist import PersistResult

log = logging.getLogger("superimap.engine")

METRICS_EVERY = 60.0
# Refreshes between full read-backs of the held set (1 min at 5 s) after a refresh that
# claimed; when every refresh since the last read-back was a quiet one (nothing changed,
# Engine._quiet_refresh), only every RECHECK_EVERY: the read-back of 17,000 held rows was
# ~40 ms of a database thread each minute, most of an idle engine's database CPU.
FULL_READ_EVERY = 12
# Refreshes between re-rankings of every watchable mailbox and orphan searches when nothing
# they depend on changed (leases.claim_mailboxes ``recheck``): 10 min at 5 s.
RECHECK_EVERY = 10 * FULL_READ_EVERY
# Changes are looked for from this long before the previous refresh: a row saved just
# before that refresh may have committed after it (SQLite's busy timeout is 30 s).
CHANGE_SLACK = timedelta(seconds=30)
# A node with a name lock renews its heartbeat this often, from a thread of its own
# (engine/heartbeat.py), and looks for a node that died (engine/nodelock.py) or joined: the
# engine refreshes at once then.
WATCH_EVERY = 1.0
# A node whose name lock is free is dead once its heartbeat is also this much overdue (a
# live node whose lock connection broke takes its lock back at its next beat).
LOCK_GRACE_SECONDS = 2.0
# Where the sessions' done callbacks run (they only add to a set): one empty context, not a
# copy of the current one per session.
_CALLBACK_CONTEXT = contextvars.Context()


class Engine:
    def __init__(
        self,
        pool: DbPool,
        node_id: str,
        *,
        on_new_deliveries: Callable[[], None] | None = None,
        capacity: int | None = None,
        refresh_interval: float | None = None,
        lease: timedelta | None = None,
        session_settings: SessionSettings | None = None,
        handshake_concurrency: int = 50,
        tracer_interval: float | None = None,
        num_tracers: int | None = None,
        node_lock=None,
        login_limiter: LoginLimiter | None = None,
        backfill_pacer: BackfillPacer | None = None,
        gc_freeze: bool = False,
    ) -> None:
        self.pool = pool
        self.node_id = node_id
        self.persister = GroupPersister(pool)
        # engine/nodelock.py: this process alone runs under node_id (None in-process tests).
        self.node_lock = node_lock
        self._lock_lost = False
        self.on_new_deliveries = on_new_deliveries
        self.capacity = capacity or settings.MAX_USER_THREADS
        self.refresh_interval = refresh_interval or float(settings.ENGINE_REFRESH_SECONDS)
        self.lease = lease or timedelta(seconds=settings.ENGINE_LEASE_SECONDS)
        self.node_alive = timedelta(seconds=settings.ENGINE_NODE_ALIVE_SECONDS)
        self.lock_grace = timedelta(seconds=WATCH_EVERY + LOCK_GRACE_SECONDS)
        # Cold start (design.md 8): a node with a name lock claims nothing unowned until the
        # live nodes have stayed the same this long (at most ENGINE_NODE_ALIVE_SECONDS).
        self.join_seconds = float(settings.ENGINE_JOIN_SECONDS)
        self.heartbeat: Heartbeat | None = None
        self._announced = 0.0  # monotonic: when this node's heartbeat row was written
        self._news = asyncio.Event()  # set by the heartbeat: refresh now
        self.session_settings = session_settings or SessionSettings(
            idle_reissue=float(settings.IDLE_REISSUE_SECONDS),
            idle_by_host=settings.IMAP_IDLE_SECONDS,
            poll_interval=float(settings.POLL_INTERVAL),
            folder_poll=float(settings.FOLDER_POLL_SECONDS),
            max_email_size=settings.MAX_EMAIL_SIZE,
        )
        self.handshakes = asyncio.Semaphore(handshake_concurrency)
        # Every login waits for a token per mailbox and per host (imapclient/ratelimit.py).
        self.logins = login_limiter or LoginLimiter()
        # Backfills send at most so many messages a second per mailbox and host (4.12).
        self.backfill_pacer = backfill_pacer or BackfillPacer()
        self.sessions: dict[int, tuple[MailboxSession, asyncio.Task, object]] = {}
        self._statuses: dict[int, tuple[str, str, int]] = {}
        self._current: dict[int, str] = {}  # latest status per session, for the summary
        # The ids in _current whose status is a watching one (_pacing reads them at every
        # refresh: a set kept up to date, not a scan of every session).
        self._watching: set[int] = set()
        # The watching statuses (idle, polling, no failures) last written per running
        # session: a session reports one before every IDLE, i.e. after every new message,
        # and rewriting an unchanged row for each of them was thousands of UPDATEs per
        # flush at 500 mails/s, holding SQLite's writer while sessions waited to persist.
        self._written: dict[int, tuple[str, str, int]] = {}
        # What this node holds ({user id: session_version}), kept up to date from the deltas
        # claim_mailboxes() returns; re-read in full every FULL_READ_EVERY refreshes.
        self._held: dict[int, str] = {}
        self._held_as_of: datetime | None = None
        # Mailboxes the next refresh must look at besides what claim_mailboxes() reports:
        # sessions that ended, and held mailboxes not started yet.
        self._touched: set[int] = set()
        self._refreshes = 0
        self._claimed_since_read_back = False  # a delta claim since the last read-back
        self._took_unowned = False  # the last claim could take unowned mailboxes
        self._must_claim = False  # the heartbeat had news since the last claim
        self.quiet_refreshes = 0  # refreshes that found nothing to claim (_quiet_refresh)
        self.emails_processed = 0
        self._wake_due = False  # on_new_deliveries() is scheduled for this turn (_wake_workers)
        self.wakeups = 0
        # IDLEs the sessions waited in (first ones and re-issues): a counter, as a status
        # report is not made again at a re-issue (devtools/bench/tlsscale.py counts them).
        self.idles = 0
        for reason in MailLog.Reason.values:
            MAIL_SKIPPED.labels(reason)  # every reason shows in /metrics, at 0 until used
        self.started_at = timezone.now()
        # engine/gcfreeze.py; off for engines that share a process with other code (tests).
        self.gc_freezer = GcFreezer() if gc_freeze else None
        if gc_freeze:
            tune_young_collections()
        self.tracers = TracerSender(self, tracer_interval, num_tracers)
        expose(ENGINE_METRICS)

    # --- called by sessions ---------------------------------------------------------------

    def session_ended(self, user_id: int) -> None:
        """A session's task is done: the next refresh looks at its mailbox."""
        self._touched.add(user_id)

    def report(self, user_id: int, status: str, error: str, failures: int) -> None:
        self._statuses[user_id] = store.status_value(status, error, failures)
        self._current[user_id] = status
        if status in store.WATCHING:
            self._watching.add(user_id)
        else:
            self._watching.discard(user_id)

    def session_states(self) -> dict[str, int]:
        """This engine's mailbox sessions by their latest status (the per-minute summary)."""
        states: dict[str, int] = {}
        for user_id in self.sessions:
            status = str(self._current.get(user_id, "starting"))
            states[status] = states.get(status, 0) + 1
        return states

    def record_persisted(self, result: PersistResult) -> None:
        """After a batch committed: counters, and the worker woken for new deliveries."""
        self.emails_processed += result.new + result.tracers
        for reason, count in result.skips.items():
            MAIL_SKIPPED.labels(reason).inc(count)
        EMAILS_PROCESSED.inc(result.new + result.tracers)
        if result.new:
            now = time.time()
            push = [max(0.0, now - pushed) for pushed in result.pushed_at]
            for seconds in push:
                PUSH_TO_COMMIT.observe(seconds)
            rollups.RECORDER.record_new_mails(result.new, push)
        if result.new and self.on_new_deliveries:
            self._wake_workers()

    def _wake_workers(self) -> None:
        """on_new_deliveries() once for every batch that committed in this turn of the
        event loop: a group commit resumes all its sessions in one turn, and each used to
        wake the workers (a directory scan and a datagram per worker, or a NOTIFY) for
        rows the first wake-up covers already. No delay: the call comes right after them."""
        if self._wake_due:
            return
        self._wake_due = True
        asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_due = False
        self.wakeups += 1
        if self.on_new_deliveries:
            self.on_new_deliveries()

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "engine %s started: capacity=%d%s",
            self.node_id,
            self.capacity,
            f", holding the {self.node_lock.description}" if self.node_lock else "",
        )
        last_metrics = time.monotonic()
        tracers = asyncio.create_task(self.tracers.run(), name=f"tracers-{self.node_id}")
        try:
            if self.node_lock is not None:
                await self._start_heartbeat()
            while not stop.is_set():
                # The liveness tick runs while the refresh works (it may wait long on the
                # database); between refreshes the wait itself tells the heartbeat the loop
                # runs, in the refresh's own wake-up (_until_next_refresh): one timer every
                # 5 s, not two (issue 20 item 4).
                ticker = self._ticking()
                try:
                    await self._check_lock()
                    try:
                        await self.refresh()
                    except Exception as exc:  # noqa: BLE001 - the database may be briefly away
                        if not dboutage.lost(exc):
                            log.exception("engine %s: refresh failed; retrying", self.node_id)
                    if time.monotonic() - last_metrics >= METRICS_EVERY:
                        self.log_metrics()
                        self.logins.forget_full()
                        last_metrics = time.monotonic()
                finally:
                    if ticker is not None:
                        ticker.cancel()
                await self._until_next_refresh(stop)
        finally:
            tracers.cancel()
            await asyncio.gather(tracers, return_exceptions=True)
            if self.heartbeat is not None:
                await asyncio.to_thread(self.heartbeat.stop)
            await self.shutdown()

    async def _start_heartbeat(self) -> None:
        """Write this node's heartbeat row (the nodes starting with it count it from their
        next beat), then beat from a thread of its own (engine/heartbeat.py)."""
        lock = self.node_lock
        while True:
            try:
                await self.pool.run(
                    leases.announce, self.node_id, self.capacity, self.started_at, lock.kind
                )
                break
            except Exception as exc:  # noqa: BLE001 - the database may be briefly away
                if not dboutage.lost(exc):
                    log.exception("engine %s: could not announce itself; retrying", self.node_id)
                await asyncio.sleep(WATCH_EVERY)
        self._announced = time.monotonic()
        probe = None
        if lock.kind == "advisory":
            # Compiled in a database thread (it has a Django connection); run by the heartbeat.
            probe = await self.pool.run(leases.ChangeProbe, settings.ALLOW_LOOPBACK_IMAP)
        self.heartbeat = Heartbeat(
            self.node_id,
            lease=self.lease,
            node_alive=self.node_alive,
            node_lock=lock,
            judge=self._judge_locks,
            loop=asyncio.get_running_loop(),
            on_news=self._news.set,
            every=WATCH_EVERY,
            probe=probe,
            probe_since=self._probe_since,
            probe_every=self.refresh_interval,
        ).start()

    def _probe_since(self) -> datetime | None:
        """What the heartbeat's change probe looks back to: the last claim, less the slack
        (called from the heartbeat thread)."""
        as_of = self._held_as_of
        return None if as_of is None else as_of - CHANGE_SLACK

    def _ticking(self) -> asyncio.Task | None:
        """Tell the heartbeat thread that the event loop runs (a wedged loop beats no more),
        now and every tick until the task is cancelled; None without a heartbeat."""
        heartbeat = self.heartbeat
        if heartbeat is None:
            return None
        heartbeat.loop_seen = time.monotonic()
        return asyncio.create_task(self._tick(heartbeat), name=f"tick-{self.node_id}")

    @staticmethod
    async def _tick(heartbeat: Heartbeat) -> None:
        while True:
            await asyncio.sleep(heartbeat.tick_every)
            heartbeat.loop_seen = time.monotonic()

    async def _check_lock(self) -> None:
        heartbeat = self.heartbeat
        lost = heartbeat is not None and heartbeat.lock_lost
        # The heartbeat thread proves the lock every second: a check of its own here was a
        # database call (and a pg_locks query) per refresh for nothing (issue 20 item 4).
        recent = (
            heartbeat is not None
            and time.monotonic() - heartbeat.lock_checked <= 2 * WATCH_EVERY + 1.0
        )
        if lost or (
            self.node_lock is not None
            and not recent
            and not await self.pool.run(self.node_lock.still_held)
        ):
            # Another process may run under this name now: stop before two do, and leave
            # the leases alone (they may be the other process's now).
            self._lock_lost = True
            raise RuntimeError(f"engine {self.node_id}: node name lock lost")

    def _join_left(self) -> float:
        """Seconds until this node may claim unowned mailboxes (0: it may). A node with a
        name lock waits until the live nodes (its heartbeat thread reads them every
        second) have not changed for ENGINE_JOIN_SECONDS, and at most
        ENGINE_NODE_ALIVE_SECONDS: nodes starting together each claim their own share
        instead of the first one up claiming all and handing most of it over."""
        heartbeat = self.heartbeat
        if heartbeat is None or self.join_seconds <= 0 or self._took_unowned:
            # Once joined, a change of the live nodes (one more started, one died) does not
            # stop this node claiming: its claims rank among the nodes live then. Waiting
            # again held a recent joiner's share of a dead node back by the whole wait.
            return 0.0
        now = time.monotonic()
        if heartbeat.beats == 0:
            quiet_left = self.join_seconds  # not one round of beats seen yet
        else:
            quiet_left = max(self._announced, heartbeat.live_changed) + self.join_seconds - now
        cap_left = self._announced + self.node_alive.total_seconds() - now
        return max(0.0, min(quiet_left, cap_left))

    def _judge_locks(self) -> timedelta | None:
        """The lock grace when this node may free others by their free name lock: only
        with a name lock of its own, held without a break for a refresh and the grace
        (after a PostgreSQL restart every node needs a beat to take its lock back)."""
        lock = self.node_lock
        steady = self.refresh_interval + LOCK_GRACE_SECONDS
        if lock is not None and lock.steady(steady):
            return self.lock_grace
        return None

    async def _until_next_refresh(self, stop: asyncio.Event) -> None:
        """Wait a refresh interval, or less: until the heartbeat thread has news (another
        node died or joined, this node's row was freed, the name lock was lost) or this
        node's join wait is over."""
        deadline = time.monotonic() + self.refresh_interval
        joining = self._join_left() > 0
        heartbeat = self.heartbeat
        while (left := deadline - time.monotonic()) > 0:
            if heartbeat is not None:
                # The loop runs: the liveness tick, in this wait's own wake-ups (no more
                # than a tick apart; at the default lease a tick is the refresh interval).
                heartbeat.loop_seen = time.monotonic()
                left = min(left, heartbeat.tick_every)
            if joining:
                join_left = self._join_left()
                if join_left <= 0:
                    return
                left = min(left, join_left, WATCH_EVERY)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._news.wait())]
            done, pending = await asyncio.wait(
                waits, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()
            if done:
                return

    def _pacing(self) -> leases.Pacing:
        """Watched sessions are handed over about as fast as one node logs in to one host
        (leases.Pacing)."""
        watching = frozenset(self._watching.intersection(self.sessions))
        per_refresh = settings.IMAP_LOGINS_PER_SECOND_PER_HOST * self.refresh_interval
        return leases.Pacing(watching, max(1, int(per_refresh)))

    def _read_back_due(self) -> bool:
        """This refresh reads every held row back (see FULL_READ_EVERY)."""
        refreshes = self._refreshes
        if refreshes % FULL_READ_EVERY:
            return False
        return refreshes % RECHECK_EVERY == 0 or self._claimed_since_read_back

    async def _quiet_refresh(self, news: bool, read_back: bool) -> bool:
        """Whether this refresh may skip claim_mailboxes(): with a heartbeat thread that
        beats on time (it renews the lease, frees dead nodes and tells of joins, deaths and
        a lost row: ``news``), nothing left from the last refresh, and no mailbox row
        changed and none unowned since the last claim (one probe instead of the ~10
        statements of a delta claim, every 5 s: issue 20 item 4). A read-back
        (``read_back``, _read_back_due) always claims."""
        heartbeat = self.heartbeat
        as_of = self._held_as_of
        if (
            news
            or heartbeat is None
            or as_of is None
            or read_back
            or self._touched
            or not self._took_unowned
            or leases.handover_pending(self.node_id)
            or time.monotonic() - heartbeat.last_beat > 2 * WATCH_EVERY + 1.0
        ):
            return False
        since = as_of - CHANGE_SLACK
        if heartbeat.probe is not None:
            # PostgreSQL: the heartbeat thread probed in one of its beats (no database call
            # here, no database thread woken). Its answer holds for a since at most this
            # one (a longer look back) and a probe at most a refresh and a beat old; a
            # change it finds after a quiet spell brings the refresh at once (news).
            unchanged = heartbeat.unchanged
            return (
                unchanged is not None
                and unchanged <= since
                and time.monotonic() - heartbeat.probed_at
                <= self.refresh_interval + 2 * WATCH_EVERY + 1.0
            )
        return await self.pool.run(leases.unchanged_since, since, settings.ALLOW_LOOPBACK_IMAP)

    async def refresh(self) -> None:
        # The heartbeat's news holds until a claim went through (not lost with a failed one).
        self._must_claim = self._must_claim or self._news.is_set()
        self._news.clear()
        read_back = self._read_back_due()
        if await self._quiet_refresh(self._must_claim, read_back):
            self._refreshes += 1
            self.quiet_refreshes += 1
            await self.flush_statuses()
            if self.gc_freezer is not None:
                freezer = self.gc_freezer
                freezer.tick(settled=freezer.waiting and self._all_watching())
            return
        first = self._held_as_of is None
        take_unowned = self._join_left() <= 0
        claim = await self.pool.run(
            leases.claim_mailboxes,
            self.node_id,
            self.capacity,
            self.lease,
            settings.ALLOW_LOOPBACK_IMAP,
            None if first else len(self._held),
            None if first else self._held_as_of - CHANGE_SLACK,
            self.node_alive,
            len(self.sessions),
            self.started_at,
            self.node_lock.kind if self.node_lock is not None else "",
            self._judge_locks(),
            self._pacing(),
            take_unowned,
            read_back,
            self._refreshes % RECHECK_EVERY == 0,
        )
        self._claimed_since_read_back = not claim.complete
        for name in claim.freed:
            NODES_TAKEN_OVER.inc()
            log.warning(
                "engine %s: engine node %s is dead; its mailboxes are free to take over",
                self.node_id,
                name,
            )
        touched = self._take_held(claim)
        self._held_as_of = claim.as_of
        self._took_unowned = take_unowned
        self._must_claim = False
        self._refreshes += 1
        held = self._held
        stale = []
        for user_id in touched:
            running = self.sessions.get(user_id)
            if running is not None:
                _, task, version = running
                if user_id not in held or held[user_id] != version or task.done():
                    stale.append(user_id)
        await self._stop_sessions(stale)
        if claim.handover:
            # Their sessions are stopped: now the node they rank first may take them.
            await self.pool.run(leases.release_mailboxes, self.node_id, list(claim.handover))
            log.info("engine %s: handed %d mailboxes over", self.node_id, len(claim.handover))
        waiting = sorted(u for u in touched if u in held and u not in self.sessions)
        starting = waiting[: max(0, self.capacity - len(self.sessions))]
        if starting:
            # One bulk read for every session started now (they reload only on reconnect).
            configs = await self.pool.run(store.mailbox_configs, starting)
            for user_id in starting:
                config = configs.get(user_id)
                if config is not None:
                    self._start_session(user_id, held[user_id], config)
            if self.gc_freezer is not None:
                self.gc_freezer.sessions_started()
        # Held but not started (no room, or no config yet): looked at again next time.
        self._touched.update(u for u in waiting if u not in self.sessions)
        await self.flush_statuses()
        if self.gc_freezer is not None:
            freezer = self.gc_freezer
            freezer.tick(settled=freezer.waiting and self._all_watching())

    def _take_held(self, claim: leases.Claim) -> set[int]:
        """Apply ``claim`` to what this node holds; the mailboxes to look at now. Only those
        that changed (all of them after a read-back that differs): an idle refresh costs the
        same at 10,000 sessions as at 10."""
        touched, self._touched = self._touched, set()
        if claim.complete:
            # The read-back each minute: looked at one by one only if something differs
            # (ended sessions and held ones not started are in _touched anyway); a loop over
            # every session each minute was most of what an idle node of 17,000 did.
            if claim.versions != self._held:
                touched |= set(self.sessions) | set(claim.versions)
            self._held = claim.versions
        else:
            for user_id in claim.gone:
                self._held.pop(user_id, None)
            self._held.update(claim.versions)
            touched |= claim.gone | set(claim.versions)
        return touched

    def _start_session(self, user_id: int, version, config: store.MailboxConfig) -> None:
        session = MailboxSession(self, user_id, config)
        task = asyncio.create_task(session.run(), name=f"mailbox-{user_id}")
        # An ended session is restarted (or dropped) by the next refresh. A bound method
        # run in one shared context: a lambda with its default and a copy of the context
        # per session were ~310 bytes (design.md 4.13).
        task.add_done_callback(session.ended, context=_CALLBACK_CONTEXT)
        self.sessions[user_id] = (session, task, version)
        MAILBOX_SESSIONS.inc()

    def _all_watching(self) -> bool:
        """Every running session's latest status is a watching one (IDLE, polling)."""
        current = self._current
        return all(current.get(user_id) in store.WATCHING for user_id in self.sessions)

    async def _stop_sessions(self, user_ids: list[int]) -> None:
        """Ask sessions to stop (DONE, LOGOUT); cancel those still running after 5 s."""
        if not user_ids:
            return
        tasks = []
        for user_id in user_ids:
            session, task, _ = self.sessions.pop(user_id)
            self._written.pop(user_id, None)  # the row may be changed by others now
            MAILBOX_SESSIONS.dec()
            session.stop()
            tasks.append(task)
        _, pending = await asyncio.wait(tasks, timeout=5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for user_id in user_ids:
            if user_id not in self.sessions:
                self._current.pop(user_id, None)
                self._watching.discard(user_id)

    async def flush_statuses(self) -> None:
        """Write the statuses reported since the last flush, except a watching status a
        running session already has in the database (only changes matter there; failing
        and other statuses are always written: 4.9 counts on seeing them)."""
        if not self._statuses:
            return
        reported, self._statuses = self._statuses, {}
        batch = {
            user_id: value
            for user_id, value in reported.items()
            if not (_quiet(value) and self._written.get(user_id) == value)
        }
        if batch:
            try:
                await self.pool.run(store.save_statuses, batch)
            except BaseException:
                # Written at the next flush, unless reported again meanwhile: a session
                # does not report an unchanged watching status again (not at each re-issue).
                for user_id, value in batch.items():
                    self._statuses.setdefault(user_id, value)
                raise
        for user_id, value in batch.items():
            if _quiet(value) and user_id in self.sessions:
                self._written[user_id] = value
            else:
                self._written.pop(user_id, None)

    async def shutdown(self) -> None:
        await self._stop_sessions(list(self.sessions))
        if self._lock_lost:
            return
        try:
            await self.flush_statuses()
            await self.pool.run(leases.remove_node, self.node_id)
        except Exception as exc:  # noqa: BLE001 - leases expire by themselves
            if not dboutage.lost(exc):
                log.exception("engine %s: could not release leases", self.node_id)
        log.info("engine %s stopped: %d emails processed", self.node_id, self.emails_processed)

    def log_metrics(self) -> None:
        pool = self.pool
        latency = pool.latency_total / pool.calls if pool.calls else 0.0
        log.info(
            "source=%s sample#imap_client.user_thread.count=%d "
            "sample#imap_client.total_emails_processed=%d "
            "sample#imap_client.work_queue.length=%d sample#work_queue.latency=%.3fs",
            self.node_id,
            len(self.sessions),
            self.emails_processed,
            pool.queued,
            latency,
        )


def _quiet(value: tuple[str, str, int]) -> bool:
    """A watching status without failures: rewriting it unchanged tells nobody anything."""
    status, _, failures = value
    return status in store.WATCHING and failures == 0
