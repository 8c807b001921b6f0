"""Which folder the engine watches (issue 8 item 1): RFC 6154 \\All, Gmail's names, INBOX.

Dovecot plays Gmail: a namespace with "[Gmail]/All Mail" flagged \\All, where every message
lives, while INBOX gets only some of them (filters and labels skip it).
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.dovecot import (
    GMAIL_LIKE_NAMESPACE,
    GMAIL_NAMES_WITHOUT_SPECIAL_USE,
    DovecotServer,
)
from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.engine.folders import pick_folder
from superimap.imap import MailboxListing
from superimap.mailboxes.models import MailboxUser, MailLog
from tests.helpers.api import asgi_get, message_path
from tests.helpers.engine import RunningEngine, loopback_connection, wait_for

ALL_MAIL = "[Gmail]/All Mail"
_names = itertools.count()


@pytest.fixture(scope="module")
def gmail_dovecot():
    with DovecotServer(extra_config=GMAIL_LIKE_NAMESPACE) as server:
        yield server


@pytest.fixture(scope="module")
def unflagged_dovecot():
    with DovecotServer(extra_config=GMAIL_NAMES_WITHOUT_SPECIAL_USE) as server:
        yield server


def _user(partner, server: DovecotServer, **fields) -> MailboxUser:
    name = f"gm{next(_names)}"
    server.add_user(name, "secret-pw")
    connection = loopback_connection(partner, server.imap_port)
    return MailboxUser.objects.create(
        connection=connection,
        tag=name,
        email=f"{name}@example.test",
        login_username=name,
        password="secret-pw",
        connected_at=timezone.now(),
        **fields,
    )


def _user_row(user_id: int) -> MailboxUser:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id)


def _new_mail(user_id: int) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id, kind="new_mail").order_by("id"))


def _deliver_gmail_style(server: DovecotServer, user: str, index: int, in_inbox: bool) -> None:
    """Gmail keeps every message in All Mail; only some also carry the Inbox label."""
    raw = make_message(f"mail {index}", "a@example.test", f"{user}@example.test", str(index))
    server.deliver(user, raw, ALL_MAIL)
    if in_inbox:
        server.deliver(user, raw, "INBOX")


def test_it_watches_the_special_use_all_folder(mail_partner, gmail_dovecot):
    user = _user(mail_partner, gmail_dovecot)

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user_row(user.id).status == "idle")
            for index in range(5):
                await asyncio.to_thread(
                    _deliver_gmail_style, gmail_dovecot, user.tag, index, index == 0
                )
            return await wait_for(lambda: len(rows := _new_mail(user.id)) >= 5 and rows)

    rows = asyncio.run(scenario())
    # Messages in the folder = new_mail deliveries + recorded skips: all 5, not INBOX's 1.
    assert len(rows) == 5
    assert sorted(r.payload["envelope"]["subject"] for r in rows) == [f"mail {i}" for i in range(5)]
    assert {r.payload["folder"] for r in rows} == {ALL_MAIL}
    assert MailLog.objects.filter(user=user).count() == 5
    assert _user_row(user.id).checkpoint_folder == ALL_MAIL


def test_it_falls_back_to_gmails_folder_name_without_special_use(mail_partner, unflagged_dovecot):
    user = _user(mail_partner, unflagged_dovecot)

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user_row(user.id).status == "idle")
            raw = make_message("archived", "a@example.test", user.email, "skips the inbox")
            await asyncio.to_thread(unflagged_dovecot.deliver, user.tag, raw, ALL_MAIL)
            return await wait_for(lambda: _new_mail(user.id))

    rows = asyncio.run(scenario())
    assert [r.payload["folder"] for r in rows] == [ALL_MAIL]


def test_it_watches_inbox_on_a_server_without_an_all_folder(mailbox, dovecot):
    user = mailbox()

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user_row(user.id).status == "idle")
            raw = make_message("plain", "a@example.test", user.email, "inbox mail")
            await asyncio.to_thread(dovecot.deliver, user.tag, raw)
            return await wait_for(lambda: _new_mail(user.id))

    rows = asyncio.run(scenario())
    assert [r.payload["folder"] for r in rows] == ["INBOX"]


def test_a_checkpoint_of_another_folder_takes_a_new_baseline(mail_partner, gmail_dovecot):
    """An upgrade from INBOX to All Mail: INBOX's UIDs mean nothing in All Mail (Dovecot
    even gives folders created in the same second the same UIDVALIDITY), so the engine
    starts from All Mail's current end instead of re-sending or skipping by INBOX's UIDs."""
    name = f"gm{next(_names)}"
    gmail_dovecot.add_user(name, "secret-pw")
    for index in range(3):
        _deliver_gmail_style(gmail_dovecot, name, index, in_inbox=True)
    uid_validity = gmail_dovecot.uidvalidity(name, ALL_MAIL)
    user = MailboxUser.objects.create(
        connection=loopback_connection(mail_partner, gmail_dovecot.imap_port),
        tag=name,
        email=f"{name}@example.test",
        login_username=name,
        password="secret-pw",
        connected_at=timezone.now(),
        uid_validity=uid_validity,
        last_uid=0,  # a stale INBOX checkpoint that would re-send all 3 if applied here
        checkpoint_folder="INBOX",
    )

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _user_row(user.id).checkpoint_folder == ALL_MAIL)
            await wait_for(lambda: _user_row(user.id).status == "idle")
            await asyncio.to_thread(_deliver_gmail_style, gmail_dovecot, name, 3, False)
            return await wait_for(lambda: _new_mail(user.id))

    rows = asyncio.run(scenario())
    assert [r.payload["envelope"]["subject"] for r in rows] == ["mail 3"]
    assert _user_row(user.id).last_uid == 4


@pytest.mark.parametrize(
    ("listings", "expected"),
    [
        ([], "INBOX"),
        ([MailboxListing(("\\HasNoChildren",), "/", "INBOX")], "INBOX"),
        ([MailboxListing(("\\all",), ".", "Archive.Everything")], "Archive.Everything"),
        ([MailboxListing((), "/", "[Google Mail]/All Mail")], "[Google Mail]/All Mail"),
        (
            [
                MailboxListing((), "/", "[Gmail]/All Mail"),
                MailboxListing(("\\All",), "/", "Virtual/All"),
            ],
            "Virtual/All",
        ),
        ([MailboxListing(("\\All", "\\Noselect"), "/", "Nope")], "INBOX"),
        ([MailboxListing(("\\Junk",), "/", "Spam")], "INBOX"),
    ],
)
def test_it_picks_all_then_gmail_names_then_inbox(listings, expected) -> None:
    assert pick_folder(listings) == expected


def test_the_message_route_reads_the_watched_folder(mail_partner, gmail_dovecot):
    """new_mail's uid_validity/uid are All Mail's: the message route must EXAMINE All Mail,
    not INBOX (whose UIDVALIDITY Dovecot may share, which would hand out the wrong mail)."""
    user = _user(mail_partner, gmail_dovecot, checkpoint_folder=ALL_MAIL)
    archived = make_message("archived", "a@example.test", user.email, "only in All Mail")
    gmail_dovecot.deliver(user.tag, archived, ALL_MAIL)
    gmail_dovecot.deliver(user.tag, make_message("inbox", "a@x.test", user.email, "other"))
    uid_validity = gmail_dovecot.uidvalidity(user.tag, ALL_MAIL)

    status, _, body = asgi_get(message_path(user, uid_validity, 1), mail_partner.api_key)

    assert status == 200, body[:300]
    assert body == archived
