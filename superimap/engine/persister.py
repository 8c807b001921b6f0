"""Group commit: the batches sessions persist within a few milliseconds share one transaction.

A session calls ``await engine.persister.persist(...)`` with the arguments of
``writer.persist_batch``. The persister collects the batches that arrive together and
writes them in ONE database transaction with a few set-based statements
(engine/writer.py, the plan of sync/persist.py). If one of those fails, that transaction
is rolled back and the group falls back to running the same writer once per batch, each
inside a savepoint of its own in a new transaction: a batch that raises rolls back to its
savepoint, only its own rows go, the others' stay. A batch
whose mailbox this node no longer owns gets LeaseLost either way. Every session is woken
after the COMMIT with its own result or exception, so no session moves its checkpoint
past a UID before the rows that record it are durable; if the one-by-one transaction
fails as a whole (or the database connection is lost), every session of the group gets
that error and fetches its batch again (design.md 4.3), exactly as when its own
transaction failed.

Only one group is in flight at a time: while it commits, the next one fills up, so groups
grow with the load and the per-transaction cost (the SQLite writer lock, the fsync) is
paid once per group instead of once per batch. How long a group waits for more is the
adaptive rule of sync/groupcommit.py: not at all when few batches are coming (a lone mail
is committed at once), else up to ENGINE_GROUP_COMMIT_MS counted from its oldest batch's
arrival, or until ENGINE_GROUP_COMMIT_MESSAGES messages wait. ``adaptive=False`` waits
the whole window for every group (tests that need one group).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction

from superimap.engine import writer
from superimap.platform import dboutage
from superimap.platform.dbpool import DbPool
from superimap.platform.futures import resolve
from superimap.sync.backfill import BackfillStep
from superimap.sync.groupcommit import ArrivalRate, commit_wait
from superimap.sync.persist import FetchedMessage, PersistJob, PersistResult

log = logging.getLogger("superimap.engine")


@dataclass
class _Waiting:
    job: PersistJob
    future: asyncio.Future
    arrived: float  # loop time


class GroupPersister:
    def __init__(
        self,
        pool: DbPool,
        window: float | None = None,
        max_messages: int | None = None,
        adaptive: bool = True,
    ) -> None:
        self.pool = pool
        self.window = settings.ENGINE_GROUP_COMMIT_MS / 1000 if window is None else window
        self.max_messages = max_messages or settings.ENGINE_GROUP_COMMIT_MESSAGES
        self.adaptive = adaptive
        self.rate = ArrivalRate()
        self._waiting: list[_Waiting] = []
        self._waiting_messages = 0
        # While the flusher waits for more batches: set (resolved) when the group is full.
        self._full: asyncio.Future | None = None
        self._flusher: asyncio.Task | None = None
        self.groups = 0
        self.batches = 0

    async def persist(
        self,
        user_id: int,
        node_id: str,
        uid_validity: int,
        folder: str,
        messages: list[FetchedMessage],
        backfill: BackfillStep | None = None,
    ) -> PersistResult:
        """``writer.persist_batch(...)``, committed together with other sessions' batches."""
        job = PersistJob(user_id, node_id, uid_validity, folder, messages, backfill)
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.rate.arrived(now, self.window)
        waiting = _Waiting(job, loop.create_future(), now)
        self._waiting.append(waiting)
        self._waiting_messages += len(messages)
        if self._waiting_messages >= self.max_messages and self._full is not None:
            resolve(self._full)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="group-commit")
        return await waiting.future

    async def _flush(self) -> None:
        """Commit groups until nobody waits."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            wait = self._wait()
            if wait > 0:
                # Until the window ends or the group is full: a future and a timer, not
                # wait_for (a task per group, and one more loop turn to cancel it).
                self._full = loop.create_future()
                timer = loop.call_later(wait, resolve, self._full)
                try:
                    await self._full
                finally:
                    timer.cancel()
                    self._full = None
            group, self._waiting, self._waiting_messages = self._waiting, [], 0
            try:
                outcomes = await self.pool.run_pinned(
                    persist_group, [waiting.job for waiting in group]
                )
            except BaseException as exc:  # the COMMIT (or the transaction) failed: all redo
                for waiting in group:
                    if not waiting.future.done():
                        waiting.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            self.groups += 1
            self.batches += len(group)
            for waiting, outcome in zip(group, outcomes, strict=True):
                if waiting.future.done():  # the session was cancelled meanwhile
                    continue
                if isinstance(outcome, BaseException):
                    waiting.future.set_exception(outcome)
                else:
                    waiting.future.set_result(outcome)

    def _wait(self) -> float:
        """Seconds the waiting batches wait for more before they are committed."""
        if not self.adaptive:
            return self.window if self._waiting_messages < self.max_messages else 0.0
        return commit_wait(
            asyncio.get_running_loop().time(),
            self._waiting[0].arrived,
            self._waiting_messages,
            self.rate.gap,
            self.window,
            self.max_messages,
        )


def persist_group(jobs: list[PersistJob]) -> list[PersistResult | Exception]:
    """Each job's result or exception, committed. Raises only if the one-by-one
    transaction as a whole fails.

    First the whole group through the writer (a few statements for the whole group) in
    one transaction; if any of its statements (or its COMMIT) fails, that transaction is
    rolled back and the writer runs once per job in a new one, each job in a savepoint of
    its own, so the job that caused the error fails alone and the others are written. (Not
    a savepoint around the group's writer: its SAVEPOINT and RELEASE were two statements
    more per group for what the rollback does as well.)"""
    _size_cache()
    try:
        with transaction.atomic():
            return writer.write_jobs(jobs)
    except Exception as exc:  # noqa: BLE001 - retried job by job just below
        if dboutage.is_connection_error(exc):
            raise  # job by job would fail the same way; the sessions retry
        log.warning(
            "group of %d batches failed as a whole; persisting them one by one",
            len(jobs),
            exc_info=True,
        )
    with transaction.atomic():
        return persist_one_by_one(jobs)


GROUP_CACHE_KIB = 65536


def _size_cache() -> None:
    """SQLite: give the group commit's connection (one thread, always the same:
    DbPool.run_pinned) a page cache of GROUP_CACHE_KIB instead of SQLite's 2 MiB, once per
    connection. The pages a group touches (each user's place in the MailLog and Delivery
    indexes, the user rows) are spread over more than 2 MiB at a few thousand mailboxes:
    with 2 MiB each group read ~20 pages back from the file (pread), with 64 MiB none.
    Only this connection: the others' caches stay small."""
    if connection.vendor != "sqlite":
        return
    connection.ensure_connection()
    raw = connection.connection
    if getattr(connection, "_group_cache_of", None) is not raw:
        raw.execute(f"PRAGMA cache_size = -{GROUP_CACHE_KIB}")  # not a statement of the group
        connection._group_cache_of = raw  # type: ignore[attr-defined]


def persist_one_by_one(jobs: list[PersistJob]) -> list[PersistResult | Exception]:
    """Run the writer for each job alone, in its own savepoint of the current
    transaction; return each job's result or exception."""
    # Rows are locked in user id order, whatever order the batches came in: two groups (two
    # nodes on PostgreSQL) never wait for each other's locks in a cycle.
    order = sorted(range(len(jobs)), key=lambda i: jobs[i].user_id)
    by_index: dict[int, PersistResult | Exception] = {}
    for i in order:
        try:
            with transaction.atomic():  # this batch's savepoint: its error undoes it alone
                (outcome,) = writer.write_jobs([jobs[i]])
                if isinstance(outcome, Exception):
                    raise outcome
                by_index[i] = outcome
        except Exception as exc:  # noqa: BLE001 - handed to the session it belongs to
            by_index[i] = exc
    return [by_index[i] for i in range(len(jobs))]
