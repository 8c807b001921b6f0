"""Group commit: the batches sessions persist within a few milliseconds share one transaction.

A session calls ``await engine.persister.persist(...)`` with the arguments of
``store.persist_batch``. The persister collects the batches that arrive within
ENGINE_GROUP_COMMIT_MS (or until ENGINE_GROUP_COMMIT_MESSAGES messages are waiting) and
writes them in ONE database transaction with a few set-based statements
(engine/groupwrite.py). If one of those fails, the group falls back to running each batch
through ``store.persist_batch`` inside a savepoint of its own: a batch that raises rolls
back to its savepoint, only its own rows go, the others' stay. A batch whose mailbox this
node no longer owns gets LeaseLost either way. Every session is woken after the COMMIT
with its own result or exception, so no session moves its checkpoint past a UID before
the rows that record it are durable; if the COMMIT itself fails, every session of the
group gets that error and fetches its batch again (design.md 4.3), exactly as when its
own transaction failed.

Only one group is in flight at a time: while it commits, the next one fills up, so groups
grow with the load and the per-transaction cost (the SQLite writer lock, the fsync) is
paid once per group instead of once per batch.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from superimap.engine import groupwrite, store
from superimap.platform import dboutage
from superimap.platform.dbpool import DbPool

log = logging.getLogger("superimap.engine")


@dataclass
class _Job:
    args: tuple
    messages: int
    future: asyncio.Future


class GroupPersister:
    def __init__(
        self, pool: DbPool, window: float | None = None, max_messages: int | None = None
    ) -> None:
        self.pool = pool
        self.window = settings.ENGINE_GROUP_COMMIT_MS / 1000 if window is None else window
        self.max_messages = max_messages or settings.ENGINE_GROUP_COMMIT_MESSAGES
        self._waiting: list[_Job] = []
        self._waiting_messages = 0
        self._full = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self.groups = 0
        self.batches = 0

    async def persist(
        self,
        user_id: int,
        node_id: str,
        uid_validity: int,
        folder: str,
        messages: list[store.FetchedMessage],
        sweep: bool = False,
    ) -> store.PersistResult:
        """``store.persist_batch(...)``, committed together with other sessions' batches."""
        job = _Job(
            (user_id, node_id, uid_validity, folder, messages, sweep),
            len(messages),
            asyncio.get_running_loop().create_future(),
        )
        self._waiting.append(job)
        self._waiting_messages += job.messages
        if self._waiting_messages >= self.max_messages:
            self._full.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="group-commit")
        return await job.future

    async def _flush(self) -> None:
        """Commit groups until nobody waits."""
        while self._waiting:
            if self._waiting_messages < self.max_messages and self.window > 0:
                try:
                    await asyncio.wait_for(self._full.wait(), self.window)
                except TimeoutError:
                    pass
            group, self._waiting, self._waiting_messages = self._waiting, [], 0
            self._full.clear()
            try:
                outcomes = await self.pool.run(persist_group, [job.args for job in group])
            except BaseException as exc:  # the COMMIT (or the transaction) failed: all redo
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            self.groups += 1
            self.batches += len(group)
            for job, outcome in zip(group, outcomes, strict=True):
                if job.future.done():  # the session was cancelled meanwhile
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)


def persist_group(jobs: list[tuple]) -> list[store.PersistResult | Exception]:
    """Each job's result or exception, all in one transaction. Raises only if the
    transaction as a whole fails.

    First the set-based path (engine/groupwrite.py: a few statements for the whole group)
    inside a savepoint; if any of its statements fails, the savepoint is rolled back and
    every job runs through ``store.persist_batch`` in a savepoint of its own, so the job
    that caused the error fails alone and the others are written."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                return groupwrite.persist_jobs(jobs)
        except Exception as exc:  # noqa: BLE001 - retried job by job just below
            if dboutage.is_connection_error(exc):
                raise  # job by job would fail the same way; the sessions retry
            log.warning(
                "group of %d batches failed as a whole; persisting them one by one",
                len(jobs),
                exc_info=True,
            )
        return persist_one_by_one(jobs)


def persist_one_by_one(jobs: list[tuple]) -> list[store.PersistResult | Exception]:
    """Run each job's ``persist_batch`` in its own savepoint of the current transaction;
    return each job's result or exception."""
    # Rows are locked in user id order, whatever order the batches came in: two groups (two
    # nodes on PostgreSQL) never wait for each other's locks in a cycle.
    order = sorted(range(len(jobs)), key=lambda i: jobs[i][0])
    by_index: dict[int, store.PersistResult | Exception] = {}
    for i in order:
        try:
            with transaction.atomic():  # this batch's savepoint: its error undoes it alone
                by_index[i] = store.persist_batch(*jobs[i])
        except Exception as exc:  # noqa: BLE001 - handed to the session it belongs to
            by_index[i] = exc
    return [by_index[i] for i in range(len(jobs))]
