"""Filters before the webhook (design.md 4.3, reason ``filtered``): which new mail a
partner wants delivered, decided without I/O.

A filter list SELECTS what is delivered: a message is sent when it matches at least one
filter (filters are OR-ed), and a filter matches when every condition it sets holds
(conditions are AND-ed). An empty list, or none, delivers everything. A message that
matches no filter is recorded as skipped with reason ``filtered``.

A filter is a JSON object:

    {"name": "invoices",                    required, unique in the list, <= 100 chars
     "from": ["billing@shop.example", "@bank.example"],
     "to": ..., "cc": ..., "delivered_to": ...,
                                            an address (exact, any case) or "@domain"
                                            (that exact domain); a list means any of them,
                                            matched against every address of the header
     "subject_contains": "invoice",         case-insensitive; a list: any of them
     "folder": "INBOX",                     the watched folder's name; a list: any of them
                                            (INBOX in any case, others exactly)
     "min_size": 0, "max_size": 1048576,    RFC822.SIZE in bytes, inclusive
     "has_attachments": true}               a part with a filename or disposition
                                            "attachment"; for mail over MAX_EMAIL_SIZE (only
                                            its header is fetched): a multipart/mixed top

Every condition but ``name`` is optional; a filter needs at least one. ``parse_filters``
checks a value as the API and the dashboard give it (``FilterError`` says what is wrong,
naming the place); ``compile_filters`` turns a stored value into ``Filter`` tuples once per
distinct value (cached), so the engine parses nothing when no filter is set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses
from functools import lru_cache
from typing import Any

ADDRESS_FIELDS = ("from", "to", "cc", "delivered_to")
TEXT_FIELDS = ("subject_contains", "folder")
SIZE_FIELDS = ("min_size", "max_size")
FIELDS = ("name", *ADDRESS_FIELDS, *TEXT_FIELDS, *SIZE_FIELDS, "has_attachments")
MAX_FILTERS = 50
MAX_VALUES = 100  # values per condition
NAME_MAX = 100
VALUE_MAX = 998
NO_MATCH = "no filter matched"
# An address as filters take it: local@domain, or @domain. No spaces, one @.
_ADDRESS = re.compile(r"^[^\s@]*@[^\s@]+\.[^\s@]+$|^[^\s@]*@[^\s@.]+$")


class FilterError(ValueError):
    """What is wrong with a filter list; ``where`` names the place (``filters[1].from``)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where} {message}")
        self.where = where
        self.message = message


@dataclass(frozen=True, slots=True)
class Filter:
    name: str
    from_: tuple[str, ...] = ()  # lower-case addresses or "@domain"
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    delivered_to: tuple[str, ...] = ()
    subject_contains: tuple[str, ...] = ()  # casefolded
    folder: tuple[str, ...] = ()
    min_size: int | None = None
    max_size: int | None = None
    has_attachments: bool | None = None


class Facts:
    """What the conditions look at, of one message; the costly ones (Delivered-To, the
    MIME structure) are read only when a filter asks and are kept for the next filter."""

    __slots__ = ("_addresses", "_attachments", "_content", "_headers", "_subject", "folder", "size")

    def __init__(
        self,
        envelope: Mapping[str, Any],
        headers: Message | None,
        folder: str,
        size: int,
        content: bytes | None,
        whole: bool,
    ) -> None:
        self._addresses: dict[str, frozenset[str]] = {
            key: _envelope_addresses(envelope.get(key)) for key in ("from", "to", "cc")
        }
        subject = envelope.get("subject") or ""
        self._subject = subject.casefold()
        self._headers = headers
        self._content = (content, whole)
        self._attachments: bool | None = None
        self.folder = folder
        self.size = size

    def addresses(self, key: str) -> frozenset[str]:
        found = self._addresses.get(key)
        if found is None:
            values = self._headers.get_all("Delivered-To") if self._headers is not None else None
            found = frozenset(
                a.strip().lower() for _, a in getaddresses([str(v) for v in values or ()]) if a
            )
            self._addresses[key] = found
        return found

    @property
    def subject(self) -> str:
        return self._subject

    def has_attachments(self) -> bool:
        if self._attachments is None:
            content, whole = self._content
            self._attachments = _has_attachments(content, whole, self._headers)
        return self._attachments


def _envelope_addresses(value: object) -> frozenset[str]:
    if not isinstance(value, list):
        return frozenset()
    found = set()
    for item in value:
        if isinstance(item, dict) and item.get("mailbox") and item.get("host"):
            found.add(f"{item['mailbox']}@{item['host']}".lower())
    return frozenset(found)


def _has_attachments(content: bytes | None, whole: bool, headers: Message | None) -> bool:
    if content is None:
        return False
    if not whole:
        # Only the header was fetched (over MAX_EMAIL_SIZE): judged by the top type.
        top = headers.get_content_type() if headers is not None else ""
        return top == "multipart/mixed"
    message = BytesParser(policy=compat32).parsebytes(content)
    for part in message.walk():
        if part.is_multipart():
            continue
        disposition = (part.get("Content-Disposition") or "").split(";", 1)[0].strip().lower()
        if disposition == "attachment" or part.get_filename():
            return True
    return False


def _address_matches(patterns: tuple[str, ...], addresses: frozenset[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("@"):
            domain = pattern[1:]
            if any(a.rpartition("@")[2] == domain for a in addresses):
                return True
        elif pattern in addresses:
            return True
    return False


def _folder_matches(names: tuple[str, ...], folder: str) -> bool:
    for name in names:
        if name == folder or (name.upper() == "INBOX" and folder.upper() == "INBOX"):
            return True
    return False


def matches(f: Filter, facts: Facts) -> bool:
    """Every condition ``f`` sets holds for the message (cheap ones first)."""
    if f.folder and not _folder_matches(f.folder, facts.folder):
        return False
    if f.min_size is not None and facts.size < f.min_size:
        return False
    if f.max_size is not None and facts.size > f.max_size:
        return False
    if f.subject_contains and not any(s in facts.subject for s in f.subject_contains):
        return False
    for key, patterns in (
        ("from", f.from_),
        ("to", f.to),
        ("cc", f.cc),
        ("delivered_to", f.delivered_to),
    ):
        if patterns and not _address_matches(patterns, facts.addresses(key)):
            return False
    if f.has_attachments is not None and facts.has_attachments() != f.has_attachments:
        return False
    return True


def first_match(filters: Iterable[Filter], facts: Facts) -> str | None:
    """The name of the first filter the message matches; None: it matches none."""
    for f in filters:
        if matches(f, facts):
            return f.name
    return None


def no_match_detail(filters: Iterable[Filter]) -> str:
    """A filtered row's detail: the filters it was held against."""
    return f"{NO_MATCH} ({', '.join(f.name for f in filters)})"[:255]


# --- checking and compiling a stored or given value -------------------------------------


def _strings(where: str, value: object, check: Callable[[str, str], str]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise FilterError(where, "must be a string or a non-empty list of strings")
    if len(items) > MAX_VALUES:
        raise FilterError(where, f"may hold at most {MAX_VALUES} values")
    result = []
    for i, item in enumerate(items):
        here = where if isinstance(value, str) else f"{where}[{i}]"
        if not isinstance(item, str) or not item.strip():
            raise FilterError(here, "must be a non-empty string")
        if len(item) > VALUE_MAX:
            raise FilterError(here, f"must be at most {VALUE_MAX} characters")
        result.append(check(here, item.strip()))
    return tuple(result)


def _address(where: str, value: str) -> str:
    if not _ADDRESS.match(value) or value.count("@") != 1:
        raise FilterError(where, f"is not an address or @domain: {value!r}")
    return value.lower()


def _text(where: str, value: str) -> str:
    return value.casefold()


def _folder(where: str, value: str) -> str:
    return value


def _size(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FilterError(where, "must be a whole number of bytes, 0 or more")
    return value


def _one(where: str, raw: object) -> Filter:
    if not isinstance(raw, dict):
        raise FilterError(where, "must be an object")
    unknown = sorted(set(raw) - set(FIELDS), key=str)
    if unknown:
        known = ", ".join(FIELDS)
        raise FilterError(f"{where}.{unknown[0]}", f"is not a filter field (one of {known})")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX:
        raise FilterError(f"{where}.name", f"is required: a string of 1 to {NAME_MAX} characters")
    if not set(raw) - {"name"} or all(raw[k] is None for k in set(raw) - {"name"}):
        raise FilterError(where, "needs at least one condition")
    values: dict[str, Any] = {"name": name.strip()}
    checks = {key: _address for key in ADDRESS_FIELDS}
    checks.update(subject_contains=_text, folder=_folder)
    for key, check in checks.items():
        if raw.get(key) is not None:
            values["from_" if key == "from" else key] = _strings(f"{where}.{key}", raw[key], check)
    for key in SIZE_FIELDS:
        if raw.get(key) is not None:
            values[key] = _size(f"{where}.{key}", raw[key])
    if "min_size" in values and "max_size" in values and values["min_size"] > values["max_size"]:
        raise FilterError(f"{where}.max_size", "must not be below min_size")
    attachments = raw.get("has_attachments")
    if attachments is not None:
        if not isinstance(attachments, bool):
            raise FilterError(f"{where}.has_attachments", "must be true or false")
        values["has_attachments"] = attachments
    return Filter(**values)


def parse_filters(value: object, where: str = "filters") -> tuple[Filter, ...]:
    """The filters of ``value`` (a list of filter objects; None: none), or FilterError."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise FilterError(where, "must be a list of filters")
    if len(value) > MAX_FILTERS:
        raise FilterError(where, f"may hold at most {MAX_FILTERS} filters")
    result = tuple(_one(f"{where}[{i}]", raw) for i, raw in enumerate(value))
    names = [f.name.casefold() for f in result]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise FilterError(f"{where}[{i}].name", f"repeats the name {result[i].name!r}")
    return result


@lru_cache(maxsize=4096)
def _compiled_text(text: str) -> tuple[Filter, ...]:
    return parse_filters(json.loads(text))


def compile_filters(stored: object) -> tuple[Filter, ...]:
    """A stored value (JSON text, as SQLite returns it, or the decoded list) as Filters;
    () for none. A stored value that no longer checks delivers everything rather than
    nothing (it was checked when set: this is only an old or hand-edited row)."""
    if stored is None or stored == "" or stored == [] or stored == "null" or stored == "[]":
        return ()
    try:
        if isinstance(stored, str):
            return _compiled_text(stored)
        return parse_filters(stored)
    except (FilterError, ValueError):
        return ()


def in_force(user_filters: object, connection_filters: object) -> object:
    """Which stored list is in force: the user's when set (even an empty list: deliver
    everything), else the connection's. The one place for "the user wins"."""
    if user_filters is not None and user_filters != "null":
        return user_filters
    return connection_filters


def effective(user_filters: object, connection_filters: object) -> tuple[Filter, ...]:
    """The filters in force (in_force()), compiled."""
    return compile_filters(in_force(user_filters, connection_filters))
