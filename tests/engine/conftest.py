"""Fixtures for engine tests (mail_partner, mailbox and dovecot are in tests/conftest.py;
the tools in tests/helpers/engine.py)."""

from __future__ import annotations

import pytest

from superimap.mailboxes.models import MailboxUser
from tests.helpers.engine import loopback_connection
from tests.helpers.writer import NODE, WHEN


@pytest.fixture
def users(mail_partner) -> list[MailboxUser]:
    connection = loopback_connection(mail_partner, 1)
    return [
        MailboxUser.objects.create(
            connection=connection, tag=f"u{i}", owner_node=NODE, connected_at=WHEN
        )
        for i in range(3)
    ]
