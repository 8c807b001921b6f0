"""sync/changes.py: which events a look at a folder makes (design.md 4.14)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from superimap.imap.events import Fetch, Vanished
from superimap.sync import changes
from superimap.sync.batch import BatchFetch, FetchBodies, FetchMeta
from superimap.sync.changes import Change, Observed, Tracked


@pytest.mark.parametrize(
    ("capabilities", "mode"),
    [
        ({"IMAP4REV1", "IDLE"}, changes.RESYNC),
        ({"IMAP4REV1", "CONDSTORE"}, changes.CONDSTORE),
        ({"CONDSTORE", "QRESYNC"}, changes.QRESYNC),
        ({"qresync"}, changes.QRESYNC),
    ],
)
def test_change_mode(capabilities, mode) -> None:
    assert changes.change_mode(capabilities) == mode


@pytest.mark.parametrize(
    ("flags", "stored"),
    [
        ((), ""),
        (None, ""),
        (("\\Seen", "\\Recent"), "\\Seen"),
        (("\\seen", "\\FLAGGED", "$Label1"), "$Label1 \\Flagged \\Seen"),
        (("\\Seen", "\\SEEN"), "\\Seen"),
        (("Work", "work"), "Work work"),  # keywords are kept as sent
    ],
)
def test_canonical(flags, stored) -> None:
    assert changes.canonical(flags) == stored


T = Tracked(uid=5, flags="", labels=None, changes=0)
SEEN = Observed(5, "\\Seen", None, 9)


@pytest.mark.parametrize(
    ("tracked", "seen", "gone", "expected"),
    [
        # a flag change of a tracked message: its first update
        ({5: T}, [SEEN], [], [Change("message_updated", 5, 1, "", "\\Seen")]),
        # the same flags: nothing
        ({5: T}, [Observed(5, "", None, 9)], [], []),
        # the third update of a message
        (
            {5: Tracked(5, "\\Seen", None, 2)},
            [Observed(5, "", None, 10)],
            [],
            [Change("message_updated", 5, 3, "\\Seen", "")],
        ),
        # not tracked (not delivered, or before tracking): no event
        ({}, [SEEN], [7], []),
        # gone: deleted once, with its last flags
        (
            {5: Tracked(5, "\\Seen", None, 1)},
            [],
            [5],
            [Change("message_deleted", 5, 0, "\\Seen", "\\Seen")],
        ),
        # already gone: no second deletion, no update
        ({5: Tracked(5, "", None, 0, gone=True)}, [SEEN], [5], []),
        # Gmail labels changed, flags did not
        (
            {5: Tracked(5, "", "\\Inbox", 0)},
            [Observed(5, "", "\\Inbox Work", 4)],
            [],
            [Change("message_updated", 5, 1, "", "", "\\Inbox", "\\Inbox Work")],
        ),
        # labels never recorded (stored None): recorded, no event
        ({5: Tracked(5, "", None, 0)}, [Observed(5, "", "\\Inbox", 4)], [], []),
        # no labels from the server: stored labels kept
        (
            {5: Tracked(5, "", "\\Inbox", 0)},
            [SEEN],
            [],
            [Change("message_updated", 5, 1, "", "\\Seen", "\\Inbox", "\\Inbox")],
        ),
    ],
)
def test_decide(tracked, seen, gone, expected) -> None:
    assert changes.decide(tracked, seen, gone) == expected


def test_first_seen_is_for_delivered_messages_without_a_state() -> None:
    seen = [Observed(1, ""), Observed(2, "\\Seen"), Observed(3, "")]
    assert changes.first_seen({1: Tracked(1, "", None, 0)}, seen, [1, 2]) == [seen[1]]


def test_observed_keeps_the_last_answer_per_uid() -> None:
    events = [
        Fetch(1, uid=4, flags=("\\Seen",), modseq=7),
        Fetch(2, uid=None, flags=("\\Seen",)),  # no UID (no QRESYNC): not usable
        Fetch(1, uid=4, flags=("\\Seen", "\\Flagged"), modseq=8),
        Fetch(3, uid=6, size=10),  # no FLAGS
        Fetch(4, uid=9, flags=(), attributes={"X-GM-LABELS": ("\\Inbox", b"Work")}),
    ]
    assert changes.observed(events) == [
        Observed(4, "\\Flagged \\Seen", None, 8),
        Observed(9, "", "Work \\Inbox", None),
    ]


@pytest.mark.parametrize(
    ("old", "seen", "caught_up_to", "new"),
    [
        (10, [], 5, 10),
        (10, [Observed(1, "", None, 14), Observed(2, "", None, 12)], 5, 14),
        # uid 7 is not caught up yet: stay below it so it is reported again
        (10, [Observed(1, "", None, 14), Observed(7, "", None, 13)], 5, 12),
        (10, [Observed(7, "", None, 11)], 5, 10),
        (10, [Observed(1, "", None, None)], 5, 10),
    ],
)
def test_next_modseq(old, seen, caught_up_to, new) -> None:
    assert changes.next_modseq(old, seen, caught_up_to) == new


def test_event_ids_are_stable_per_change_and_differ_between_changes() -> None:
    one = changes.event_id(1, "INBOX", 7, 5, changes.UPDATED, 1)
    assert one == changes.event_id(1, "INBOX", 7, 5, changes.UPDATED, 1)
    others = {
        changes.event_id(1, "INBOX", 7, 5, changes.UPDATED, 2),
        changes.event_id(1, "INBOX", 7, 5, changes.DELETED, 0),
        changes.event_id(1, "Archive", 7, 5, changes.UPDATED, 1),
        changes.event_id(2, "INBOX", 7, 5, changes.UPDATED, 1),
        changes.event_id(1, "INBOX", 8, 5, changes.UPDATED, 1),
    }
    assert one not in others and len(others) == 5


@pytest.mark.parametrize(
    ("uids", "text"),
    [([], ""), ([3], "3"), ([1, 2, 3, 7], "1:3,7"), ([9, 1, 2, 2], "1:2,9")],
)
def test_uid_set(uids, text) -> None:
    assert changes.uid_set(uids) == text


def test_confirm_gone_and_in_ranges() -> None:
    assert changes.confirm_gone([1, 2, 3], [2]) == [1, 3]
    assert changes.in_ranges([1, 4, 9], [Vanished(((3, 5),)), Vanished(((9, 9),))]) == [4, 9]


def test_the_body_fetch_brings_flags_and_modseq_when_asked() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    machine = BatchFetch([7], max_size=1000, extra="FLAGS MODSEQ")
    requests = machine.requests()
    meta = next(requests)
    assert isinstance(meta, FetchMeta)
    machine.meta_answered(meta, [Fetch(1, uid=7, size=3, internal_date=when)])
    bodies = next(requests)
    assert isinstance(bodies, FetchBodies)
    assert bodies.items == "(UID FLAGS MODSEQ BODY.PEEK[])"
    answer = Fetch(1, uid=7, body=b"abc", flags=("\\Seen",), modseq=42)
    machine.bodies_answered(bodies, [answer], None)
    assert list(requests) == []
    [outcome] = machine.outcomes()
    assert (outcome.raw, outcome.flags, outcome.modseq) == (b"abc", ("\\Seen",), 42)


def test_without_extra_items_the_body_fetch_is_unchanged() -> None:
    assert FetchBodies((1,), "BODY.PEEK[]").items == "(UID BODY.PEEK[])"
