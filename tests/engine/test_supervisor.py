"""The engine picks up, drops and caps mailboxes, and handles special mail, on Dovecot."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.engine.models import EngineNode
from superimap.mailboxes.models import MailboxUser, MailLog
from superimap.tracers.models import TracerLog
from tests.helpers.engine import FAST, RunningEngine, wait_for


def _user(user_id: int) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id)


def _new_mail(user_id: int) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id, kind="new_mail"))


def _send(dovecot, user, subject: str, **kwargs) -> asyncio.Future:
    raw = make_message(subject, "a@example.test", user.email, kwargs.pop("body", "x"), **kwargs)
    return asyncio.to_thread(dovecot.deliver, user.tag, raw)


def test_it_stops_watching_an_archived_user_and_starts_a_new_one(mailbox, dovecot):
    first = mailbox()

    async def scenario():
        async with RunningEngine(refresh_interval=0.5) as engine:
            await wait_for(lambda: _user(first.id).status == "idle")
            await asyncio.to_thread(lambda: _user(first.id).archive())
            await wait_for(lambda: first.id not in engine.sessions, timeout=10)
            second = await asyncio.to_thread(mailbox)
            await wait_for(lambda: _user(second.id).status == "idle", timeout=10)
            await _send(dovecot, first, "to the archived user")
            await _send(dovecot, second, "to the new user")
            await wait_for(lambda: _new_mail(second.id), timeout=5)
            return second

    second = asyncio.run(scenario())
    assert _new_mail(first.id) == []
    assert [d.payload["envelope"]["subject"] for d in _new_mail(second.id)] == ["to the new user"]
    assert _user(first.id).owner_node == ""


def test_it_holds_no_more_mailboxes_than_its_capacity(mailbox):
    users = [mailbox() for _ in range(3)]

    async def scenario():
        async with RunningEngine(capacity=2) as engine:
            await wait_for(lambda: len(engine.sessions) == 2)
            await asyncio.sleep(0.6)
            node = await asyncio.to_thread(lambda: EngineNode.objects.get(node_id="test-node"))
            return len(engine.sessions), node

    held, node = asyncio.run(scenario())
    assert held == 2
    assert node.mailboxes_held == 2 and node.capacity == 2
    owners = [_user(u.id).owner_node for u in users]
    assert owners.count("") == 3  # leases are released on shutdown


def test_it_watches_over_starttls(mailbox, dovecot):
    user = mailbox(tls="starttls")

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user(user.id).status == "idle")
            await _send(dovecot, user, "over starttls")
            return await wait_for(lambda: _new_mail(user.id))

    rows = asyncio.run(scenario())
    assert [r.payload["envelope"]["subject"] for r in rows] == ["over starttls"]


def test_it_sends_mail_over_the_size_limit_truncated_and_moves_on(mailbox, dovecot):
    user = mailbox()
    small_limit = dataclasses.replace(FAST, max_email_size=4096)

    async def scenario():
        async with RunningEngine(session_settings=small_limit):
            await wait_for(lambda: _user(user.id).status == "idle")
            await _send(dovecot, user, "too big", body="x" * 20000)
            await _send(dovecot, user, "small")
            return await wait_for(lambda: len(_new_mail(user.id)) == 2 and _new_mail(user.id))

    rows = asyncio.run(scenario())
    by_subject = {r.payload["envelope"]["subject"]: r.payload for r in rows}
    big, small = by_subject.pop("too big"), by_subject.pop("small")
    assert big["truncated"] is True and big["size"] > 4096 and "rfc822" not in big
    assert "truncated" not in small and "rfc822" in small
    logged = MailLog.objects.get(user_id=user.id, subject="too big")
    assert logged.size > 4096 and logged.skipped_reason == ""


def test_it_delivers_the_same_message_only_once(mailbox, dovecot):
    user = mailbox()
    copy = make_message("copy", "a@example.test", user.email, "x", "<same@example.test>")

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user(user.id).status == "idle")
            for _ in range(2):
                await asyncio.to_thread(dovecot.deliver, user.tag, copy)
            await _send(dovecot, user, "other")
            await wait_for(lambda: len(_new_mail(user.id)) == 2)
            await asyncio.sleep(0.5)

    asyncio.run(scenario())
    subjects = sorted(d.payload["envelope"]["subject"] for d in _new_mail(user.id))
    assert subjects == ["copy", "other"]
    skipped = MailLog.objects.exclude(skipped_reason="").get(user_id=user.id)
    assert (skipped.skipped_reason, skipped.message_id) == ("duplicate", "<same@example.test>")


def test_it_completes_tracers_without_delivering_them(mailbox, dovecot):
    user = mailbox()
    MailboxUser.objects.filter(id=user.id).update(enable_tracer=True)
    tracer = TracerLog.objects.create(
        tracer_uid="t-123", user=user, sent_at=timezone.now() - timedelta(seconds=3)
    )

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user(user.id).status == "idle")
            await _send(dovecot, user, "TRACER: t-123")
            await _send(dovecot, user, "regular")
            await wait_for(lambda: _new_mail(user.id))

    asyncio.run(scenario())
    tracer.refresh_from_db()
    assert tracer.detected_at is not None
    assert 0 < tracer.latency_seconds < 60
    assert [d.payload["envelope"]["subject"] for d in _new_mail(user.id)] == ["regular"]


def test_a_session_that_ended_is_started_again_by_the_next_refresh(mailbox):
    user = mailbox()

    async def scenario():
        async with RunningEngine() as engine:

            def task() -> asyncio.Task | None:
                running = engine.sessions.get(user.id)
                return running[1] if running else None

            await wait_for(lambda: _user(user.id).status == "idle")
            first = task()
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            await wait_for(lambda: task() not in (None, first), timeout=5)
            return task().done()

    assert asyncio.run(scenario()) is False


def test_an_unchanged_watching_status_is_not_written_again(mail_partner):
    """A session reports idle before every IDLE, i.e. after every new message: only a
    change reaches the database (at 500 mails/s the rewrites held SQLite's writer)."""
    from superimap.engine.supervisor import Engine
    from superimap.platform.dbpool import DbPool
    from tests.helpers.engine import loopback_users

    loopback_users(mail_partner, 1, 1)
    user = MailboxUser.objects.get()

    def changed_at():
        return _user(user.id).status_changed_at

    async def scenario() -> list:
        pool = DbPool(size=1)
        engine = Engine(pool, "n1")
        engine.sessions[user.id] = (None, None, "v1")  # a running session of this user
        seen = []
        try:
            for reports in (
                [("idle", "", 0)],
                [("syncing", "", 0), ("idle", "", 0)],  # a new message: the same in the end
                [("connecting", "dropped", 1)],
                [("idle", "", 0)],
            ):
                for status, error, failures in reports:
                    engine.report(user.id, status, error, failures)
                await engine.flush_statuses()
                seen.append(await asyncio.to_thread(changed_at))
        finally:
            pool.shutdown()
        return seen

    first, unchanged, failing, recovered = asyncio.run(scenario())
    assert first is not None and unchanged == first
    assert failing > first and recovered > failing
    assert _user(user.id).status == "idle"


def test_a_status_whose_write_failed_is_written_at_the_next_flush(mail_partner):
    """A session reports an unchanged watching status only once (not at each IDLE
    re-issue), so a flush that failed (the database away) keeps what it could not write
    for the next one, unless the session reported again meanwhile."""
    from unittest import mock

    from django.db import OperationalError

    from superimap.engine import store
    from superimap.engine.supervisor import Engine
    from superimap.platform.dbpool import DbPool
    from tests.helpers.engine import loopback_users

    loopback_users(mail_partner, 1, 2)
    first, second = MailboxUser.objects.order_by("id")
    save = store.save_statuses
    calls = []

    def save_once_failing(statuses):
        calls.append(dict(statuses))
        if len(calls) == 1:
            raise OperationalError("the database went away")
        return save(statuses)

    async def scenario() -> None:
        pool = DbPool(size=1)
        engine = Engine(pool, "n1")
        engine.sessions[first.id] = (None, None, "v1")
        engine.sessions[second.id] = (None, None, "v1")
        try:
            with mock.patch.object(
                store, "save_statuses", autospec=True, side_effect=save_once_failing
            ):
                engine.report(first.id, "idle", "", 0)
                engine.report(second.id, "idle", "", 0)
                try:
                    await engine.flush_statuses()
                except OperationalError:
                    pass
                engine.report(second.id, "connecting", "dropped", 1)  # newer: it wins
                await engine.flush_statuses()
        finally:
            pool.shutdown()

    asyncio.run(scenario())
    assert len(calls) == 2
    assert calls[1] == {first.id: ("idle", "", 0), second.id: ("connecting", "dropped", 1)}
    assert _user(first.id).status == "idle"
    assert _user(second.id).status == "connecting"
