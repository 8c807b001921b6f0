"""Request and response bodies of API v1."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from ninja import Schema
from pydantic import ConfigDict, Field, model_validator

TlsMode = Literal["implicit", "starttls", "none"]
# PostgreSQL text cannot hold NUL; refuse it here (422) rather than fail in the database.
NO_NUL = r"^[^\x00]*$"
OAUTH_BASE_URL = r"^https?://[^\s\x00]+$"


class ErrorBody(Schema):
    code: str
    message: str
    details: list | dict | None = None


class ErrorOut(Schema):
    error: ErrorBody


class ConnectionUpdate(Schema):
    model_config = ConfigDict(extra="forbid")

    oauth_client_id: str | None = Field(default=None, max_length=500, pattern=NO_NUL)
    oauth_client_secret: str | None = Field(default=None, max_length=2000, pattern=NO_NUL)
    imap_host: str | None = Field(default=None, max_length=255, pattern=NO_NUL)
    imap_port: int | None = Field(default=None, ge=1, le=65535)
    imap_tls: TlsMode | None = None
    smtp_host: str | None = Field(default=None, max_length=255, pattern=NO_NUL)
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_tls: TlsMode | None = None
    oauth_base_url: str | None = Field(
        default=None,
        max_length=500,
        pattern=OAUTH_BASE_URL,
        description="Loopback OAuth test providers only: the local OAuth server's base URL.",
    )


class ConnectionIn(ConnectionUpdate):
    """A new connection: the provider code, plus the settings that provider needs."""

    imap_provider_code: str = Field(min_length=1, max_length=64, pattern=NO_NUL)


class ConnectionOut(Schema):
    imap_provider_code: str
    imap_provider_title: str
    auth_kind: str
    oauth_client_id: str
    oauth_client_secret: str = Field(description='"- encrypted -" when set; never the secret.')
    imap_host: str
    imap_port: int
    imap_tls: str
    smtp_host: str = Field(default="", description="Where tracer emails are sent from.")
    smtp_port: int = 587
    smtp_tls: str = "starttls"
    oauth_base_url: str = ""
    users_count: int
    created_at: datetime


class UserIn(Schema):
    model_config = ConfigDict(extra="forbid")

    tag: str = Field(min_length=1, max_length=255, pattern=r"^[^/\s\x00]+$")
    email: str | None = Field(default=None, max_length=320, pattern=NO_NUL)
    login_username: str | None = Field(default=None, max_length=320, pattern=NO_NUL)
    password: str | None = Field(default=None, max_length=2000, pattern=NO_NUL)
    enable_tracer: bool = False


class UserUpdate(Schema):
    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, max_length=320, pattern=NO_NUL)
    login_username: str | None = Field(default=None, max_length=320, pattern=NO_NUL)
    password: str | None = Field(default=None, max_length=2000, pattern=NO_NUL)
    enable_tracer: bool | None = None


class UserOut(Schema):
    tag: str
    imap_provider_code: str
    email: str
    connected_at: datetime | None
    connect_url: str
    disconnect_url: str
    archived: bool
    enable_tracer: bool
    status: str
    last_error: str
    last_email_at: datetime | None
    sweep_requested_at: datetime | None = Field(
        default=None, description="Set while a requested inbox sweep is pending."
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
    status: str
    user_tag: str | None
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[DeliveryAttemptOut]


class ReplayIn(Schema):
    model_config = ConfigDict(extra="forbid")

    since: datetime = Field(description="Deliveries created at or after this time (ISO 8601).")
    until: datetime = Field(description="... and before this time.")
    event: Literal["new_mail", "user_connected", "user_disconnected"] | None = None
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
