"""Filters before the webhook (design.md 4.3, reason ``filtered``) through the engine against
a real Dovecot: only mail a filter selects is delivered, the rest is recorded as a
``filtered`` skip, and messages in the folder = deliveries + recorded skips."""

from __future__ import annotations

import asyncio

from django.db import close_old_connections

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser, MailLog
from superimap.platform.metrics import MAIL_SKIPPED
from tests.helpers.engine import RunningEngine, wait_for

ATTACHED = (
    b"From: Ann <ann@example.test>\r\nTo: {to}\r\nSubject: URGENT report\r\n"
    b"Message-ID: <report@example.test>\r\nDate: Mon, 07 Dec 2026 01:00:00 +0000\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    b'--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="r.pdf"'
    b"\r\n\r\nJVBERi0=\r\n--b--\r\n"
)


def _rows(user_id: int) -> tuple[list[Delivery], list[MailLog]]:
    close_old_connections()
    deliveries = list(Delivery.objects.filter(user_id=user_id, kind="new_mail").order_by("id"))
    return deliveries, list(MailLog.objects.filter(user_id=user_id).order_by("uid"))


def _status(user_id: int) -> str:
    close_old_connections()
    return MailboxUser.objects.get(id=user_id).status


def test_only_mail_a_filter_selects_is_delivered_the_rest_is_a_filtered_skip(mailbox, dovecot):
    user = mailbox()
    # The connection's filter would select all of example.test: the user's own wins.
    connection = user.connection
    connection.filters = [{"name": "all of example", "from": "@example.test"}]
    connection.save(update_fields=["filters"])
    user.filters = [
        {"name": "shop", "from": ["@shop.test"]},
        {"name": "urgent files", "subject_contains": "urgent", "has_attachments": True},
    ]
    user.save(update_fields=["filters"])
    mail = [
        ("shop", make_message("Invoice 12", "Bill <bill@shop.test>", user.email, "x")),
        (None, make_message("hello", "ann@example.test", user.email, "x")),
        ("urgent files", ATTACHED.replace(b"{to}", user.email.encode())),
        (None, make_message("urgent but nothing attached", "ann@example.test", user.email, "y")),
        (None, make_message("from the shop's friend", "x@notshop.test", user.email, "z")),
    ]
    before = MAIL_SKIPPED.labels("filtered")._value.get()

    async def scenario():
        async with RunningEngine():
            await wait_for(lambda: _status(user.id) == "idle")
            for _, raw in mail:
                await asyncio.to_thread(dovecot.deliver, user.tag, raw)
            await wait_for(lambda: len(_rows(user.id)[1]) == len(mail), timeout=15)

    asyncio.run(scenario())
    deliveries, rows = _rows(user.id)
    subjects = [d.payload["envelope"]["subject"] for d in deliveries]
    assert subjects == ["Invoice 12", "URGENT report"]
    assert [(r.skipped_reason, r.detail) for r in rows] == [
        ("", "filter shop"),
        ("filtered", "no filter matched (shop, urgent files)"),
        ("", "filter urgent files"),
        ("filtered", "no filter matched (shop, urgent files)"),
        ("filtered", "no filter matched (shop, urgent files)"),
    ]
    # The count identity: messages in the folder = new_mail deliveries + recorded skips.
    in_folder = len(dovecot.message_flags(user.tag))
    skips = sum(1 for r in rows if r.skipped_reason)
    assert in_folder == len(mail) == len(deliveries) + skips
    assert MAIL_SKIPPED.labels("filtered")._value.get() - before == 3
    user.refresh_from_db()
    assert user.last_uid == len(mail)  # the cursor moved past the filtered mail too
