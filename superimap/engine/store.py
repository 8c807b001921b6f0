"""The engine's database side (synchronous; always called through the DbPool).

Session configs, baselines, statuses and the lease fence (``_owned``). Persisting a batch
(design.md section 4 step 6: MailLog rows, Delivery rows and the new checkpoint in ONE
transaction, fenced by the lease) is planned by sync/persist.py and written by
engine/writer.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from superimap.delivery import outbox
from superimap.delivery.models import Delivery
from superimap.mailboxes.models import (
    FolderChanges,
    FolderCheckpoint,
    MailboxUser,
    MailLog,
    MessageState,
)
from superimap.platform.dbpool import read_only

log = logging.getLogger("superimap.engine")
Reason = MailLog.Reason
STATUS_BATCH = 500  # ids per UPDATE: well under every backend's parameter limit
# user_error: at once for what needs a human, after this long for any other failure.
NEEDS_HUMAN = frozenset({MailboxUser.Status.AUTH_FAILED, MailboxUser.Status.TLS_FAILED})
WATCHING = frozenset({MailboxUser.Status.IDLE, MailboxUser.Status.POLLING})
USER_ERROR_AFTER = timedelta(minutes=15)
CONFIG_BATCH = 500  # ids per config SELECT, likewise
_CLEAN_STATUSES: dict[tuple[str, str, int], tuple[str, str, int]] = {}


def status_value(status: str, error: str, failures: int) -> tuple[str, str, int]:
    """A session's report as the engine keeps it: one shared tuple per status without an
    error or failures (every idle session's ("idle", "", 0), held by the session and by the
    engine's tables), not two tuples per session (design.md 4.13)."""
    value = (status, error, failures)
    if error or failures:
        return value
    return _CLEAN_STATUSES.setdefault(value, value)


class LeaseLost(Exception):
    """This node no longer owns the mailbox: stop watching it."""


@dataclass(frozen=True)
class Backfill:
    """A user's backfill as stored (MailboxUser.backfill_*): ``until_uid`` None means the
    window is not fixed yet (the session fixes it when it starts)."""

    requested_at: datetime
    since: datetime | None
    uid_validity: int | None = None
    until_uid: int | None = None
    position: int | None = None
    done: int = 0
    total: int = 0


def _backfill_of(user: MailboxUser) -> Backfill | None:
    if user.backfill_requested_at is None or user.backfill_finished_at is not None:
        return None
    return Backfill(
        user.backfill_requested_at,
        user.backfill_since,
        user.backfill_uid_validity,
        user.backfill_until_uid,
        user.backfill_position,
        user.backfill_done,
        user.backfill_total,
    )


@dataclass(frozen=True)
class MailboxConfig:
    """What a mailbox session needs, read once per session (credentials decrypted)."""

    user_id: int
    tag: str
    provider_code: str
    host: str
    port: int
    tls: str
    insecure_tls: bool
    auth_kind: str
    username: str
    password: str
    refresh_token: str
    folder: str
    uid_validity: int | None
    last_uid: int | None
    enable_tracer: bool
    # OAuth 2.0 (engine/oauth.py): where and as whom to refresh the access token.
    oauth_token_url: str = ""
    oauth_client_id: str = ""
    oauth_client_secret: str = ""
    # A backfill to run or continue (sync/backfill.py): None when there is none.
    backfill: Backfill | None = None
    # INTERNALDATE of the last message persisted: where a date catch-up starts.
    last_internal_date: datetime | None = None
    # The folder uid_validity/last_uid belong to (engine/folders.py).
    checkpoint_folder: str = "INBOX"
    # The connection's own CA bundle (PEM) for a self-hosted server; "" = system CAs.
    tls_ca: str = ""
    # Seconds between IDLE re-issues for servers that only look for mail then; 0: off;
    # None: automatic (engine/session.py idle_period).
    idle_refresh: int | None = None
    # Folders to watch (names or special-use flags: engine/folders.py resolve_folders);
    # empty: the one folder of design.md 4.5.
    folders: tuple[str, ...] = ()
    # MailboxUser.connect_pending as read: user_connected is owed once a login with these
    # credentials succeeds (tell_connected).
    connect_pending: str = ""
    # The partner's name: with the provider code and the tag it names the mailbox in logs.
    partner_name: str = ""
    # The partner has a message_updated or message_deleted URL (design.md 4.14).
    track_changes: bool = False

    @property
    def label(self) -> str:
        """The mailbox as the operator knows it: ``partner/connection/tag (id N)``."""
        return mailbox_label(self.user_id, self.partner_name, self.provider_code, self.tag)


def mailbox_label(user_id: int, partner: str = "", code: str = "", tag: str = "") -> str:
    """``My app/PLAIN/alice (id 2)`` (``id 2`` alone while the names are not known yet).
    Log lines carry it as data: the log formatters escape control characters in it."""
    if not tag:
        return f"id {user_id}"
    return f"{partner}/{code}/{tag} (id {user_id})"


@dataclass(frozen=True)
class FolderState:
    """A secondary folder's checkpoint (FolderCheckpoint)."""

    uid_validity: int
    last_uid: int
    last_internal_date: datetime | None = None


@read_only
def mailbox_config(user_id: int) -> MailboxConfig | None:
    """One mailbox's config (a session reconnecting); None if it is no longer watchable."""
    return mailbox_configs([user_id]).get(user_id)


@read_only
def mailbox_configs(user_ids: list[int]) -> dict[int, MailboxConfig]:
    """Configs of the watchable mailboxes among ``user_ids``, CONFIG_BATCH ids per query.

    The supervisor loads them for every session it starts in a refresh: one query per
    batch instead of one per session, so 20,000 starting sessions do not queue 20,000
    reads in the DbPool ahead of the writes (baselines, persists) that follow them.
    """
    configs: dict[int, MailboxConfig] = {}
    for start in range(0, len(user_ids), CONFIG_BATCH):
        users = (
            MailboxUser.objects.select_related("connection__provider", "connection__partner")
            .order_by()
            .filter(id__in=user_ids[start : start + CONFIG_BATCH], archived=False)
        )
        for user in users:
            if user.watchable:
                configs[user.id] = config_of(user)
    return configs


def config_of(user: MailboxUser) -> MailboxConfig:
    """The session settings of a user loaded with connection__provider."""
    connection = user.connection
    provider = connection.provider
    host, port, tls = connection.server()
    tls_ca, tls_verify = connection.tls_options()
    return MailboxConfig(
        user_id=user.id,
        tag=user.tag,
        provider_code=provider.code,
        host=host,
        port=port,
        tls=tls,
        insecure_tls=provider.loopback_only or not tls_verify,
        auth_kind=provider.auth_kind,
        username=user.login_username or user.email,
        password=user.password,
        refresh_token=user.oauth_refresh_token,
        folder=provider.folder or "INBOX",
        uid_validity=user.uid_validity,
        last_uid=user.last_uid,
        enable_tracer=user.enable_tracer,
        oauth_token_url=connection.oauth_url("token") if provider.auth_kind == "oauth2" else "",
        oauth_client_id=connection.oauth_client_id,
        oauth_client_secret=connection.oauth_client_secret,
        backfill=_backfill_of(user),
        last_internal_date=user.last_internal_date,
        checkpoint_folder=user.checkpoint_folder,
        tls_ca=tls_ca,
        idle_refresh=connection.effective_idle_refresh,
        folders=tuple(user.folders or connection.folders or ()),
        connect_pending=user.connect_pending,
        partner_name=connection.partner.name,
        track_changes=connection.partner.tracks_changes,
    )


def _owned(user_id: int, node_id: str):
    """The user if this node holds its lease AND it is still watchable: a disconnected
    (connected_at cleared) or archived user fences the session like a lost lease."""
    return MailboxUser.objects.filter(
        id=user_id, owner_node=node_id, archived=False, connected_at__isnull=False
    )


def set_baseline(
    user_id: int, node_id: str, uid_validity: int, last_uid: int, folder: str | None = None
) -> None:
    """First connection (or a changed UIDVALIDITY or folder): start from here, send
    nothing older; ``folder`` names the folder the checkpoint now belongs to.

    The first baseline also sets ``baseline_at``: after a UIDVALIDITY change, mail with an
    INTERNALDATE before it is older than the user (recorded as before_baseline).

    The checkpoint staying in its folder (every first connection of a mailbox watching
    INBOX) is one fenced UPDATE in autocommit, not a transaction of four statements: at a
    ramp of new mailboxes this was the largest part of the engine's CPU per mailbox after
    the TLS handshake (design.md 4.13). Anything else (another folder, or the lease lost:
    no row matched) takes the transaction below, which tells the two apart."""
    if _baseline_in_place(user_id, node_id, uid_validity, last_uid, folder):
        return
    with transaction.atomic():
        user = _owned(user_id, node_id).select_for_update(of=("self",)).first()
        if user is None:
            raise LeaseLost(user_id)
        fields = {"uid_validity": uid_validity, "last_uid": last_uid}
        if folder is not None and folder != user.checkpoint_folder:
            fields["checkpoint_folder"] = folder
            # The old primary folder keeps its checkpoint (it may be watched as a secondary
            # folder now); the new one's, if it was a secondary folder, is this one now.
            if user.uid_validity is not None and user.last_uid is not None:
                FolderCheckpoint.objects.update_or_create(
                    user=user,
                    folder=user.checkpoint_folder,
                    defaults={
                        "uid_validity": user.uid_validity,
                        "last_uid": user.last_uid,
                        "last_internal_date": user.last_internal_date,
                    },
                )
            FolderCheckpoint.objects.filter(user=user, folder=folder).delete()
        _owned(user_id, node_id).update(**fields)
        _owned(user_id, node_id).filter(baseline_at__isnull=True).update(baseline_at=timezone.now())


def _baseline_in_place(
    user_id: int, node_id: str, uid_validity: int, last_uid: int, folder: str | None
) -> bool:
    """set_baseline's one statement; False if no row matched (another folder, or fenced).
    Plain SQL: the ORM's compile of this UPDATE cost more CPU than its round trip."""
    in_folder = " AND checkpoint_folder = %s" if folder is not None else ""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {MailboxUser._meta.db_table} SET uid_validity = %s, last_uid = %s, "
            "baseline_at = COALESCE(baseline_at, %s) WHERE id = %s AND owner_node = %s "
            f"AND archived = %s AND connected_at IS NOT NULL{in_folder}",
            [uid_validity, last_uid, now, user_id, node_id, False]
            + ([folder] if folder is not None else []),
        )
        return cursor.rowcount == 1


def set_folder_baseline(
    user_id: int, node_id: str, folder: str, uid_validity: int, last_uid: int
) -> None:
    """A secondary folder's checkpoint starts (or, after a UIDVALIDITY change, restarts)
    here; fenced like set_baseline."""
    with transaction.atomic():
        if not _owned(user_id, node_id).select_for_update(of=("self",)).exists():
            raise LeaseLost(user_id)
        FolderCheckpoint.objects.update_or_create(
            user_id=user_id,
            folder=folder,
            defaults={"uid_validity": uid_validity, "last_uid": last_uid},
        )


@read_only
def folder_states(user_id: int) -> dict[str, FolderState]:
    """The user's secondary-folder checkpoints by folder name."""
    rows = FolderCheckpoint.objects.filter(user_id=user_id).order_by()
    return {
        row.folder: FolderState(row.uid_validity, row.last_uid, row.last_internal_date)
        for row in rows
    }


@read_only
def baseline_moment(user_id: int) -> datetime | None:
    """When the user's mail starts: its first baseline (older users: when it connected)."""
    row = MailboxUser.objects.filter(id=user_id).values("baseline_at", "connected_at").first()
    if row is None:
        return None
    return row["baseline_at"] or row["connected_at"]


def _in_folder(folder: str) -> Q:
    """MailLog rows of ``folder``; rows written before the folder was recorded have ""
    (they all belong to the one folder watched then, the primary)."""
    return Q(folder=folder) | Q(folder="")


@read_only
def recorded_uids(user_id: int, uid_validity: int, uids: list[int], folder: str) -> set[int]:
    """UIDs of ``uids`` in ``folder`` that already ended in a state (delivered or skipped),
    except those skipped as before_baseline, which a sweep may still send."""
    rows = MailLog.objects.filter(
        _in_folder(folder), user_id=user_id, uid_validity=uid_validity, uid__in=uids
    )
    return set(rows.exclude(skipped_reason=Reason.BEFORE_BASELINE).values_list("uid", flat=True))


def start_backfill(user_id: int, node_id: str, backfill: Backfill) -> bool:
    """Store the window of the backfill this session runs (its UID space, last UID,
    position, done and total), fenced by the lease and by the request it serves. A
    queryset update leaves updated_at alone: no restart."""
    owned = _owned(user_id, node_id).filter(backfill_requested_at=backfill.requested_at)
    return bool(
        owned.update(
            backfill_uid_validity=backfill.uid_validity,
            backfill_until_uid=backfill.until_uid,
            backfill_position=backfill.position,
            backfill_done=backfill.done,
            backfill_total=backfill.total,
        )
    )


def finish_backfill(user_id: int, node_id: str, requested_at: datetime) -> bool:
    """The backfill of this request is done (a newer request stays pending)."""
    owned = _owned(user_id, node_id).filter(
        backfill_requested_at=requested_at, backfill_finished_at__isnull=True
    )
    return bool(owned.update(backfill_finished_at=timezone.now()))


def tell_connected(user_id: int, node_id: str, token: str) -> bool:
    """After the session's login succeeded with credentials that owe user_connected: clear
    the token and enqueue user_connected in one transaction. Only the UPDATE that clears
    this very token enqueues, so it is sent once per credential change (not again after a
    crash or by another node), never for credentials replaced meanwhile (another token),
    and not for a user that left (fenced like persist_batch). True if it was enqueued."""
    with transaction.atomic():
        if not _owned(user_id, node_id).filter(connect_pending=token).update(connect_pending=""):
            return False
        user = (
            MailboxUser.objects.select_related("connection__provider", "connection__partner")
            .defer("password", "oauth_refresh_token")
            .get(id=user_id)
        )
        outbox.enqueue_user_event(Delivery.Kind.USER_CONNECTED, user)
    return True


def save_refresh_token(user_id: int, node_id: str, refresh_token: str) -> None:
    """Keep a refresh token the provider rotated (Microsoft does), fenced by the lease.

    A queryset update leaves updated_at alone, so the session is not restarted for it."""
    _owned(user_id, node_id).update(oauth_refresh_token=refresh_token)


def save_statuses(updates: dict[int, tuple[str, str, int]]) -> None:
    """Batch of (status, last_error, consecutive_failures) per user id.

    One UPDATE per distinct (status, error, failures), not one per user: when thousands of
    mailboxes come online together they share a handful of values, and 20,000 single-row
    updates held the (SQLite) write lock for ~2 s, stalling every persist behind them.

    Only users still connected and not archived are written (in the UPDATE's WHERE): a
    disconnect or archive sets ``stopped`` itself, and a session's last report (``syncing``
    when its batch found the user gone) must not overwrite it.

    In the same transaction, the partner is told of transitions (user_error, user_recovered):
    see tell_transitions().

    PostgreSQL: the rows are locked first, in user id order, the order the group commit
    takes them in (writer._fence). One UPDATE per status locks its rows in its own order:
    a flush that held one user and waited for another while a group commit held the second
    and waited for the first was a deadlock, broken after deadlock_timeout (1 s) by failing
    one of them; in bench.e2e at 1,000 mails/s on PostgreSQL every arrival stopped for
    seconds (design.md 4.11).
    """
    now = timezone.now()
    groups: dict[tuple[str, str, int], list[int]] = {}
    for user_id, (status, error, failures) in updates.items():
        groups.setdefault((status, error[:500], failures), []).append(user_id)
    with transaction.atomic():
        _lock_in_id_order(list(updates))
        for (status, error, failures), user_ids in groups.items():
            for start in range(0, len(user_ids), STATUS_BATCH):
                MailboxUser.objects.filter(
                    id__in=user_ids[start : start + STATUS_BATCH],
                    archived=False,
                    connected_at__isnull=False,
                    paused_at__isnull=True,
                ).update(
                    status=status,
                    last_error=error,
                    consecutive_failures=failures,
                    status_changed_at=now,
                )
        tell_transitions(updates, now)


def _lock_in_id_order(user_ids: list[int]) -> None:
    """Lock these users' rows in id order (PostgreSQL; SQLite's write lock is whole)."""
    if not connection.features.has_select_for_update:
        return
    for ids in _batches(sorted(user_ids)):
        rows = MailboxUser.objects.filter(id__in=ids).order_by("id").select_for_update()
        list(rows.values_list("id", flat=True))


def _batches(ids: list[int]):
    for start in range(0, len(ids), STATUS_BATCH):
        yield ids[start : start + STATUS_BATCH]


def tell_transitions(updates: dict[int, tuple[str, str, int]], now: datetime) -> None:
    """user_error once when a mailbox starts needing attention, user_recovered once when it
    is watched again. The state lives in the user row (failing_since, error_notified_at) and
    each event is enqueued only by the UPDATE that flips error_notified_at, so neither a
    retry, an engine restart nor a second node can send one twice."""
    failing = [
        user_id
        for user_id, (status, _, failures) in updates.items()
        if failures > 0 or status in NEEDS_HUMAN
    ]
    watching = [user_id for user_id, (status, _, _) in updates.items() if status in WATCHING]
    for ids in _batches(failing):
        # A paused mailbox's last report (its session stopping) starts no failure.
        MailboxUser.objects.filter(
            id__in=ids, failing_since__isnull=True, paused_at__isnull=True
        ).update(failing_since=now)
        candidates = (
            MailboxUser.objects.filter(
                id__in=ids, error_notified_at__isnull=True, archived=False, paused_at__isnull=True
            )
            .exclude(connected_at__isnull=True)
            .filter(Q(status__in=NEEDS_HUMAN) | Q(failing_since__lte=now - USER_ERROR_AFTER))
            .select_related("connection__provider", "connection__partner")
            .defer("password", "oauth_refresh_token")
        )
        for user in candidates:
            flipped = MailboxUser.objects.filter(id=user.id, error_notified_at__isnull=True).update(
                error_notified_at=now
            )
            if flipped:
                status, error, _ = updates[user.id]
                outbox.enqueue_user_error(user, status, error)
    for ids in _batches(watching):
        recovered = (
            MailboxUser.objects.filter(id__in=ids, error_notified_at__isnull=False)
            .select_related("connection__provider", "connection__partner")
            .defer("password", "oauth_refresh_token")
        )
        for user in recovered:
            flipped = MailboxUser.objects.filter(
                id=user.id, error_notified_at__isnull=False
            ).update(error_notified_at=None, failing_since=None)
            if flipped and not user.archived and user.connected_at is not None:
                outbox.enqueue_user_recovered(user, updates[user.id][0])
        MailboxUser.objects.filter(id__in=ids, failing_since__isnull=False).update(
            failing_since=None
        )


@read_only
def changes_modseq(user_id: int, folder: str, uid_validity: int) -> int | None:
    """The modseq up to which changes of ``folder`` were looked at (design.md 4.14)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT uid_validity, modseq FROM {FolderChanges._meta.db_table} "
            "WHERE user_id = %s AND folder = %s",
            [user_id, folder],
        )
        row = cursor.fetchone()
    return row[1] if row is not None and row[0] == uid_validity else None


@read_only
def tracked_uids(user_id: int, folder: str, uid_validity: int, limit: int) -> list[int]:
    """The UIDs of the last ``limit`` delivered messages of ``folder`` still there (as far
    as known): what a bounded resync reads the flags of. (Plain SQL: every session runs it
    at connect, and the ORM's garbage showed in the RSS per idle mailbox.)"""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT uid FROM {MessageState._meta.db_table} WHERE user_id = %s AND folder = %s "
            "AND uid_validity = %s AND gone = %s ORDER BY uid DESC LIMIT %s",
            [user_id, folder, uid_validity, False, limit],
        )
        return [row[0] for row in cursor.fetchall()]
