"""A chosen backfill, run by a mailbox session between its live catch-ups (design.md 4.12;
the decisions are in sync/backfill.py).

On the session's one connection: the window is found (UID SEARCH SINCE, INTERNALDATE for
the boundary days) once the primary folder is caught up; then the watch loop runs one
step at a time when the pacer allows (a few messages: FETCH, persist with the position
and done count in the same transaction) and catches live mail up after each step; while
the pacer says wait, the session IDLEs, so live mail keeps its latency. The pacer holds a
token bucket per mailbox (BACKFILL_RATE_PER_MAILBOX) and per host
(BACKFILL_RATE_PER_HOST), per engine process, like the login limits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from django.conf import settings

from superimap.engine import store
from superimap.imap import Fetch
from superimap.sync import backfill as rules
from superimap.sync.mailbox import batches

log = logging.getLogger("superimap.engine")

DATES_PER_FETCH = 500  # UIDs per UID FETCH (UID INTERNALDATE) of the boundary days


class BackfillPacer:
    """Per engine process: a message bucket per mailbox and per host."""

    def __init__(
        self, per_mailbox: float | None = None, per_host: float | None = None, clock=time.monotonic
    ) -> None:
        self.per_mailbox = float(per_mailbox or settings.BACKFILL_RATE_PER_MAILBOX)
        self.per_host = float(per_host or settings.BACKFILL_RATE_PER_HOST)
        self.step = rules.step_size(self.per_mailbox)
        self.clock = clock
        self.mailboxes: dict[int, rules.Pace] = {}
        self.hosts: dict[str, rules.Pace] = {}

    def take(self, user_id: int, host: str, count: int) -> float:
        """Take ``count`` messages from both buckets: the seconds to wait before sending
        them."""
        now = self.clock()
        mailbox = self._bucket(self.mailboxes, user_id, self.per_mailbox, now)
        per_host = self._bucket(self.hosts, host.lower(), self.per_host, now)
        return max(mailbox.take(count, now), per_host.take(count, now))

    def give_back(self, user_id: int, host: str, count: int) -> None:
        """Messages taken but not fetched (sent before): a sweep over mail already sent
        is not paced like new work."""
        for bucket in (self.mailboxes.get(user_id), self.hosts.get(host.lower())):
            if bucket is not None:
                bucket.give_back(count)

    def _bucket(self, buckets: dict, key, rate: float, now: float) -> rules.Pace:
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= 1000:
                for old in [k for k, b in buckets.items() if b.idle(now)]:
                    del buckets[old]
            # A quarter second of the rate saved up at most (a mailbox: one step).
            burst = max(float(self.step), rate * rules.STEP_SECONDS)
            bucket = buckets[key] = rules.Pace(rate, burst, now)
        return bucket


class BackfillRun:
    """One backfill in one session: the window's UIDs still to send, paced."""

    def __init__(self, session, host: str, state: store.Backfill, uids: list[int]) -> None:
        self.session = session
        self.host = host
        self.state = state
        self.uids = uids
        self.started = time.monotonic()
        self._ready_at: float | None = None
        self._count = 0

    @classmethod
    async def start(cls, session, host: str, state: store.Backfill) -> BackfillRun | None:
        """Fix (or, after a restart, find again) the window and store it; None if there is
        nothing left to do or the request was replaced meanwhile."""
        cursor = session.primary
        if state.until_uid is None or state.uid_validity != cursor.uid_validity:
            state = replace(state, until_uid=cursor.last_uid or 0, position=None, done=0)
        uids = rules.remaining(await _window(session, state), state.position)
        state = replace(state, uid_validity=cursor.uid_validity, total=state.done + len(uids))
        engine = session.engine
        if not await engine.pool.run(store.start_backfill, session.user_id, engine.node_id, state):
            return None
        run = cls(session, host, state, uids)
        log.info(
            "mailbox %s: backfill %s: %d message(s) to send, %d done (window up to uid %d)",
            session.label,
            f"since {state.since:%Y-%m-%d %H:%M:%S} UTC" if state.since else "of all mail",
            len(uids),
            state.done,
            state.until_uid,
        )
        if not uids:
            await run.finish()
            return None
        return run

    def due_in(self) -> float:
        """Seconds until the next step may run; its messages are taken from the pacer the
        first time this is asked for them."""
        now = time.monotonic()
        if self._ready_at is None:
            self._count = min(len(self.uids), self.session.engine.backfill_pacer.step)
            wait = self.session.engine.backfill_pacer.take(
                self.session.user_id, self.host, self._count
            )
            self._ready_at = now + wait
        return max(0.0, self._ready_at - now)

    async def step(self) -> bool:
        """Send the next few messages of the window; False when the backfill is done."""
        session, engine = self.session, self.session.engine
        batch, self.uids = self.uids[: self._count], self.uids[self._count :]
        self._ready_at = None
        cursor = session.primary
        recorded = await engine.pool.run(
            store.recorded_uids, session.user_id, cursor.uid_validity, batch, cursor.folder
        )
        fetch = [uid for uid in batch if uid not in recorded]
        if len(fetch) < len(batch):
            engine.backfill_pacer.give_back(session.user_id, self.host, len(batch) - len(fetch))
        messages = await session._fetch_batch(fetch) if fetch else []
        step = rules.BackfillStep(self.state.requested_at, batch[-1], len(batch))
        result = await engine.persister.persist(
            session.user_id, engine.node_id, cursor.uid_validity, cursor.folder, messages, step
        )
        result.log_skips(session.label, cursor.uid_validity, cursor.folder)
        engine.record_persisted(result)
        if self.uids:
            return True
        await self.finish()
        return False

    async def finish(self) -> None:
        session = self.session
        await session.engine.pool.run(
            store.finish_backfill, session.user_id, session.engine.node_id, self.state.requested_at
        )
        log.info(
            "mailbox %s: backfill done: %d message(s) of the window in %.1fs",
            session.label,
            self.state.total,
            time.monotonic() - self.started,
        )


async def _window(session, state: store.Backfill) -> list[int]:
    """The window's UIDs (sync.backfill.window), searched a chunk of UIDs at a time."""
    candidates: list[int] = []
    sure: list[int] | None = None
    for search in rules.window_searches(state.since, state.until_uid or 0):
        candidates += await session._search(search.candidates)
        if search.sure is not None:
            sure = (sure or []) + await session._search(search.sure)
    dates = {}
    for part in batches(rules.to_check(candidates, sure), DATES_PER_FETCH):
        for event in await session._fetch_items(part, "(UID INTERNALDATE)"):
            if isinstance(event, Fetch) and event.uid is not None:
                dates[event.uid] = event.internal_date
    return rules.window(candidates, sure, dates, state.since)
