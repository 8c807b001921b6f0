"""Turn one framed server response into one event."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from superimap.imap.errors import RemoteProtocolError
from superimap.imap.events import (
    Bye,
    Capability,
    Continuation,
    Event,
    Exists,
    Expunge,
    Fetch,
    Flags,
    MailboxListing,
    MailboxStatus,
    Recent,
    ResponseCode,
    SearchResult,
    TaggedResponse,
    Unknown,
    UntaggedStatus,
    Vanished,
)
from superimap.imap.framing import Frame, Value, parse_values
from superimap.imap.utf7 import decode_mailbox_name

STATUSES = frozenset({"OK", "NO", "BAD"})
_UNTAGGED_STATUSES = frozenset({"OK", "NO", "BAD", "PREAUTH"})
_NUMERIC_CODES = frozenset({"UIDVALIDITY", "UIDNEXT", "UNSEEN", "HIGHESTMODSEQ"})
_LIST_CODES = frozenset({"PERMANENTFLAGS", "BADCHARSET"})
_KEYWORD = re.compile(rb"[A-Za-z][A-Za-z0-9._\-]*")
_TAG = re.compile(rb"[\x21-\x7e]+")
_MONTHS = {
    name: number
    for number, name in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
        start=1,
    )
}
_INTERNALDATE = re.compile(
    r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})\s*"
)


def parse_response(frame: Frame) -> Event:
    """Parse a server response. Raises :class:`RemoteProtocolError` on garbage."""
    line = frame.lines[0]
    if line.startswith(b"+"):
        return Continuation(_decode(_after(frame, 1)).strip())
    tag, pos = _word(line, 0)
    if tag == b"*":
        return _untagged(frame, pos)
    if not _TAG.fullmatch(tag):
        raise RemoteProtocolError(f"malformed response line {line[:80]!r}")
    status, pos = _word(line, pos)
    status_text = status.decode("ascii", "replace").upper()
    if status_text not in STATUSES:
        raise RemoteProtocolError(f"bad status in tagged response {line[:80]!r}")
    return TaggedResponse(tag.decode("ascii"), status_text, *parse_resp_text(frame, pos))


def parse_resp_text(frame: Frame, pos: int) -> tuple[ResponseCode | None, str]:
    """Split ``[CODE args] text`` into a parsed code and the human text."""
    text = _decode(_after(frame, pos)).strip()
    if not text.startswith("["):
        return None, text
    close = text.find("]")
    if close < 0:
        return None, text
    return _response_code(text[1:close]), text[close + 1 :].strip()


def _response_code(inner: str) -> ResponseCode:
    name, _, argument = inner.strip().partition(" ")
    name = name.upper()
    argument = argument.strip()
    if name in _NUMERIC_CODES:
        if not argument.isdigit() or not argument.isascii():
            raise RemoteProtocolError(f"non-numeric {name} response code")
        return (name, int(argument))
    if name == "CAPABILITY":
        return (name, tuple(word.upper() for word in argument.split()))
    if name in _LIST_CODES:
        return (name, tuple(argument.strip("()").split()))
    return (name, argument) if argument else (name,)


def _untagged(frame: Frame, pos: int) -> Event:
    line = frame.lines[0]
    first, pos = _word(line, pos)
    if first.isdigit():
        return _numbered(frame, _number(first), pos)
    if not _KEYWORD.fullmatch(first):
        raise RemoteProtocolError(f"malformed untagged response {line[:80]!r}")
    keyword = first.decode("ascii").upper()
    if keyword in _UNTAGGED_STATUSES:
        return UntaggedStatus(keyword, *parse_resp_text(frame, pos))
    if keyword == "BYE":
        code, text = parse_resp_text(frame, pos)
        return Bye(text, code)
    if keyword == "CAPABILITY":
        names = _decode(frame.raw[pos:]).upper().split()
        return Capability(frozenset(names))
    if keyword == "FLAGS":
        values = parse_values(frame, 0, pos)
        if len(values) != 1 or not isinstance(values[0], tuple):
            raise RemoteProtocolError("malformed FLAGS response")
        return Flags(_strings(values[0], "FLAGS"))
    if keyword == "SEARCH":
        return _search(parse_values(frame, 0, pos))
    if keyword == "LIST":
        return _listing(parse_values(frame, 0, pos))
    if keyword == "STATUS":
        return _mailbox_status(parse_values(frame, 0, pos))
    if keyword == "VANISHED":
        return _vanished(parse_values(frame, 0, pos))
    return Unknown(frame.raw)


MAX_SET_PARTS = 100_000  # ranges in one VANISHED response


def _vanished(values: tuple[Value, ...]) -> Vanished:
    """``[(EARLIER)] <uid set>``; the set as ranges (RFC 7162 3.2.10)."""
    earlier = False
    if values and isinstance(values[0], tuple):
        if tuple(str(v).upper() for v in values[0]) != ("EARLIER",):
            raise RemoteProtocolError("malformed VANISHED response")
        earlier, values = True, values[1:]
    if len(values) != 1:
        raise RemoteProtocolError("malformed VANISHED response")
    return Vanished(parse_uid_set(str(values[0])), earlier)


def parse_uid_set(text: str) -> tuple[tuple[int, int], ...]:
    """``1:3,7,9:8`` as ``((1, 3), (7, 7), (8, 9))``; no ``*`` (servers send numbers)."""
    parts = text.split(",")
    if len(parts) > MAX_SET_PARTS:
        raise RemoteProtocolError("UID set too long")
    ranges = []
    for part in parts:
        low, _, high = part.partition(":")
        if not low.isdigit() or not (high.isdigit() or not high) or len(low) > 20:
            raise RemoteProtocolError(f"malformed UID set {text[:80]!r}")
        a, b = int(low), int(high or low)
        ranges.append((min(a, b), max(a, b)))
    return tuple(ranges)


def _numbered(frame: Frame, number: int, pos: int) -> Event:
    word, pos = _word(frame.lines[0], pos)
    keyword = word.decode("ascii", "replace").upper()
    if keyword == "EXISTS":
        return Exists(number)
    if keyword == "RECENT":
        return Recent(number)
    if keyword == "EXPUNGE":
        return Expunge(number)
    if keyword == "FETCH":
        return _fetch(number, parse_values(frame, 0, pos))
    if not _KEYWORD.fullmatch(word):
        raise RemoteProtocolError(f"malformed numbered response {frame.lines[0][:80]!r}")
    return Unknown(frame.raw)


def _search(values: tuple[Value, ...]) -> SearchResult:
    ids: list[int] = []
    for value in values:
        if isinstance(value, int):
            ids.append(value)
        elif not isinstance(value, tuple):  # a trailing (MODSEQ n) is allowed
            raise RemoteProtocolError(f"non-numeric id in SEARCH response: {value!r}")
    return SearchResult(tuple(ids))


def _listing(values: tuple[Value, ...]) -> MailboxListing:
    """``(attributes) delimiter name [(extended data)]`` (RFC 3501 7.2.2, RFC 5258)."""
    if len(values) not in (3, 4) or not isinstance(values[0], tuple):
        raise RemoteProtocolError("malformed LIST response")
    attributes, delimiter, name = values[0], values[1], values[2]
    if delimiter is not None and not (isinstance(delimiter, str) and len(delimiter) == 1):
        raise RemoteProtocolError(f"bad hierarchy delimiter in LIST response: {delimiter!r}")
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    elif isinstance(name, int):  # an all-digit atom is still a name
        name = str(name)
    if not isinstance(name, str):
        raise RemoteProtocolError("malformed mailbox name in LIST response")
    if name.upper() == "INBOX":
        name = "INBOX"  # case-insensitive by RFC 3501
    return MailboxListing(_strings(attributes, "LIST attributes"), delimiter, _utf7(name))


def _mailbox_status(values: tuple[Value, ...]) -> MailboxStatus:
    """``mailbox (name number ...)`` (RFC 3501 7.2.4); non-numeric items are left out."""
    if len(values) != 2 or not isinstance(values[1], tuple) or len(values[1]) % 2:
        raise RemoteProtocolError("malformed STATUS response")
    name = values[0]
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    elif isinstance(name, int):
        name = str(name)
    if not isinstance(name, str):
        raise RemoteProtocolError("malformed mailbox name in STATUS response")
    if name.upper() == "INBOX":
        name = "INBOX"
    pairs = zip(values[1][::2], values[1][1::2], strict=True)
    items = {str(k).upper(): v for k, v in pairs if isinstance(v, int) and isinstance(k, str)}
    return MailboxStatus(_utf7(name), items)


def _utf7(name: str) -> str:
    try:
        return decode_mailbox_name(name)
    except ValueError:
        return name  # not modified UTF-7 (a UTF8=ACCEPT server): keep it as sent


def _fetch(seq: int, values: tuple[Value, ...]) -> Fetch:
    if len(values) != 1 or not isinstance(values[0], tuple) or len(values[0]) % 2:
        raise RemoteProtocolError("malformed FETCH response")
    items = values[0]
    attributes: dict[str, Any] = {}
    for key, value in zip(items[::2], items[1::2], strict=True):
        if not isinstance(key, str):
            raise RemoteProtocolError(f"bad FETCH attribute name {key!r}")
        attributes[_fetch_key(key)] = value
    return Fetch(
        seq=seq,
        uid=_optional_int(attributes, "UID"),
        size=_optional_int(attributes, "RFC822.SIZE"),
        internal_date=_internal_date(attributes.get("INTERNALDATE")),
        body=_body(attributes),
        flags=_strings(attributes["FLAGS"], "FLAGS") if "FLAGS" in attributes else None,
        modseq=_modseq(attributes.get("MODSEQ")),
        attributes=attributes,
    )


def _modseq(value: Value) -> int | None:
    """``MODSEQ (n)``: the number; absent: None."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], int):
        return value[0]
    raise RemoteProtocolError("malformed MODSEQ in FETCH response")


def _fetch_key(key: str) -> str:
    key = key.upper()
    if key.startswith("BODY.PEEK["):
        return "BODY" + key[len("BODY.PEEK") :]
    return key


def _optional_int(attributes: dict[str, Any], name: str) -> int | None:
    value = attributes.get(name)
    if value is not None and not isinstance(value, int):
        raise RemoteProtocolError(f"non-numeric {name} in FETCH response")
    return value


def _body(attributes: dict[str, Any]) -> bytes | None:
    value = attributes.get("BODY[]", attributes.get("RFC822"))
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise RemoteProtocolError("malformed message body in FETCH response")


def _internal_date(value: Value) -> datetime | None:
    """Parse ``"17-Jul-1996 02:44:25 -0700"``; an unparsable date is kept only raw."""
    if not isinstance(value, str):
        return None
    return _parse_internal_date(value)


# Mail arriving together shares its INTERNALDATE (whole seconds): parsed once.
@lru_cache(maxsize=512)
def _parse_internal_date(value: str) -> datetime | None:
    match = _INTERNALDATE.fullmatch(value)
    if match is None or match.group(2).upper() not in _MONTHS:
        return None
    day, month, year, hour, minute, second, sign, off_h, off_m = match.groups()
    offset = timedelta(hours=int(off_h), minutes=int(off_m))
    try:
        return datetime(
            int(year),
            _MONTHS[month.upper()],
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone(-offset if sign == "-" else offset),
        )
    except ValueError:
        return None


def _strings(values: Value, what: str) -> tuple[str, ...]:
    if not isinstance(values, tuple) or not all(isinstance(v, str) for v in values):
        raise RemoteProtocolError(f"malformed {what}")
    return values  # type: ignore[return-value]


def _word(line: bytes, pos: int) -> tuple[bytes, int]:
    while pos < len(line) and line[pos] == 0x20:
        pos += 1
    end = line.find(b" ", pos)
    end = len(line) if end < 0 else end
    return line[pos:end], end


def _number(digits: bytes) -> int:
    if len(digits) > 20:
        raise RemoteProtocolError("number too long")
    return int(digits)


def _after(frame: Frame, pos: int) -> bytes:
    """The frame's bytes from ``pos`` of its first line on (the line endings are for
    strip() to remove); a frame of one line is not joined first."""
    return frame.lines[0][pos:] if len(frame.lines) == 1 else frame.raw[pos:]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")
