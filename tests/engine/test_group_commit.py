"""Group commit (engine/persister.py): one transaction for many sessions' batches (written
together by engine/writer.py, or job by job in savepoints when that fails), each
session woken with its own result or exception."""

from __future__ import annotations

import asyncio

from superimap.delivery.models import Delivery
from superimap.engine import store, writer
from superimap.engine.persister import GroupPersister, persist_group
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
