"""Mailbox users: every change of their state and what it sets off.

A change the engine's IMAP session must see (MailboxUser.TRACKED: credentials, folders; a
backfill or sweep; a reconnect; a resume) gets a new session_version in the same write, and
the engine restarts the session at its next refresh (design.md 4.8). New credentials also owe the
partner user_connected, sent by the engine's first successful login with them (4.9).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from django.utils import timezone

from superimap.accounts.checks import (
    SECRETS,
    Problem,
    ProviderKind,
    filters_problems,
    given_credential_problems,
    missing_credential_problems,
)
from superimap.accounts.errors import Refused, refuse
from superimap.changes import new_session_version
from superimap.delivery.models import Delivery
from superimap.delivery.outbox import enqueue_user_event
from superimap.mailboxes.models import MailboxUser
from superimap.partners.models import Connection

Status = MailboxUser.Status
# A session in one of these gets a fresh start when its credentials are sent again.
FAILING = (Status.AUTH_FAILED, Status.TLS_FAILED, Status.BACKING_OFF)
# The fields an API body or the dashboard's form may give that log the user in.
CREDENTIAL_FIELDS = ("login_username", *SECRETS)


def restart_session(user: MailboxUser) -> None:
    """Make the engine restart this mailbox's IMAP session once the user is saved."""
    user.session_version = new_session_version()


def save_user(user: MailboxUser, update_fields: Iterable[str] | None = None) -> None:
    """Save the user; a tracked field that changed (or a new row) restarts its session."""
    fields = None if update_fields is None else {*update_fields, "updated_at"}
    if user.tracked_changed():
        restart_session(user)
        if fields is not None:
            fields.add("session_version")
    user.save(update_fields=fields)
    user.remember_tracked()


def create_user(connection: Connection, tag: str, **fields) -> MailboxUser:
    """A new user from its fields (the API's create: api/service.py with apply_user_fields)."""
    user = MailboxUser(connection=connection, tag=tag, **fields)
    save_user(user)
    return user


# --- connect ----------------------------------------------------------------------------------


def _connected(user: MailboxUser, *, fresh: bool) -> None:
    """Credentials were just set on ``user``: it is connected. ``fresh``: a person connected
    through a hosted page: a new connect, told again even with the same credentials.
    Otherwise (API, dashboard) only new credentials are told, and the same ones sent again
    restart only a failing session."""
    now = timezone.now()
    user.connected_at = now if fresh else (user.connected_at or now)
    if fresh or user.credentials_changed():
        # A random token: the engine clears it with the user_connected it enqueues, unless
        # newer credentials replaced it meanwhile (engine/store.py).
        user.connect_pending = new_session_version()
        restart_session(user)
    if fresh or user.tracked_changed() or user.status in FAILING:
        # A fresh start, not the old back-off; the same credentials again on a working
        # mailbox change nothing (no new login, no second user_connected).
        restart_session(user)
        user.status = Status.NEW
        user.last_error = ""
        user.consecutive_failures = 0


def connect_user(
    user: MailboxUser,
    *,
    email: str,
    login_username: str = "",
    password: str = "",
    oauth_refresh_token: str = "",
) -> None:
    """The hosted pages' connect (the password form, the OAuth callback): save the
    credentials; user_connected is sent once the engine's first login with them succeeds
    (the form's own check login does not count). Run inside a transaction."""
    user.email = email
    user.login_username = login_username
    user.password = password
    user.oauth_refresh_token = oauth_refresh_token
    _connected(user, fresh=True)
    save_user(user)


def apply_user_fields(user: MailboxUser, fields: Mapping[str, object]) -> None:
    """Set an API body's fields (given, not None) on the user, not saved yet. Credentials
    (a password or a refresh token) connect it as the hosted pages would."""
    refuse(given_credential_problems(ProviderKind.of(user.connection.provider), fields))
    for name, value in fields.items():
        if isinstance(value, str) and name not in SECRETS:
            value = value.strip()
        setattr(user, name, value)
    _after_credentials(user, fields)


def _after_credentials(user: MailboxUser, given: Mapping[str, object]) -> None:
    refuse(missing_credential_problems(given, vars(user)))
    if any(given.get(name) for name in SECRETS):
        _connected(user, fresh=False)


def given_credentials(user: MailboxUser) -> dict[str, object]:
    """The credential fields of ``user`` set to a new, non-empty value since it was loaded
    (the dashboard's form: empty secrets keep the stored ones, admin_secrets.py)."""
    loaded = user.loaded_values() if user.pk is not None else {}
    given = {}
    for name in CREDENTIAL_FIELDS:
        value = getattr(user, name)
        if value and value != loaded.get(name):
            given[name] = value
    return given


def edited_user_problems(user: MailboxUser) -> list[Problem]:
    """What the API would refuse in the dashboard's edit of ``user`` (not saved yet)."""
    filters = filters_problems(user.filters)
    if user.connection_id is None:
        return filters
    given = given_credentials(user)
    kind = ProviderKind.of(user.connection.provider)
    missing = missing_credential_problems(given, vars(user))
    return [*filters, *given_credential_problems(kind, given), *missing]


def save_edited_user(user: MailboxUser) -> None:
    """The dashboard's save: new credentials connect the user as through the API."""
    given = given_credentials(user)
    refuse(given_credential_problems(ProviderKind.of(user.connection.provider), given))
    _after_credentials(user, given)
    save_user(user)


# --- disconnect, archive, restore ---------------------------------------------------------


def disconnect_user(user_id: int) -> MailboxUser | None:
    """Forget the user's credentials and tell the partner user_disconnected if it was
    connected. Run inside a transaction. The row is locked and re-read: the engine's persist
    locks it too, so either its new_mail commits before this (and before user_disconnected)
    or it sees the user gone and discards its batch: never a new_mail after
    user_disconnected."""
    locked = (
        MailboxUser.objects.select_for_update(of=("self",))
        .select_related("connection__provider", "connection__partner")
        .filter(id=user_id)
        .first()
    )
    if locked is None:
        return None
    was_connected = locked.connected_at is not None
    locked.password = ""
    locked.oauth_refresh_token = ""
    locked.connected_at = None
    locked.connect_pending = ""  # its credentials are gone: nothing left to tell
    locked.status = Status.STOPPED
    save_user(locked)
    if was_connected:
        enqueue_user_event(Delivery.Kind.USER_DISCONNECTED, locked)
    return locked


def archive_user(user: MailboxUser) -> None:
    """No longer watched; restore_user undoes it. Already archived: nothing changes."""
    if not user.archived:
        user.archive()


def _active_twin_exists(user: MailboxUser) -> bool:
    twins = MailboxUser.objects.filter(connection_id=user.connection_id, tag=user.tag)
    return twins.filter(archived=False).exclude(id=user.id).exists()


def unarchive(user: MailboxUser) -> None:
    """Mark an archived user active again, not saved yet; 409 if an active user has its tag
    (one active user per tag and connection)."""
    if _active_twin_exists(user):
        raise Refused(409, "duplicate", f"An active user {user.tag!r} exists already.")
    user.archived = False
    user.archived_at = None


def restore_user(user: MailboxUser) -> None:
    """Watch an archived user again (from its checkpoint)."""
    if not user.archived:
        return
    unarchive(user)
    save_user(user, ["archived", "archived_at"])


# --- operator actions: backfill (sweep), reconnect, pause, resume ----------------------------


def _must_be_watchable(user: MailboxUser) -> None:
    if user.archived:
        raise Refused(409, "archived", f"User {user.tag!r} is archived; restore it with PUT.")
    if not user.watchable:
        raise Refused(409, "not_connected", f"User {user.tag!r} is not connected.")


def sweep_user(user: MailboxUser) -> None:
    """A sweep is a backfill of all mail (design.md 4.12): every message of the primary
    folder not sent yet goes out; 409 if the user is archived or not connected."""
    backfill_user(user, None)


def backfill_user(user: MailboxUser, since: datetime | None) -> None:
    """Ask the engine to send the mail of the primary folder since ``since`` (None: all of
    it) as new_mail with "backfill": true; 409 if archived or not connected. A running
    backfill is replaced by the new request."""
    _must_be_watchable(user)
    request_backfill(user, since)


def request_backfill(user: MailboxUser, since: datetime | None) -> None:
    """The request itself: the session restarts, fixes the window and sends it paced; the
    engine keeps the position and done count per batch and sets backfill_finished_at."""
    set_backfill(user, since)
    restart_session(user)
    save_user(user, [*BACKFILL_FIELDS, "session_version"])


BACKFILL_FIELDS = (
    "backfill_requested_at",
    "backfill_since",
    "backfill_uid_validity",
    "backfill_until_uid",
    "backfill_position",
    "backfill_total",
    "backfill_done",
    "backfill_finished_at",
)


def set_backfill(user: MailboxUser, since: datetime | None) -> None:
    """A new backfill request on ``user`` (not saved): the window is fixed by the engine."""
    user.backfill_requested_at = timezone.now()
    user.backfill_since = since
    user.backfill_uid_validity = user.backfill_until_uid = user.backfill_position = None
    user.backfill_total = user.backfill_done = 0
    user.backfill_finished_at = None


def reconnect_user(user: MailboxUser) -> None:
    """Skip the back-off: the engine restarts the session within a refresh (a few seconds)
    and logs in at once; nothing is sent again (the session catches up from the
    checkpoint)."""
    _must_be_watchable(user)
    if user.paused_at is not None:
        raise Refused(409, "paused", f"User {user.tag!r} is paused; resume it instead.")
    restart_session(user)
    save_user(user, ["session_version"])


def pause_user(user: MailboxUser) -> None:
    """Stop watching the mailbox (no session) until it is resumed; idempotent. The engine
    releases it at its next refresh; the session's own last status report is not written
    (store.save_statuses)."""
    _must_be_watchable(user)
    if user.paused_at is not None:
        return
    user.paused_at = timezone.now()
    user.status = Status.PAUSED
    user.status_changed_at = user.paused_at
    save_user(user, ["paused_at", "status", "status_changed_at"])


def resume_user(user: MailboxUser) -> None:
    """Watch a paused mailbox again, catching up from its checkpoint; idempotent."""
    if user.archived:
        raise Refused(409, "archived", f"User {user.tag!r} is archived; restore it with PUT.")
    if user.paused_at is None:
        return
    user.paused_at = None
    user.status = Status.NEW
    user.status_changed_at = timezone.now()
    restart_session(user)
    save_user(user, ["paused_at", "status", "status_changed_at", "session_version"])

