"""Delivery test tools: a receiver on its own thread, partners, users, a clock, deliveries
dated in the past, and a script that fills the outbox from a subprocess."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from datetime import datetime, timedelta

from django.utils import timezone

from devtools.testing.webhook_receiver import WebhookReceiver
from superimap.delivery import queue
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner

_tags = itertools.count()


class ThreadedReceiver:
    """A WebhookReceiver served by an event loop on a background thread.

    The tests stay synchronous (Django ORM in the test thread) and run the worker with
    asyncio.run(); the receiver keeps serving between those runs.
    """

    def __init__(self, **kwargs) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.receiver = self._call(self._make(kwargs))
        self._call(self.receiver.start())

    async def _make(self, kwargs) -> WebhookReceiver:
        return WebhookReceiver(**kwargs)

    def _call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def url(self) -> str:
        return self.receiver.url

    @property
    def received(self):
        return list(self.receiver.received)

    def wait_for(self, count: int, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while len(self.receiver.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"receiver got {len(self.receiver.received)} requests, expected {count}"
                )
            time.sleep(0.01)
        return self.received[:count]

    def close(self) -> None:
        try:
            self._call(self.receiver.stop())
            self._call(_cancel_the_rest())  # handlers that were told to hang
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()


async def _cancel_the_rest() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def make_partner(url: str | None, **extra) -> Partner:
    urls = {}
    if url is not None:
        urls = {
            "new_mail_webhook": f"{url}/new-mail",
            "user_connected_webhook": f"{url}/connected",
            "user_disconnected_webhook": f"{url}/disconnected",
        }
    return Partner.objects.create(**{"name": "Hook app", **urls, **extra})


def make_user(partner: Partner, **extra) -> MailboxUser:
    connection = Connection.objects.filter(partner=partner).first()
    if connection is None:
        connection = Connection.objects.create(
            partner=partner,
            provider=ImapProvider.objects.get(code="PLAIN"),
            imap_host="imap.example.com",
            imap_port=993,
            imap_tls="implicit",
        )
    tag = f"user-{next(_tags)}"
    return MailboxUser.objects.create(
        connection=connection,
        tag=tag,
        email=f"{tag}@example.test",
        login_username=tag,
        password="pw",
        connected_at=timezone.now(),
        **extra,
    )


class Clock:
    """A clock for the Worker that only moves when the test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or timezone.now() + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


T0 = timezone.now().replace(microsecond=0) - timedelta(days=2)


def delivery_at(user, hours: float, status="delivered", kind="new_mail", **extra) -> Delivery:
    delivery = Delivery.objects.create(
        kind=kind,
        partner=user.connection.partner,
        user=user,
        message_id=f"<{uuid.uuid4()}@example.com>" if kind == "new_mail" else "",
        payload={"sha1": "x", "rfc822": "Subject: hi\r\n\r\nbody"},
        status=status,
        attempts=1,
        max_attempts=7,
        next_attempt_at=T0,
        delivered_at=T0 if status == "delivered" else None,
        **extra,
    )
    Delivery.objects.filter(id=delivery.id).update(created_at=T0 + timedelta(hours=hours))
    return delivery


def iso(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


def replay(api, **body):
    return api.post("/deliveries/replay", body)


INSERT_SCRIPT = r"""
import os
from django.db import transaction
from superimap.delivery import outbox
from superimap.delivery.payloads import new_mail_payload
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner

url = os.environ["RECEIVER_URL"]
if os.environ["PHASE"] == "partner":
    partner = Partner.objects.create(name="pg", new_mail_webhook=url + "/new-mail")
    conn = Connection.objects.create(
        partner=partner, provider=ImapProvider.objects.get(code="PLAIN"),
        imap_host="imap.example.com", imap_port=993, imap_tls="implicit",
    )
    MailboxUser.objects.create(connection=conn, tag="pg", email="pg@x.test", password="pw")
    print("partner", partner.api_key)
else:
    user = MailboxUser.objects.get(tag="pg")
    with transaction.atomic():
        for i in range(int(os.environ["COUNT"])):
            # A NUL byte and invalid UTF-8: PostgreSQL's jsonb must still take the payload.
            raw = b"Subject: m%d\r\nMessage-ID: <m%d@x>\r\n\r\nbody\x00\xff %d\r\n" % (i, i, i)
            payload = new_mail_payload(
                provider_code="PLAIN", user_tag=user.tag, raw=raw,
                envelope={"subject": "m%d\x00" % i, "message_id": "<m%d@x>" % i},
                uid=i + 1, uid_validity=1, folder="INBOX", internal_date=None,
            )
            outbox.enqueue("new_mail", user, payload, message_id="<m%d@x>" % i)
    print("inserted")
"""


def count_claims(monkeypatch) -> list[int]:
    """The rows of each claim transaction (claim_due alone or in record_and_claim), in
    order: the list fills as the worker claims."""
    real = queue._claim_due
    claims: list[int] = []

    def counting(*args, **kwargs):
        claimed = real(*args, **kwargs)
        claims.append(len(claimed))
        return claimed

    monkeypatch.setattr(queue, "_claim_due", counting)
    return claims
