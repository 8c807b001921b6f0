"""One folder's rules (superimap/sync/mailbox.py): SELECT, catch-up, UIDVALIDITY, the
secondary folders' news; tables, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from superimap.imap import Fetch, MailboxStatus, TaggedResponse, UntaggedStatus
from superimap.sync.mailbox import (
    BATCH_SIZE,
    CatchUp,
    FetchAnswer,
    FolderCursor,
    Start,
    batches,
    code_value,
    fetch_answer,
    fetches,
    highest_uid,
    poll_every,
    range_meta,
    revalidation_window,
    secondary_baseline,
    status_items,
    until_poll,
    validity_changed,
)

T = datetime(2026, 12, 6, 15, 30, 45, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("saved_validity", "saved_last", "selected", "start", "last_after"),
    [
        (None, None, 7, Start.BASELINE, None),  # first connection
        (7, None, 7, Start.BASELINE, None),  # no last UID: no checkpoint
        (None, 40, 7, Start.BASELINE, 40),
        (7, 40, 7, Start.RESUME, 40),
        (7, 40, 8, Start.REVALIDATE, 40),
        (7, 0, 9, Start.REVALIDATE, 0),
    ],
)
def test_select_resumes_takes_a_baseline_or_revalidates(
    saved_validity, saved_last, selected, start, last_after
) -> None:
    cursor = FolderCursor("INBOX", saved_validity, saved_last)
    cursor.count_at_search = 12
    assert cursor.select(selected) is start
    assert (cursor.uid_validity, cursor.last_uid) == (selected, last_after)
    assert cursor.count_at_search is None  # counts of another selection mean nothing


def test_a_baseline_starts_at_the_highest_uid() -> None:
    cursor = FolderCursor("INBOX")
    cursor.select(7)
    cursor.baseline(41)
    assert cursor.plan_catch_up(3, steady=False) == CatchUp(41, False)


@pytest.mark.parametrize(
    ("highest", "persisted", "checkpoint"),
    [
        (50, [], 50),  # nothing found by date: the UIDNEXT at SELECT
        (50, [10, 20], 50),
        (50, [49, 51], 51),  # mail that arrived during the revalidation
        (0, [3], 3),
    ],
)
def test_a_revalidation_ends_at_the_highest_uid_seen(highest, persisted, checkpoint) -> None:
    cursor = FolderCursor("INBOX", 7, 900)
    assert cursor.select(8) is Start.REVALIDATE
    cursor.begin_revalidation()
    assert cursor.plan_catch_up(None, steady=False).last == 0
    if persisted:
        cursor.persisted(persisted)
    assert cursor.end_revalidation(highest) == checkpoint
    assert cursor.last_uid == checkpoint


@pytest.mark.parametrize(
    ("steady", "count_before", "count_now", "by_range"),
    [
        (False, 5, 6, False),  # after a (re)SELECT: SEARCH
        (True, None, 6, False),  # first catch-up of this selection
        (True, 5, None, False),  # no EXISTS count known
        (True, 5, 6, True),
        (True, 5, 5, True),  # nothing new counted (an expunge and an arrival)
        (True, 5, 5 + BATCH_SIZE, True),
        (True, 5, 6 + BATCH_SIZE, False),  # many arrived: SEARCH
        (True, 9, 3, True),  # expunges
    ],
)
def test_a_steady_catch_up_fetches_a_range_unless_many_arrived(
    steady, count_before, count_now, by_range
) -> None:
    cursor = FolderCursor("INBOX", 7, 40, count_at_search=count_before)
    plan = cursor.plan_catch_up(count_now, steady)
    assert plan == CatchUp(40, by_range)
    assert (plan.uid_range, plan.search) == ("41:*", "UID 41:*")
    assert cursor.count_at_search == count_now


def test_the_batch_size_bounds_the_range_catch_up() -> None:
    cursor = FolderCursor("INBOX", 7, 40, count_at_search=5)
    assert not cursor.plan_catch_up(16, steady=True, batch_size=10).by_range


@pytest.mark.parametrize(
    ("last", "uid_next", "unpersisted", "current"),
    [
        (40, 41, set(), True),  # nothing past the checkpoint: no UID SEARCH
        (40, 42, set(), False),  # one new UID
        (40, 30, set(), True),  # UIDNEXT below the checkpoint: nothing new either
        (40, None, set(), False),  # no UIDNEXT: the SEARCH tells
        (None, 41, set(), False),  # no checkpoint
        (40, 41, {41}, False),  # found before a dropped connection, not persisted
        (40, 41, {39}, True),  # persisted since (below the checkpoint)
    ],
)
def test_a_select_with_nothing_past_the_checkpoint_needs_no_catch_up(
    last, uid_next, unpersisted, current
) -> None:
    cursor = FolderCursor("INBOX", 7, last)
    cursor.unpersisted, cursor.unpersisted_validity = set(unpersisted), 7
    assert cursor.select(7) is (Start.RESUME if last is not None else Start.BASELINE)
    assert cursor.current_at_select(uid_next, 12) is current
    # As a catch-up would: the next steady one compares the EXISTS count with the SELECT's.
    assert cursor.count_at_search == (12 if current else None)


def test_unpersisted_uids_of_another_uidvalidity_do_not_count_at_select() -> None:
    cursor = FolderCursor("INBOX", 7, 40)
    cursor.unpersisted, cursor.unpersisted_validity = {41, 42}, 6
    cursor.select(7)
    assert cursor.current_at_select(41, 3)


def test_a_baseline_from_uidnext_is_current() -> None:
    cursor = FolderCursor("INBOX")
    assert cursor.select(7) is Start.BASELINE
    cursor.baseline(41)
    assert cursor.current_at_select(42, 41)
    assert cursor.plan_catch_up(42, steady=True) == CatchUp(41, True)


def test_the_first_new_mail_after_a_current_select_comes_in_one_trip() -> None:
    """No UID SEARCH after the SELECT, yet the SELECT's counts stand in for a catch-up's: the
    first new message's FETCH brings its body; an expunge meanwhile (changes_seen moved)
    takes the FETCH of sizes first."""
    cursor = FolderCursor("INBOX", 7, 40)
    cursor.select(7)
    assert cursor.current_at_select(41, 12, changes_seen=3)
    assert cursor.plan_catch_up(13, steady=True, changes_seen=3, one_trip=8) == CatchUp(
        40, True, True
    )
    again = FolderCursor("INBOX", 7, 40)
    again.select(7)
    assert again.current_at_select(41, 12, changes_seen=3)
    assert again.plan_catch_up(13, steady=True, changes_seen=4, one_trip=8) == CatchUp(
        40, True, False
    )


@pytest.mark.parametrize(
    ("found", "unpersisted", "unpersisted_validity", "to_fetch"),
    [
        ([41, 42], set(), None, [41, 42]),
        ([40, 39, 43, 41], set(), None, [41, 43]),  # "n:*" also answers the last UID
        ([], set(), None, []),
        # Found before a dropped connection, gone now: fetched, so recorded as expunged.
        ([42], {41, 42}, 7, [41, 42]),
        ([42], {41, 42}, 6, [42]),  # another UIDVALIDITY: those UIDs mean nothing
        ([42], {30, 41}, 7, [41, 42]),  # persisted since (below the checkpoint): not again
    ],
)
def test_a_catch_up_fetches_what_it_found_and_what_it_found_before(
    found, unpersisted, unpersisted_validity, to_fetch
) -> None:
    cursor = FolderCursor("INBOX", 7, 40)
    cursor.unpersisted, cursor.unpersisted_validity = set(unpersisted), unpersisted_validity
    plan = cursor.plan_catch_up(None, steady=False)
    assert cursor.to_fetch(plan, found) == to_fetch
    assert (cursor.unpersisted_validity, cursor.unpersisted) == (7, set(to_fetch))


def test_persisting_a_batch_moves_the_checkpoint_and_forgets_its_uids() -> None:
    cursor = FolderCursor("INBOX", 7, 40)
    uids = cursor.to_fetch(cursor.plan_catch_up(None, False), [41, 42, 43])
    cursor.persisted(uids[:2])
    assert (cursor.last_uid, cursor.unpersisted) == (42, {43})
    cursor.persisted([43])
    assert (cursor.last_uid, cursor.unpersisted) == (43, set())


def test_a_new_connection_carries_what_was_found_but_not_persisted() -> None:
    old = FolderCursor("INBOX", 7, 40)
    old.to_fetch(old.plan_catch_up(None, False), [41, 42])
    new = FolderCursor("INBOX", 7, 40)
    new.carry_over(old)
    new.select(7)
    assert new.to_fetch(new.plan_catch_up(None, False), [42]) == [41, 42]
    fresh = FolderCursor("INBOX", 7, 40)
    fresh.carry_over(None)
    assert fresh.unpersisted == set()


@pytest.mark.parametrize(
    ("status", "news"),
    [
        ({"UIDNEXT": 41, "UIDVALIDITY": 7}, False),
        ({"UIDNEXT": 42, "UIDVALIDITY": 7}, True),
        ({"UIDNEXT": 30, "UIDVALIDITY": 7}, False),
        ({"UIDNEXT": 41, "UIDVALIDITY": 8}, True),  # recreated: revalidate
        ({"UIDNEXT": 42}, True),  # a NOTIFY report may carry only some items
        ({"MESSAGES": 3}, True),  # no UIDNEXT: look
        ({"UIDVALIDITY": 7}, True),
    ],
)
def test_a_secondary_folder_has_news_when_its_status_moved(status, news) -> None:
    assert FolderCursor("Junk", 7, 40, primary=False).has_news(status) is news


def test_a_new_secondary_folder_starts_at_its_uidnext() -> None:
    cursor = secondary_baseline("Junk", {"UIDNEXT": 12, "UIDVALIDITY": 5, "MESSAGES": 11})
    assert (cursor.folder, cursor.uid_validity, cursor.last_uid, cursor.primary) == (
        "Junk",
        5,
        11,
        False,
    )
    assert cursor.select(5) is Start.RESUME


@pytest.mark.parametrize(
    ("uids", "size", "expected"),
    [
        ([], 3, []),
        ([1, 2, 3], 3, [[1, 2, 3]]),
        ([1, 2, 3, 4], 3, [[1, 2, 3], [4]]),
        ([5, 9, 11, 12, 20, 21, 30], 2, [[5, 9], [11, 12], [20, 21], [30]]),
    ],
)
def test_batches(uids, size, expected) -> None:
    assert list(batches(uids, size)) == expected


@pytest.mark.parametrize(("uid_next", "highest"), [(None, None), (0, None), (1, 0), (42, 41)])
def test_highest_uid_from_uidnext(uid_next, highest) -> None:
    assert highest_uid(uid_next) == highest


@pytest.mark.parametrize(
    ("last_date", "baseline", "criteria", "cutoff"),
    [
        # The day before the last mail persisted.
        (T, datetime(2026, 1, 1, 0, 0, 0, 999, tzinfo=UTC), "SINCE 05-Dec-2026", "2026-01-01"),
        # No mail persisted yet: the day before the baseline.
        (None, datetime(2026, 11, 2, 8, 0, 0, 5, tzinfo=UTC), "SINCE 01-Nov-2026", "2026-11-02"),
        # Neither: a day before now; no cutoff.
        (None, None, "SINCE 05-Dec-2026", None),
        # A date in the future is not trusted beyond now.
        (datetime(2027, 5, 1, tzinfo=UTC), None, "SINCE 05-Dec-2026", None),
    ],
)
def test_revalidation_window(last_date, baseline, criteria, cutoff) -> None:
    search, start, got_cutoff = revalidation_window(last_date, baseline, T)
    assert search == criteria
    assert start.strftime("SINCE %d-%b-%Y") == criteria
    if cutoff is None:
        assert got_cutoff is None
    else:
        assert got_cutoff.date().isoformat() == cutoff
        assert got_cutoff.microsecond == 0  # INTERNALDATE has whole seconds


def test_range_meta_keeps_the_uids_above_the_checkpoint_with_their_sizes() -> None:
    events = [
        Fetch(1, 40, 10, T),  # "41:*" answers the last UID when nothing is newer
        Fetch(2, 41, flags=("\\Seen",)),
        Fetch(2, 41, 20, T),
        Fetch(3, 42, 30, T),
        Fetch(3, 42, flags=()),
        Fetch(4, None, 5),
        MailboxStatus("Junk", {"UIDNEXT": 3}),
    ]
    meta = range_meta(CatchUp(40, True), events)
    assert {uid: m.size for uid, m in meta.items()} == {41: 20, 42: 30}


def _tagged(status: str, code=None) -> TaggedResponse:
    return TaggedResponse("A1", status, code, "text")


@pytest.mark.parametrize(
    ("tagged", "answer"),
    [
        (_tagged("OK"), FetchAnswer.OK),
        (_tagged("OK", ("EXPUNGEISSUED",)), FetchAnswer.OK),
        (_tagged("NO", ("EXPUNGEISSUED",)), FetchAnswer.SOME_REFUSED),
        (_tagged("NO"), FetchAnswer.SOME_REFUSED),
        (_tagged("NO", ("SERVERBUG",)), FetchAnswer.SOME_REFUSED),
        (_tagged("NO", ("UNAVAILABLE",)), FetchAnswer.RETRY_LATER),
        (_tagged("NO", ("inuse",)), FetchAnswer.RETRY_LATER),
        (_tagged("NO", ("LIMIT",)), FetchAnswer.RETRY_LATER),
        (_tagged("NO", ("OVERQUOTA",)), FetchAnswer.RETRY_LATER),
        (_tagged("BAD"), FetchAnswer.RETRY_LATER),
    ],
)
def test_what_a_fetch_answer_means(tagged, answer) -> None:
    assert fetch_answer(tagged) is answer


def test_fetches_keeps_fetch_responses_with_a_uid() -> None:
    keep = Fetch(1, 5, 10)
    assert fetches([keep, Fetch(2, None, 10), UntaggedStatus("OK", None, "x")]) == [keep]


@pytest.mark.parametrize(
    ("events", "selected", "changed"),
    [
        ([], 7, False),
        ([UntaggedStatus("OK", ("UIDVALIDITY", "7"), "")], 7, False),
        ([UntaggedStatus("OK", ("UIDVALIDITY", "8"), "")], 7, True),
        ([UntaggedStatus("OK", ("UIDVALIDITY", "8"), "")], None, True),
        ([UntaggedStatus("OK", ("UIDNEXT", "8"), "")], 7, False),
        ([_tagged("OK", ("UIDVALIDITY", "8"))], 7, False),  # only untagged responses count
    ],
)
def test_a_uidvalidity_change_during_the_session(events, selected, changed) -> None:
    assert validity_changed(events, selected) is changed


def test_code_value_and_status_items() -> None:
    events = [
        UntaggedStatus("OK", ("UIDVALIDITY", "7"), ""),
        UntaggedStatus("OK", ("UIDNEXT", "42"), ""),
        _tagged("OK", ("READ-WRITE",)),
    ]
    assert (code_value(events, "UIDVALIDITY"), code_value(events, "UIDNEXT")) == (7, 42)
    assert code_value(events, "HIGHESTMODSEQ") is None
    partial = MailboxStatus("Junk", {"UIDNEXT": 3})
    full = MailboxStatus("Junk", {"UIDNEXT": 3, "UIDVALIDITY": 9})
    assert status_items([partial, full]) == {"UIDNEXT": 3, "UIDVALIDITY": 9}
    assert status_items([partial]) is None


@pytest.mark.parametrize(
    ("period", "next_poll", "now", "wait"),
    [
        (1500.0, None, 100.0, 1500.0),  # no secondary folder
        (1500.0, 160.0, 100.0, 60.0),
        (30.0, 160.0, 100.0, 30.0),
        (1500.0, 90.0, 100.0, 0.0),  # overdue
    ],
)
def test_until_poll(period, next_poll, now, wait) -> None:
    assert until_poll(period, next_poll, now) == wait


def test_poll_every() -> None:
    assert poll_every(notify=True, idle_reissue=1500.0, folder_poll=60.0) == 1500.0
    assert poll_every(notify=False, idle_reissue=1500.0, folder_poll=60.0) == 60.0


@pytest.mark.parametrize(
    ("steady", "count_before", "count_now", "changes", "bodies"),
    [
        (True, 5, 6, (3, 3), True),  # one new message: sizes and body in one FETCH
        (True, 5, 9, (3, 3), True),  # four: one_trip allows them
        (True, 5, 10, (3, 3), False),  # five: more than one_trip, sizes first
        (True, 5, 5, (3, 3), False),  # none counted: the range would answer the last one
        (True, 9, 3, (3, 3), False),
        (True, 5, 6, (3, 4), False),  # an expunge or flag change came: the growth lies
        (True, 5, 6, (None, 3), False),  # no count of changes before
        (True, 5, 6, (3, None), False),
        (False, 5, 6, (3, 3), False),  # after a (re)SELECT: SEARCH
        (True, None, 6, (3, 3), False),
    ],
)
def test_a_steady_catch_up_of_a_few_new_messages_fetches_their_bodies_too(
    steady, count_before, count_now, changes, bodies
) -> None:
    before, now = changes
    cursor = FolderCursor("INBOX", 7, 40, count_at_search=count_before, changes_at_search=before)
    plan = cursor.plan_catch_up(count_now, steady, changes_seen=now, one_trip=4)
    assert plan.bodies is bodies
    assert not plan.bodies or plan.by_range
    assert (cursor.count_at_search, cursor.changes_at_search) == (count_now, now)


def test_no_bodies_come_with_the_range_unless_asked_for() -> None:
    cursor = FolderCursor("INBOX", 7, 40, count_at_search=5, changes_at_search=0)
    assert cursor.plan_catch_up(6, steady=True, changes_seen=0) == CatchUp(40, True, False)


def test_a_select_forgets_the_counts_of_the_connection() -> None:
    cursor = FolderCursor("INBOX", 7, 40, count_at_search=5, changes_at_search=2)
    cursor.select(7)
    assert (cursor.count_at_search, cursor.changes_at_search) == (None, None)
