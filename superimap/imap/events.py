"""Events produced by :class:`superimap.imap.protocol.ClientProtocol`.

Every server response becomes exactly one event. Response codes are parsed into tuples:
``("UIDVALIDITY", 123)``, ``("UIDNEXT", 5)``, ``("CAPABILITY", ("IMAP4REV1", ...))``,
``("PERMANENTFLAGS", ("\\Seen", ...))``, ``("READ-ONLY",)``; an unknown code keeps its
raw argument text: ``("X-FOO", "bar baz")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ResponseCode = tuple[Any, ...]


@dataclass(frozen=True)
class Greeting:
    status: str  # "OK" or "PREAUTH"; a BYE greeting is reported as Bye
    code: ResponseCode | None
    text: str


@dataclass(frozen=True)
class TaggedResponse:
    tag: str
    status: str  # "OK" | "NO" | "BAD"
    code: ResponseCode | None
    text: str


@dataclass(frozen=True)
class UntaggedStatus:
    status: str  # "OK" | "NO" | "BAD" | "PREAUTH"
    code: ResponseCode | None
    text: str


@dataclass(frozen=True)
class Bye:
    text: str
    code: ResponseCode | None = None


@dataclass(frozen=True)
class Capability:
    names: frozenset[str]


@dataclass(frozen=True)
class Exists:
    count: int


@dataclass(frozen=True)
class Recent:
    count: int


@dataclass(frozen=True)
class Expunge:
    seq: int


@dataclass(frozen=True)
class Vanished:
    """``* VANISHED [(EARLIER)] <uid set>`` (RFC 7162 3.2.10, QRESYNC enabled): UIDs
    expunged, as ``(low, high)`` ranges so a large set costs no memory; ``earlier``: an
    answer to CHANGEDSINCE ... VANISHED (or SELECT QRESYNC), not news of now."""

    ranges: tuple[tuple[int, int], ...]
    earlier: bool = False

    def __contains__(self, uid: object) -> bool:
        return any(low <= uid <= high for low, high in self.ranges)  # type: ignore[operator]

    def size(self) -> int:
        return sum(high - low + 1 for low, high in self.ranges)


@dataclass(frozen=True)
class Flags:
    flags: tuple[str, ...]


@dataclass(frozen=True)
class MailboxListing:
    """One ``* LIST`` response: name attributes (``\\HasNoChildren``, and the RFC 6154
    special-use flags ``\\All``, ``\\Sent``, ``\\Junk``...), hierarchy delimiter (None when
    the server has none) and the mailbox name, decoded from modified UTF-7."""

    attributes: tuple[str, ...]
    delimiter: str | None
    name: str


@dataclass(frozen=True)
class MailboxStatus:
    """``* STATUS <mailbox> (UIDNEXT n UIDVALIDITY n ...)``: an answer to STATUS, or a
    NOTIFY (RFC 5465) report that another mailbox changed."""

    name: str
    items: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Fetch:
    seq: int
    uid: int | None = None
    size: int | None = None
    internal_date: datetime | None = None
    body: bytes | None = None
    flags: tuple[str, ...] | None = None
    # Every attribute as parsed, keys upper-cased ("BODY.PEEK[]" is reported as "BODY[]").
    attributes: dict[str, Any] = field(default_factory=dict, hash=False)
    # MODSEQ (n) of a CONDSTORE server (RFC 7162), when the answer has it.
    modseq: int | None = None


@dataclass(frozen=True)
class Continuation:
    text: str


@dataclass(frozen=True)
class Unknown:
    """Well-formed untagged data we do not interpret (STATUS, ESEARCH...)."""

    line: bytes


Event = (
    Greeting
    | TaggedResponse
    | UntaggedStatus
    | Bye
    | Capability
    | Exists
    | Recent
    | Expunge
    | Vanished
    | Flags
    | SearchResult
    | MailboxListing
    | MailboxStatus
    | Fetch
    | Continuation
    | Unknown
)
