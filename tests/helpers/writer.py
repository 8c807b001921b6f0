"""One group of persist jobs covering every shape a batch can have, written twice by the
writer (engine/writer.py): as one group, and job by job in savepoints (the fallback of
engine/persister.py), so the group's plan must equal the plans of its jobs one after the
other. ``compare()`` returns both outcomes, normalized; they must be equal. Used on SQLite
in-process by tests/engine/test_writer.py and on PostgreSQL through ``superimap manage shell``."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

from django.db import transaction

from devtools.testing.mail import make_message
from superimap.delivery.models import Delivery
from superimap.engine import writer
from superimap.engine.persister import persist_one_by_one
from superimap.mailboxes.models import FolderCheckpoint, MailboxUser, MailLog
from superimap.partners.models import Connection, ImapProvider, Partner
from superimap.sync.backfill import BackfillStep
from superimap.sync.envelope import envelope, parse_headers
from superimap.sync.persist import FetchedMessage, PersistJob, identity_of
from superimap.tracers.models import TracerLog

NODE = "n1"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = datetime(2026, 1, 3, 3, 4, 5, tzinfo=UTC)


def _raw(subject: str, message_id: str | None, body: str = "body") -> bytes:
    # A fixed Date: the two writers' copies are built moments apart and must be the same
    # bytes (a second boundary between them changed the sha1 and failed the comparison).
    return make_message(subject, "a@x.test", "b@x.test", body, message_id, date=WHEN)


def _whole(uid: int, raw: bytes, when: datetime | None = WHEN) -> FetchedMessage:
    return FetchedMessage(uid=uid, size=len(raw), internal_date=when, raw=raw)


def _users(label: str) -> dict[str, MailboxUser]:
    """Nine users of one partner (and one of a partner without a webhook URL)."""
    provider = ImapProvider.objects.get(code="LOOPBACK_PLAIN")
    partner = Partner.objects.create(name=f"P{label}", new_mail_webhook="http://127.0.0.1:9/h")
    quiet = Partner.objects.create(name=f"Q{label}", include_parsed=True)
    connection = Connection.objects.create(
        partner=partner, provider=provider, imap_host="127.0.0.1", imap_port=1, imap_tls="none"
    )
    users = {
        tag: MailboxUser.objects.create(
            connection=connection,
            tag=tag,
            owner_node=NODE,
            connected_at=WHEN,
            uid_validity=9,
            last_uid=0,
            enable_tracer=tag == "c",
            # h: a backfill step moves this request's position and done count.
            backfill_requested_at=WHEN if tag == "h" else None,
        )
        for tag in "abcdefgh"
    }
    users["i"] = MailboxUser.objects.create(
        connection=Connection.objects.create(
            partner=quiet, provider=provider, imap_host="127.0.0.1", imap_port=1, imap_tls="none"
        ),
        tag="i",
        owner_node=NODE,
        connected_at=WHEN,
    )
    return users


def _jobs(users: dict[str, MailboxUser]) -> list[PersistJob]:
    """The group, and the rows that were there before it."""
    u = users
    first = _raw("one", "<one@t>")
    known = _raw("known", "<known@t>")
    # b: delivered before, in an older UID space (an identity match: same Message-ID, size
    # and Date, another sha1).
    MailLog.objects.create(
        user=u["b"],
        uid=1,
        uid_validity=8,
        folder="INBOX",
        message_id="<known@t>",
        sha1="0" * 40,
        identity=identity_of("<known@t>", len(known), _date(known)),
        size=1,
    )
    # b: uid 2 recorded already (a re-fetch after a crash) in a row from before folders.
    MailLog.objects.create(user=u["b"], uid=2, uid_validity=9, folder="", skipped_reason="")
    # e: a secondary folder with its checkpoint.
    FolderCheckpoint.objects.create(user=u["e"], folder="Spam", uid_validity=4, last_uid=7)
    # f: a UIDVALIDITY change (the old last_uid means nothing in the new UID space).
    MailboxUser.objects.filter(id=u["f"].id).update(last_uid=50)
    # g: this node lost it.
    MailboxUser.objects.filter(id=u["g"].id).update(owner_node="other")
    # h: a backfill over a before_baseline row.
    MailLog.objects.create(
        user=u["h"], uid=3, uid_validity=9, folder="INBOX", skipped_reason="before_baseline"
    )
    TracerLog.objects.get_or_create(tracer_uid="tr-1", defaults={"user": u["c"], "sent_at": WHEN})
    no_id = b"\r\n".join(
        line
        for line in _raw("no id \x00 nul", "<gone@t>", "caf bytes").split(b"\r\n")
        if not line.startswith(b"Message-ID")
    ).replace(b"caf", b"\xff\xfe caf")
    header = _raw("big", "<big@t>", "x" * 50)
    return [
        # a: two new, an exact copy of the first in the same batch, then a second batch of
        # the same user in the same group whose message copies the first again.
        PersistJob(
            u["a"].id,
            NODE,
            9,
            "INBOX",
            [_whole(2, _raw("two", "<two@t>")), _whole(1, first), _whole(3, first)],
            None,
        ),
        PersistJob(
            u["a"].id,
            NODE,
            9,
            "INBOX",
            [_whole(4, first, LATER), _whole(5, _raw("5", "<5@t>"))],
            None,
        ),
        # b: identity duplicate, a recorded UID, an expunged UID, an unfetchable UID.
        PersistJob(
            u["b"].id,
            NODE,
            9,
            "INBOX",
            [
                _whole(1, known),
                _whole(2, _raw("again", "<again@t>")),
                FetchedMessage(uid=3, size=0, internal_date=None, raw=None, skip="expunged"),
                FetchedMessage(uid=4, size=10, internal_date=None, raw=None),
                _whole(6, _raw("six", "<six@t>"), None),
            ],
            None,
        ),
        # c: a tracer and a truncated (header only) message.
        PersistJob(
            u["c"].id,
            NODE,
            9,
            "INBOX",
            [
                _whole(1, _raw("TRACER: tr-1", "<tr@t>")),
                FetchedMessage(
                    uid=2,
                    size=9_000_000,
                    internal_date=WHEN,
                    raw=None,
                    header=header.split(b"\r\n\r\n")[0] + b"\r\n\r\n",
                ),
            ],
            None,
        ),
        # d: no Message-ID, NUL in the subject, bytes that are not UTF-8.
        PersistJob(u["d"].id, NODE, 9, "INBOX", [_whole(8, no_id)]),
        # e: a secondary folder and the primary one in the same group; and a new folder.
        PersistJob(u["e"].id, NODE, 4, "Spam", [_whole(9, _raw("spam", "<spam@t>"))]),
        PersistJob(u["e"].id, NODE, 9, "INBOX", [_whole(2, _raw("inbox", "<inbox@t>"))]),
        PersistJob(u["e"].id, NODE, 3, "Archive", [_whole(1, _raw("arch", "<arch@t>"), None)]),
        PersistJob(u["f"].id, NODE, 10, "INBOX", [_whole(3, _raw("new space", "<ns@t>"))]),
        PersistJob(u["g"].id, NODE, 9, "INBOX", [_whole(1, _raw("lost", "<lost@t>"))]),
        PersistJob(
            u["h"].id,
            NODE,
            9,
            "INBOX",
            [_whole(3, _raw("swept", "<swept@t>"))],
            BackfillStep(WHEN, 3, 1),
        ),
        PersistJob(u["i"].id, NODE, 9, "INBOX", [_whole(1, _raw("quiet", "<quiet@t>"))]),
        PersistJob(u["i"].id, NODE, 9, "INBOX", []),
    ]


def _date(raw: bytes) -> str:
    return envelope(parse_headers(raw)).get("date")


def _state(users: dict[str, MailboxUser], outcomes: list) -> dict:
    ids = {user.id: tag for tag, user in users.items()}
    logs = sorted(
        (
            ids[row.user_id],
            row.uid_validity,
            row.folder,
            row.uid,
            row.message_id,
            row.sha1,
            row.identity,
            row.subject,
            str(row.internal_date),
            row.size,
            row.skipped_reason,
        )
        for row in MailLog.objects.filter(user_id__in=ids)
    )
    deliveries = sorted(
        (
            ids[d.user_id],
            d.kind,
            d.partner.name[0],
            d.message_id,
            d.dedup_key,
            repr(d.payload),
            d.status,
            d.attempts,
            d.max_attempts,
            d.claimed_by,
            d.last_error,
            d.lease_until,
            d.delivered_at,
            d.payload_purged_at,
            d.last_status_code,
            d.backfill,
        )
        for d in Delivery.objects.filter(user_id__in=ids).select_related("partner")
    )
    checkpoints = sorted(
        (
            ids[u.id],
            u.uid_validity,
            u.last_uid,
            str(u.last_internal_date),
            u.last_email_at is None,
            u.backfill_position,
            u.backfill_done,
        )
        for u in MailboxUser.objects.filter(id__in=ids)
    )
    folders = sorted(
        (ids[f.user_id], f.folder, f.uid_validity, f.last_uid, str(f.last_internal_date))
        for f in FolderCheckpoint.objects.filter(user_id__in=ids)
    )
    results = [
        type(o).__name__ if isinstance(o, Exception) else {**asdict(o), "skips": dict(o.skips)}
        for o in outcomes
    ]
    return {
        "maillog": logs,
        "deliveries": deliveries,
        "users": checkpoints,
        "folders": folders,
        "results": results,
    }


def compare() -> dict:
    """{"group": state, "one_by_one": state, "tracer_detected": bool}; the states are
    JSON-ready and must be equal."""
    fast_users = _users("1")
    jobs = _jobs(fast_users)
    with transaction.atomic():
        fast = writer.write_jobs(jobs)
    slow_users = _users("2")
    jobs = _jobs(slow_users)
    with transaction.atomic():
        slow = persist_one_by_one(jobs)
    detected = TracerLog.objects.get(tracer_uid="tr-1").detected_at is not None
    return {
        "group": _json(_state(fast_users, fast)),
        "one_by_one": _json(_state(slow_users, slow)),
        "tracer_detected": detected,
    }


def _json(value):
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def batch(user: MailboxUser, *uids: int) -> PersistJob:
    messages = []
    for uid in uids:
        raw = make_message(f"s{uid}", "a@x.test", "b@x.test", "body", f"<{user.tag}.{uid}@t>")
        messages.append(FetchedMessage(uid=uid, size=len(raw), internal_date=WHEN, raw=raw))
    return PersistJob(user.id, NODE, 9, "INBOX", messages)


def persist_args(job: PersistJob) -> tuple:
    """GroupPersister.persist's arguments for ``job``."""
    return (job.user_id, job.node_id, job.uid_validity, job.folder, job.messages, job.backfill)
