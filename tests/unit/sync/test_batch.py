"""What each UID of a batch became (superimap/sync/batch.py): each fetch shape and race a
row, played by a scripted folder without sockets, threads or a database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from superimap.imap import Fetch
from superimap.sync.batch import (
    BEFORE_BASELINE,
    EXPUNGED,
    FETCH_ROUNDS,
    HEADER,
    UNFETCHABLE,
    WHOLE,
    BatchFetch,
    CheckPresent,
    FetchBodies,
    FetchMeta,
    chunks_by_size,
    one_trip_count,
    one_trip_items,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
LIMIT = 1000  # the size limit of these tests (MAX_EMAIL_SIZE)


def body(uid: int) -> bytes:
    return b"Subject: m%d\r\n\r\nbody %d\r\n" % (uid, uid)


def head(uid: int) -> bytes:
    return b"Subject: m%d\r\n\r\n" % uid


@dataclass
class Folder:
    """A folder the script answers from: uid -> size (the content is body(uid))."""

    sizes: dict[int, int]
    dates: dict[int, datetime] = field(default_factory=dict)
    body_fetches: int = 0
    log: list[str] = field(default_factory=list)

    def meta(self, uid: int) -> Fetch:
        return Fetch(uid, uid, self.sizes[uid], self.dates.get(uid, NOW))

    def section(self, uid: int, section: str) -> Fetch:
        if section == WHOLE:
            return Fetch(uid, uid, body=body(uid), attributes={"BODY[]": body(uid)})
        return Fetch(uid, uid, attributes={"BODY[HEADER]": head(uid)})


# A shape: (folder, request) -> the answer: Fetch events (FETCH) or UIDs found (SEARCH).
Shape = Callable[[Folder, object], list]


def normal(folder: Folder, request) -> list:
    if isinstance(request, CheckPresent):
        return [uid for uid in request.uids if uid in folder.sizes]
    if isinstance(request, FetchMeta):
        return [folder.meta(uid) for uid in request.uids if uid in folder.sizes]
    return [folder.section(uid, request.section) for uid in request.uids if uid in folder.sizes]


def on_first_body_fetch(change: Callable[[Folder, object], list]) -> Shape:
    """``change`` answers the first body FETCH; everything else is answered normally."""

    def shape(folder: Folder, request) -> list:
        if isinstance(request, FetchBodies):
            folder.body_fetches += 1
            if folder.body_fetches == 1:
                return change(folder, request)
        return normal(folder, request)

    return shape


def expunge_and_nil(uid: int) -> Callable[[Folder, object], list]:
    def change(folder: Folder, request) -> list:
        del folder.sizes[uid]
        nil = Fetch(uid, uid, attributes={"BODY[]": None})
        return [nil, *normal(folder, request)]

    return change


def expunge_and_leave_out(uid: int) -> Callable[[Folder, object], list]:
    def change(folder: Folder, request) -> list:
        del folder.sizes[uid]
        return normal(folder, request)

    return change


def leave_out(uid: int) -> Callable[[Folder, object], list]:
    def change(folder: Folder, request) -> list:
        return [e for e in normal(folder, request) if e.uid != uid]

    return change


def never(uid: int) -> Shape:
    def shape(folder: Folder, request) -> list:
        if isinstance(request, FetchBodies):
            folder.body_fetches += 1
            return [e for e in normal(folder, request) if e.uid != uid]
        return normal(folder, request)

    return shape


def reversed_order(folder: Folder, request) -> list:
    return list(reversed(normal(folder, request)))


def flags_too(folder: Folder, request) -> list:
    """An unsolicited FLAGS update for every UID, before and after the real answer."""
    if isinstance(request, CheckPresent):
        return normal(folder, request)
    flags = [Fetch(uid, uid, flags=("\\Seen",), attributes={"FLAGS": ()}) for uid in request.uids]
    return [*flags, *normal(folder, request), *flags]


def strangers(folder: Folder, request) -> list:
    """Answers for UIDs nobody asked for (another command's, a server bug) are ignored."""
    if isinstance(request, CheckPresent):
        return normal(folder, request)
    return [Fetch(99, 99, 10, NOW, body=b"x"), *normal(folder, request)]


def text_body(folder: Folder, request) -> list:
    """A body section parsed as text (a quoted string) is encoded, not lost."""
    if isinstance(request, FetchBodies):
        return [
            Fetch(uid, uid, body=body(uid).decode(), attributes={"BODY[]": body(uid).decode()})
            for uid in request.uids
        ]
    return normal(folder, request)


def vanished_before_meta(uid: int) -> Shape:
    """Expunged between the SEARCH and the first FETCH: no size, no date, then gone."""

    def shape(folder: Folder, request) -> list:
        folder.sizes.pop(uid, None)
        return normal(folder, request)

    return shape


def gone_after_meta(uid: int) -> Shape:
    """Sizes fetched, then expunged before its body: nothing comes back for it."""

    def shape(folder: Folder, request) -> list:
        if isinstance(request, FetchBodies):
            folder.sizes.pop(uid, None)
        return normal(folder, request)

    return shape


def run(uids, shape: Shape, folder: Folder, **options):
    machine = BatchFetch(uids, max_size=LIMIT, **options)
    for request in machine.requests():
        folder.log.append(type(request).__name__)
        answer = shape(folder, request)
        if isinstance(request, CheckPresent):
            machine.present(request, answer)
        elif isinstance(request, FetchMeta):
            machine.meta_answered(request, answer)
        else:
            machine.bodies_answered(request, answer, seen_at=123.0)
    return machine.outcomes()


def summary(outcomes) -> dict[int, str]:
    """uid -> 'raw', 'header', or the skip reason (with 'header' when a header came)."""
    result = {}
    for o in outcomes:
        if o.skip:
            result[o.uid] = o.skip
        else:
            result[o.uid] = "raw" if o.raw is not None else "header"
    return result


RAW5 = {uid: "raw" for uid in range(1, 6)}

# (name, sizes, shape, expected outcome per uid, expected requests)
SHAPES = [
    (
        "all answered",
        {1: 10, 2: 10, 3: 10},
        normal,
        {1: "raw", 2: "raw", 3: "raw"},
        ["FetchMeta", "FetchBodies"],
    ),
    (
        "nil body of a message expunged meanwhile",
        {u: 10 for u in range(1, 6)},
        on_first_body_fetch(expunge_and_nil(2)),
        {**RAW5, 2: EXPUNGED},
        ["FetchMeta", "FetchBodies", "CheckPresent"],
    ),
    (
        "left out (OK or NO [EXPUNGEISSUED]) and gone",
        {u: 10 for u in range(1, 6)},
        on_first_body_fetch(expunge_and_leave_out(3)),
        {**RAW5, 3: EXPUNGED},
        ["FetchMeta", "FetchBodies", "CheckPresent"],
    ),
    (
        "left out once but still present: fetched again",
        {u: 10 for u in range(1, 5)},
        on_first_body_fetch(leave_out(2)),
        {1: "raw", 2: "raw", 3: "raw", 4: "raw"},
        ["FetchMeta", "FetchBodies", "CheckPresent", "FetchBodies"],
    ),
    (
        "never returned though present: unfetchable after FETCH_ROUNDS",
        {u: 10 for u in range(1, 6)},
        never(2),
        {**RAW5, 2: UNFETCHABLE},
        ["FetchMeta", "FetchBodies"] + ["CheckPresent", "FetchBodies"] * (FETCH_ROUNDS - 1),
    ),
    (
        "answers in another order",
        {u: 10 for u in range(1, 7)},
        reversed_order,
        {u: "raw" for u in range(1, 7)},
        ["FetchMeta", "FetchBodies"],
    ),
    (
        "unsolicited FLAGS updates around the answers",
        {1: 10, 2: 10, 3: 10},
        flags_too,
        {1: "raw", 2: "raw", 3: "raw"},
        ["FetchMeta", "FetchBodies"],
    ),
    (
        "answers for UIDs not asked for",
        {1: 10, 2: 10},
        strangers,
        {1: "raw", 2: "raw"},
        ["FetchMeta", "FetchBodies"],
    ),
    (
        "a body parsed as text",
        {1: 10},
        text_body,
        {1: "raw"},
        ["FetchMeta", "FetchBodies"],
    ),
    (
        "expunged between SEARCH and the size FETCH",
        {1: 10, 2: 10, 3: 10},
        vanished_before_meta(2),
        {1: "raw", 2: EXPUNGED, 3: "raw"},
        ["FetchMeta", "FetchBodies", "CheckPresent"],
    ),
    (
        "expunged between the size FETCH and the body FETCH",
        {1: 10, 2: 10, 3: 10},
        gone_after_meta(3),
        {1: "raw", 2: "raw", 3: EXPUNGED},
        ["FetchMeta", "FetchBodies", "CheckPresent"],
    ),
    (
        "over the size limit: header only, sent truncated",
        {1: 10, 2: LIMIT + 1, 3: LIMIT},
        normal,
        {1: "raw", 2: "header", 3: "raw"},
        ["FetchMeta", "FetchBodies", "FetchBodies"],
    ),
]


@pytest.mark.parametrize(
    ("sizes", "shape", "expected", "requests"),
    [row[1:] for row in SHAPES],
    ids=[row[0] for row in SHAPES],
)
def test_each_uid_of_a_batch_ends_in_one_state(sizes, shape, expected, requests) -> None:
    folder = Folder(dict(sizes))
    outcomes = run(sorted(sizes), shape, folder)
    assert [o.uid for o in outcomes] == sorted(sizes)
    assert summary(outcomes) == expected
    assert folder.log == requests
    for o in outcomes:
        if o.skip:
            assert (o.raw, o.header) == (None, None)
        elif o.raw is not None:
            assert (o.raw, o.header, o.seen_at) == (body(o.uid), None, 123.0)
        else:
            assert (o.raw, o.header, o.seen_at) == (None, head(o.uid), 123.0)


def test_a_skipped_uid_keeps_the_size_and_date_it_was_seen_with() -> None:
    folder = Folder({1: 10, 2: 77})
    outcomes = run([1, 2], on_first_body_fetch(expunge_and_nil(2)), folder)
    gone = outcomes[1]
    assert (gone.skip, gone.size, gone.internal_date) == (EXPUNGED, 77, NOW)


def test_a_uid_gone_before_its_size_was_known_has_size_zero() -> None:
    outcomes = run([1, 2], vanished_before_meta(2), Folder({1: 10, 2: 10}))
    assert (outcomes[1].skip, outcomes[1].size, outcomes[1].internal_date) == (EXPUNGED, 0, None)


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        (NOW - timedelta(days=2), BEFORE_BASELINE),
        (NOW - timedelta(seconds=1), BEFORE_BASELINE),
        (NOW, "raw"),  # the baseline's own second is new
        (NOW + timedelta(days=1), "raw"),
    ],
)
def test_mail_older_than_the_cutoff_is_skipped_after_its_header(date, expected) -> None:
    folder = Folder({1: 10}, {1: date})
    outcomes = run([1], normal, folder, before=NOW)
    assert summary(outcomes) == {1: expected}
    if expected == BEFORE_BASELINE:
        assert outcomes[0].header == head(1)  # the header is fetched (its Message-ID)
        assert folder.log == ["FetchMeta", "FetchBodies"]


def test_an_old_message_over_the_limit_is_before_baseline_not_truncated() -> None:
    folder = Folder({1: LIMIT * 5}, {1: NOW - timedelta(days=3)})
    assert summary(run([1], normal, folder, before=NOW)) == {1: BEFORE_BASELINE}


def test_known_sizes_spare_the_size_fetch() -> None:
    folder = Folder({1: 10, 2: 10, 3: 10})
    known = {1: folder.meta(1), 2: folder.meta(2)}
    outcomes = run([1, 2, 3], normal, folder, known=known)
    assert summary(outcomes) == {1: "raw", 2: "raw", 3: "raw"}
    assert folder.log == ["FetchMeta", "FetchBodies"]
    all_known = Folder({1: 10})
    run([1], normal, all_known, known={1: all_known.meta(1)})
    assert all_known.log == ["FetchBodies"]


def test_a_flags_update_does_not_replace_a_size_already_known() -> None:
    machine = BatchFetch([1], max_size=LIMIT)
    request = next(machine.requests())
    assert request == FetchMeta((1,))
    machine.meta_answered(request, [Fetch(1, 1, 500, NOW), Fetch(1, 1, flags=("\\Seen",))])
    assert machine.meta[1].size == 500
    machine = BatchFetch([1], max_size=LIMIT)
    request = next(machine.requests())
    machine.meta_answered(request, [Fetch(1, 1, flags=("\\Seen",)), Fetch(1, 1, 500, NOW)])
    assert machine.meta[1].size == 500


def test_bodies_are_fetched_in_chunks_of_at_most_the_byte_limit() -> None:
    machine = BatchFetch([1, 2, 3, 4, 5], max_size=LIMIT, chunk_bytes=25)
    folder = Folder({uid: 10 for uid in range(1, 6)})
    asked = []
    for request in machine.requests():
        if isinstance(request, FetchMeta):
            machine.meta_answered(request, normal(folder, request))
        else:
            asked.append((request.uids, request.section))
            machine.bodies_answered(request, normal(folder, request), None)
    assert asked == [((1, 2), WHOLE), ((3, 4), WHOLE), ((5,), WHOLE)]
    assert summary(machine.outcomes()) == {uid: "raw" for uid in range(1, 6)}


def test_whole_bodies_go_first_then_headers() -> None:
    machine = BatchFetch([1, 2, 3], max_size=LIMIT, before=NOW)
    folder = Folder({1: LIMIT + 1, 2: 10, 3: 10}, {3: NOW - timedelta(days=1)})
    asked = []
    for request in machine.requests():
        if isinstance(request, FetchBodies):
            asked.append((request.uids, request.section, request.items))
            machine.bodies_answered(request, normal(folder, request), None)
        else:
            machine.meta_answered(request, normal(folder, request))
    assert asked == [
        ((2,), WHOLE, "(UID BODY.PEEK[])"),
        ((1, 3), HEADER, "(UID BODY.PEEK[HEADER])"),
    ]
    assert summary(machine.outcomes()) == {1: "header", 2: "raw", 3: BEFORE_BASELINE}


def test_the_presence_check_searches_exactly_the_missing_uids() -> None:
    folder = Folder({u: 10 for u in range(1, 5)})
    machine = BatchFetch([1, 2, 3, 4], max_size=LIMIT)
    checks = []
    for request in machine.requests():
        if isinstance(request, CheckPresent):
            checks.append(request.criteria)
            machine.present(request, [2])
        elif isinstance(request, FetchMeta):
            machine.meta_answered(request, normal(folder, request))
        else:
            machine.bodies_answered(request, leave_out(2)(folder, request)[:1], None)
    assert checks[0] == "UID 2,3,4"
    assert summary(machine.outcomes())[3] == EXPUNGED


@pytest.mark.parametrize(
    ("sizes", "limit", "chunks"),
    [
        ([], 10, []),
        ([5], 10, [[5]]),
        ([5, 5], 10, [[5, 5]]),
        ([5, 6], 10, [[5], [6]]),
        ([20, 1], 10, [[20], [1]]),  # bigger than the limit: a chunk of its own
        ([1, 20, 1], 10, [[1], [20], [1]]),
        ([None, None, 10], 10, [[None, None, 10]]),  # unknown size counts 0
    ],
)
def test_chunks_by_size(sizes, limit, chunks) -> None:
    pairs = list(enumerate(sizes, 1))
    got = [[dict(pairs)[uid] for uid in chunk] for chunk in chunks_by_size(pairs, limit)]
    assert got == chunks


# --- a one-trip catch-up: sizes, dates and the first LIMIT + 1 octets in one FETCH ------


def one_trip(folder: Folder, uid: int, content: bytes | None = None, **more) -> Fetch:
    """The answer to one_trip_items(LIMIT) for ``uid``: its size, date and partial body."""
    content = body(uid) if content is None else content
    part = None if content == b"NIL" else content[: LIMIT + 1]
    m = folder.meta(uid)
    return Fetch(uid, uid, m.size, m.internal_date, attributes={"BODY[]<0>": part}, **more)


def test_the_one_trip_fetch_asks_for_one_octet_over_the_limit() -> None:
    assert one_trip_items(LIMIT) == "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[]<0.1001>)"
    assert one_trip_items(LIMIT, "FLAGS MODSEQ") == (
        "(UID RFC822.SIZE INTERNALDATE FLAGS MODSEQ BODY.PEEK[]<0.1001>)"
    )


@pytest.mark.parametrize(
    ("max_size", "count"),
    [(1024, 8), (1024 * 1024, 7), (4 * 1024 * 1024, 1), (25 * 1024 * 1024, 1)],
)
def test_a_one_trip_brings_at_most_a_chunk_of_bodies(max_size, count) -> None:
    assert one_trip_count(max_size, chunk_bytes=8 * 1024 * 1024) == count


@pytest.mark.parametrize(
    ("name", "sizes", "contents", "expected", "requests"),
    [
        ("whole within the limit: nothing more", {1: 10, 2: 10}, {}, {1: "raw", 2: "raw"}, []),
        (
            "over the limit: cut, then its header as today",
            {1: 10, 2: LIMIT + 5},
            {2: b"x" * (LIMIT + 5)},
            {1: "raw", 2: "header"},
            ["FetchBodies"],
        ),
        (
            "a size understated: more octets than the limit came, fetched whole again",
            {1: 10},
            {1: b"y" * (LIMIT + 1)},
            {1: "raw"},
            ["FetchBodies"],
        ),
        (
            "a NIL body (expunged meanwhile): fetched again, then found gone",
            {1: 10, 2: 10},
            {2: b"NIL"},
            {1: "raw", 2: EXPUNGED},
            ["FetchBodies", "CheckPresent"],
        ),
    ],
)
def test_bodies_that_came_with_the_sizes_are_taken_when_whole(
    name, sizes, contents, expected, requests
) -> None:
    folder = Folder(dict(sizes))
    known = {uid: one_trip(folder, uid, contents.get(uid)) for uid in sizes}
    if contents.get(2) == b"NIL":
        del folder.sizes[2]  # gone from the folder: the body FETCH leaves it out
    outcomes = run(sorted(sizes), normal, folder, known=known, known_at=77.0)
    assert summary(outcomes) == expected
    assert folder.log == requests
    early = [o for o in outcomes if o.raw is not None and "FetchBodies" not in requests]
    assert all((o.raw, o.seen_at) == (body(o.uid), 77.0) for o in early)
    if name.startswith("over"):
        assert outcomes[1].header == head(2)


def test_a_body_that_came_early_keeps_its_flags_when_asked_for() -> None:
    folder = Folder({1: 10})
    known = {1: one_trip(folder, 1, flags=("\\Seen",), modseq=9)}
    [outcome] = run([1], normal, folder, known=known, extra="FLAGS MODSEQ")
    assert (outcome.raw, outcome.flags, outcome.modseq) == (body(1), ("\\Seen",), 9)
    [outcome] = run([1], normal, Folder({1: 10}), known=known)
    assert (outcome.raw, outcome.flags) == (body(1), None)


def test_an_early_body_older_than_the_cutoff_is_before_baseline_after_its_header() -> None:
    folder = Folder({1: 10}, {1: NOW - timedelta(days=2)})
    outcomes = run([1], normal, folder, known={1: one_trip(folder, 1)}, before=NOW)
    assert summary(outcomes) == {1: BEFORE_BASELINE}
    assert folder.log == ["FetchBodies"]
