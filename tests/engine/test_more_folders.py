"""Several folders per mailbox (issue 8 item 2, design.md 4.10): the first by IDLE, the
others by NOTIFY (RFC 5465) where the server has it, else by STATUS polling.

Every test counts, per folder, messages in the folder = new_mail deliveries + skips.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

import pytest
from django.db import close_old_connections
from django.utils import timezone

from devtools.testing.dovecot import MORE_FOLDERS_NAMESPACE, DovecotServer
from devtools.testing.mail import make_message
from superimap.accounts import users as accounts_users
from superimap.delivery.models import Delivery
from superimap.delivery.payloads import message_url
from superimap.engine.folders import match_folders
from superimap.imap import MailboxListing
from superimap.mailboxes.models import FolderCheckpoint, MailboxUser, MailLog
from tests.helpers.api import asgi_get, message_path
from tests.helpers.engine import FAST, RunningEngine, loopback_connection, wait_for

_names = itertools.count()
# Polling every 0.5 s; NOTIFY off, as on a server without it.
POLLING = replace(FAST, use_notify=False, folder_poll=0.5)


@pytest.fixture(scope="module")
def folders_dovecot():
    with DovecotServer(extra_config=MORE_FOLDERS_NAMESPACE) as server:
        yield server


def _user(partner, server: DovecotServer, folders: list[str]) -> MailboxUser:
    name = f"mf{next(_names)}"
    server.add_user(name, "secret-pw")
    return MailboxUser.objects.create(
        connection=loopback_connection(partner, server.imap_port),
        tag=name,
        email=f"{name}@example.test",
        login_username=name,
        password="secret-pw",
        connected_at=timezone.now(),
        folders=folders,
    )


def _new_mail(user_id: int) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id, kind="new_mail").order_by("id"))


def _status(user_id: int) -> str:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id).status


def _message(user: MailboxUser, subject: str) -> bytes:
    return make_message(subject, "a@example.test", user.email, f"body of {subject}")


def _assert_counts(server: DovecotServer, user: MailboxUser, folder: str, baseline: int = 0):
    """Messages in the folder after its baseline = new_mail + skips recorded there."""
    rows = MailLog.objects.filter(user=user, folder=folder)
    assert len(server.uids(user.tag, folder)) - baseline == rows.count()
    delivered = Delivery.objects.filter(
        user=user, kind="new_mail", stored_payload__payload__folder=folder
    )
    assert rows.filter(skipped_reason="").count() == delivered.count()


def _run(settings, scenario):
    async def main():
        async with RunningEngine(session_settings=settings):
            return await scenario()

    return asyncio.run(main())


@pytest.mark.parametrize("settings", [FAST, POLLING], ids=["notify", "status-polling"])
def test_it_delivers_mail_of_each_folder_once_with_its_folder(
    mail_partner, folders_dovecot, settings
):
    user = _user(mail_partner, folders_dovecot, ["INBOX", "Lists", "\\Junk"])

    async def scenario():
        await wait_for(lambda: _status(user.id) == "idle")
        for folder in ("INBOX", "Lists", "Spam"):
            raw = _message(user, f"to {folder}")
            await asyncio.to_thread(folders_dovecot.deliver, user.tag, raw, folder)
        # FAST re-issues IDLE every 60 s: within 10 s only NOTIFY or polling finds Lists.
        return await wait_for(lambda: len(rows := _new_mail(user.id)) >= 3 and rows)

    rows = _run(settings, scenario)
    assert sorted((r.payload["folder"], r.payload["envelope"]["subject"]) for r in rows) == [
        ("INBOX", "to INBOX"),
        ("Lists", "to Lists"),
        ("Spam", "to Spam"),
    ]
    for folder in ("INBOX", "Lists", "Spam"):
        _assert_counts(folders_dovecot, user, folder)
    checkpoints = dict(FolderCheckpoint.objects.filter(user=user).values_list("folder", "last_uid"))
    assert checkpoints == {"Lists": 1, "Spam": 1}
    assert MailboxUser.objects.get(id=user.id).last_uid == 1


def test_the_same_message_in_two_folders_is_one_new_mail_and_one_duplicate(
    mail_partner, folders_dovecot
):
    user = _user(mail_partner, folders_dovecot, ["INBOX", "Lists"])

    async def scenario():
        await wait_for(lambda: _status(user.id) == "idle")
        raw = _message(user, "filed twice")
        await asyncio.to_thread(folders_dovecot.deliver, user.tag, raw, "INBOX")
        await wait_for(lambda: _new_mail(user.id))
        await asyncio.to_thread(folders_dovecot.deliver, user.tag, raw, "Lists")
        return await wait_for(
            lambda: MailLog.objects.filter(user=user, folder="Lists").exists() and True
        )

    _run(FAST, scenario)
    assert [r.payload["folder"] for r in _new_mail(user.id)] == ["INBOX"]
    copy = MailLog.objects.get(user=user, folder="Lists")
    assert copy.skipped_reason == "duplicate"
    _assert_counts(folders_dovecot, user, "INBOX")
    _assert_counts(folders_dovecot, user, "Lists")


def test_a_folder_added_later_starts_from_a_baseline(mail_partner, folders_dovecot):
    user = _user(mail_partner, folders_dovecot, [])
    for index in range(2):
        folders_dovecot.deliver(user.tag, _message(user, f"old {index}"), "Lists")

    async def scenario():
        await wait_for(lambda: _status(user.id) == "idle")
        await asyncio.to_thread(_set_folders, user.id, ["INBOX", "Lists"])
        await wait_for(lambda: FolderCheckpoint.objects.filter(user_id=user.id).exists())
        await wait_for(lambda: _status(user.id) == "idle")
        raw = _message(user, "new")
        await asyncio.to_thread(folders_dovecot.deliver, user.tag, raw, "Lists")
        return await wait_for(lambda: _new_mail(user.id))

    rows = _run(FAST, scenario)
    assert [(r.payload["folder"], r.payload["envelope"]["subject"]) for r in rows] == [
        ("Lists", "new")
    ]
    assert FolderCheckpoint.objects.get(user=user, folder="Lists").last_uid == 3
    _assert_counts(folders_dovecot, user, "Lists", baseline=2)


def _set_folders(user_id: int, folders: list[str]) -> None:
    close_old_connections()
    user = MailboxUser.objects.get(id=user_id)
    user.folders = folders
    accounts_users.save_user(user)


def test_mail_that_arrived_while_the_engine_was_down_is_caught_up(mail_partner, folders_dovecot):
    user = _user(mail_partner, folders_dovecot, ["INBOX", "Lists"])

    async def first():
        await wait_for(lambda: FolderCheckpoint.objects.filter(user_id=user.id).exists())

    _run(FAST, first)
    folders_dovecot.deliver(user.tag, _message(user, "while down"), "Lists")

    async def second():
        return await wait_for(lambda: _new_mail(user.id))

    rows = _run(FAST, second)
    assert [r.payload["folder"] for r in rows] == ["Lists"]
    _assert_counts(folders_dovecot, user, "Lists")


def test_a_missing_folder_is_named_without_failing_the_session(mail_partner, folders_dovecot):
    user = _user(mail_partner, folders_dovecot, ["INBOX", "Nope", "\\Sent"])

    async def scenario():
        await wait_for(lambda: _status(user.id) == "idle")
        raw = _message(user, "still watched")
        await asyncio.to_thread(folders_dovecot.deliver, user.tag, raw, "INBOX")
        await wait_for(lambda: _new_mail(user.id))
        return await asyncio.to_thread(_last_error, user.id)

    assert _run(FAST, scenario) == "folders not found: Nope, \\Sent"


def _last_error(user_id: int) -> str:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id).last_error


@pytest.mark.parametrize(
    ("specs", "names", "missing"),
    [
        (["\\Inbox"], ["INBOX"], []),
        (["inbox", "\\junk", "Spam"], ["INBOX", "Spam"], []),
        (["\\Sent", "Lists"], ["Lists"], ["\\Sent"]),
        (["\\All"], [], ["\\All"]),
    ],
)
def test_it_resolves_names_and_special_use_flags(specs, names, missing) -> None:
    listings = [
        MailboxListing(("\\HasNoChildren",), "/", "INBOX"),
        MailboxListing((), "/", "Lists"),
        MailboxListing(("\\Junk",), "/", "Spam"),
        MailboxListing(("\\All", "\\Noselect"), "/", "Virtual"),
    ]
    assert match_folders(listings, specs) == (names, missing)


def test_the_message_route_reads_the_folder_of_rfc822_url(mail_partner, folders_dovecot):
    """Dovecot gives folders created in the same second the same UIDVALIDITY: UID 1 of
    Lists and UID 1 of INBOX differ, and only the folder in the URL tells them apart."""
    user = _user(mail_partner, folders_dovecot, ["INBOX", "Lists"])
    in_lists = _message(user, "in Lists")
    folders_dovecot.deliver(user.tag, in_lists, "Lists")
    folders_dovecot.deliver(user.tag, _message(user, "in INBOX"), "INBOX")
    uid_validity = folders_dovecot.uidvalidity(user.tag, "Lists")
    url = message_url(user.connection.provider.code, user.tag, uid_validity, 1, "Lists")
    assert url.endswith(f"/messages/{uid_validity}/1?folder=Lists")

    status, _, body = asgi_get(url[url.index("/api/v1/") :], mail_partner.api_key)
    assert status == 200, body[:300]
    assert body == in_lists
    status, _, body = asgi_get(
        message_path(user, uid_validity, 1) + "?folder=Nope", mail_partner.api_key
    )
    assert status == 404 and b"message_not_found" in body
