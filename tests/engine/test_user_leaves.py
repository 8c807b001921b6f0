"""Nothing after the user leaves: no new_mail once a user is disconnected or archived."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from django.db import close_old_connections
from django.test import Client
from django.utils import timezone

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.engine import store, writer
from superimap.mailboxes.links import make_link
from superimap.mailboxes.models import MailboxUser
from superimap.sync.persist import FetchedMessage
from tests.helpers.engine import RunningEngine, wait_for


def _status(user_id: int) -> str:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id).status


def _events(user_id: int) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id).order_by("id"))


def _message(uid: int) -> FetchedMessage:
    raw = make_message(f"m{uid}", "a@example.test", "b@example.test", "body")
    return FetchedMessage(uid=uid, size=len(raw), internal_date=timezone.now(), raw=raw)


@pytest.fixture
def held_user(mailbox) -> MailboxUser:
    user = mailbox()
    MailboxUser.objects.filter(id=user.id).update(owner_node="n1", uid_validity=7, last_uid=0)
    return user


def test_it_discards_a_batch_for_a_disconnected_user(held_user):
    MailboxUser.objects.filter(id=held_user.id).update(connected_at=None)
    with pytest.raises(store.LeaseLost):
        writer.persist_batch(held_user.id, "n1", 7, "INBOX", [_message(1)])
    assert not Delivery.objects.filter(user=held_user).exists()
    assert MailboxUser.objects.get(id=held_user.id).last_uid == 0


def test_it_discards_a_batch_for_an_archived_user(held_user):
    held_user.archive()
    with pytest.raises(store.LeaseLost):
        writer.persist_batch(held_user.id, "n1", 7, "INBOX", [_message(1)])
    assert not Delivery.objects.filter(user=held_user).exists()


@pytest.mark.parametrize("leave", ["disconnect", "archive"])
def test_a_status_report_does_not_revive_a_user_that_left(held_user, leave):
    if leave == "disconnect":
        Client().post(make_link(held_user.id, "disconnect"))
    else:
        MailboxUser.objects.get(id=held_user.id).archive()
    assert _status(held_user.id) == "stopped"
    # The session's last report, flushed after the user left (its batch found it gone).
    store.save_statuses({held_user.id: ("syncing", "", 0)})
    store.save_statuses({held_user.id: ("auth_failed", "login refused", 1)})
    user = MailboxUser.objects.get(id=held_user.id)
    assert (user.status, user.last_error, user.consecutive_failures) == ("stopped", "", 0)
    assert not Delivery.objects.filter(user=held_user, kind="user_error").exists()


def test_a_status_report_is_written_for_a_connected_user(held_user):
    store.save_statuses({held_user.id: ("syncing", "", 0)})
    assert _status(held_user.id) == "syncing"


def test_no_new_mail_follows_user_disconnected_while_mail_keeps_arriving(mailbox, dovecot):
    user = mailbox()
    stop_sending = threading.Event()
    sent: list[float] = []

    def send_continuously() -> None:
        i = 0
        while not stop_sending.is_set():
            raw = make_message(f"stream {i}", "a@example.test", user.email, "x")
            dovecot.deliver(user.tag, raw)
            sent.append(time.monotonic())
            i += 1

    def disconnect() -> None:
        close_old_connections()
        response = Client().post(make_link(user.id, "disconnect"))
        assert response.status_code in (200, 302)

    async def scenario():
        # A slow refresh: only the fence can stop the session in time, not the supervisor.
        async with RunningEngine(refresh_interval=2.0):
            await wait_for(lambda: _status(user.id) == "idle", timeout=15)
            sender = threading.Thread(target=send_continuously, daemon=True)
            sender.start()
            await wait_for(lambda: len(_events(user.id)) >= 5, timeout=15)
            await asyncio.to_thread(disconnect)
            await asyncio.sleep(3.0)  # mail keeps arriving well past the next refresh
            stop_sending.set()
            await asyncio.to_thread(sender.join, 10)
            await asyncio.sleep(1.0)

    asyncio.run(scenario())
    events = _events(user.id)
    kinds = [e.kind for e in events]
    assert kinds.count("user_disconnected") == 1
    cut = kinds.index("user_disconnected")
    assert cut >= 5 and set(kinds[:cut]) == {"new_mail"}
    assert kinds[cut + 1 :] == [], f"created after user_disconnected: {kinds[cut + 1 :]}"
    disconnected_at = events[cut].created_at
    assert all(e.created_at <= disconnected_at for e in events[:cut])
    assert len(sent) > cut  # mail did keep arriving after the disconnect
    # The session's last report (syncing, from the batch that found the user gone) did
    # not overwrite what the disconnect set, neither while running nor at shutdown.
    assert _status(user.id) == "stopped"


def test_mail_that_arrived_before_the_disconnect_is_sent_if_the_user_connects_again(
    mailbox, dovecot
):
    """The batch in flight at the disconnect is discarded, and the checkpoint stays where
    the last committed batch left it: a later connect catches up from there (design.md 4.4)."""
    user = mailbox()
    stop_sending = threading.Event()
    sent: list[int] = []

    def send_continuously() -> None:
        while not stop_sending.is_set():
            raw = make_message(f"stream {len(sent)}", "a@example.test", user.email, "x")
            dovecot.deliver(user.tag, raw)
            sent.append(len(sent))

    def post(action: str, data: dict | None = None) -> None:
        close_old_connections()
        response = Client().post(make_link(user.id, action), data or {})
        assert response.status_code in (200, 302), response.content

    def new_mail() -> int:
        return [e.kind for e in _events(user.id)].count("new_mail")

    async def scenario():
        async with RunningEngine(refresh_interval=2.0):
            await wait_for(lambda: _status(user.id) == "idle", timeout=15)
            sender = threading.Thread(target=send_continuously, daemon=True)
            sender.start()
            await wait_for(lambda: new_mail() >= 3, timeout=15)
            await asyncio.to_thread(post, "disconnect")
            stop_sending.set()
            await asyncio.to_thread(sender.join, 10)
            await asyncio.sleep(2.5)  # the next refresh stops the session
            for _ in range(2):  # and mail that arrives while the user is disconnected
                raw = make_message(f"stream {len(sent)}", "a@example.test", user.email, "x")
                await asyncio.to_thread(dovecot.deliver, user.tag, raw)
                sent.append(len(sent))
            at_disconnect = await asyncio.to_thread(new_mail)
            form = {"email": user.email, "login_username": user.tag, "password": "secret-pw"}
            await asyncio.to_thread(post, "connect", form)
            await wait_for(lambda: new_mail() == len(sent), timeout=20)
            await asyncio.sleep(1.0)  # anything sent twice would show up now
            return at_disconnect

    at_disconnect = asyncio.run(scenario())
    assert at_disconnect <= len(sent) - 2  # not sent while disconnected...
    events = _events(user.id)
    kinds = [e.kind for e in events]
    cut = kinds.index("user_disconnected")
    assert kinds[cut + 1] == "user_connected"
    assert kinds.count("new_mail") == len(sent)  # ...and all of it is sent after the connect
    subjects = [e.payload["envelope"]["subject"] for e in events if e.kind == "new_mail"]
    assert sorted(subjects) == sorted(f"stream {i}" for i in sent)
