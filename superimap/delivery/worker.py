"""The webhook worker: claims due deliveries, POSTs them, records every attempt.

Reads like a healthchecks worker: a loop of small steps, one log line per batch, a stop
event set by the signal handlers. Database work goes through the bounded DbPool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from superimap.delivery import fairness, health, heartbeat, policy, queue
from superimap.delivery.failurelog import FailureLog, endpoint_label
from superimap.delivery.http import PostResult, make_session, post, render_stored_request
from superimap.delivery.retention import Purger
from superimap.partners.models import Partner
from superimap.platform import dboutage, rollups
from superimap.platform.dbpool import DbPool, DbThread
from superimap.platform.futures import resolve
from superimap.platform.metrics import (
    ATTEMPT_OUTCOMES,
    COMMIT_TO_DELIVERED,
    RESPONSE_CLASSES,
    WEBHOOK_ATTEMPTS,
    WEBHOOK_RESPONSE,
    WORKER_METRICS,
    expose,
)

log = logging.getLogger("superimap.worker")

CLAIM_BATCH = 200
# While sends are in flight, claim again once this fraction of the slots is free. Not a
# half (tried, issue 20 workercpu: 0.29 -> 0.25 ms of CPU per delivery at a backlog): with
# one endpoint its cap (40 % of the slots) is below half, so the worker claimed only with
# nothing in flight, and one hanging POST held every claim until its timeout.
CLAIM_FRACTION = 4
# A quiet worker's outcomes wait this long past its next poll for the claim it makes (or
# this long, with no poll armed); the flush loop then records them alone.
RECORD_GATHER_SECONDS = 0.01
# A quiet worker (the last claim drained the queue) keeps outcomes for its next claim to
# record them in the same transaction: until its next poll (which claims), at most this
# long. At a low rate the next delivery's wake-up or the poll comes first: one transaction
# per delivery instead of two. A busy one (sends in flight) keeps them for its next claim,
# at most this long too: the one its finishing sends bring at a backlog, the next wake-up's
# at a steady rate. One transaction per claim, not a lone record between two claims. The
# lease covers the wait.
RECORD_LINGER_SECONDS = 0.1
CLAIM_ERROR_PAUSE = 5.0
# A busy worker's claim takes up to this fraction of the slots past the endpoints' caps
# (fairness.Room.ahead), rows it holds and sends as the endpoints' POSTs finish: while the
# next claim runs, the finishing POSTs are followed by new ones instead of leaving the
# endpoint's pipe to run dry (issue 20 workerpipe: one endpoint at a backlog had 8.3 POSTs
# open on average of its 20, and ~1 at the end of each claim).
AHEAD_FRACTION = 2
# A row held ahead that could not be sent within this long (its endpoint turned slow, the
# POSTs ahead of it hang) is handed back, unsent: due again for any worker, long before its
# lease (the request timeout and 30 s, at least) could run out.
HOLD_MAX_SECONDS = 1.0
# A quiet worker relies on wake-ups (wakeup.py) and polls less: each poll that found nothing
# doubles the time to the next one, up to this (or the poll interval, if longer); a poll
# that finds a row (a lost wake-up, a retry or a pause that came due) brings the poll
# interval back. So a row that becomes due with no wake-up is claimed within this long.
IDLE_POLL_MAX_SECONDS = 1.0
# Wake-ups in a burst (an engine's group commits, a NOTIFY per batch) make one claim: a
# wake-up claims at the earliest this long after the previous claim returned, and every
# wake-up meanwhile goes with it. None is lost: it only waits for the next claim.
WAKE_DEBOUNCE_SECONDS = 0.002
# Housekeeping: auto-replay after a recovery every second (WEBHOOK_AUTO_REPLAY_RATE per
# second); retention purge batches every few seconds, a pause between batches.
REPLAY_INTERVAL = 1.0
PURGE_INTERVAL = 5.0
PURGE_MAX_BATCHES = 20
PURGE_PAUSE = 0.05
OUTAGE_RETRY_SECONDS = 1.0


class Worker:
    def __init__(
        self,
        pool: DbPool,
        node_id: str,
        *,
        concurrency: int | None = None,
        timeout_seconds: float | None = None,
        lease: timedelta | None = None,
        poll_interval: float | None = None,
        clock: Callable[[], datetime] = timezone.now,
    ) -> None:
        self.pool = pool
        # run(): claims go through one database thread of their own (DbThread), and so do
        # the flush loop's outcomes on SQLite, where they take turns with the claims at the
        # write gate anyway; on PostgreSQL those go to the pool, beside the next claim.
        self._queue_pool: DbPool | DbThread = pool
        self._record_pool: DbPool | DbThread = pool
        expose(WORKER_METRICS)
        self.node_id = node_id
        self.concurrency = concurrency or settings.WEBHOOK_CONCURRENCY
        self.timeout_seconds = timeout_seconds or settings.WEBHOOK_TIMEOUT
        # A crashed worker's claims come back once the lease is over: longer than the
        # request timeout, with room to record the outcome (WEBHOOK_LEASE_SECONDS).
        if lease is None:
            seconds = settings.WEBHOOK_LEASE_SECONDS
            if seconds <= self.timeout_seconds:
                seconds = self.timeout_seconds + 30
            lease = timedelta(seconds=seconds)
        self.lease = lease
        self.poll_interval = poll_interval or settings.WEBHOOK_POLL_MS / 1000
        self.poll_max = max(self.poll_interval, IDLE_POLL_MAX_SECONDS)
        self._poll_delay = self.poll_interval  # the next idle poll: backs off to poll_max
        self.claim_at_least = max(1, self.concurrency // CLAIM_FRACTION)
        # Rows claimed ahead, by endpoint, in claim order: (claimed, epoch, held since).
        # None when the lease leaves little room past the request timeout for the wait.
        margin = self.lease.total_seconds() - self.timeout_seconds
        self.ahead = self.concurrency // AHEAD_FRACTION if margin >= 5 * HOLD_MAX_SECONDS else 0
        self._held: dict[fairness.Endpoint, deque] = {}
        self._held_n = 0
        self._send_session = None
        self._tasks: set[asyncio.Task] = set()
        self._sending = True  # False once the claim loop ended: held rows stay unsent
        # Fair sharing between partners (fairness.py): open POSTs per partner and endpoint.
        self.shares = fairness.Shares(fairness.Caps.for_concurrency(self.concurrency))
        self._work_arrived = False
        self._finished_since_claim = 0
        self._idle_poll = True  # a poll interval passed with nothing waking us
        self._drained = False  # the last claim took every due row it could see
        self._poll_at: float | None = None  # loop time of the sleeping claim loop's poll
        self._claimed_at = float("-inf")  # loop time the last claim returned
        self._finished_at = float("-inf")  # time.monotonic() of the last finished send
        self._poll_timer: asyncio.Handle | None = None
        self._linger_timer: asyncio.Handle | None = None  # the flush loop's, while quiet
        self._taken: asyncio.Future | None = None  # the busy flush loop's (_busy_wait)
        # Set once the claim loop has ended and its sends are over: only then may a stopping
        # flush loop end (a claim in flight at the stop still sends its rows, and their
        # outcomes must be recorded: they were sent).
        self._claims_over = False
        self.claims = 0
        self.clock = clock
        self._wake = asyncio.Event()
        self._outcomes: list[queue.Outcome] = []
        self._have_outcomes = asyncio.Event()
        self._inflight = 0
        self.sent = 0
        self.counts: dict[str, int] = {}
        self.allow_private = settings.WEBHOOK_ALLOW_PRIVATE
        self.purger = Purger()
        # Liveness (delivery/heartbeat.py): when the last heartbeat that got through was
        # sent (monotonic), and a number bumped when this worker learns it was found dead,
        # so claims taken before that are not sent (another worker has them now).
        self.alive = timedelta(seconds=settings.WEBHOOK_WORKER_ALIVE_SECONDS)
        self.started_at = timezone.now()
        self._beat_at: float | None = None
        self._beating_since: float | None = None  # first beat of the current unbroken run
        self._epoch = 0
        self._unsent: list[int] = []
        # Failed attempts: the first of an endpoint logged, the rest summed up per minute.
        self.failure_log = FailureLog(every=settings.LOG_SUMMARY_SECONDS)
        self._partner_names: dict[int, str] = {}

    def wake(self) -> None:
        """New deliveries were just committed: look now instead of at the next poll."""
        self._work_arrived = True
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "worker %s started: concurrency=%d timeout=%ss",
            self.node_id,
            self.concurrency,
            self.timeout_seconds,
        )
        session = self._send_session = self._session()
        self._queue_pool = DbThread()
        if connection.vendor == "sqlite":
            self._record_pool = self._queue_pool
        stopper = asyncio.create_task(self._wake_at_stop(stop))
        flusher = asyncio.create_task(self._flush_loop(stop))
        housekeeper = asyncio.create_task(self._housekeeping_loop(stop))
        heart = asyncio.create_task(self._heartbeat_loop(stop))
        tasks = self._tasks
        try:
            while not stop.is_set():
                # Cleared before claiming: a send finishing during the claim wakes us again.
                self._wake.clear()
                free = self.concurrency - self._inflight
                if not self._claim_now(free):
                    # Claim in batches, not one row per finished send: a claim costs
                    # about as much for one row as for dozens; nor after a claim that
                    # drained the queue, until something wakes us (policy.claim_now).
                    await self._sleep(stop)
                    continue
                await self._debounce()
                try:
                    claimed = await self._claim(free)
                except Exception as exc:
                    # A database hiccup must not end the worker (and the process with it).
                    if not dboutage.lost(exc):
                        log.exception("worker %s could not claim deliveries", self.node_id)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), CLAIM_ERROR_PAUSE)
                    continue
                self._hold(claimed)
                self._dispatch()
                if not claimed:
                    await self._sleep(stop)
        finally:
            # Rows still held are not sent: released below with the other unsent claims.
            self._sending = False
            self._held.clear()
            self._held_n = 0
            if tasks:
                await asyncio.wait(tasks, timeout=5)
                for task in tasks:
                    task.cancel()
            await session.close()
            self._claims_over = True
            self._have_outcomes.set()
            stop.set()
            await stopper
            await flusher
            await housekeeper
            await heart
            self.failure_log.flush(force=True)
            self._queue_pool.shutdown()
            self._queue_pool = self._record_pool = self.pool
            released = await self.pool.run(queue.release_claims, self.node_id)
            await self.pool.run(heartbeat.leave, self.node_id)
            log.info(
                "worker %s stopped: sent=%d released=%d %s",
                self.node_id,
                self.sent,
                released,
                self.counts,
            )

    async def process_once(self, session=None) -> int:
        """Claim everything due now, send it, record the outcomes. For tests and tools."""
        own_session = session is None
        session = session or self._session()
        total = 0
        try:
            await self.housekeep()
            while claimed := await self._claim(self.concurrency, ahead=False):
                for item in claimed:
                    self.shares.opened(item.id, item.partner_id, item.kind)
                outcomes = await asyncio.gather(*(self._attempt(session, c) for c in claimed))
                for outcome in outcomes:
                    self._closed(outcome)
                await self._record(list(outcomes))
                total += len(claimed)
        finally:
            if own_session:
                await session.close()
        return total

    def _session(self):
        return make_session(
            self.concurrency, self.timeout_seconds, allow_private=self.allow_private
        )

    async def housekeep(self, *, purge: bool = True) -> tuple[int, int]:
        """One auto-replay step and one retention pass: (re-queued, purged)."""
        now = self.clock()
        replayed = await self.pool.run(health.replay_step, now, settings.WEBHOOK_AUTO_REPLAY_RATE)
        purged = 0
        if purge:
            for _ in range(PURGE_MAX_BATCHES):
                count = await self.pool.run(self.purger.step, now)
                purged += count
                if count < self.purger.batch:
                    break
                await asyncio.sleep(PURGE_PAUSE)
        if replayed or purged:
            log.info("worker %s re-queued %d, purged %d payloads", self.node_id, replayed, purged)
            self.wake()
        return replayed, purged

    async def _housekeeping_loop(self, stop: asyncio.Event) -> None:
        last_purge = 0.0
        while not stop.is_set():
            started = time.monotonic()
            purge = started - last_purge >= PURGE_INTERVAL
            try:
                await self.housekeep(purge=purge)
            except Exception as exc:
                if not dboutage.lost(exc):
                    log.exception("worker %s housekeeping failed", self.node_id)
            if purge:
                last_purge = started
            self.failure_log.flush()
            await self._hand_back_held()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPLAY_INTERVAL)

    def _claim_now(self, free: int) -> bool:
        return policy.claim_now(
            policy.ClaimState(
                free=free,
                inflight=self._inflight,
                work_arrived=self._work_arrived,
                idle_poll=self._idle_poll,
                drained=self._drained,
                finished_since_claim=self._finished_since_claim,
                claim_at_least=self.claim_at_least,
            )
        )

    async def _debounce(self) -> None:
        """A claim for a wake-up alone waits until WAKE_DEBOUNCE_SECONDS after the last one:
        wake-ups that come while a claim runs, or just after, share the next claim."""
        if not self._work_arrived or self._idle_poll or not self._drained:
            return
        wait = self._claimed_at + WAKE_DEBOUNCE_SECONDS - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _wake_at_stop(self, stop: asyncio.Event) -> None:
        """The claim loop and the flush loop wait on their own events: stop wakes both."""
        await stop.wait()
        self._wake.set()
        self._have_outcomes.set()
        if self._taken is not None:
            resolve(self._taken, True)

    def _hold(self, claimed: list[queue.Claimed]) -> None:
        """Claimed rows wait here, by endpoint, until _dispatch opens their POSTs."""
        now = time.monotonic()
        epoch = self._epoch
        for item in claimed:
            endpoint = (item.partner_id, item.kind)
            held = self._held.get(endpoint)
            if held is None:
                held = self._held[endpoint] = deque()
            held.append((item, epoch, now))
        self._held_n += len(claimed)

    def _dispatch(self) -> None:
        """Open a POST for each held row whose endpoint and partner are under their caps
        (fairness.Shares.fits), oldest first, while slots are free. A claim's own share
        always fits; rows taken ahead wait for the endpoint's POSTs to finish."""
        if not self._held_n or not self._sending:
            return
        session = self._send_session
        for endpoint in list(self._held):
            held = self._held[endpoint]
            while held and self._inflight < self.concurrency and self.shares.fits(endpoint):
                item, epoch, _ = held.popleft()
                self._held_n -= 1
                self._inflight += 1
                self.shares.opened(item.id, item.partner_id, item.kind)
                task = asyncio.create_task(self._send(session, item, epoch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if not held:
                del self._held[endpoint]

    async def _hand_back_held(self) -> None:
        """Rows held ahead for longer than HOLD_MAX_SECONDS: released, unsent (due again)."""
        if not self._held_n:
            return
        stale = time.monotonic() - HOLD_MAX_SECONDS
        ids = []
        for endpoint in list(self._held):
            held = self._held[endpoint]
            while held and held[0][2] <= stale:
                ids.append(held.popleft()[0].id)
            if not held:
                del self._held[endpoint]
        if not ids:
            return
        self._held_n -= len(ids)
        self._drained = False  # due again: the next claim may take them
        log.info("worker %s hands back %d rows held ahead", self.node_id, len(ids))
        try:
            await self.pool.run(queue.release_claims, self.node_id, ids)
        except Exception as exc:  # noqa: BLE001 - their lease runs out instead
            if not dboutage.lost(exc):
                log.exception("worker %s could not hand back %d claims", self.node_id, len(ids))

    def _held_room(self, room: fairness.Room) -> None:
        """Rows held count as open in the claim's room: they will be."""
        for (partner_id, kind), held in self._held.items():
            room.partner_open[partner_id] += len(held)
            room.endpoint_open[(partner_id, kind)] += len(held)

    async def _claim(self, free: int, ahead: bool = True) -> list[queue.Claimed]:
        if free <= 0:
            return []
        # Looking past full partners' backlog costs a walk over it: only for new work.
        news = self._work_arrived or self._idle_poll
        woken = self._work_arrived
        self._work_arrived = self._idle_poll = False
        self._finished_since_claim = 0
        room = self.shares.room(fairness.CLAIM_ROUNDS if news else 1)
        if ahead:
            self._held_room(room)
            room.ahead = max(0, self.ahead - self._held_n)
        limit = min(free + room.ahead, CLAIM_BATCH)
        self._drained = False  # until this claim says so
        self.claims += 1
        try:
            claimed = await self._claim_rows(limit, room)
        finally:
            self._claimed_at = asyncio.get_running_loop().time()
        self._drained = len(claimed) < limit and not room.more
        if not woken:
            # A poll (or a claim for finished sends) that found nothing: wake-ups bring
            # the work, poll less; one that found rows: back to the poll interval.
            self._poll_delay = (
                min(2 * self._poll_delay, self.poll_max) if not claimed else self.poll_interval
            )
        return claimed

    async def _claim_rows(self, limit: int, room: fairness.Room) -> list[queue.Claimed]:
        if not self._outcomes:
            return await self._queue_pool.run(
                queue.claim_due, self.node_id, limit, self.clock(), self.lease, room
            )
        # Outcomes not recorded yet go in the claim's transaction (one turn at SQLite's
        # write gate instead of two); the flush loop records the rest.
        outcomes, self._outcomes = self._outcomes, []
        if self._taken is not None:
            resolve(self._taken, False)  # the busy flush loop's wait: taken
        if self._linger_timer is not None:
            # The lingering flush loop has nothing left to wait for: no wake-up for it.
            self._linger_timer.cancel()
            self._linger_timer = None
        try:
            counts, claimed = await self._queue_pool.run(
                queue.record_and_claim,
                self.node_id,
                outcomes,
                self.clock(),
                limit,
                self.lease,
                room,
            )
        except BaseException:
            # Back to the flush loop, which records them alone (or keeps them through an
            # outage): they were sent, and their leases must not run out unrecorded.
            self._outcomes = outcomes + self._outcomes
            self._have_outcomes.set()
            raise
        self._recorded(outcomes, counts)
        return claimed

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Until a wake-up, a finished send worth a claim, stop, or a poll interval: one
        timer on the wake event, not a task per event waited on."""
        if stop.is_set():
            return
        self._arm_poll(self._poll_delay)
        try:
            await self._wake.wait()
        finally:
            if self._poll_timer is not None:
                self._poll_timer.cancel()
                self._poll_timer = None
            self._poll_at = None

    def _arm_poll(self, delay: float) -> None:
        # Not call_later(...).when(): uvloop answers a delay under 1 ms with a plain Handle
        # (call_soon), which has no when().
        loop = asyncio.get_running_loop()
        self._poll_at = loop.time() + delay
        self._poll_timer = loop.call_at(self._poll_at, self._poll_due)

    def _poll_due(self) -> None:
        # Idle means idle: a poll interval from the last finished send, not from the claim
        # (sends finishing do not wake a loop that would not claim for them).
        left = self._finished_at + self._poll_delay - time.monotonic()
        if left > 0:
            self._arm_poll(left)
            return
        self._poll_timer = None
        self._idle_poll = True
        self._wake.set()

    async def _attempt(self, session, claimed: queue.Claimed) -> queue.Outcome:
        started_at = self.clock()
        if not claimed.url:
            return queue.Outcome(claimed, PostResult(None, "", "no webhook URL", 0), started_at)
        raw, headers = render_stored_request(
            claimed.payload_json,
            claimed.sha1,
            event_id=claimed.event_id,
            kind=claimed.kind,
            api_key=claimed.api_key,
            webhook_secrets=claimed.webhook_secrets,
            timestamp=int(time.time()),
        )
        result = await post(session, claimed.url, raw, headers)
        if not result.succeeded:
            self.failure_log.failed(
                (claimed.partner_id, claimed.kind),
                endpoint_label(
                    await self._partner_name(claimed.partner_id), claimed.kind, claimed.url
                ),
                claimed.event_id,
                claimed.attempt,
                result.error or f"HTTP {result.status_code}",
            )
        return queue.Outcome(claimed, result, started_at)

    async def _partner_name(self, partner_id: int) -> str:
        """The partner's name for log lines (read once per partner and process)."""
        name = self._partner_names.get(partner_id)
        if name is None:
            try:
                name = await self.pool.run(_partner_name, partner_id)
            except Exception:  # noqa: BLE001 - a log line must not fail a delivery
                return f"partner {partner_id}"
            self._partner_names[partner_id] = name
        return name

    def claims_valid(self) -> bool:
        """Whether this worker's claims are still its own: its heartbeat got through
        recently enough that no other worker can have found it dead."""
        if self._beat_at is None:
            return True  # no heartbeat row yet: nobody releases these claims early
        limit = self.alive.total_seconds() - heartbeat.HEARTBEAT_EVERY
        return time.monotonic() - self._beat_at < limit

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sent_at = time.monotonic()
            # Others are judged only after this worker's own beats went through for a full
            # WEBHOOK_WORKER_ALIVE_SECONDS: after a database outage every row is stale, and
            # the others need a beat to show they are alive.
            judge = (
                self._beating_since is not None
                and sent_at - self._beating_since >= self.alive.total_seconds()
            )
            try:
                # Real time, not self.clock: other processes compare it with theirs.
                beat = await self.pool.run(
                    heartbeat.beat, self.node_id, timezone.now(), self.alive, self.started_at, judge
                )
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                self._beating_since = None
                if not dboutage.lost(exc):
                    log.warning("worker %s: heartbeat failed", self.node_id, exc_info=True)
            else:
                self._beat_at = sent_at
                if self._beating_since is None:
                    self._beating_since = sent_at
                if beat.lapsed:
                    self._epoch += 1
                    self._unsent = []
                    self._held.clear()  # another worker's now
                    self._held_n = 0
                    log.warning(
                        "worker %s was found dead (no heartbeat for %ss): its claims went to "
                        "other workers",
                        self.node_id,
                        settings.WEBHOOK_WORKER_ALIVE_SECONDS,
                    )
                elif self._unsent:
                    await self._hand_back_unsent()
                if beat.released:
                    log.warning(
                        "worker %s: workers %s stopped sending heartbeats; their claimed "
                        "deliveries are due again",
                        self.node_id,
                        ", ".join(beat.released),
                    )
                    self.wake()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), heartbeat.HEARTBEAT_EVERY)

    async def _hand_back_unsent(self) -> None:
        """Claims this worker chose not to send while its heartbeat was stale: due again."""
        unsent, self._unsent = self._unsent, []
        try:
            await self.pool.run(queue.release_claims, self.node_id, unsent)
        except Exception as exc:  # noqa: BLE001 - their lease runs out instead
            if not dboutage.lost(exc):
                log.exception("worker %s could not hand back %d claims", self.node_id, len(unsent))

    async def _send(self, session, claimed: queue.Claimed, epoch: int = 0) -> None:
        outcome = None
        try:
            if epoch != self._epoch or not self.claims_valid():
                # Found dead, or may be by now: another worker sends it. Not sent here.
                if epoch == self._epoch:
                    self._unsent.append(claimed.id)
                return
            outcome = await self._attempt(session, claimed)
            self._outcomes.append(outcome)
            self._have_outcomes.set()
        finally:
            self._inflight -= 1
            self._finished_since_claim += 1
            self._finished_at = time.monotonic()
            if outcome is None:  # not sent (found dead) or cancelled: says nothing of it
                self.shares.dropped(claimed.id)
                self._have_outcomes.set()  # a stopping flush loop waits for the last send
            else:
                self._closed(outcome)
            self._dispatch()
            if claimed.kind != "new_mail":
                # A lifecycle event may hold back its user's next one (queue._order_gate):
                # recorded, that one is due, and nothing else would wake us for it.
                self._drained = False
            if self._claim_now(self.concurrency - self._inflight):
                self._wake.set()

    def _closed(self, outcome: queue.Outcome) -> None:
        result = outcome.result
        # No URL (skipped) is not the endpoint's fault: only a missing answer makes it slow.
        answered = result.status_code is not None or not outcome.claimed.url
        self.shares.closed(outcome.claimed.id, answered, result.duration_ms / 1000)

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        while True:
            if not self._outcomes:
                if stop.is_set() and self._claims_over and self._inflight == 0:
                    return
                self._have_outcomes.clear()
                await self._have_outcomes.wait()  # outcomes, or stop (_wake_at_stop)
                continue
            if len(self._outcomes) < self.concurrency // 2 and not stop.is_set():
                if self._drained and not self._inflight:
                    # Quiet: the next claim (a wake-up, the poll) records them with it.
                    if not await self._linger_wait():
                        continue  # a claim took them, and new outcomes came since
                elif not await self._busy_wait():
                    # Busy: a claim comes as the sends in flight finish (at the latest when
                    # the last one does), or with the next wake-up once the queue drained
                    # (rows come in while sends are out): it records them with it.
                    continue  # a claim took them
            batch, self._outcomes = self._outcomes, []
            if not batch:
                continue  # a claim took them meanwhile (record_and_claim)
            try:
                await self._record(batch)
            except Exception as exc:
                if dboutage.lost(exc) and not stop.is_set():
                    # Kept and recorded once the database is back: these were sent, and
                    # sending them again after their lease would double them.
                    self._outcomes = batch + self._outcomes
                    await asyncio.sleep(OUTAGE_RETRY_SECONDS)
                    continue
                log.exception(
                    "worker %s could not record %d outcomes; their leases will expire",
                    self.node_id,
                    len(batch),
                )

    async def _linger_wait(self) -> bool:
        """Until the linger is over, stop or new outcomes: True. False when a claim took
        the outcomes meanwhile: it cancelled the timer, so the loop slept on, unwoken,
        until the next outcomes (or stop) came."""
        self._have_outcomes.clear()
        loop = asyncio.get_running_loop()
        self._linger_timer = loop.call_later(self._linger(), self._have_outcomes.set)
        try:
            await self._have_outcomes.wait()  # the timer, stop (_wake_at_stop), an outcome
        finally:
            timer, self._linger_timer = self._linger_timer, None
            if timer is not None:
                timer.cancel()
        return timer is not None

    async def _busy_wait(self) -> bool:
        """Until a claim takes the outcomes (False), or stop or RECORD_LINGER_SECONDS
        (True: the flush loop records them alone). New outcomes do not end the wait: they
        go with the same claim."""
        loop = asyncio.get_running_loop()
        taken = self._taken = loop.create_future()
        timer = loop.call_later(RECORD_LINGER_SECONDS, resolve, taken, True)
        try:
            return await taken
        finally:
            timer.cancel()
            self._taken = None

    def _linger(self) -> float:
        """How long a quiet worker's outcomes wait for its next claim: a little past the
        sleeping claim loop's poll, at most RECORD_LINGER_SECONDS."""
        if self._poll_at is None:
            return RECORD_GATHER_SECONDS
        left = self._poll_at - asyncio.get_running_loop().time()
        return min(RECORD_LINGER_SECONDS, max(0.0, left) + RECORD_GATHER_SECONDS)

    async def _record(self, outcomes: list[queue.Outcome]) -> None:
        counts = await self._record_pool.run(
            queue.record_outcomes, self.node_id, outcomes, self.clock()
        )
        self._recorded(outcomes, counts)

    def _recorded(self, outcomes: list[queue.Outcome], counts: dict[str, int]) -> None:
        self.sent += len(outcomes)
        for status, count in counts.items():
            key = str(status)  # plain text in logs and JSON, not the enum repr
            key = ATTEMPT_OUTCOMES.get(key, key)
            self.counts[key] = self.counts.get(key, 0) + count
            WEBHOOK_ATTEMPTS.labels(outcome=key).inc(count)
        _observe(outcomes)


# Labelled histogram children, looked up once: labels() takes a lock and builds a key.
_RESPONSE = {label: WEBHOOK_RESPONSE.labels(outcome=label) for label in RESPONSE_CLASSES}
_COMMIT: dict[str, object] = {}


def _observe(outcomes: list[queue.Outcome]) -> None:
    """Latency histograms (/metrics) and this minute's rollup (superimap/platform/rollups.py)."""
    now = time.time()
    commit_seconds = []
    for outcome in outcomes:
        result = outcome.result
        if result.status_code is None:
            label = "error"
        else:
            label = RESPONSE_CLASSES[min(max(result.status_code // 100 - 2, 0), 3)]
        if outcome.claimed.url:
            _RESPONSE[label].observe(result.duration_ms / 1000)
        if result.succeeded and outcome.claimed.url:
            seconds = max(0.0, now - outcome.claimed.created_at.timestamp())
            commit_seconds.append(seconds)
            kind = outcome.claimed.kind
            child = _COMMIT.get(kind) or _COMMIT.setdefault(
                kind, COMMIT_TO_DELIVERED.labels(kind=kind)
            )
            child.observe(seconds)
    delivered = len(commit_seconds)
    rollups.RECORDER.record_outcomes(delivered, len(outcomes) - delivered, commit_seconds)


def _partner_name(partner_id: int) -> str:
    name = Partner.objects.filter(id=partner_id).values_list("name", flat=True).first()
    return f"partner {partner_id}" if name is None else name
