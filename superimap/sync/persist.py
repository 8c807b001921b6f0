"""The persist rules (design.md 4.3): what a batch of fetched messages becomes, planned
without I/O.

Every UID of a batch ends in exactly one state: a MailLog row plus a new_mail Delivery, or
a MailLog row with a skip reason. ``plan_group`` decides which, for a group of batches
(jobs) at once, from the messages and what the database already holds (``Recorded``, read
by the writer, engine/writer.py) about the users the jobs belong to (``Owner``, the fenced
user row). It returns a ``Plan``: the rows to insert, the rows a backfill replaces, the
tracers detected, the checkpoint and backfill moves, and each job's ``PersistResult``. The writer
executes the plan in one transaction; no rule lives there.

The rules, in the order they apply to each message (jobs in user id order, each job's
messages in UID order, so earlier rows of the group count for later ones):

1. a UID that already has a row in its folder (or in a row written before folders were
   recorded, folder "") is left alone (a re-fetch after a crash), except in a backfill
   (sync/backfill.py), where a row skipped as before_baseline is replaced by what the
   message is now;
2. a skip the session decided (expunged, before_baseline, ...) or a message without
   content is recorded as that skip (unfetchable when nothing says why);
3. a message with the sha1 or the identity (Message-ID, size, Date) of a delivered or
   tracer row of the same user is a duplicate;
4. a tracer (``TRACER: <uid>`` subject, the user has tracers on) is recorded as such and
   marks the TracerLog detected;
5. when the owner has filters (sync/filters.py: the user's, else the connection's), a
   message that matches none is recorded as ``filtered`` (detail: the filters it was held
   against); it does not count for dedup, so the same message in another folder a filter
   selects is still delivered;
6. anything else is new mail: a MailLog row and a Delivery (pending, or skipped when the
   partner has no new_mail URL), truncated when only the header was fetched; with filters,
   the row's detail names the filter that selected it; a backfill's is marked backfill;
7. the checkpoint moves to the batch's highest UID, never backwards within one UID space:
   the user row for the primary folder, a FolderCheckpoint for any other; a backfill's
   batch (mail under the checkpoint) moves its backfill position instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from typing import Any

from superimap.sync.backfill import BackfillStep
from superimap.sync.envelope import envelope, message_id_or_digest, parse_headers, sha1_of
from superimap.sync.filters import Facts, Filter, first_match, no_match_detail

log = logging.getLogger("superimap.engine")

# MailLog.Reason values (mailboxes/models.py; tests/engine/test_writer.py checks they agree).
DELIVERED = ""
DUPLICATE = "duplicate"
TRACER = "tracer"
UNFETCHABLE = "unfetchable"
BEFORE_BASELINE = "before_baseline"
FILTERED = "filtered"
# Rows a new message is compared with for dedup: mail that was delivered (or a tracer).
DEDUP_AGAINST = (DELIVERED, TRACER)
TRACER_SUBJECT = re.compile(r"^TRACER:\s*(\S+)\s*$")
# MailLog column lengths: longer values are cut.
TEXT_MAX = 998  # message_id, subject (RFC 5322's line length)
FOLDER_MAX = 255
DETAIL_MAX = 255
NO_WEBHOOK = "partner has no new_mail webhook URL"


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """What the session learnt about one UID of a batch. Exactly one of: ``raw`` (the
    whole message), ``header`` alone (over MAX_EMAIL_SIZE: sent truncated), or ``skip``
    (a MailLog.Reason the session decided: expunged, before_baseline, unfetchable)."""

    uid: int
    size: int
    internal_date: datetime | None
    raw: bytes | None  # None: not fetched (over MAX_EMAIL_SIZE, or skipped)
    header: bytes | None = None  # BODY[HEADER], when the whole message was not fetched
    skip: str = ""
    # When the session last saw EXISTS (time.time()), for the push -> commit latency.
    seen_at: float | None = None
    # FLAGS / MODSEQ fetched with the body when the partner wants change events (4.14).
    flags: tuple[str, ...] | None = None
    modseq: int | None = None

    def pushed_at(self) -> float | None:
        """The best estimate of when the server got this message: INTERNALDATE has whole
        seconds, so the EXISTS that announced it, if it came within that second (it does
        in IDLE); else (found on a catch-up, after an outage) INTERNALDATE itself."""
        if self.internal_date is None:
            return None
        stamp = self.internal_date.timestamp()
        if self.seen_at is not None and stamp <= self.seen_at < stamp + 1:
            return self.seen_at
        return stamp


@dataclass
class PersistResult:
    new: int = 0
    duplicates: int = 0
    skipped: int = 0  # all skips, duplicates and tracers included
    tracers: int = 0
    truncated: int = 0
    skips: Counter[str] = field(default_factory=Counter)  # reason -> count
    # (uid, reason, message_id, size) of each skip, logged once the batch committed.
    skipped_rows: list[tuple[int, str, str, int]] = field(default_factory=list)
    # When each new mail was pushed (FetchedMessage.pushed_at), for the push -> commit
    # latency (rollups.py).
    pushed_at: list[float] = field(default_factory=list)

    def log_skips(self, user_id: int | str, uid_validity: int, folder: str) -> None:
        """One INFO line per skip, for the operator (after the commit, so a rolled back
        batch that is fetched again does not log its skips twice)."""
        for uid, reason, message_id, size in self.skipped_rows:
            log.info(
                "mailbox %s: skipped uid %d (uidvalidity %d, %s) as %s: message_id=%s size=%d",
                user_id,
                uid,
                uid_validity,
                folder,
                reason,
                message_id or "-",
                size,
            )


@dataclass(frozen=True, slots=True)
class PersistJob:
    """One session's batch: its messages of one folder in one UID space. ``node_id`` is
    the node whose lease fences the write; a ``backfill`` step's rows are backfilled mail
    (it may replace before_baseline rows and moves the backfill, not the checkpoint)."""

    user_id: int
    node_id: str
    uid_validity: int
    folder: str
    messages: list[FetchedMessage]
    backfill: BackfillStep | None = None


@dataclass(frozen=True, slots=True)
class Owner:
    """The job's user as the fence read it, with what its rows and payloads need."""

    id: int
    tag: str
    enable_tracer: bool
    checkpoint_folder: str  # the primary folder: its checkpoint is in the user row
    uid_validity: int | None
    last_uid: int | None
    provider_code: str
    partner_id: int
    has_url: bool  # the partner has a new_mail webhook URL
    include_rfc822: bool
    include_parsed: bool
    # The filters in force (sync/filters.py effective()); (): everything is delivered.
    filters: tuple[Filter, ...] = ()
    # The partner's change URLs are set (design.md 4.14): which change events it gets.
    updated_url: bool = False
    deleted_url: bool = False

    @property
    def track_changes(self) -> bool:
        """The partner has a change URL: a delivered message's flags are recorded (4.14)."""
        return self.updated_url or self.deleted_url


@dataclass(frozen=True, slots=True)
class Digest:
    """One fetched message as the rules need it; ``content`` None: it is a skip."""

    message: FetchedMessage
    content: bytes | None
    env: dict[str, Any]  # sync/envelope.py envelope()
    sha1: str = ""
    identity: str = ""
    message_id: str = ""  # the Message-ID, or a stand-in made of the sha1
    size: int = 0
    headers: Message | None = None  # parsed once; filters read Delivered-To from it


@dataclass(frozen=True, slots=True)
class Prepared:
    """A job and the digests of its messages, in UID order."""

    job: PersistJob
    digests: list[Digest]


@dataclass
class Recorded:
    """What the database holds for the group (the writer's prefetch)."""

    # (user, folder, uid_validity, uid) -> skipped_reason of the rows the group's UIDs
    # have; folder "" for rows from before folders were recorded.
    rows: dict[tuple[int, str, int, int], str] = field(default_factory=dict)
    # user -> sha1s / identities of its delivered or tracer rows among the group's.
    sha1s: dict[int, set[str]] = field(default_factory=dict)
    identities: dict[int, set[str]] = field(default_factory=dict)
    # (user, folder) -> (uid_validity, last_uid) of the group's secondary folders' rows.
    folders: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LogRow:
    """A MailLog row."""

    user_id: int
    message_id: str
    sha1: str
    identity: str
    uid: int
    uid_validity: int
    folder: str
    subject: str
    internal_date: datetime | None
    size: int
    skipped_reason: str
    detail: str = ""  # filters: the filter that selected it, or those it matched none of


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A new_mail Delivery; the writer renders its payload (delivery/payloads.py)."""

    owner: Owner
    digest: Digest
    uid_validity: int
    folder: str
    truncated: bool  # only the header was fetched
    status: str  # "pending", or "skipped" when the partner has no new_mail URL
    last_error: str
    backfill: bool = False  # "backfill": true in the payload, the claim's backfill lane


@dataclass(frozen=True, slots=True)
class CheckpointMove:
    """The user row's UPDATE; a None leaves the column as it is."""

    user_id: int
    uid_validity: int | None
    last_uid: int | None
    last_internal_date: datetime | None
    mail_arrived: bool  # last_email_at = now


@dataclass(frozen=True, slots=True)
class FolderMove:
    """A secondary folder's FolderCheckpoint: INSERT (no row yet) or UPDATE (a None
    internal date leaves the column as it is)."""

    user_id: int
    folder: str
    uid_validity: int
    last_uid: int
    last_internal_date: datetime | None
    insert: bool


@dataclass(frozen=True, slots=True)
class Replaced:
    """Rows of a UID a backfill replaces (skipped as before_baseline)."""

    user_id: int
    folder: str
    uid_validity: int
    uid: int


@dataclass
class Plan:
    """What a group writes, in this order: delete ``replaced``, insert ``log_rows`` and
    ``deliveries``, mark ``tracers`` detected, apply ``folder_moves``, ``checkpoints`` and
    ``backfills`` (user id, step)."""

    results: list[PersistResult] = field(default_factory=list)  # one per job, in job order
    replaced: list[Replaced] = field(default_factory=list)
    log_rows: list[LogRow] = field(default_factory=list)
    deliveries: list[DeliveryRow] = field(default_factory=list)
    tracers: list[str] = field(default_factory=list)  # TracerLog.tracer_uid
    checkpoints: list[CheckpointMove] = field(default_factory=list)
    folder_moves: list[FolderMove] = field(default_factory=list)
    backfills: list[tuple[int, BackfillStep]] = field(default_factory=list)


def identity_of(message_id: str, size: int, date: str | None) -> str:
    """Dedup key: the same Message-ID, size and Date header mean the same message."""
    text = f"{message_id}\x00{size}\x00{(date or '').strip()}"
    return hashlib.sha1(text.encode("utf-8", errors="replace")).hexdigest()


def digest(message: FetchedMessage) -> Digest:
    content = message.raw if message.raw is not None else message.header
    if message.skip or content is None:
        env = envelope(parse_headers(content)) if content is not None else {}
        return Digest(message, None, env)
    sha1 = sha1_of(content)
    headers = parse_headers(content)
    env = envelope(headers)
    message_id = message_id_or_digest(env, sha1)
    size = message.size or len(content)
    identity = identity_of(message_id, size, env.get("date"))
    return Digest(message, content, env, sha1, identity, message_id, size, headers)


def prepare(job: PersistJob) -> Prepared:
    return Prepared(job, [digest(m) for m in sorted(job.messages, key=lambda m: m.uid)])


def plan_group(prepared: list[Prepared], owners: dict[int, Owner], recorded: Recorded) -> Plan:
    """The plan of ``prepared`` (jobs whose user is in ``owners``), in the order given
    (the writer sorts them by user id). ``recorded`` is updated with what the plan adds,
    and each Owner's checkpoint is followed in the plan, so jobs of one user in one group
    see each other as if committed one after the other."""
    plan = Plan()
    checkpoints = {uid: (o.uid_validity, o.last_uid) for uid, o in owners.items()}
    folders = dict(recorded.folders)
    for item in prepared:
        owner = owners[item.job.user_id]
        result = PersistResult()
        if item.digests:
            _plan_job(plan, owner, item, recorded, result)
        if item.job.backfill is not None:
            plan.backfills.append((owner.id, item.job.backfill))
        elif item.digests:
            _move_checkpoint(plan, owner, item, checkpoints, folders, bool(result.new))
        plan.results.append(result)
    return plan


def _plan_job(
    plan: Plan, owner: Owner, item: Prepared, recorded: Recorded, result: PersistResult
) -> None:
    job = item.job
    sha1s = recorded.sha1s.setdefault(owner.id, set())
    identities = recorded.identities.setdefault(owner.id, set())
    for d in item.digests:
        message = d.message
        key = (owner.id, job.folder, job.uid_validity, message.uid)
        legacy = (owner.id, "", job.uid_validity, message.uid)
        reason = recorded.rows.get(key, recorded.rows.get(legacy))
        if reason is not None:
            if not (job.backfill and reason == BEFORE_BASELINE and not message.skip):
                continue  # a row exists (a re-fetch after a crash): left alone
            plan.replaced.append(Replaced(owner.id, job.folder, job.uid_validity, message.uid))
            recorded.rows.pop(legacy, None)
        if d.content is None:
            _skip(plan, owner, job, d, message.skip or UNFETCHABLE, recorded, result)
            continue
        if d.sha1 in sha1s or d.identity in identities:
            result.duplicates += 1
            _skip(plan, owner, job, d, DUPLICATE, recorded, result)
            continue
        tracer = TRACER_SUBJECT.match(d.env.get("subject") or "")
        if tracer and owner.enable_tracer:
            sha1s.add(d.sha1)
            identities.add(d.identity)
            plan.tracers.append(tracer.group(1))
            result.tracers += 1
            _skip(plan, owner, job, d, TRACER, recorded, result)
            continue
        detail = ""
        if owner.filters:
            selected = first_match(owner.filters, _facts(job, d))
            if selected is None:
                detail = no_match_detail(owner.filters)
                _skip(plan, owner, job, d, FILTERED, recorded, result, detail)
                continue
            detail = f"filter {selected}"[:DETAIL_MAX]
        sha1s.add(d.sha1)
        identities.add(d.identity)
        _log_row(plan, owner, job, d, DELIVERED, recorded, detail)
        truncated = message.raw is None
        plan.deliveries.append(
            DeliveryRow(
                owner,
                d,
                job.uid_validity,
                job.folder,
                truncated,
                "pending" if owner.has_url else "skipped",
                "" if owner.has_url else NO_WEBHOOK,
                job.backfill is not None,
            )
        )
        result.truncated += truncated
        result.new += 1
        if job.backfill is None and (pushed := message.pushed_at()) is not None:
            result.pushed_at.append(pushed)


def _facts(job: PersistJob, d: Digest) -> Facts:
    message = d.message
    return Facts(d.env, d.headers, job.folder, d.size, d.content, message.raw is not None)


def _log_row(
    plan: Plan,
    owner: Owner,
    job: PersistJob,
    d: Digest,
    reason: str,
    recorded: Recorded,
    detail: str = "",
) -> LogRow:
    message = d.message
    row = LogRow(
        user_id=owner.id,
        message_id=(d.env.get("message_id") or "").replace("\x00", "\ufffd").strip()[:TEXT_MAX],
        sha1=d.sha1,
        identity=d.identity,
        uid=message.uid,
        uid_validity=job.uid_validity,
        folder=job.folder[:FOLDER_MAX],
        subject=(d.env.get("subject") or "").replace("\x00", "\ufffd")[:TEXT_MAX],
        internal_date=message.internal_date,
        size=message.size or len(message.raw or b""),
        skipped_reason=reason,
        detail=detail,
    )
    plan.log_rows.append(row)
    recorded.rows[(owner.id, job.folder, job.uid_validity, message.uid)] = reason
    return row


def _skip(
    plan: Plan,
    owner: Owner,
    job: PersistJob,
    d: Digest,
    reason: str,
    recorded: Recorded,
    result: PersistResult,
    detail: str = "",
) -> None:
    """Record a skip where the partner (API) and the operator (dashboard, log) see it."""
    row = _log_row(plan, owner, job, d, reason, recorded, detail)
    result.skipped += 1
    result.skips[reason] += 1
    result.skipped_rows.append((row.uid, reason, row.message_id, row.size))


def _move_checkpoint(
    plan: Plan,
    owner: Owner,
    item: Prepared,
    checkpoints: dict[int, tuple[int | None, int | None]],
    folders: dict[tuple[int, str], tuple[int, int]],
    any_new: bool,
) -> None:
    """The primary folder's checkpoint in the user row (after a UIDVALIDITY change the old
    last_uid means nothing in the new UID space), or the secondary folder's
    FolderCheckpoint; last_email_at when mail was new."""
    job, last = item.job, item.digests[-1].message
    if job.folder == owner.checkpoint_folder:
        validity, last_uid = checkpoints[owner.id]
        previous = (last_uid or 0) if validity == job.uid_validity else 0
        moved = max(last.uid, previous)
        checkpoints[owner.id] = (job.uid_validity, moved)
        plan.checkpoints.append(
            CheckpointMove(owner.id, job.uid_validity, moved, last.internal_date, any_new)
        )
        return
    key = (owner.id, job.folder)
    row = folders.get(key)
    previous = row[1] if row is not None and row[0] == job.uid_validity else 0
    moved = max(last.uid, previous)
    folders[key] = (job.uid_validity, moved)
    plan.folder_moves.append(
        FolderMove(owner.id, job.folder, job.uid_validity, moved, last.internal_date, row is None)
    )
    if any_new:
        plan.checkpoints.append(CheckpointMove(owner.id, None, None, None, True))
