"""What the API views do, kept apart from HTTP so the dashboard and tests can share it."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from superimap import healthz
from superimap.accounts import connections
from superimap.accounts import users as accounts_users
from superimap.api.errors import ApiError
from superimap.api.schemas import (
    BACKFILL_FIELDS,
    ConnectionIn,
    ConnectionUpdate,
    UserIn,
    UserUpdate,
    backfill_start,
    stored_filters,
)
from superimap.delivery import replaylimit
from superimap.delivery.models import Delivery
from superimap.mailboxes.credentials import REFUSED, UNTRUSTED, check_login
from superimap.mailboxes.links import make_link
from superimap.mailboxes.models import MailboxUser, MailLog
from superimap.partners.models import Connection, ImapProvider, Partner
from superimap.sync.filters import in_force

ENCRYPTED = "- encrypted -"
# Declared only to document the original's names; their values are moved onto ours.
ALIAS_FIELDS = {
    "oauth2_client_id",
    "oauth2_client_secret",
    "login_password",
    "oauth2_refresh_token",
}


def connection_out(connection: Connection) -> dict:
    host, port, tls = connection.server()
    smtp_host, smtp_port, smtp_tls = connection.smtp_server()
    users_count = getattr(connection, "users_count", None)
    if users_count is None:
        users_count = connection.users.filter(archived=False).count()
    return {
        "imap_provider_code": connection.provider.code,
        "imap_provider_title": connection.provider.title,
        "auth_kind": connection.provider.auth_kind,
        "oauth_client_id": connection.oauth_client_id,
        "oauth_client_secret": ENCRYPTED if connection.oauth_client_secret else "",
        "imap_host": host,
        "imap_port": port,
        "imap_tls": tls,
        "imap_tls_ca": connection.imap_tls_ca,
        "imap_tls_verify": connection.imap_tls_verify,
        "imap_allow_plaintext": connection.imap_allow_plaintext,
        "idle_refresh_seconds": connection.effective_idle_refresh,
        "folders": connection.folders,
        "filters": connection.filters or [],
        "warnings": connection.tls_warnings(),
        "smtp_host": smtp_host,
        "smtp_port": smtp_port,
        "smtp_tls": smtp_tls,
        "oauth_base_url": connection.oauth_base_url,
        "users_count": users_count,
        "created_at": connection.created_at,
    }


def user_out(user: MailboxUser, live_nodes: set[str] | None = None) -> dict:
    """``live_nodes``: healthz.live_engine_nodes(), read once for a list of users."""
    if live_nodes is None:
        live_nodes = healthz.live_engine_nodes()
    return {
        "tag": user.tag,
        "imap_provider_code": user.connection.provider.code,
        "email": user.email or None,
        "connected_at": user.connected_at,
        "connect_url": make_link(user.id, "connect"),
        "disconnect_url": make_link(user.id, "disconnect"),
        "archived": user.archived,
        "enable_tracer": user.enable_tracer,
        "folders": user.folders,
        "filters": user.filters,
        "filters_in_force": in_force(user.filters, user.connection.filters) or [],
        "status": healthz.shown_status(user, live_nodes),
        "last_error": user.last_error,
        "last_email_at": user.last_email_at,
        "failing_since": user.failing_since,
        "sweep_requested_at": _sweep_pending(user),
        "backfill": user.backfill_progress(),
        "paused_at": user.paused_at,
        "created_at": user.created_at,
    }


def _sweep_pending(user: MailboxUser) -> datetime | None:
    """A sweep is a backfill of all mail: when it was asked for, while it is not done."""
    if user.backfill_since is None and user.backfill_finished_at is None:
        return user.backfill_requested_at
    return None


def _provider(code: str) -> ImapProvider:
    provider = ImapProvider.objects.filter(code=code).first()
    if provider is None or not provider.is_usable():
        raise ApiError(422, "unknown_provider", f"Unknown IMAP provider code {code!r}.")
    return provider


def _connection_fields(body: ConnectionIn | ConnectionUpdate) -> dict:
    """The body's connection settings as given (not None)."""
    fields = body.model_dump(exclude_unset=True, exclude={"imap_provider_code", *ALIAS_FIELDS})
    if body.filters is not None:
        fields["filters"] = stored_filters(body.filters)
    return {name: value for name, value in fields.items() if value is not None}


def create_connection(partner: Partner, body: ConnectionIn) -> Connection:
    provider = _provider(body.imap_provider_code)
    if partner.connections.filter(provider=provider).exists():
        raise ApiError(409, "duplicate", f"A {provider.code} connection exists already.")
    return connections.create_connection(partner, provider, _connection_fields(body))


def update_connection(connection: Connection, body: ConnectionUpdate) -> None:
    # A changed server, TLS or OAuth setting (Connection.TRACKED) restarts its users'
    # sessions at once, so a tls_failed mailbox need not wait out its back-off.
    connections.update_connection(connection, _connection_fields(body))


def get_connection(partner: Partner, code: str) -> Connection:
    if "\x00" in code:
        raise ApiError(404, "not_found", "No such connection.")
    connection = partner.connections.select_related("provider").filter(provider__code=code).first()
    if connection is None:
        raise ApiError(404, "not_found", f"No {code!r} connection for this partner.")
    return connection


def get_user(partner: Partner, code: str, tag: str, include_archived: bool = True) -> MailboxUser:
    connection = get_connection(partner, code)
    if "\x00" in tag:
        raise ApiError(404, "not_found", "No such user.")
    users = connection.users.select_related("connection__provider").filter(tag=tag)
    if not include_archived:
        users = users.filter(archived=False)
    # An active user wins; otherwise the most recently archived one (so PUT can restore it).
    # One statement: with two, a restore committed between them made the user vanish (404).
    user = users.order_by("archived", F("archived_at").desc(nulls_last=True), "-id").first()
    if user is None:
        raise ApiError(404, "not_found", f"No user {tag!r} in connection {code!r}.")
    return user


def lock_user(user: MailboxUser) -> MailboxUser:
    """The user's row read again under its lock; run inside a transaction. update_user
    saves every field, so it must start from what others committed since get_user (a
    concurrent restore, the engine's status and checkpoint), not undo it."""
    locked = (
        MailboxUser.objects.select_for_update(of=("self",))
        .select_related("connection__provider")
        .filter(id=user.id)
        .first()
    )
    if locked is None:
        raise ApiError(
            404, "not_found", f"No user {user.tag!r} in connection {user.connection.code!r}."
        )
    return locked


def _apply_user_fields(user: MailboxUser, body: UserIn | UserUpdate) -> None:
    """Set the body's fields on the user (accounts.users.apply_user_fields: credentials
    connect it as the hosted pages would)."""
    fields = body.model_dump(
        exclude_unset=True,
        exclude={"tag", "archived", "verify", "filters", *BACKFILL_FIELDS, *ALIAS_FIELDS},
    )
    accounts_users.apply_user_fields(user, {k: v for k, v in fields.items() if v is not None})
    if "filters" in body.model_fields_set:
        # Read by the engine at each persist (the fence): no session restart. null: the
        # connection's filters again.
        user.filters = stored_filters(body.filters)


def verify_login(connection: Connection, user: MailboxUser | None, body: UserIn | UserUpdate):
    """verify=true: log in with the credentials the body would leave the user with, before
    anything is saved; 422 imap_auth_failed if the server refuses them, 502 if it cannot be
    reached or its certificate does not verify. The hosted form's check (check_login)."""
    provider = connection.provider
    if provider.auth_kind != ImapProvider.AuthKind.PASSWORD:
        raise ApiError(
            422,
            "invalid_field",
            f"verify applies to password logins only, not to {provider.code}.",
        )
    password = body.password if body.password is not None else (user.password if user else "")
    login_username = body.login_username
    if login_username is None:
        login_username = user.login_username if user else ""
    email = body.email if body.email is not None else (user.email if user else "")
    username = login_username.strip() or email.strip()
    if not password or not username:
        raise ApiError(422, "missing_field", "verify needs a password and login_username or email.")
    problem = check_login(connection, username, password)
    if problem == REFUSED:
        raise ApiError(422, "imap_auth_failed", problem)
    if problem == UNTRUSTED:
        raise ApiError(502, "imap_tls_failed", problem)
    if problem:
        raise ApiError(502, "imap_unavailable", problem)


def create_user(connection: Connection, body: UserIn) -> MailboxUser:
    """Create a user; run inside a transaction."""
    if connection.users.filter(tag=body.tag, archived=False).exists():
        raise ApiError(409, "duplicate", f"User {body.tag!r} exists already in this connection.")
    user = MailboxUser(connection=connection, tag=body.tag)
    _apply_user_fields(user, body)
    if body.wants_backfill():
        # Run by the engine's first session (after its baseline), like a later request.
        accounts_users.set_backfill(user, backfill_start(body.backfill_since, body.backfill_days))
    if body.archived:
        user.archived, user.archived_at = True, timezone.now()
        user.status = MailboxUser.Status.STOPPED
    accounts_users.save_user(user)
    user.connection = connection
    return user


def update_user(user: MailboxUser, body: UserUpdate) -> None:
    """Update a user; run inside a transaction. `archived` false restores an archived user,
    true archives it; without it the user stays as it is (the original's PUT semantics)."""
    if body.archived is False and user.archived:
        accounts_users.unarchive(user)  # 409 if another user of its tag was restored meanwhile
    elif body.archived is True and not user.archived:
        user.archived, user.archived_at = True, timezone.now()
    _apply_user_fields(user, body)
    if user.archived:
        user.status = MailboxUser.Status.STOPPED  # the engine writes no status for it now
    accounts_users.save_user(user)


def delivery_out(delivery: Delivery) -> dict:
    return {
        "event_id": str(delivery.event_id),
        "kind": delivery.kind,
        "backfill": delivery.backfill,
        "status": delivery.status,
        "user_tag": delivery.user.tag if delivery.user else None,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at
        if delivery.status == Delivery.Status.PENDING
        else None,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at,
        "delivered_at": delivery.delivered_at,
        "attempt_log": [
            {
                "number": a.number,
                "started_at": a.started_at,
                "duration_ms": a.duration_ms,
                "status_code": a.status_code,
                "error": a.error,
                "response_excerpt": a.response_excerpt,
            }
            for a in delivery.attempt_log.all()
        ],
    }


def list_deliveries(
    partner: Partner,
    *,
    status: str | None,
    kind: str | None,
    since: datetime | None = None,
    cursor: str | None = None,
    limit: int,
) -> tuple[list[dict], str | None]:
    """A page of the partner's deliveries, newest first, and the cursor of the next (older)
    page (None on the last). Cursor pagination on the row id, as list_messages."""
    deliveries = partner.deliveries.select_related("user").prefetch_related("attempt_log")
    if status:
        deliveries = deliveries.filter(status=status)
    if kind:
        deliveries = deliveries.filter(kind=kind)
    if since is not None:
        deliveries = deliveries.filter(created_at__gte=since)
    if cursor:
        deliveries = deliveries.filter(id__lt=int(cursor))
    page = list(deliveries.order_by("-id")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return [delivery_out(d) for d in page], (str(page[-1].id) if more else None)


def retry_delivery(partner: Partner, event_id) -> dict:
    delivery = partner.deliveries.filter(event_id=event_id).first()
    if delivery is None:
        raise ApiError(404, "not_found", f"No delivery {event_id} for this partner.")
    if delivery.status == Delivery.Status.DELIVERED:
        raise ApiError(409, "already_delivered", "This delivery succeeded already.")
    if delivery.status == Delivery.Status.PENDING:
        raise ApiError(409, "pending", "This delivery is queued already.")
    with transaction.atomic():
        replaylimit.charge(partner.id, 1)
        Delivery.retry_now(Delivery.objects.filter(id=delivery.id))
    delivery.refresh_from_db()
    return delivery_out(delivery)


def message_out(row: MailLog) -> dict:
    return {
        "uid": row.uid,
        "uid_validity": row.uid_validity,
        "folder": row.folder,
        "message_id": row.message_id,
        "subject": row.subject,
        "size": row.size,
        "internal_date": row.internal_date,
        "status": row.status,
        "reason": row.skipped_reason or None,
        "detail": row.detail,
        "created_at": row.created_at,
    }


def list_messages(
    user: MailboxUser, *, status: str | None, reason: str | None, cursor: str | None, limit: int
) -> dict:
    """What became of each message the engine saw for ``user``, newest first: delivered as
    new_mail, or skipped with a reason. Cursor pagination on the row id."""
    rows = MailLog.objects.filter(user=user)
    if status == "skipped":
        rows = rows.exclude(skipped_reason="")
    elif status == "delivered":
        rows = rows.filter(skipped_reason="")
    if reason:
        rows = rows.filter(skipped_reason=reason)
    if cursor:
        rows = rows.filter(id__lt=int(cursor))
    page = list(rows.order_by("-id")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return {
        "messages": [message_out(row) for row in page],
        "next_cursor": str(page[-1].id) if more else None,
    }


def replay_deliveries(partner: Partner, body) -> dict:
    """Send the partner's deliveries created in [since, until) again, same event_id."""
    deliveries = partner.deliveries.filter(
        created_at__gte=body.since, created_at__lt=body.until
    ).exclude(status=Delivery.Status.PENDING)
    if body.event:
        deliveries = deliveries.filter(kind=body.event)
    if body.user_tag is not None:
        deliveries = deliveries.filter(user__tag=body.user_tag)
    if body.status:
        deliveries = deliveries.filter(status=body.status)
    with transaction.atomic():
        purged = deliveries.filter(payload_purged_at__isnull=False).count()
        # Charged for what it would queue, before queueing: refused whole or done whole.
        replaylimit.charge(partner.id, deliveries.filter(payload_purged_at__isnull=True).count())
        return {"queued": Delivery.replay(deliveries), "not_replayable": purged}
