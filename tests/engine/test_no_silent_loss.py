"""No silent loss against a real Dovecot: each message that arrives in the watched folder
ends delivered as new_mail or recorded as skipped with a reason. Every test counts:
messages in the folder = new_mail deliveries + recorded skips."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from dataclasses import replace

from django.db import close_old_connections

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.engine import session, writer
from superimap.mailboxes.models import MailboxUser, MailLog
from superimap.sync.envelope import parse_headers
from tests.helpers.engine import FAST, RunningEngine, wait_for


def _user(user_id: int) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id)


def _deliveries(user_id: int) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id, kind="new_mail").order_by("id"))


def _subjects(user_id: int) -> list[str]:
    return [d.payload["envelope"]["subject"] for d in _deliveries(user_id)]


def _skips(user_id: int, **filters) -> list[MailLog]:
    close_old_connections()
    rows = MailLog.objects.filter(user_id=user_id, **filters).exclude(skipped_reason="")
    return list(rows.order_by("uid"))


def test_random_expunges_during_a_150_message_catch_up_lose_no_survivor(
    mailbox, dovecot, monkeypatch
):
    # Small batches and a slower database: the catch-up takes long enough for the expunges
    # (another client, via doveadm) to land between its SEARCH and its FETCHes.
    monkeypatch.setattr(session, "BATCH_SIZE", 10)
    persist = writer.write_jobs

    def slow_persist(*args):
        time.sleep(0.05)
        return persist(*args)

    monkeypatch.setattr(writer, "write_jobs", slow_persist)
    user = mailbox()
    for i in range(150):
        dovecot.deliver(user.tag, make_message(f"m{i + 1}", "a@example.test", user.email, "x"))
    uids = dovecot.uids(user.tag)
    assert len(uids) == 150
    subject_of = {uid: f"m{n + 1}" for n, uid in enumerate(uids)}
    # Watched from before these 150 arrived: the engine catches up on all of them.
    MailboxUser.objects.filter(id=user.id).update(
        uid_validity=dovecot.uidvalidity(user.tag), last_uid=0
    )
    victims = random.Random(150).sample(uids[20:], 25)
    expunged: list[int] = []

    def expunge_while_catching_up() -> None:
        for uid in victims:
            dovecot.expunge(user.tag, uid)
            expunged.append(uid)
            time.sleep(random.uniform(0.0, 0.02))

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user(user.id).last_uid, interval=0.01)  # searched
            expunger = threading.Thread(target=expunge_while_catching_up)
            expunger.start()
            await wait_for(lambda: (_user(user.id).last_uid or 0) >= uids[-1], timeout=30)
            await asyncio.to_thread(expunger.join)
            await wait_for(lambda: _user(user.id).status == "idle")
            await asyncio.sleep(0.5)

    asyncio.run(scenario())
    survivors = set(dovecot.uids(user.tag))
    assert len(survivors) == 125 and sorted(expunged) == sorted(victims)
    delivered = _subjects(user.id)
    skipped = {row.uid: row.skipped_reason for row in _skips(user.id)}
    assert len(delivered) == len(set(delivered))  # nothing twice
    assert {subject_of[uid] for uid in survivors} <= set(delivered)  # every survivor
    assert set(skipped.values()) <= {"expunged"}
    assert set(skipped) <= set(victims)
    for uid in uids:
        sent, skip = subject_of[uid] in delivered, uid in skipped
        # Exactly one state; only a message expunged before the engine saw it has none.
        assert (sent != skip) or (uid in victims and not sent and not skip), uid
    unseen = [uid for uid in victims if subject_of[uid] not in delivered and uid not in skipped]
    assert len(delivered) + len(skipped) == 150 - len(unseen)
    print(
        f"150 messages, {len(victims)} expunged during the catch-up: {len(delivered)} "
        f"delivered, {len(skipped)} skipped as expunged, {len(unseen)} gone before seen"
    )


def test_a_different_message_with_a_repeated_message_id_is_delivered(mailbox, dovecot):
    user = mailbox()
    first = make_message("first", "a@example.test", user.email, "one", message_id="<same@t>")
    other = make_message("other", "a@example.test", user.email, "two, longer", "<same@t>")
    # Same Message-ID, size and Date as `first`, one byte changed: the same message.
    same = first.replace(b"one", b"eno")
    assert len(same) == len(first) and same != first

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user(user.id).status == "idle")
            for raw in (first, other, first, same):
                await asyncio.to_thread(dovecot.deliver, user.tag, raw)
            await wait_for(lambda: len(_deliveries(user.id)) + len(_skips(user.id)) == 4)
            await asyncio.sleep(0.5)

    asyncio.run(scenario())
    assert _subjects(user.id) == ["first", "other"]
    skips = _skips(user.id)
    assert [row.skipped_reason for row in skips] == ["duplicate", "duplicate"]
    assert {row.message_id for row in skips} == {"<same@t>"}
    assert len(dovecot.uids(user.tag)) == len(_deliveries(user.id)) + len(skips) == 4


def test_mail_over_max_email_size_is_sent_truncated_with_a_url(mailbox, dovecot, settings):
    settings.PUBLIC_URL = "https://imap.example.test"
    user = mailbox()
    big = make_message("big one", "Ann <ann@example.test>", user.email, "x" * 20000)
    small = make_message("small one", "a@example.test", user.email, "y")

    async def scenario():
        async with RunningEngine(session_settings=replace(FAST, max_email_size=4096)):
            await wait_for(lambda: _user(user.id).status == "idle")
            for raw in (big, small):
                await asyncio.to_thread(dovecot.deliver, user.tag, raw)
            await wait_for(lambda: len(_deliveries(user.id)) == 2)
            await asyncio.sleep(0.3)

    asyncio.run(scenario())
    truncated, whole = (d.payload for d in _deliveries(user.id))
    uid = dovecot.uids(user.tag)[0]
    validity = dovecot.uidvalidity(user.tag)
    assert truncated["truncated"] is True and "rfc822" not in truncated
    assert truncated["size"] == len(big)
    assert truncated["envelope"]["subject"] == "big one"
    assert truncated["envelope"]["from"][0]["mailbox"] == "ann"
    assert truncated["rfc822_url"] == (
        f"https://imap.example.test/api/v1/connections/LOOPBACK_PLAIN/users/{user.tag}"
        f"/messages/{validity}/{uid}?folder=INBOX"
    )
    header = big[: big.index(b"\r\n\r\n") + 4]
    assert truncated["sha1"] == hashlib.sha1(header).hexdigest()
    assert parse_headers(header)["Subject"] == "big one"
    assert "truncated" not in whole and whole["size"] == len(small)
    assert _skips(user.id) == []  # 2 messages = 2 deliveries + 0 skips


def test_after_a_uidvalidity_change_mail_older_than_the_user_is_not_new(mailbox, dovecot):
    user = mailbox()
    for i in range(3):
        dovecot.deliver(user.tag, make_message(f"old {i}", "a@example.test", user.email, "o"))
    time.sleep(1.1)  # INTERNALDATE has whole seconds: the old mail is a second older

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user(user.id).status == "idle")
            for i in range(2):
                msg = make_message(f"new {i}", "a@example.test", user.email, "n")
                await asyncio.to_thread(dovecot.deliver, user.tag, msg)
            await wait_for(lambda: len(_deliveries(user.id)) == 2)
            validity = await asyncio.to_thread(dovecot.recreate_mailbox, user.tag)
            during = make_message("during the change", "a@example.test", user.email, "d")
            await asyncio.to_thread(dovecot.deliver, user.tag, during)
            await wait_for(lambda: _user(user.id).uid_validity == validity, timeout=15)
            await wait_for(lambda: len(_deliveries(user.id)) >= 3, timeout=15)
            await wait_for(lambda: _user(user.id).status == "idle")
            await asyncio.sleep(0.5)
            return validity

    validity = asyncio.run(scenario())
    assert sorted(_subjects(user.id)) == ["during the change", "new 0", "new 1"]
    rows = MailLog.objects.filter(user_id=user.id, uid_validity=validity).order_by("uid")
    reasons = [(row.subject, row.skipped_reason) for row in rows]
    assert reasons == [
        ("old 0", "before_baseline"),
        ("old 1", "before_baseline"),
        ("old 2", "before_baseline"),
        ("new 0", "duplicate"),
        ("new 1", "duplicate"),
        ("during the change", ""),
    ]
    # In the new UID space: 6 messages = 1 new_mail + 5 skips, one row per UID.
    assert [row.uid for row in rows] == dovecot.uids(user.tag)
    assert _user(user.id).last_uid == max(dovecot.uids(user.tag))
