"""Request and response bodies of API v1."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ClassVar, Literal

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from ninja import Schema
from pydantic import ConfigDict, Field, field_validator, model_validator

from superimap.accounts.checks import filters_problems
from superimap.partners.folders import FOLDER_FLAGS, MAX_FOLDERS, checked_folders
from superimap.platform.validation import host_problem, invisible_char_problem

TlsMode = Literal["implicit", "starttls", "none"]
# PostgreSQL text cannot hold NUL; refuse it here (422) rather than fail in the database.
NO_NUL = r"^[^\x00]*$"
OAUTH_BASE_URL = r"^https?://[^\s\x00]+$"
# The seeded providers (partners/migrations); an operator-added one works too (the service
# checks the code against the database), it is just not listed here.
PROVIDER_CODES = [
    "GMAIL_OAUTH2",
    "OUTLOOK_OAUTH2",
    "PLAIN",
    "YAHOO_PLAIN",
    "ICLOUD_PLAIN",
    "FASTMAIL_PLAIN",
    "LOOPBACK_PLAIN",
    "LOOPBACK_OAUTH2",
]
# Integer fields that are strict in JSON (true and "993" are not ports). A form body or a
# query string can only carry text, so RailsParamsMiddleware turns their digit strings into
# numbers first, as the original's Rails models cast them.
STRICT_INTEGER_FIELDS = frozenset({"imap_port", "smtp_port"})
HOST_DESCRIPTION = "An IP address or a host name (RFC 1123; Unicode names as IDNA)."


FOLDERS_DESCRIPTION = (
    'Folders to watch: names (e.g. "INBOX", "Lists/dev") or special-use flags ('
    + ", ".join(FOLDER_FLAGS)
    + "). The first is watched by IDLE, the others by NOTIFY where the server has it, else "
    "by STATUS every FOLDER_POLL_SECONDS (60 s). [] or unset: the default (the \\All folder, "
    "else Gmail's All Mail, else INBOX). A user's list wins over its connection's."
)


def folders_field() -> Any:
    return Field(
        default=None,
        max_length=MAX_FOLDERS,
        description=FOLDERS_DESCRIPTION,
        json_schema_extra={"items": {"type": "string", "minLength": 1, "maxLength": 1000}},
    )


FILTERS_DESCRIPTION = (
    "Filters before the webhook: only mail that matches at least one filter is delivered as "
    "new_mail; the rest is recorded as skipped with reason filtered (GET .../messages?status="
    "skipped). Within a filter every condition given must hold. [] : everything is delivered."
)
ADDRESSES = (
    'An address ("ann@example.com", any case) or "@domain" (that exact domain), or a list '
    "of them (any of them matches any address of the header)."
)
StringOrList = str | list[str]


class FilterIn(Schema):
    """One filter (sync/filters.py); at least one condition besides the name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=100, description="Unique in the list.")
    from_: StringOrList | None = Field(default=None, alias="from", description=ADDRESSES)
    to: StringOrList | None = Field(default=None, description=ADDRESSES)
    cc: StringOrList | None = Field(default=None, description=ADDRESSES)
    delivered_to: StringOrList | None = Field(
        default=None, description=ADDRESSES + " Read from the Delivered-To header."
    )
    subject_contains: StringOrList | None = Field(
        default=None, description="Text the subject contains, any case (a list: any of them)."
    )
    folder: StringOrList | None = Field(
        default=None, description="The watched folder it arrived in (a list: any of them)."
    )
    min_size: int | None = Field(default=None, ge=0, strict=True, description="Bytes, inclusive.")
    max_size: int | None = Field(default=None, ge=0, strict=True, description="Bytes, inclusive.")
    has_attachments: bool | None = Field(
        default=None,
        strict=True,
        description="A part with a filename or disposition attachment (for mail over "
        "MAX_EMAIL_SIZE, of which only the header is read: a multipart/mixed message).",
    )


def filters_field() -> Any:
    return Field(default=None, max_length=50, description=FILTERS_DESCRIPTION)


def stored_filters(value: list[FilterIn] | None) -> list[dict] | None:
    """The filters as stored and shown: the given conditions under their JSON names."""
    if value is None:
        return None
    return [f.model_dump(by_alias=True, exclude_none=True) for f in value]


def checked_filters(value: list[FilterIn] | None) -> list[FilterIn] | None:
    """accounts.checks.filters_problems: addresses, sizes, names (the engine's rules)."""
    for problem in filters_problems(stored_filters(value)):
        raise ValueError(problem.message)
    return value


def visible_tag(value: str) -> str:
    """A tag shows in dashboards and logs as is: no control, bidi, zero-width or other
    default-ignorable character (such as the Hangul filler U+3164)."""
    if problem := invisible_char_problem(value):
        raise ValueError(f"tag {problem}")
    return value


def host_name(value: str | None) -> str | None:
    """imap_host / smtp_host: validation.host_problem(), as the dashboard and the CLI."""
    # Blank: "imap_host is required" (missing_field) comes from the service.
    if value and value.strip() and (problem := host_problem(value.strip())):
        raise ValueError(f"host {problem}")
    return value


class ErrorBody(Schema):
    code: str
    message: str
    details: list | dict | None = None


class ErrorOut(Schema):
    error: ErrorBody


class OriginalNames(Schema):
    """Accepts the original's field names as aliases of ours (`ALIASES`: theirs -> ours).

    An alias's value is copied onto our field (declared with the same constraints); giving
    both with different values is a 422. Services read our names only.
    """

    ALIASES: ClassVar[dict[str, str]] = {}

    @model_validator(mode="after")
    def _fold_aliases(self) -> Any:
        for theirs, ours in self.ALIASES.items():
            if theirs in self.model_fields_set:
                value = getattr(self, theirs)
                if ours in self.model_fields_set and getattr(self, ours) != value:
                    raise ValueError(f"{theirs} and {ours} name the same field; give one.")
                self.__dict__[ours] = value
                self.model_fields_set.add(ours)
        return self


def alias_of(ours: str, **constraints) -> Any:
    return Field(
        default=None, description=f"The original's name for `{ours}`; same meaning.", **constraints
    )


class ConnectionUpdate(OriginalNames):
    model_config = ConfigDict(extra="forbid")
    ALIASES: ClassVar[dict[str, str]] = {
        "oauth2_client_id": "oauth_client_id",
        "oauth2_client_secret": "oauth_client_secret",
    }

    oauth_client_id: str | None = Field(default=None, max_length=500, pattern=NO_NUL)
    oauth_client_secret: str | None = Field(default=None, max_length=2000, pattern=NO_NUL)
    imap_host: str | None = Field(
        default=None, max_length=255, pattern=NO_NUL, description=HOST_DESCRIPTION
    )
    # strict (STRICT_INTEGER_FIELDS): true and "993" are not ports.
    imap_port: int | None = Field(default=None, ge=1, le=65535, strict=True)
    imap_tls: TlsMode | None = None
    imap_tls_ca: str | None = Field(
        default=None,
        max_length=65536,
        pattern=NO_NUL,
        description="PLAIN: PEM certificate(s) to trust for this server instead of the "
        'system CAs (a private CA or a self-signed certificate); "" clears it.',
    )
    imap_tls_verify: bool | None = Field(
        default=None,
        description="PLAIN: false accepts any certificate (insecure; reported in warnings).",
    )
    imap_allow_plaintext: bool | None = Field(
        default=None,
        description='PLAIN: true allows imap_tls "none" (no TLS; reported in warnings).',
    )
    idle_refresh_seconds: int | None = Field(
        default=None,
        ge=0,
        le=1740,
        description="End IDLE and start it again this often, for servers that only look for "
        "new mail when IDLE starts (stock Cyrus without idled, Courier); 0: off. Unset: "
        "automatic (15 s for servers whose greeting names Cyrus or Courier, else off).",
    )
    folders: list[str] | None = folders_field()
    filters: list[FilterIn] | None = filters_field()
    smtp_host: str | None = Field(
        default=None, max_length=255, pattern=NO_NUL, description=HOST_DESCRIPTION
    )
    smtp_port: int | None = Field(default=None, ge=1, le=65535, strict=True)
    smtp_tls: TlsMode | None = None
    oauth_base_url: str | None = Field(
        default=None,
        max_length=500,
        pattern=OAUTH_BASE_URL,
        description="Loopback OAuth test providers only: the local OAuth server's base URL.",
    )
    oauth2_client_id: str | None = alias_of("oauth_client_id", max_length=500, pattern=NO_NUL)
    oauth2_client_secret: str | None = alias_of(
        "oauth_client_secret", max_length=2000, pattern=NO_NUL
    )
    imap_provider_code: str | None = Field(
        default=None,
        max_length=64,
        description="Ignored on update: the path's code wins, as in the original.",
    )

    @field_validator("folders")
    @classmethod
    def folders_are_names_or_flags(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else checked_folders(value)

    @field_validator("filters")
    @classmethod
    def filters_check(cls, value: list[FilterIn] | None) -> list[FilterIn] | None:
        return checked_filters(value)

    @field_validator("imap_host", "smtp_host")
    @classmethod
    def hosts_are_host_names(cls, value: str | None) -> str | None:
        return host_name(value)


class ConnectionIn(ConnectionUpdate):
    """A new connection: the provider code, plus the settings that provider needs."""

    imap_provider_code: str = Field(
        min_length=1, max_length=64, pattern=NO_NUL, json_schema_extra={"enum": PROVIDER_CODES}
    )


class ConnectionOut(Schema):
    imap_provider_code: str
    imap_provider_title: str
    auth_kind: str
    oauth_client_id: str
    oauth_client_secret: str = Field(description='"- encrypted -" when set; never the secret.')
    imap_host: str
    imap_port: int
    imap_tls: str
    imap_tls_ca: str = ""
    imap_tls_verify: bool = True
    imap_allow_plaintext: bool = False
    idle_refresh_seconds: int | None = Field(
        default=None,
        description="IDLE re-issue period in seconds; 0: off; null: automatic by server.",
    )
    folders: list[str] = Field(default_factory=list, description=FOLDERS_DESCRIPTION)
    filters: list[dict[str, Any]] = Field(default_factory=list, description=FILTERS_DESCRIPTION)
    warnings: list[str] = Field(
        default_factory=list, description="Insecure settings (no TLS, no verification)."
    )
    smtp_host: str = Field(default="", description="Where tracer emails are sent from.")
    smtp_port: int = 587
    smtp_tls: str = "starttls"
    oauth_base_url: str = ""
    users_count: int
    created_at: datetime


class UserFields(OriginalNames):
    model_config = ConfigDict(extra="forbid")
    ALIASES: ClassVar[dict[str, str]] = {
        "login_password": "password",
        "oauth2_refresh_token": "oauth_refresh_token",
    }

    email: str | None = Field(
        default=None,
        max_length=320,
        pattern=NO_NUL,
        description="The mailbox's email address (name@domain); empty clears it.",
    )
    login_username: str | None = Field(default=None, max_length=320, pattern=NO_NUL)
    password: str | None = Field(
        default=None,
        max_length=2000,
        pattern=NO_NUL,
        description="Password users: with login_username (or email) connects the user; "
        "user_connected is sent once the engine's first login with it succeeds "
        "(user_error auth_failed if the server refuses it).",
    )
    oauth_refresh_token: str | None = Field(
        default=None,
        max_length=4000,
        pattern=NO_NUL,
        description="OAuth users: a refresh token the partner already holds; with email it "
        "connects the user (no connect flow); user_connected is sent once the engine's "
        "first XOAUTH2 login with it succeeds.",
    )
    archived: bool | None = Field(
        default=None, description="true archives the user, false restores it; unset keeps it."
    )
    folders: list[str] | None = folders_field()
    filters: list[FilterIn] | None = Field(
        default=None,
        max_length=50,
        description=FILTERS_DESCRIPTION + " The user's own win over its connection's; "
        "null: the connection's.",
    )
    verify: bool | None = Field(
        default=None,
        description="Password users: true logs in with the credentials during the call, "
        "before anything is saved: 422 imap_auth_failed if the server refuses them, 502 "
        "imap_unavailable or imap_tls_failed if it cannot be reached or its certificate "
        "does not verify. Not stored.",
    )
    login_password: str | None = alias_of("password", max_length=2000, pattern=NO_NUL)
    oauth2_refresh_token: str | None = alias_of(
        "oauth_refresh_token", max_length=4000, pattern=NO_NUL
    )

    @field_validator("folders")
    @classmethod
    def folders_are_names_or_flags(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else checked_folders(value)

    @field_validator("filters")
    @classmethod
    def filters_check(cls, value: list[FilterIn] | None) -> list[FilterIn] | None:
        return checked_filters(value)

    @field_validator("email")
    @classmethod
    def email_is_an_address(cls, value: str | None) -> str | None:
        """The hosted form and XOAUTH2 logins use it as an address: refuse what is not one
        (Django's rule, as the hosted form's EmailField)."""
        if value:
            try:
                validate_email(value)
            except DjangoValidationError:
                raise ValueError("not an email address (name@domain)") from None
        return value


MAX_BACKFILL_DAYS = 36500
BACKFILL_FIELDS = ("backfill_since", "backfill_days")  # UserIn's, not MailboxUser fields
BACKFILL_SINCE = (
    "Backfill (README, Backfill): the mail already in the primary folder since this moment "
    "(ISO 8601 with a time zone, or a date: its midnight UTC) is sent as new_mail with "
    '"backfill": true, oldest first, paced.'
)
BACKFILL_DAYS = "Backfill: the mail of the last this many days (1-36500), as since."


def backfill_start(since: datetime | date | None, days: int | None) -> datetime | None:
    """The moment a backfill window starts; at most one of ``since`` and ``days``. Raises
    ValueError (a 422) for a time without a zone, both given, or a start in the future."""
    if since is not None and days is not None:
        raise ValueError("give since or days, not both")
    now = datetime.now(UTC)
    if days is not None:
        return now - timedelta(days=days)
    if since is None:
        return None
    if not isinstance(since, datetime):
        since = datetime.combine(since, time(), tzinfo=UTC)
    if since.tzinfo is None:
        raise ValueError("since needs a time zone (e.g. 2026-01-01T00:00:00Z)")
    if since > now:
        raise ValueError("since is in the future")
    return since


def date_or_moment(value: Any) -> Any:
    """"2026-01-02" is a date (its midnight UTC), not a moment without a time zone."""
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return date.fromisoformat(value)
    return value


class BackfillIn(Schema):
    model_config = ConfigDict(extra="forbid")

    since: datetime | date | None = Field(default=None, description=BACKFILL_SINCE)
    days: int | None = Field(default=None, ge=1, le=MAX_BACKFILL_DAYS, description=BACKFILL_DAYS)

    _since = field_validator("since", mode="before")(date_or_moment)

    @model_validator(mode="after")
    def _one(self):
        if self.since is None and self.days is None:
            raise ValueError("give since or days (POST .../sweep backfills all mail)")
        backfill_start(self.since, self.days)
        return self

    def start(self) -> datetime | None:
        return backfill_start(self.since, self.days)


class BackfillOut(Schema):
    state: Literal["pending", "running", "done"] = Field(
        description="pending (asked, the engine has not started it), running, done."
    )
    since: datetime | None = Field(description="The window's start; null: all mail (a sweep).")
    requested_at: datetime
    finished_at: datetime | None
    done: int = Field(description="Messages of the window handled: delivered or skipped.")
    total: int = Field(description="Messages in the window (0 until it is running).")


class UserIn(UserFields):
    tag: str = Field(min_length=1, max_length=255, pattern=r"^[^/\s\x00]+$")
    enable_tracer: bool = False
    backfill_since: datetime | date | None = Field(default=None, description=BACKFILL_SINCE)
    backfill_days: int | None = Field(
        default=None, ge=1, le=MAX_BACKFILL_DAYS, description=BACKFILL_DAYS
    )

    _backfill_since = field_validator("backfill_since", mode="before")(date_or_moment)

    @model_validator(mode="after")
    def _backfill(self):
        backfill_start(self.backfill_since, self.backfill_days)
        return self

    def wants_backfill(self) -> bool:
        return self.backfill_since is not None or self.backfill_days is not None

    @field_validator("tag")
    @classmethod
    def tag_is_visible(cls, value: str) -> str:
        return visible_tag(value)


class UserUpdate(UserFields):
    enable_tracer: bool | None = None
    tag: str | None = Field(
        default=None,
        max_length=255,
        description="Ignored: the path's tag wins, as in the original.",
    )


class UserOut(Schema):
    tag: str
    imap_provider_code: str
    email: str | None = Field(description="null until known, as in the original.")
    connected_at: datetime | None
    connect_url: str
    disconnect_url: str
    archived: bool
    enable_tracer: bool
    folders: list[str] = Field(
        default_factory=list, description="The user's own folders ([]: its connection's)."
    )
    filters: list[dict[str, Any]] | None = Field(
        default=None, description="The user's own filters (null: its connection's)."
    )
    filters_in_force: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The filters the engine applies: the user's when set, else its "
        "connection's ([]: everything is delivered).",
    )
    status: str = Field(
        description="The engine's status (new, connecting, idle, polling, syncing, backing_off, "
        "auth_failed, tls_failed, stopped), paused (by POST .../pause: not watched until "
        "POST .../resume), or engine_down: the engine node watching it "
        "stopped and no other has taken it over yet (it is not watched)."
    )
    last_error: str
    last_email_at: datetime | None
    failing_since: datetime | None = Field(
        default=None,
        description="Since when the mailbox has been failing; cleared once it is watched again.",
    )
    sweep_requested_at: datetime | None = Field(
        default=None,
        description="Set while a requested sweep (a backfill of all mail) is not done.",
    )
    backfill: BackfillOut | None = Field(
        default=None, description="The last backfill asked for and its progress; null: none."
    )
    paused_at: datetime | None = Field(
        default=None, description="Set while the mailbox is paused (not watched)."
    )
    created_at: datetime


class DeliveryAttemptOut(Schema):
    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str
    response_excerpt: str


class DeliveryOut(Schema):
    event_id: str
    kind: str
    backfill: bool = Field(
        default=False, description='A new_mail of a backfill ("backfill": true in its body).'
    )
    status: str
    user_tag: str | None
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[DeliveryAttemptOut]


class MessageOut(Schema):
    uid: int
    uid_validity: int
    folder: str
    message_id: str = Field(description="Empty when the message was gone before it was read.")
    subject: str
    size: int
    internal_date: datetime | None
    status: Literal["delivered", "skipped"]
    reason: str | None = Field(
        description="Why it was skipped: expunged, duplicate, before_baseline, tracer, "
        "unfetchable, filtered (older rows may hold free text); null when delivered as "
        "new_mail."
    )
    detail: str = Field(
        default="",
        description='With filters: the filter that selected it ("filter <name>"), or for a '
        'filtered one "no filter matched (<names>)"; else empty.',
    )
    created_at: datetime


class MessagePage(Schema):
    messages: list[MessageOut]
    next_cursor: str | None = Field(
        description="Pass as cursor= for the next (older) page; null on the last page."
    )


class ReplayIn(Schema):
    model_config = ConfigDict(extra="forbid")

    since: datetime = Field(description="Deliveries created at or after this time (ISO 8601).")
    until: datetime = Field(description="... and before this time.")
    event: (
        Literal[
            "new_mail",
            "user_connected",
            "user_disconnected",
            "user_error",
            "user_recovered",
            "message_updated",
            "message_deleted",
        ]
        | None
    ) = None
    user_tag: str | None = Field(default=None, max_length=255, pattern=NO_NUL)
    status: Literal["delivered", "failed", "skipped", "cancelled"] | None = Field(
        default=None, description="Only deliveries in this state; default: all but pending."
    )

    @model_validator(mode="after")
    def _range(self):
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ValueError("since and until need a time zone (e.g. 2026-01-01T00:00:00Z)")
        if self.since >= self.until:
            raise ValueError("since must be before until")
        return self


class ReplayOut(Schema):
    queued: int = Field(description="Deliveries queued to be sent again (same event_id).")
    not_replayable: int = Field(
        description="Matching deliveries whose payload was purged by retention."
    )
