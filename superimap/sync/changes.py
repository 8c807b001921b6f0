"""Message changes as events (design.md 4.14): what changed in a folder, as pure rules.

The driver (engine/session.py) learns the flags of delivered messages and the UIDs that
left the folder in one of three ways, by what the server offers (``change_mode``):

- ``qresync`` (RFC 7162 QRESYNC): ``UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE m VANISHED)``
  gives every message changed since the stored modseq ``m`` and the UIDs expunged since;
- ``condstore`` (CONDSTORE without QRESYNC, e.g. Gmail): the same FETCH without VANISHED
  for the flags; expunges by the bounded resync below;
- ``resync`` (neither): the flags of the last N tracked messages, on a period and when an
  unsolicited FETCH or EXPUNGE says something changed; a UID the FETCH leaves out is gone
  once a UID SEARCH confirms it.

The writer (engine/writer.py write_changes) reads the stored state of those UIDs and asks
``decide`` which events they make; the state and the deliveries move in one transaction,
and each event's id is a function of the change (``event_id``), so a replay after a crash
computes the same change with the same id and the unique event_id refuses a second row.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from superimap.imap import Fetch, Vanished

QRESYNC = "qresync"
CONDSTORE = "condstore"
RESYNC = "resync"
UPDATED = "message_updated"
DELETED = "message_deleted"
# Not a flag of the message but of this session (RFC 3501 2.3.2): never a change.
_IGNORED = frozenset({"\\RECENT"})
_NAMESPACE = uuid.UUID("5a7c1f0e-2b7e-4c38-9f0d-6b1d3c0e8a21")


def change_mode(capabilities: Iterable[str]) -> str:
    names = {name.upper() for name in capabilities}
    if "QRESYNC" in names:
        return QRESYNC
    if "CONDSTORE" in names:
        return CONDSTORE
    return RESYNC


def canonical(flags: Iterable[str] | None) -> str:
    """Flags as stored and compared: sorted, one space apart, ``\\Recent`` left out.
    System flags are case-insensitive (``\\seen`` is ``\\Seen``); keywords are kept."""
    seen: dict[str, str] = {}
    for flag in flags or ():
        key = flag.upper() if flag.startswith("\\") else flag
        if key in _IGNORED:
            continue
        seen.setdefault(key, "\\" + flag[1:].capitalize() if flag.startswith("\\") else flag)
    return " ".join(sorted(seen.values()))


def split(flags: str) -> list[str]:
    return flags.split(" ") if flags else []


@dataclass(frozen=True, slots=True)
class Observed:
    """What the server says a UID's flags (and Gmail labels) are now."""

    uid: int
    flags: str
    labels: str | None = None  # None: the server has no X-GM-LABELS
    modseq: int | None = None


@dataclass(frozen=True, slots=True)
class Tracked:
    """The stored state of a delivered message (mailboxes.MessageState)."""

    uid: int
    flags: str
    labels: str | None
    changes: int  # message_updated events so far
    gone: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # UPDATED or DELETED
    uid: int
    number: int  # the message's n-th update (UPDATED), 0 for DELETED
    old_flags: str
    new_flags: str
    old_labels: str | None = None
    new_labels: str | None = None


def observed(events: Iterable[object]) -> list[Observed]:
    """The FETCH answers among ``events`` that carry a UID and FLAGS (the last one per UID
    wins: a later unsolicited FETCH is newer)."""
    found: dict[int, Observed] = {}
    for event in events:
        if isinstance(event, Fetch) and event.uid is not None and event.flags is not None:
            labels = event.attributes.get("X-GM-LABELS")
            found[event.uid] = Observed(
                event.uid,
                canonical(event.flags),
                _labels(labels) if labels is not None else None,
                event.modseq,
            )
    return list(found.values())


def _labels(value: object) -> str:
    items = value if isinstance(value, tuple) else (value,)
    names = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in items]
    return " ".join(sorted(set(names)))


def vanished(events: Iterable[object]) -> list[Vanished]:
    return [event for event in events if isinstance(event, Vanished)]


def decide(
    tracked: dict[int, Tracked], seen: Iterable[Observed], gone: Iterable[int]
) -> list[Change]:
    """The events of one look at a folder: a tracked message whose flags (or labels)
    differ from the stored ones is updated; a tracked message in ``gone`` is deleted (once:
    a gone one makes no event again). UIDs not tracked make none (not delivered, or
    delivered before tracking began: ``first_seen``); nor do Gmail labels seen for the first
    time."""
    changes: list[Change] = []
    for o in seen:
        t = tracked.get(o.uid)
        if t is None or t.gone:
            continue
        # Labels never recorded (None) are recorded at this look, not a change.
        labels_changed = o.labels is not None and t.labels is not None and o.labels != t.labels
        if o.flags != t.flags or labels_changed:
            changes.append(
                Change(
                    UPDATED,
                    o.uid,
                    t.changes + 1,
                    t.flags,
                    o.flags,
                    t.labels,
                    o.labels if o.labels is not None else t.labels,
                )
            )
    for uid in sorted(set(gone)):
        t = tracked.get(uid)
        if t is not None and not t.gone:
            changes.append(Change(DELETED, uid, 0, t.flags, t.flags, t.labels, t.labels))
    return changes


def first_seen(
    tracked: dict[int, Tracked], seen: Iterable[Observed], delivered: Iterable[int]
) -> list[Observed]:
    """Delivered messages without a stored state yet: their flags now become it, with no
    event (the flags at delivery time are what the partner got with new_mail)."""
    delivered = set(delivered)
    return [o for o in seen if o.uid not in tracked and o.uid in delivered]


def event_id(
    user_id: int, folder: str, uid_validity: int, uid: int, kind: str, number: int
) -> uuid.UUID:
    """The id of one change, the same however often it is computed: the n-th update of a
    message, or its deletion."""
    return uuid.uuid5(
        _NAMESPACE, f"{user_id}\x00{folder}\x00{uid_validity}\x00{uid}\x00{kind}\x00{number}"
    )


def next_modseq(old: int, seen: Iterable[Observed], caught_up_to: int) -> int:
    """The modseq the next CHANGEDSINCE starts from: the highest one reported, but below
    any message not caught up yet (UID over ``caught_up_to``): it is reported again once it
    has a MailLog row, so its state is recorded then."""
    highest, waiting = old, None
    for o in seen:
        if o.modseq is None:
            continue
        if o.uid > caught_up_to:
            waiting = o.modseq if waiting is None else min(waiting, o.modseq)
        else:
            highest = max(highest, o.modseq)
    if waiting is not None:
        highest = min(highest, waiting - 1)
    return max(old, highest)


def confirm_gone(asked: Iterable[int], answered: Iterable[int]) -> list[int]:
    """The UIDs a resync FETCH left out: gone if a UID SEARCH does not find them either."""
    have = set(answered)
    return sorted(uid for uid in set(asked) if uid not in have)


def in_ranges(uids: Iterable[int], reports: Iterable[Vanished]) -> list[int]:
    reports = list(reports)
    return sorted(uid for uid in uids if any(uid in report for report in reports))


def uid_set(uids: Iterable[int]) -> str:
    """``1:3,7`` for 1, 2, 3, 7 (a short command for a run of UIDs)."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = None
    for uid in ordered:
        if start is None:
            start = prev = uid
        elif uid == prev + 1:  # type: ignore[operator]
            prev = uid
        else:
            parts.append(f"{start}:{prev}" if start != prev else str(start))
            start = prev = uid
    if start is not None:
        parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)
