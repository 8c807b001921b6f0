"""Mailbox users of the chaos IMAP server (``user{i}`` / ``pass{i}``), for tests and benches."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection, ImapProvider, Partner


def chaos_users(
    partner: Partner,
    port: int,
    count: int,
    *,
    idle_for: timedelta | None = None,
    **connection_fields,
) -> Connection:
    """A LOOPBACK_PLAIN connection of ``partner`` to 127.0.0.1:``port`` (plain IMAP unless
    ``connection_fields`` say otherwise) and ``count`` connected users user0..user{count-1}.

    ``idle_for``: back-date the rows' ``updated_at`` by that much, as for mailboxes connected
    a while ago; the engine re-reads rows changed in its last refreshes, which right after
    the insert would be all of them."""
    connection = Connection.objects.create(
        partner=partner,
        provider=ImapProvider.objects.get(code="LOOPBACK_PLAIN"),
        imap_host="127.0.0.1",
        imap_port=port,
        **{"imap_tls": "none", **connection_fields},
    )
    now = timezone.now()
    MailboxUser.objects.bulk_create(
        (
            MailboxUser(
                connection=connection,
                tag=f"user{i}",
                login_username=f"user{i}",
                password=f"pass{i}",
                connected_at=now,
            )
            for i in range(count)
        ),
        batch_size=2000,
    )
    if idle_for is not None:
        MailboxUser.objects.filter(connection=connection).update(updated_at=now - idle_for)
    return connection
