"""In-memory mailboxes for the chaos server: UID bookkeeping, SEARCH and FETCH (no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime

from devtools.imap.server import fetch_response, format_internaldate, literal, quoted
from superimap.imap.framing import Value

SEEN = "\\Seen"
_SEARCH_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
FETCH_ITEMS = frozenset(
    {
        "UID",
        "RFC822.SIZE",
        "INTERNALDATE",
        "FLAGS",
        "BODY[]",
        "BODY.PEEK[]",
        "RFC822",
        "BODY[HEADER]",
        "BODY.PEEK[HEADER]",
        "MODSEQ",
    }
)
# A partial body fetch, BODY.PEEK[]<origin.length> (RFC 3501 6.4.5), answered BODY[]<origin>.
_PARTIAL_BODY = re.compile(r"BODY(?:\.PEEK)?\[\]<(\d+)\.(\d+)>")


class SearchError(ValueError):
    """The client sent search criteria or a set we do not understand."""


@dataclass(slots=True)
class StoredMessage:
    uid: int
    raw: bytes
    internal_date: datetime
    flags: set[str] = field(default_factory=set)
    modseq: int = 0  # CONDSTORE (RFC 7162): the change number of its last change


class Mailbox:
    """One user's INBOX. Sequence number = index + 1 (expunge() shifts the ones after)."""

    __slots__ = ("uidvalidity", "uidnext", "messages", "highestmodseq")

    def __init__(self, uidvalidity: int) -> None:
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.messages: list[StoredMessage] = []
        self.highestmodseq = 1

    def next_modseq(self) -> int:
        """A change happened (CONDSTORE): its number."""
        self.highestmodseq += 1
        return self.highestmodseq

    def append(self, raw: bytes, internal_date: datetime) -> StoredMessage:
        message = StoredMessage(self.uidnext, raw, internal_date, modseq=self.next_modseq())
        self.uidnext += 1
        self.messages.append(message)
        return message

    def renumber(self, uidvalidity: int) -> None:
        """Simulate a UIDVALIDITY change: same messages, new UIDs from 1."""
        self.uidvalidity = uidvalidity
        for uid, message in enumerate(self.messages, start=1):
            message.uid = uid
        self.uidnext = len(self.messages) + 1

    def expunge(self, uid: int) -> int | None:
        """Remove the message with ``uid``; return the sequence number it had."""
        for seq, message in enumerate(self.messages, start=1):
            if message.uid == uid:
                del self.messages[seq - 1]
                self.next_modseq()
                return seq
        return None

    def seq_of(self, uid: int) -> int | None:
        for seq, message in enumerate(self.messages, start=1):
            if message.uid == uid:
                return seq
        return None

    @property
    def largest_uid(self) -> int:
        return self.messages[-1].uid if self.messages else 0

    def uid_search(self, criteria: tuple[Value, ...]) -> list[int]:
        """Evaluate ``ALL``, ``UID <set>``, ``SINCE <date>``, ``SEEN``/``UNSEEN`` (ANDed)."""
        matches = self.messages
        words = list(criteria)
        while words:
            key = str(words.pop(0)).upper()
            if key == "ALL":
                continue
            if key in ("SEEN", "UNSEEN"):
                matches = [m for m in matches if (SEEN in m.flags) == (key == "SEEN")]
            elif key == "UID" and words:
                uid_set = str(words.pop(0))
                matches = [m for m in matches if in_set(m.uid, uid_set, self.largest_uid)]
            elif key == "SINCE" and words:
                since = parse_search_date(str(words.pop(0)))
                matches = [m for m in matches if m.internal_date.date() >= since]
            else:
                raise SearchError(f"unsupported search key {key}")
        return [m.uid for m in matches]

    def uid_fetch(
        self,
        uid_set: str,
        items: tuple[str, ...],
        readonly: bool,
        changed_since: int | None = None,
    ) -> list[bytes]:
        """Render FETCH responses; a non-PEEK body fetch sets \\Seen unless read-only; with
        ``changed_since`` (CONDSTORE) only messages changed after it, with their MODSEQ."""
        if changed_since is not None and "MODSEQ" not in items:
            items = (*items, "MODSEQ")
        unknown = {i for i in items if i not in FETCH_ITEMS and not _PARTIAL_BODY.fullmatch(i)}
        if unknown:
            raise SearchError(f"unsupported fetch items {sorted(unknown)}")
        largest = self.largest_uid
        responses = []
        for seq, message in enumerate(self.messages, start=1):
            if changed_since is not None and message.modseq <= changed_since:
                continue
            if in_set(message.uid, uid_set, largest):
                responses.append(self._fetch_one(seq, message, items, readonly))
        return responses

    def _fetch_one(
        self, seq: int, message: StoredMessage, items: tuple[str, ...], readonly: bool
    ) -> bytes:
        rendered: list[tuple[str, bytes]] = [("UID", b"%d" % message.uid)]
        marks_seen = not readonly and {"BODY[]", "RFC822"} & set(items)
        flags_changed = bool(marks_seen) and SEEN not in message.flags
        if marks_seen:
            message.flags.add(SEEN)
        if flags_changed:
            message.modseq = self.next_modseq()
        for item in items:
            if item == "RFC822.SIZE":
                rendered.append((item, b"%d" % len(message.raw)))
            elif item == "INTERNALDATE":
                rendered.append((item, quoted(format_internaldate(message.internal_date))))
            elif item in ("BODY[]", "BODY.PEEK[]"):
                rendered.append(("BODY[]", literal(message.raw)))
            elif item == "RFC822":
                rendered.append((item, literal(message.raw)))
            elif item in ("BODY[HEADER]", "BODY.PEEK[HEADER]"):
                rendered.append(("BODY[HEADER]", literal(header_of(message.raw))))
            elif partial := _PARTIAL_BODY.fullmatch(item):
                origin, length = int(partial.group(1)), int(partial.group(2))
                part = message.raw[origin : origin + length]
                rendered.append((f"BODY[]<{origin}>", literal(part)))
        if "FLAGS" in items or flags_changed:
            rendered.append(("FLAGS", render_flags(message.flags)))
        if "MODSEQ" in items:
            rendered.append(("MODSEQ", b"(%d)" % message.modseq))
        return fetch_response(seq, rendered)


def body_answer_key(items: tuple[str, ...]) -> str | None:
    """The key a body FETCH among ``items`` is answered under (``BODY[]`` or, for a
    partial one, ``BODY[]<origin>``); None: no body asked for."""
    for item in items:
        if item in ("BODY[]", "BODY.PEEK[]"):
            return "BODY[]"
        if partial := _PARTIAL_BODY.fullmatch(item):
            return f"BODY[]<{partial.group(1)}>"
    return None


def header_of(raw: bytes) -> bytes:
    """The header block, blank line included (what BODY[HEADER] returns)."""
    end = raw.find(b"\r\n\r\n")
    if end >= 0:
        return raw[: end + 4]
    end = raw.find(b"\n\n")
    return raw[: end + 2] if end >= 0 else raw


def render_flags(flags: set[str]) -> bytes:
    return b"(" + " ".join(sorted(flags)).encode("ascii") + b")"


def in_set(value: int, uid_set: str, largest: int) -> bool:
    """Is ``value`` in an IMAP set like ``1,4:7,10:*``? ``*`` is the largest UID in use,
    so ``n:*`` always matches the last message, as on real servers (RFC 3501 6.4.8)."""
    for part in uid_set.split(","):
        low_text, _, high_text = part.partition(":")
        low = _set_number(low_text, largest)
        high = _set_number(high_text, largest) if high_text else low
        if min(low, high) <= value <= max(low, high):
            return True
    return False


def _set_number(text: str, largest: int) -> int:
    if text == "*":
        return largest
    if not text.isdigit():
        raise SearchError(f"bad number in set: {text!r}")
    return int(text)


def parse_search_date(text: str) -> date:
    match = _SEARCH_DATE.fullmatch(text.strip())
    if match is None or match.group(2).upper() not in _MONTHS:
        raise SearchError(f"bad date {text!r}")
    day, month, year = match.groups()
    try:
        return date(int(year), _MONTHS.index(month.upper()) + 1, int(day))
    except ValueError as error:
        raise SearchError(f"bad date {text!r}") from error
