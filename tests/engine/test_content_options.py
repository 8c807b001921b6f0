"""Per-partner content options end to end: real Dovecot, the engine, the real worker and a
real receiver. Messages in the folder = new_mail deliveries (no skips here)."""

from __future__ import annotations

import asyncio

from django.db import close_old_connections

from devtools.testing.webhook_receiver import WebhookReceiver
from superimap.delivery.models import Delivery
from superimap.delivery.worker import Worker
from superimap.platform.dbpool import DbPool
from tests.helpers.engine import RunningEngine, wait_for
from tests.helpers.messages import NESTED, WINMAIL


def _new_mail(user_id: int) -> list[Delivery]:
    close_old_connections()
    return list(Delivery.objects.filter(user_id=user_id, kind="new_mail").order_by("id"))


def test_it_sends_parsed_content_without_rfc822_when_the_partner_asks(
    mailbox, dovecot, mail_partner
):
    user = mailbox()

    async def scenario():
        pool = DbPool(size=2)
        try:
            async with WebhookReceiver() as receiver:
                mail_partner.new_mail_webhook = f"{receiver.url}/hook"
                mail_partner.include_rfc822 = False
                mail_partner.include_parsed = True
                await asyncio.to_thread(mail_partner.save)
                async with RunningEngine():
                    await wait_for(lambda: user.__class__.objects.get(id=user.id).status == "idle")
                    for raw in (NESTED, WINMAIL):
                        await asyncio.to_thread(dovecot.deliver, user.tag, raw)
                    await wait_for(lambda: len(_new_mail(user.id)) == 2, timeout=10)
                worker = Worker(pool, "content-test", timeout_seconds=5)
                await worker.process_once()
                return await receiver.wait_for(2)
        finally:
            pool.shutdown()

    received = asyncio.run(scenario())
    assert len(_new_mail(user.id)) == 2  # two messages in the folder, two deliveries
    bodies = sorted((event.json for event in received), key=lambda body: body["uid"])
    for body in bodies:
        assert "rfc822" not in body and "rfc822_base64" not in body
        assert body["sha1"] and body["signature"]
    nested, winmail = bodies
    assert nested["text"].strip() == "plain body"
    assert "html body" in nested["html"]
    assert [a["filename"] for a in nested["attachments"]] == [None, "report.pdf", None]
    assert winmail["text"].strip() == "See attached."
    assert winmail["attachments"][0]["filename"] == "winmail.dat"
