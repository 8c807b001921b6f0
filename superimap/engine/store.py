"""The engine's database side (synchronous; always called through the DbPool).

persist_batch() is design.md section 4 step 6: MailLog rows, Delivery rows and the new
checkpoint in ONE transaction. A crash before commit means the mail is fetched again;
after commit the worker owns it. The checkpoint update is fenced by the lease, so a node
that lost a mailbox to another node cannot write it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from superimap.dbpool import read_only
from superimap.delivery.content import with_content_options
from superimap.delivery.models import Delivery
from superimap.delivery.payloads import new_mail_payload
from superimap.engine.envelope import envelope, message_id_or_digest, parse_headers, sha1_of
from superimap.mailboxes.models import MailboxUser, MailLog
from superimap.tracers.models import TracerLog

TRACER_SUBJECT = re.compile(r"^TRACER:\s*(\S+)\s*$")
STATUS_BATCH = 500  # ids per UPDATE: well under every backend's parameter limit
CONFIG_BATCH = 500  # ids per config SELECT, likewise


class LeaseLost(Exception):
    """This node no longer owns the mailbox: stop watching it."""


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
    # A sweep was requested: catch up from UID 1 once (dedup keeps sent mail from repeating).
    sweep_requested_at: datetime | None = None


@dataclass(frozen=True)
class FetchedMessage:
    uid: int
    size: int
    internal_date: datetime | None
    raw: bytes | None  # None: not fetched (over MAX_EMAIL_SIZE)


@dataclass
class PersistResult:
    new: int = 0
    duplicates: int = 0
    skipped: int = 0
    tracers: int = 0
    delivery_ids: list[int] = field(default_factory=list)


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
            MailboxUser.objects.select_related("connection__provider")
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
    return MailboxConfig(
        user_id=user.id,
        tag=user.tag,
        provider_code=provider.code,
        host=host,
        port=port,
        tls=tls,
        insecure_tls=provider.loopback_only,
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
        sweep_requested_at=user.sweep_requested_at,
    )


def _owned(user_id: int, node_id: str):
    return MailboxUser.objects.filter(id=user_id, owner_node=node_id, archived=False)


def set_baseline(user_id: int, node_id: str, uid_validity: int, last_uid: int) -> None:
    """First connection (or a changed UIDVALIDITY): start from here, send nothing older."""
    updated = _owned(user_id, node_id).update(uid_validity=uid_validity, last_uid=last_uid)
    if not updated:
        raise LeaseLost(user_id)


def finish_sweep(user_id: int, node_id: str, requested_at: datetime) -> bool:
    """Clear the sweep request this session served, fenced by the lease; a newer request
    (another timestamp) stays. A queryset update leaves updated_at alone: no restart."""
    owned = _owned(user_id, node_id).filter(sweep_requested_at=requested_at)
    return bool(owned.update(sweep_requested_at=None))


def persist_batch(
    user_id: int,
    node_id: str,
    uid_validity: int,
    folder: str,
    messages: list[FetchedMessage],
) -> PersistResult:
    result = PersistResult()
    if not messages:
        return result
    with transaction.atomic():
        user = (
            _owned(user_id, node_id)
            .select_related("connection__provider", "connection__partner")
            .defer("password", "oauth_refresh_token")  # not needed; decrypting costs CPU
            .first()
        )
        if user is None:
            raise LeaseLost(user_id)
        partner = user.connection.partner
        has_url = bool(partner.new_mail_webhook)
        for message in sorted(messages, key=lambda m: m.uid):
            _persist_one(user, partner, has_url, uid_validity, folder, message, result)
        last = max(messages, key=lambda m: m.uid)
        # After a UIDVALIDITY change the old last_uid means nothing in the new UID space.
        previous = (user.last_uid or 0) if user.uid_validity == uid_validity else 0
        fields = {"uid_validity": uid_validity, "last_uid": max(last.uid, previous)}
        if last.internal_date:
            fields["last_internal_date"] = last.internal_date
        if result.new:
            fields["last_email_at"] = timezone.now()
        MailboxUser.objects.filter(id=user_id).update(**fields)
    return result


def _persist_one(user, partner, has_url, uid_validity, folder, message, result) -> None:
    if message.raw is None:
        sha1 = f"{message.uid:040d}"[-40:]
        MailLog.objects.get_or_create(
            user=user,
            message_id=f"<uid-{uid_validity}-{message.uid}@oversize.superimap>",
            defaults={
                "sha1": sha1,
                "uid": message.uid,
                "uid_validity": uid_validity,
                "internal_date": message.internal_date,
                "size": message.size,
                "skipped_reason": "over MAX_EMAIL_SIZE",
            },
        )
        result.skipped += 1
        return
    sha1 = sha1_of(message.raw)
    env = envelope(parse_headers(message.raw))
    message_id = message_id_or_digest(env, sha1)
    if MailLog.objects.filter(Q(message_id=message_id) | Q(sha1=sha1), user=user).exists():
        result.duplicates += 1
        return
    MailLog.objects.create(
        user=user,
        message_id=message_id,
        sha1=sha1,
        uid=message.uid,
        uid_validity=uid_validity,
        internal_date=message.internal_date,
        size=message.size or len(message.raw),
    )
    tracer = TRACER_SUBJECT.match(env.get("subject") or "")
    if tracer and user.enable_tracer:
        TracerLog.objects.filter(tracer_uid=tracer.group(1), detected_at__isnull=True).update(
            detected_at=timezone.now()
        )
        result.tracers += 1
        return
    payload = new_mail_payload(
        provider_code=user.connection.provider.code,
        user_tag=user.tag,
        raw=message.raw,
        envelope=env,
        uid=message.uid,
        uid_validity=uid_validity,
        folder=folder,
        internal_date=message.internal_date.isoformat() if message.internal_date else None,
    )
    payload = with_content_options(
        payload,
        message.raw,
        include_rfc822=partner.include_rfc822,
        include_parsed=partner.include_parsed,
        max_chars=settings.WEBHOOK_PARSED_MAX_CHARS,
    )
    delivery = Delivery.objects.create(
        kind=Delivery.Kind.NEW_MAIL,
        partner=partner,
        user=user,
        message_id=message_id,
        payload=payload,
        status=Delivery.Status.PENDING if has_url else Delivery.Status.SKIPPED,
        last_error="" if has_url else "partner has no new_mail webhook URL",
        next_attempt_at=timezone.now(),
    )
    result.new += 1
    result.delivery_ids.append(delivery.id)


def save_refresh_token(user_id: int, node_id: str, refresh_token: str) -> None:
    """Keep a refresh token the provider rotated (Microsoft does), fenced by the lease.

    A queryset update leaves updated_at alone, so the session is not restarted for it."""
    _owned(user_id, node_id).update(oauth_refresh_token=refresh_token)


def save_statuses(updates: dict[int, tuple[str, str, int]]) -> None:
    """Batch of (status, last_error, consecutive_failures) per user id.

    One UPDATE per distinct (status, error, failures), not one per user: when thousands of
    mailboxes come online together they share a handful of values, and 20,000 single-row
    updates held the (SQLite) write lock for ~2 s, stalling every persist behind them.
    """
    now = timezone.now()
    groups: dict[tuple[str, str, int], list[int]] = {}
    for user_id, (status, error, failures) in updates.items():
        groups.setdefault((status, error[:500], failures), []).append(user_id)
    with transaction.atomic():
        for (status, error, failures), user_ids in groups.items():
            for start in range(0, len(user_ids), STATUS_BATCH):
                MailboxUser.objects.filter(id__in=user_ids[start : start + STATUS_BATCH]).update(
                    status=status,
                    last_error=error,
                    consecutive_failures=failures,
                    status_changed_at=now,
                )
