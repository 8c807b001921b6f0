"""The persist rules (sync/persist.py) without a database: each row of CASES is a group of
batches, what the database already holds, and the plan the rules make of them (rows,
deliveries, tracers, checkpoints, results)."""

from __future__ import annotations

import ast
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

import superimap.sync
from superimap.sync.backfill import BackfillStep
from superimap.sync.envelope import sha1_of
from superimap.sync.filters import parse_filters
from superimap.sync.persist import (
    NO_WEBHOOK,
    FetchedMessage,
    Owner,
    PersistJob,
    Plan,
    Recorded,
    digest,
    identity_of,
    plan_group,
    prepare,
)

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
REQUESTED = datetime(2026, 2, 1, tzinfo=UTC)
LATER = datetime(2026, 1, 3, 3, 4, 5, tzinfo=UTC)
DATE = "Fri, 02 Jan 2026 03:04:05 +0000"


def mail(subject: str, message_id: str | None = "<m@t>", body: str = "body") -> bytes:
    head = [f"Subject: {subject}", "From: a@x.test", "To: b@x.test", f"Date: {DATE}"]
    if message_id is not None:
        head.append(f"Message-ID: {message_id}")
    return ("\r\n".join(head) + "\r\n\r\n" + body + "\r\n").encode()


def whole(uid: int, raw: bytes, when: datetime | None = WHEN) -> FetchedMessage:
    return FetchedMessage(uid=uid, size=len(raw), internal_date=when, raw=raw)


def header_only(uid: int, raw: bytes, skip: str = "") -> FetchedMessage:
    head = raw[: raw.index(b"\r\n\r\n") + 4]
    return FetchedMessage(
        uid=uid, size=len(raw), internal_date=WHEN, raw=None, header=head, skip=skip
    )


def gone(uid: int, reason: str = "expunged") -> FetchedMessage:
    return FetchedMessage(uid=uid, size=0, internal_date=None, raw=None, skip=reason)


def nothing(uid: int) -> FetchedMessage:
    """The server answered without the message (and the session named no reason)."""
    return FetchedMessage(uid=uid, size=10, internal_date=None, raw=None)


OWNER = Owner(
    id=1,
    tag="u",
    enable_tracer=False,
    checkpoint_folder="INBOX",
    uid_validity=9,
    last_uid=0,
    provider_code="PLAIN",
    partner_id=7,
    has_url=True,
    include_rfc822=True,
    include_parsed=False,
)


def job(
    *messages: FetchedMessage,
    user: int = 1,
    folder="INBOX",
    uidv=9,
    backfill=False,
    step: BackfillStep | None = None,
):
    """``backfill``: a backfill step over the messages (a sweep is a backfill of all mail)."""
    if backfill:
        step = BackfillStep(REQUESTED, max(m.uid for m in messages), len(messages))
    return PersistJob(user, "n1", uidv, folder, list(messages), step)


ONE = mail("one", "<one@t>")
TWIN = ONE.replace(b"body", b"BODY")  # same Message-ID, size and Date: the same message
LONGER = mail("one", "<one@t>", "a longer body")  # same Message-ID, another size
TRACER = mail("TRACER: tr-1", "<tr@t>")
NO_ID = mail("no id \x00 nul", None)
LONG_SUBJECT = mail("s" * 1200, "<long@t>")


def run(
    jobs: list[PersistJob], owners: list[Owner] | None = None, recorded: Recorded | None = None
) -> Plan:
    users = {owner.id: owner for owner in owners or [OWNER]}
    return plan_group([prepare(j) for j in jobs], users, recorded or Recorded())


def summary(plan: Plan) -> dict:
    return {
        "results": [
            (r.new, dict(r.skips), r.duplicates, r.tracers, r.truncated) for r in plan.results
        ],
        "rows": [(r.user_id, r.folder, r.uid, r.skipped_reason) for r in plan.log_rows],
        "deliveries": [
            (d.owner.id, d.digest.message.uid, d.status, d.truncated) for d in plan.deliveries
        ],
        "tracers": plan.tracers,
        "checkpoints": [
            (c.user_id, c.uid_validity, c.last_uid, c.last_internal_date, c.mail_arrived)
            for c in plan.checkpoints
        ],
        "folders": [
            (m.user_id, m.folder, m.uid_validity, m.last_uid, m.insert) for m in plan.folder_moves
        ],
        "replaced": [(r.user_id, r.folder, r.uid_validity, r.uid) for r in plan.replaced],
        "backfills": [(user, step.position, step.count) for user, step in plan.backfills],
        "lanes": [d.backfill for d in plan.deliveries],
    }


def delivered(*keys: tuple) -> Recorded:
    """Rows of user 1: (folder, uid_validity, uid, reason)."""
    return Recorded(rows={(1, f, v, u): reason for f, v, u, reason in keys})


def known(raw: bytes) -> Recorded:
    """A delivered row of user 1 with the sha1 of ``raw``."""
    return Recorded(sha1s={1: {sha1_of(raw)}}, identities={1: set()})


def known_identity(raw: bytes) -> Recorded:
    return Recorded(sha1s={1: set()}, identities={1: {digest(whole(1, raw)).identity}})


NEW = (1, {}, 0, 0, 0)
SHOP = mail("invoice 12", "<shop@t>").replace(b"From: a@x.test", b"From: Bill <bill@Shop.test>")
# Only mail from shop.test is delivered (a filter list selects what is sent).
SHOP_ONLY = replace(OWNER, filters=parse_filters([{"name": "shop", "from": "@shop.test"}]))
WORK_ONLY = replace(OWNER, filters=parse_filters([{"name": "work", "folder": "Work"}]))
FILTERED_ONE = (0, {"filtered": 1}, 0, 0, 0)
CP = (1, 9, 1, WHEN, True)  # user 1's checkpoint after a new message with UID 1

# (id, jobs, owners (None: OWNER), recorded (None: nothing), expected summary keys)
CASES = [
    (
        "new mail: a row, a pending delivery, the checkpoint and last_email_at",
        [job(whole(1, ONE))],
        None,
        None,
        {
            "results": [NEW],
            "rows": [(1, "INBOX", 1, "")],
            "deliveries": [(1, 1, "pending", False)],
            "checkpoints": [CP],
            "folders": [],
            "tracers": [],
        },
    ),
    (
        "a partner without a new_mail URL: the delivery is recorded skipped",
        [job(whole(1, ONE))],
        [replace(OWNER, has_url=False)],
        None,
        {"results": [NEW], "deliveries": [(1, 1, "skipped", False)]},
    ),
    (
        "an exact copy in the same batch is a duplicate, in UID order",
        [job(whole(3, ONE), whole(2, ONE))],
        None,
        None,
        {
            "results": [(1, {"duplicate": 1}, 1, 0, 0)],
            "rows": [(1, "INBOX", 2, ""), (1, "INBOX", 3, "duplicate")],
            "deliveries": [(1, 2, "pending", False)],
            "checkpoints": [(1, 9, 3, WHEN, True)],
        },
    ),
    (
        "same Message-ID, size and Date is the same message; another size is not",
        [job(whole(1, ONE), whole(2, TWIN), whole(3, LONGER))],
        None,
        None,
        {
            "results": [(2, {"duplicate": 1}, 1, 0, 0)],
            "rows": [(1, "INBOX", 1, ""), (1, "INBOX", 2, "duplicate"), (1, "INBOX", 3, "")],
        },
    ),
    (
        "a sha1 delivered before is a duplicate",
        [job(whole(5, ONE))],
        None,
        known(ONE),
        {"results": [(0, {"duplicate": 1}, 1, 0, 0)], "deliveries": []},
    ),
    (
        "an identity delivered before (another UID space, another sha1) is a duplicate",
        [job(whole(5, TWIN))],
        None,
        known_identity(ONE),
        {"results": [(0, {"duplicate": 1}, 1, 0, 0)], "rows": [(1, "INBOX", 5, "duplicate")]},
    ),
    (
        "a re-fetch after a crash leaves the recorded UID alone; the checkpoint still moves",
        [job(whole(1, ONE), gone(2))],
        None,
        delivered(("INBOX", 9, 1, ""), ("INBOX", 9, 2, "expunged")),
        {"results": [(0, {}, 0, 0, 0)], "rows": [], "checkpoints": [(1, 9, 2, None, False)]},
    ),
    (
        "a row from before folders were recorded (folder '') counts for the primary folder",
        [job(whole(2, ONE))],
        None,
        delivered(("", 9, 2, "")),
        {"results": [(0, {}, 0, 0, 0)], "rows": [], "deliveries": []},
    ),
    (
        "a row of another UID space or folder is another message",
        [job(whole(2, ONE))],
        None,
        delivered(("INBOX", 8, 2, ""), ("Spam", 9, 2, "")),
        {"results": [NEW], "rows": [(1, "INBOX", 2, "")]},
    ),
    (
        "skips the session decided, and a message the server did not return",
        [job(gone(1), gone(2, "before_baseline"), nothing(3))],
        None,
        None,
        {
            "results": [(0, {"expunged": 1, "before_baseline": 1, "unfetchable": 1}, 0, 0, 0)],
            "rows": [
                (1, "INBOX", 1, "expunged"),
                (1, "INBOX", 2, "before_baseline"),
                (1, "INBOX", 3, "unfetchable"),
            ],
            "deliveries": [],
            "checkpoints": [(1, 9, 3, None, False)],
        },
    ),
    (
        "a skipped message is no dedup reference",
        [job(header_only(1, ONE, skip="before_baseline"), whole(2, ONE))],
        None,
        None,
        {
            "results": [(1, {"before_baseline": 1}, 0, 0, 0)],
            "deliveries": [(1, 2, "pending", False)],
        },
    ),
    (
        "a tracer of a user with tracers on: recorded, detected, not delivered",
        [job(whole(1, TRACER), whole(2, TRACER))],
        [replace(OWNER, enable_tracer=True)],
        None,
        {
            "results": [(0, {"tracer": 1, "duplicate": 1}, 1, 1, 0)],
            "rows": [(1, "INBOX", 1, "tracer"), (1, "INBOX", 2, "duplicate")],
            "tracers": ["tr-1"],
            "deliveries": [],
            "checkpoints": [(1, 9, 2, WHEN, False)],
        },
    ),
    (
        "a tracer subject of a user with tracers off is mail",
        [job(whole(1, TRACER))],
        None,
        None,
        {"results": [NEW], "tracers": [], "deliveries": [(1, 1, "pending", False)]},
    ),
    (
        "only the header was fetched (over MAX_EMAIL_SIZE): delivered truncated",
        [job(header_only(7, ONE))],
        None,
        None,
        {
            "results": [(1, {}, 0, 0, 1)],
            "rows": [(1, "INBOX", 7, "")],
            "deliveries": [(1, 7, "pending", True)],
        },
    ),
    (
        "a backfill replaces a before_baseline row with what the message is now",
        [job(whole(3, ONE), backfill=True)],
        None,
        delivered(("INBOX", 9, 3, "before_baseline")),
        {
            "results": [NEW],
            "replaced": [(1, "INBOX", 9, 3)],
            "rows": [(1, "INBOX", 3, "")],
            "deliveries": [(1, 3, "pending", False)],
        },
    ),
    (
        "a backfill replaces a before_baseline row from before folders were recorded",
        [job(whole(3, ONE), backfill=True)],
        None,
        delivered(("", 9, 3, "before_baseline")),
        {"results": [NEW], "replaced": [(1, "INBOX", 9, 3)], "rows": [(1, "INBOX", 3, "")]},
    ),
    (
        "a backfill leaves other rows alone, and a message still skipped",
        [job(whole(1, ONE), gone(2, "before_baseline"), backfill=True)],
        None,
        delivered(("INBOX", 9, 1, "expunged"), ("INBOX", 9, 2, "before_baseline")),
        {"results": [(0, {}, 0, 0, 0)], "replaced": [], "rows": []},
    ),
    (
        "without a backfill a before_baseline row stays",
        [job(whole(3, ONE))],
        None,
        delivered(("INBOX", 9, 3, "before_baseline")),
        {"results": [(0, {}, 0, 0, 0)], "replaced": [], "rows": []},
    ),
    (
        "a backfilled message that was delivered meanwhile is a duplicate",
        [job(whole(3, ONE), backfill=True)],
        None,
        Recorded(
            rows={(1, "INBOX", 9, 3): "before_baseline"},
            sha1s={1: {sha1_of(ONE)}},
            identities={1: set()},
        ),
        {"results": [(0, {"duplicate": 1}, 1, 0, 0)], "replaced": [(1, "INBOX", 9, 3)]},
    ),
    (
        "the checkpoint never goes back within one UID space",
        [job(whole(3, ONE, None))],
        [replace(OWNER, last_uid=50)],
        None,
        {"checkpoints": [(1, 9, 50, None, True)]},
    ),
    (
        "after a UIDVALIDITY change the old last_uid means nothing",
        [job(whole(3, ONE), uidv=10)],
        [replace(OWNER, last_uid=50)],
        None,
        {"checkpoints": [(1, 10, 3, WHEN, True)], "rows": [(1, "INBOX", 3, "")]},
    ),
    (
        "a secondary folder's first batch creates its checkpoint; mail moves last_email_at",
        [job(whole(9, ONE), folder="Spam", uidv=4)],
        None,
        None,
        {
            "rows": [(1, "Spam", 9, "")],
            "folders": [(1, "Spam", 4, 9, True)],
            "checkpoints": [(1, None, None, None, True)],
        },
    ),
    (
        "a secondary folder's checkpoint moves on, never back, and restarts in a new UID space",
        [
            job(whole(5, ONE), folder="Spam", uidv=4),
            job(whole(2, TRACER), folder="Archive", uidv=3),
        ],
        None,
        Recorded(folders={(1, "Spam"): (4, 7), (1, "Archive"): (2, 40)}),
        {
            "folders": [(1, "Spam", 4, 7, False), (1, "Archive", 3, 2, False)],
            "checkpoints": [(1, None, None, None, True), (1, None, None, None, True)],
        },
    ),
    (
        "a secondary folder's batch of skips moves its checkpoint only",
        [job(gone(4), folder="Spam", uidv=4)],
        None,
        None,
        {"folders": [(1, "Spam", 4, 4, True)], "checkpoints": [], "deliveries": []},
    ),
    (
        "two batches of one user in one group: the second sees the first's rows",
        [job(whole(2, mail("two", "<two@t>")), whole(1, ONE)), job(whole(4, ONE, LATER))],
        None,
        None,
        {
            "results": [(2, {}, 0, 0, 0), (0, {"duplicate": 1}, 1, 0, 0)],
            "checkpoints": [(1, 9, 2, WHEN, True), (1, 9, 4, LATER, False)],
        },
    ),
    (
        "two batches of one secondary folder in one group: one INSERT, then an UPDATE",
        [
            job(whole(1, ONE), folder="Spam", uidv=4),
            job(whole(2, mail("two", "<two@t>")), folder="Spam", uidv=4),
        ],
        None,
        None,
        {"folders": [(1, "Spam", 4, 1, True), (1, "Spam", 4, 2, False)]},
    ),
    (
        "users of one group dedup against their own rows only",
        [job(whole(1, ONE)), job(whole(1, ONE), user=2)],
        [OWNER, replace(OWNER, id=2, has_url=False)],
        None,
        {
            "results": [NEW, NEW],
            "deliveries": [(1, 1, "pending", False), (2, 1, "skipped", False)],
        },
    ),
    (
        "filters: mail no filter selects is recorded filtered, the rest delivered",
        [job(whole(1, ONE), whole(2, SHOP))],
        [SHOP_ONLY],
        None,
        {
            "results": [(1, {"filtered": 1}, 0, 0, 0)],
            "rows": [(1, "INBOX", 1, "filtered"), (1, "INBOX", 2, "")],
            "deliveries": [(1, 2, "pending", False)],
            "checkpoints": [(1, 9, 2, WHEN, True)],
        },
    ),
    (
        "filters: a batch all filtered moves the checkpoint, no mail arrived",
        [job(whole(1, ONE), whole(2, mail("two", "<two@t>")))],
        [SHOP_ONLY],
        None,
        {
            "results": [(0, {"filtered": 2}, 0, 0, 0)],
            "deliveries": [],
            "checkpoints": [(1, 9, 2, WHEN, False)],
        },
    ),
    (
        "filters: a filtered message does not count for dedup (selected in another folder)",
        [job(whole(1, ONE)), job(whole(1, ONE), folder="Work", uidv=4)],
        [WORK_ONLY],
        None,
        {
            "results": [FILTERED_ONE, NEW],
            "rows": [(1, "INBOX", 1, "filtered"), (1, "Work", 1, "")],
            "deliveries": [(1, 1, "pending", False)],
        },
    ),
    (
        "filters: a copy of delivered mail is a duplicate before any filter is asked",
        [job(whole(1, ONE))],
        [SHOP_ONLY],
        known(ONE),
        {"results": [(0, {"duplicate": 1}, 1, 0, 0)], "deliveries": []},
    ),
    (
        "filters: a tracer is detected whatever the filters say",
        [job(whole(1, TRACER))],
        [replace(SHOP_ONLY, enable_tracer=True)],
        None,
        {"results": [(0, {"tracer": 1}, 0, 1, 0)], "tracers": ["tr-1"]},
    ),
    (
        "filters: a session's skip stays that skip",
        [job(gone(1), whole(2, SHOP))],
        [SHOP_ONLY],
        None,
        {"results": [(1, {"expunged": 1}, 0, 0, 0)], "deliveries": [(1, 2, "pending", False)]},
    ),
    (
        "filters: header-only mail is judged by its header (delivered truncated)",
        [job(header_only(1, SHOP), header_only(2, ONE))],
        [SHOP_ONLY],
        None,
        {
            "results": [(1, {"filtered": 1}, 0, 0, 1)],
            "deliveries": [(1, 1, "pending", True)],
        },
    ),
    (
        "filters: the user's empty list (set) delivers everything",
        [job(whole(1, ONE))],
        [replace(OWNER, filters=())],
        None,
        {"results": [NEW]},
    ),
    (
        "a backfill step moves its position and done count, never the checkpoint",
        [job(whole(3, ONE), whole(5, mail("two", "<two@t>")), backfill=True)],
        [replace(OWNER, last_uid=50)],
        None,
        {
            "results": [(2, {}, 0, 0, 0)],
            "checkpoints": [],
            "backfills": [(1, 5, 2)],
            "lanes": [True, True],
        },
    ),
    (
        "a backfill step of UIDs all recorded before moves its position alone",
        [job(step=BackfillStep(REQUESTED, 8, 4))],
        None,
        None,
        {"results": [(0, {}, 0, 0, 0)], "rows": [], "backfills": [(1, 8, 4)], "checkpoints": []},
    ),
    (
        "filters apply to backfilled mail: a filtered skip, counted in the step",
        [job(whole(1, ONE), whole(2, SHOP), backfill=True)],
        [SHOP_ONLY],
        None,
        {
            "rows": [(1, "INBOX", 1, "filtered"), (1, "INBOX", 2, "")],
            "lanes": [True],
            "backfills": [(1, 2, 2)],
        },
    ),
    (
        "live mail is not in the backfill lane",
        [job(whole(1, ONE))],
        None,
        None,
        {"lanes": [False], "backfills": []},
    ),
    (
        "an empty batch plans nothing",
        [job()],
        None,
        None,
        {"results": [(0, {}, 0, 0, 0)], "rows": [], "checkpoints": [], "folders": []},
    ),
]


@pytest.mark.parametrize(
    ("jobs", "owners", "recorded", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_plan(jobs, owners, recorded, expected):
    got = summary(run(jobs, owners, recorded))
    assert {key: got[key] for key in expected} == expected


def test_a_log_row_holds_what_the_partner_and_operator_see():
    plan = run([job(whole(1, NO_ID), whole(2, LONG_SUBJECT))])
    no_id, long = plan.log_rows
    assert no_id.subject == "no id \ufffd nul"  # PostgreSQL text holds no NUL
    assert no_id.message_id == ""  # the row keeps what the message says ...
    # ... the delivery a stand-in made of the sha1 (the partner's dedup key needs one).
    stand_in = f"<{sha1_of(NO_ID)}@no-message-id.superimap>"
    assert plan.deliveries[0].digest.message_id == stand_in
    assert plan.deliveries[0].digest.identity == identity_of(stand_in, len(NO_ID), DATE)
    assert len(long.subject) == 998 and long.message_id == "<long@t>"
    assert (no_id.sha1, no_id.size, no_id.internal_date) == (sha1_of(NO_ID), len(NO_ID), WHEN)


def test_a_long_folder_name_is_cut_to_the_column():
    plan = run([job(whole(1, ONE), folder="F" * 300, uidv=4)])
    assert len(plan.log_rows[0].folder) == 255
    assert plan.folder_moves[0].folder == "F" * 300  # FolderCheckpoint holds 1,000


def test_a_skip_is_reported_for_the_operators_log():
    plan = run([job(whole(1, ONE), whole(2, ONE), gone(3))])
    assert plan.results[0].skipped_rows == [
        (2, "duplicate", "<one@t>", len(ONE)),
        (3, "expunged", "", 0),
    ]
    assert plan.results[0].skipped == 2


def test_the_push_moment_of_each_new_mail_is_kept():
    seen = WHEN.timestamp() + 0.25
    pushed = replace(whole(1, ONE), seen_at=seen)
    found = whole(2, mail("two", "<two@t>"))  # on a catch-up: its INTERNALDATE
    undated = whole(3, mail("three", "<three@t>"), None)
    assert run([job(pushed, found, undated)]).results[0].pushed_at == [seen, WHEN.timestamp()]


def test_backfilled_mail_has_no_push_moment():
    """Its INTERNALDATE is days old: the push -> commit latency counts live mail only."""
    assert run([job(whole(1, ONE), backfill=True)]).results[0].pushed_at == []


def test_a_delivery_without_a_url_says_why():
    plan = run([job(whole(1, ONE))], [replace(OWNER, has_url=False)])
    assert plan.deliveries[0].last_error == NO_WEBHOOK
    assert run([job(whole(1, ONE))]).deliveries[0].last_error == ""


def test_the_rows_recorded_grow_with_the_plan():
    recorded = Recorded()
    run([job(whole(1, ONE), gone(2))], recorded=recorded)
    assert recorded.rows == {(1, "INBOX", 9, 1): "", (1, "INBOX", 9, 2): "expunged"}
    assert recorded.sha1s[1] == {sha1_of(ONE)}


def test_a_filtered_row_names_the_filters_and_a_selected_one_its_filter():
    owner = replace(
        OWNER,
        filters=parse_filters(
            [{"name": "shop", "from": "@shop.test"}, {"name": "big", "min_size": 10**6}]
        ),
    )
    plan = run([job(whole(1, ONE), whole(2, SHOP))], [owner])
    assert [(r.skipped_reason, r.detail) for r in plan.log_rows] == [
        ("filtered", "no filter matched (shop, big)"),
        ("", "filter shop"),
    ]
    assert plan.results[0].skipped_rows == [(1, "filtered", "<one@t>", len(ONE))]
    assert [r.detail for r in run([job(whole(1, ONE))]).log_rows] == [""]  # no filters


@pytest.mark.parametrize("module", ["persist.py", "envelope.py", "filters.py"])
def test_the_rules_import_no_io_and_nothing_above_sync(module):
    path = Path(superimap.sync.__file__).parent / module
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module)
    outside = {name for name in roots if name.split(".")[0] not in sys.stdlib_module_names}
    assert not roots & {"asyncio", "socket", "ssl", "threading", "select"}
    assert {name for name in outside if not name.startswith("superimap.sync.")} == set()
