"""The webhook envelope from a message's headers (stdlib `email`, RFC 2047 decoded).

Addresses are lists of {name, route, mailbox, host}, like IMAP's ENVELOPE structure, which
is what the original sent. Malformed headers degrade to raw text; they never raise.
"""

from __future__ import annotations

import functools
import hashlib
import re
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
_ADDRESS_KEYS = tuple((key, header.lower()) for key, header in _ADDRESS_FIELDS.items())
_ENVELOPE_FIELDS = frozenset(
    [*(name.lower() for name in _ADDRESS_FIELDS.values()), "date", "subject"]
    + ["in-reply-to", "message-id"]
)
HEADER_LIMIT = 256 * 1024
ADDRESS_CACHE = 4096  # address fields whose parse is kept (_parsed_addresses)
# A whole field as the stdlib parser takes it: a name of printable characters but the colon
# (email.feedparser.headerRE), a colon, the blanks after it, then the rest of the first line
# and every continuation line (one that starts with a space or a tab), up to the LF that
# ends it (or the end of the head).
_WHOLE_FIELD = re.compile(r"([\041-\071\073-\176]+):[ \t]*([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)")


def parse_headers(raw: bytes) -> Message:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = raw[: end if end >= 0 else HEADER_LIMIT][:HEADER_LIMIT]
    simple = _simple_headers(head)
    if simple is not None:
        return simple
    return BytesHeaderParser(policy=compat32).parsebytes(head)


def _simple_headers(head: bytes) -> Message | None:
    """What ``BytesHeaderParser(policy=compat32).parsebytes(head)`` returns, made directly
    (a fifth of its CPU) when every line of ``head`` is a field or the continuation of one,
    as in nearly all mail; None for anything else (a bare CR, a blank line, a line that is
    neither, a leading continuation, a Unix "From " line), which the stdlib parser reads
    with its defects. Lines end at LF (a CRLF stays in a folded value, as there)."""
    text = head.decode("ascii", "surrogateescape")
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        return None  # a bare CR ends a line for the stdlib parser
    message: Message = Message(policy=compat32)
    end = len(text)
    if text.endswith("\n"):
        end -= 1  # the head ended with its line's LF
        if end == 0 or text[end - 1] == "\n":
            return None  # an empty line before that LF
    position = 0
    while position < end:
        # One field: its first line and its continuations, each match taking the LF that
        # ends it (a Unix "From " line has no colon after its first word: not a field).
        field = _WHOLE_FIELD.match(text, position, end)
        if field is None:
            return None
        # compat32's header_source_parse: the value's leading blanks go, and the line
        # ends at its end (a folded value keeps its inner line breaks).
        message.set_raw(field[1], field[2].rstrip("\r\n"))
        position = field.end()
    message.set_payload("")
    return message


def decode_text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    if text.isascii() and "=?" not in text:
        # No encoded word: what make_header(decode_header()) gives back is the text.
        return text.strip()
    try:
        return str(make_header(decode_header(text))).strip()
    except (ValueError, LookupError, UnicodeError, AssertionError):
        return text.strip()


def _addresses(values: list[Any] | None) -> list[dict[str, str | None]] | None:
    if not values:
        return None
    parsed = _parsed_addresses(tuple(map(str, values)))
    return [{"name": n, "route": None, "mailbox": m, "host": h} for n, m, h in parsed] or None


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def _parsed_addresses(values: tuple[str, ...]) -> tuple[tuple[str | None, ...], ...]:
    """(name, mailbox, host) of each address of an address field's values. Cached: the
    stdlib's getaddresses costs ~35 us a field, and a mailbox's mail repeats its To and
    many of its senders."""
    parsed = []
    for display, address in getaddresses(list(values)):
        if not display and not address:
            continue
        mailbox, _, host = address.rpartition("@") if "@" in address else (address, "", "")
        parsed.append((decode_text(display) or None, mailbox or None, host or None))
    return tuple(parsed)


def _fields(headers: Message) -> dict[str, list[Any]]:
    """The values of the fields the envelope reads, by lower-case name, in order: what
    ``headers.get_all(name)`` returns, in one pass over the fields instead of one each."""
    fetch = headers.policy.header_fetch_parse
    # compat32 (parse_headers) makes a Header of a value with surrogates (8-bit bytes) and
    # returns any other as it is: an ASCII value needs no call.
    as_is = headers.policy is compat32
    found: dict[str, list[Any]] = {}
    for name, value in headers.raw_items():
        key = name.lower()
        if key in _ENVELOPE_FIELDS:
            if not (as_is and isinstance(value, str) and value.isascii()):
                value = fetch(name, value)
            found.setdefault(key, []).append(value)
    return found


def envelope(headers: Message) -> dict[str, Any]:
    """The webhook's ``envelope``: text fields, and address fields as lists (or None)."""
    fields = _fields(headers)
    result: dict[str, Any] = {
        "date": decode_text(_first(fields, "date")),
        "subject": decode_text(_first(fields, "subject")),
    }
    for key, name in _ADDRESS_KEYS:
        result[key] = _addresses(fields.get(name))
    # IMAP semantics: Sender and Reply-To default to From.
    result["sender"] = result["sender"] or result["from"]
    result["reply_to"] = result["reply_to"] or result["from"]
    result["in_reply_to"] = decode_text(_first(fields, "in-reply-to"))
    result["message_id"] = decode_text(_first(fields, "message-id"))
    return result


def _first(fields: dict[str, list[Any]], name: str) -> Any:
    values = fields.get(name)
    return values[0] if values else None


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
