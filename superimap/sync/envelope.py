"""The webhook envelope from a message's headers (stdlib `email`, RFC 2047 decoded).

Addresses are lists of {name, route, mailbox, host}, like IMAP's ENVELOPE structure, which
is what the original sent. Malformed headers degrade to raw text; they never raise.
"""

from __future__ import annotations

import hashlib
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any

_ADDRESS_FIELDS = {
    "from": "From",
    "sender": "Sender",
    "reply_to": "Reply-To",
    "to": "To",
    "cc": "Cc",
    "bcc": "Bcc",
}
HEADER_LIMIT = 256 * 1024


def parse_headers(raw: bytes) -> Message:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = raw[: end if end >= 0 else HEADER_LIMIT][:HEADER_LIMIT]
    return BytesHeaderParser(policy=compat32).parsebytes(head)


def decode_text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    try:
        return str(make_header(decode_header(text))).strip()
    except (ValueError, LookupError, UnicodeError, AssertionError):
        return text.strip()


def _addresses(headers: Message, name: str) -> list[dict[str, str | None]] | None:
    values = headers.get_all(name)
    if not values:
        return None
    result = []
    for display, address in getaddresses([str(v) for v in values]):
        if not display and not address:
            continue
        mailbox, _, host = address.rpartition("@") if "@" in address else (address, "", "")
        result.append(
            {
                "name": decode_text(display) or None,
                "route": None,
                "mailbox": mailbox or None,
                "host": host or None,
            }
        )
    return result or None


def envelope(headers: Message) -> dict[str, Any]:
    """The webhook's ``envelope``: text fields, and address fields as lists (or None)."""
    result: dict[str, Any] = {
        "date": decode_text(headers.get("Date")),
        "subject": decode_text(headers.get("Subject")),
    }
    for key, header in _ADDRESS_FIELDS.items():
        result[key] = _addresses(headers, header)
    # IMAP semantics: Sender and Reply-To default to From.
    result["sender"] = result["sender"] or result["from"]
    result["reply_to"] = result["reply_to"] or result["from"]
    result["in_reply_to"] = decode_text(headers.get("In-Reply-To"))
    result["message_id"] = decode_text(headers.get("Message-ID"))
    return result


def message_id_or_digest(envelope_data: dict[str, Any], sha1: str) -> str:
    """The Message-ID, or a stable stand-in for messages that lack one."""
    # PostgreSQL text cannot hold NUL; a Message-ID with one is garbage anyway.
    message_id = (envelope_data.get("message_id") or "").replace("\x00", "\ufffd").strip()
    if message_id:
        return message_id[:998]
    return f"<{sha1}@no-message-id.superimap>"


def sha1_of(raw: bytes) -> str:
    """SHA-1 of the UTF-8 `rfc822` field the webhook carries (spec: "sha1")."""
    return hashlib.sha1(raw.decode("utf-8", errors="replace").encode("utf-8")).hexdigest()
