"""Group commit (engine/persister.py): one transaction for many sessions' batches (written
together by engine/writer.py, or job by job in savepoints when that fails), each
session woken with its own result or exception."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.conf import settings
from django.db import connection

from superimap.delivery.models import Delivery
from superimap.engine import store, writer
from superimap.engine.persister import GROUP_CACHE_KIB, GroupPersister, persist_group
from superimap.mailboxes.models import MailboxUser, MailLog
from superimap.platform.dbpool import DbPool
from tests.helpers.writer import batch, persist_args


def test_it_persists_every_batch_of_a_group(users):
    outcomes = persist_group([batch(users[0], 1, 2), batch(users[1], 5)])
    assert [o.new for o in outcomes] == [2, 1]
    assert Delivery.objects.filter(kind="new_mail").count() == 3
    assert [MailboxUser.objects.get(id=u.id).last_uid for u in users[:2]] == [2, 5]


def test_a_lost_lease_rolls_back_only_that_sessions_batch(users):
    MailboxUser.objects.filter(id=users[1].id).update(owner_node="other")
    outcomes = persist_group([batch(users[0], 1), batch(users[1], 1), batch(users[2], 3)])
    assert isinstance(outcomes[1], store.LeaseLost)
    assert (outcomes[0].new, outcomes[2].new) == (1, 1)
    assert not Delivery.objects.filter(user=users[1]).exists()
    assert MailboxUser.objects.get(id=users[1].id).last_uid is None
    assert MailLog.objects.filter(user__in=[users[0], users[2]]).count() == 2


def test_an_error_after_writing_rolls_back_that_batchs_rows_only(users, monkeypatch):
    write = writer.write_jobs

    def group_fails_then_second_user_fails(jobs):
        if len(jobs) > 1:
            raise RuntimeError("the group's INSERT failed")  # the jobs then go one by one
        outcomes = write(jobs)  # rows written inside its savepoint ...
        if jobs[0].user_id == users[1].id:
            raise RuntimeError("boom")  # ... and undone with it
        return outcomes

    monkeypatch.setattr(writer, "write_jobs", group_fails_then_second_user_fails)
    outcomes = persist_group([batch(users[0], 1), batch(users[1], 1, 2)])
    assert outcomes[0].new == 1
    assert isinstance(outcomes[1], RuntimeError)
    assert not MailLog.objects.filter(user=users[1]).exists()
    assert not Delivery.objects.filter(user=users[1]).exists()
    assert MailboxUser.objects.get(id=users[1].id).last_uid is None
    assert Delivery.objects.filter(user=users[0]).count() == 1


def test_sessions_persisting_together_share_one_group_and_get_their_own_outcome(users):
    MailboxUser.objects.filter(id=users[2].id).update(owner_node="other")

    async def run() -> tuple[list, GroupPersister]:
        pool = DbPool(size=2)
        persister = GroupPersister(pool, window=0.05)
        try:
            outcomes = await asyncio.gather(
                *(persister.persist(*persist_args(batch(user, 1, 2))) for user in users),
                return_exceptions=True,
            )
        finally:
            pool.shutdown()
        return outcomes, persister

    outcomes, persister = asyncio.run(run())
    assert (persister.groups, persister.batches) == (1, 3)
    assert [o.new for o in outcomes[:2]] == [2, 2]
    assert isinstance(outcomes[2], store.LeaseLost)
    assert Delivery.objects.filter(kind="new_mail").count() == 4


def test_a_full_group_does_not_wait_for_the_window(users):
    async def run() -> float:
        pool = DbPool(size=1)
        persister = GroupPersister(pool, window=30.0, max_messages=2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.gather(persister.persist(*persist_args(batch(users[0], 1, 2))))
        finally:
            pool.shutdown()
        return loop.time() - started

    assert asyncio.run(run()) < 5.0


def test_a_lone_mail_and_a_low_rate_are_committed_without_the_window(users):
    """The adaptive window (sync/groupcommit.py): the first batch, and one that comes long
    after the one before, are committed at once although the window is 2 s."""

    async def run() -> list[float]:
        pool = DbPool(size=1)
        persister = GroupPersister(pool, window=2.0)
        loop = asyncio.get_running_loop()
        took = []
        try:
            for uid in (1, 2):
                if uid == 2:
                    await asyncio.sleep(1.2)  # a gap of 1.2 s: under two expected in 2 s
                started = loop.time()
                result = await persister.persist(*persist_args(batch(users[0], uid)))
                took.append(loop.time() - started)
                assert result.new == 1
        finally:
            pool.shutdown()
        return took

    took = asyncio.run(run())
    assert max(took) < 1.0, took  # not the 2 s window
    assert Delivery.objects.filter(user=users[0], kind="new_mail").count() == 2
    assert MailboxUser.objects.get(id=users[0].id).last_uid == 2


def test_groups_grow_under_load_and_wait_at_most_the_window_from_their_oldest(users):
    """60 batches, one every ~2 ms: after the first few they share groups, and no batch
    waits much past the window (0.1 s) plus its commit. Every batch is written once."""
    count, window = 60, 0.1

    async def run() -> tuple[GroupPersister, list]:
        pool = DbPool(size=1)
        persister = GroupPersister(pool, window=window)
        loop = asyncio.get_running_loop()

        async def one(i: int) -> float:
            started = loop.time()
            result = await persister.persist(*persist_args(batch(users[i % 3], 1 + i // 3)))
            assert result.new == 1
            return loop.time() - started

        try:
            tasks = []
            for i in range(count):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(0.002)
            took = await asyncio.gather(*tasks)
        finally:
            pool.shutdown()
        return persister, took

    persister, took = asyncio.run(run())
    assert persister.batches == count
    assert persister.groups <= count // 4, persister.groups  # batches did share groups
    assert max(took) < window + 1.5, max(took)  # the window, one commit in flight, its own
    for user in users:  # count identity: every batch is one delivery, no skips
        assert Delivery.objects.filter(user=user, kind="new_mail").count() == count // 3
        assert not MailLog.objects.filter(user=user).exclude(skipped_reason="").exists()
        assert MailboxUser.objects.get(id=user.id).last_uid == count // 3


def test_group_commits_run_on_one_database_thread_and_connection(users):
    """DbPool.run_pinned: every call on the same thread, so the group commit's connection
    (and its page cache) is the same from one group to the next; the pool's other threads
    stay free for the sessions' other calls."""

    async def run() -> tuple[set, set, set]:
        pool = DbPool(size=2)
        persister = GroupPersister(pool, window=0.0)
        try:
            for uid in (1, 2, 3):
                assert (await persister.persist(*persist_args(batch(users[0], uid)))).new == 1
            pinned = await asyncio.gather(
                *(
                    pool.run_pinned(lambda: (threading.get_ident(), id(connection.connection)))
                    for _ in range(8)
                )
            )
            others = await asyncio.gather(*(pool.run(threading.get_ident) for _ in range(8)))
        finally:
            pool.shutdown()
        return {t for t, _ in pinned}, {c for _, c in pinned}, set(others)

    threads, connections, others = asyncio.run(run())
    assert len(threads) == len(connections) == 1
    assert not threads & others
    assert Delivery.objects.filter(user=users[0], kind="new_mail").count() == 3


def _pragma(name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA {name}")
        return cursor.fetchone()[0]


def test_the_group_commits_sqlite_connection_has_a_big_page_cache_and_no_other_has(users):
    """The pages a group touches (each user's place in the MailLog and Delivery indexes,
    the user rows) do not fit in SQLite's 2 MiB: the pinned connection keeps 64 MiB, set
    again on a new connection of that thread; the pool's other connections keep 2 MiB."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's page cache")

    def cache_size() -> int:
        return _pragma("cache_size")

    async def run() -> tuple[int, int, set[int]]:
        pool = DbPool(size=2)
        persister = GroupPersister(pool, window=0.0)
        try:
            assert (await persister.persist(*persist_args(batch(users[0], 1)))).new == 1
            first = await pool.run_pinned(cache_size)
            await pool.run_pinned(lambda: connection.close())  # CONN_MAX_AGE, an outage: a new one
            assert (await persister.persist(*persist_args(batch(users[0], 2)))).new == 1
            again = await pool.run_pinned(cache_size)
            others = await asyncio.gather(*(pool.run(cache_size) for _ in range(4)))
        finally:
            pool.shutdown()
        return first, again, set(others)

    first, again, others = asyncio.run(run())
    assert first == again == -GROUP_CACHE_KIB == -65536
    assert others == {-2000}  # SQLite's default, 2,000 KiB


def test_sqlite_copies_its_wal_back_every_10000_pages(users):
    """PRAGMA wal_autocheckpoint on every connection: SQLite's 1,000 made the group commit
    copy the WAL back every ~7 groups at 1,000 mails/s (design.md 4.4)."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's WAL")
    assert _pragma("wal_autocheckpoint") == settings.SQLITE_WAL_AUTOCHECKPOINT == 10000
    assert persist_group([batch(users[0], 1)])[0].new == 1
    assert _pragma("wal_autocheckpoint") == 10000
