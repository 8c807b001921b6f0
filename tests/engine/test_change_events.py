"""message_updated / message_deleted (design.md 4.14) against a real Dovecot (CONDSTORE
and QRESYNC on): flag changes, expunges, moves, and changes made while the engine was
down, each one event with a stable event id; the count identity still holds."""

from __future__ import annotations

import asyncio

import pytest
from django.db import close_old_connections

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser, MailLog, MessageState
from superimap.sync import changes
from tests.helpers.engine import RunningEngine, wait_for

CHANGE_KINDS = ("message_updated", "message_deleted")


@pytest.fixture
def change_partner(mail_partner):
    mail_partner.message_updated_webhook = "http://127.0.0.1:9/updated"
    mail_partner.message_deleted_webhook = "http://127.0.0.1:9/deleted"
    mail_partner.save()
    return mail_partner


def _status(user_id: int) -> str:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id).status


def _events(user_id: int, kind: str | None = None) -> list[Delivery]:
    close_old_connections()
    rows = Delivery.objects.filter(user_id=user_id, kind__in=CHANGE_KINDS).order_by("id")
    return [r for r in rows if kind is None or r.kind == kind]


def _new_mail(user_id: int) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id, kind="new_mail").order_by("id"))


def _tracked(user_id: int) -> int:
    close_old_connections()
    return MessageState.objects.filter(user_id=user_id).count()


def _assert_count_identity(dovecot, user, folders: dict[str, int]) -> None:
    """Messages that reached each folder = new_mail deliveries + recorded skips there."""
    for folder, arrived in folders.items():
        logs = MailLog.objects.filter(user=user, folder=folder)
        delivered = logs.filter(skipped_reason="").count()
        skipped = logs.exclude(skipped_reason="").count()
        assert delivered + skipped == arrived, (folder, delivered, skipped, arrived)


def _deliver(dovecot, user, subject: str) -> None:
    dovecot.deliver(user.tag, make_message(subject, "a@example.test", user.email, subject))


def test_a_flag_change_and_an_expunge_are_one_event_each(change_partner, mailbox, dovecot):
    user = mailbox()

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _status(user.id) == "idle")
            await asyncio.to_thread(_deliver, dovecot, user, "one")
            await asyncio.to_thread(_deliver, dovecot, user, "two")
            await wait_for(lambda: len(_new_mail(user.id)) == 2 and _tracked(user.id) == 2)
            await asyncio.to_thread(dovecot.flags, user.tag, 1, "\\Seen \\Flagged")
            await wait_for(lambda: _events(user.id, "message_updated"), timeout=10)
            await asyncio.to_thread(dovecot.expunge, user.tag, 2)
            await wait_for(lambda: _events(user.id, "message_deleted"), timeout=10)
            await asyncio.sleep(0.5)  # a second event would show now

    asyncio.run(scenario())
    updated, deleted = _events(user.id, "message_updated"), _events(user.id, "message_deleted")
    assert len(updated) == 1 and len(deleted) == 1
    first, second = _new_mail(user.id)
    body = updated[0].payload
    assert body["old_flags"] == [] and body["new_flags"] == ["\\Flagged", "\\Seen"]
    assert (body["uid"], body["folder"]) == (1, "INBOX")
    assert body["uid_validity"] == dovecot.uidvalidity(user.tag)
    assert body["new_mail_event_id"] == str(first.event_id)
    assert body["message_id"] == first.message_id
    assert updated[0].event_id == changes.event_id(
        user.id, "INBOX", body["uid_validity"], 1, "message_updated", 1
    )
    gone = deleted[0].payload
    assert (gone["uid"], gone["new_mail_event_id"]) == (2, str(second.event_id))
    _assert_count_identity(dovecot, user, {"INBOX": 2})


def test_a_move_between_watched_folders_is_deleted_plus_a_duplicate_skip(
    change_partner, mailbox, dovecot
):
    user = mailbox()
    dovecot.create_mailbox(user.tag, "Archive")
    user.folders = ["INBOX", "Archive"]
    user.save()

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _status(user.id) == "idle")
            await asyncio.to_thread(_deliver, dovecot, user, "to move")
            await wait_for(lambda: _new_mail(user.id) and _tracked(user.id) == 1)
            # With two folders the session uses NOTIFY, which must ask for FlagChange.
            await asyncio.to_thread(dovecot.flags, user.tag, 1, "\\Seen")
            await wait_for(lambda: _events(user.id, "message_updated"), timeout=10)
            await asyncio.to_thread(dovecot.move, user.tag, 1, "Archive")
            await wait_for(lambda: _events(user.id, "message_deleted"), timeout=10)
            await wait_for(
                lambda: MailLog.objects.filter(user=user, folder="Archive").exists(), timeout=70
            )
            await asyncio.sleep(0.5)

    asyncio.run(scenario())
    assert len(_new_mail(user.id)) == 1
    assert [e.kind for e in _events(user.id)] == ["message_updated", "message_deleted"]
    archived = MailLog.objects.get(user=user, folder="Archive")
    assert archived.skipped_reason == MailLog.Reason.DUPLICATE
    _assert_count_identity(dovecot, user, {"INBOX": 1, "Archive": 1})


def test_changes_made_while_the_engine_was_down_are_found_on_restart(
    change_partner, mailbox, dovecot
):
    user = mailbox()

    async def first_run():
        async with RunningEngine():
            await wait_for(lambda: _status(user.id) == "idle")
            for subject in ("a", "b", "c"):
                await asyncio.to_thread(_deliver, dovecot, user, subject)
            await wait_for(lambda: _tracked(user.id) == 3)

    async def second_run():
        async with RunningEngine():
            await wait_for(lambda: len(_events(user.id)) == 3, timeout=10)
            await asyncio.sleep(0.5)

    asyncio.run(first_run())
    dovecot.flags(user.tag, 1, "\\Seen")
    dovecot.flags(user.tag, 3, "\\Answered")
    dovecot.expunge(user.tag, 2)
    asyncio.run(second_run())
    kinds = sorted((e.kind, e.payload["uid"]) for e in _events(user.id))
    assert kinds == [("message_deleted", 2), ("message_updated", 1), ("message_updated", 3)]
    # Nothing changed since: a third run sends nothing more.
    asyncio.run(second_run())
    assert len(_events(user.id)) == 3
    _assert_count_identity(dovecot, user, {"INBOX": 3})


def test_without_a_change_url_nothing_is_tracked(mail_partner, mailbox, dovecot):
    user = mailbox()

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _status(user.id) == "idle")
            await asyncio.to_thread(_deliver, dovecot, user, "plain")
            await wait_for(lambda: _new_mail(user.id))
            await asyncio.to_thread(dovecot.flags, user.tag, 1, "\\Seen")
            await asyncio.sleep(1.0)

    asyncio.run(scenario())
    assert _tracked(user.id) == 0 and _events(user.id) == []
