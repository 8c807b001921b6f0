"""Build small RFC 5322 messages for tests."""

from __future__ import annotations

import email.policy
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid


def make_message(
    subject: str,
    sender: str,
    to: str,
    body: str,
    message_id: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    date: datetime | None = None,
) -> bytes:
    """Return the message as RFC 5322 bytes with CRLF line endings.

    Non-ASCII subjects and addresses are RFC 2047 encoded; a unique Message-ID is generated
    when none is given. ``date`` is the Date: header (default: now).
    """
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = message_id or make_msgid(domain="superimap.test")
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()
