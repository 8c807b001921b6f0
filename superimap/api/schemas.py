"""Request and response bodies of API v1."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Literal

from ninja import Schema
from pydantic import ConfigDict, Field, field_validator

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
# Control, format (bidi overrides, zero-width), surrogate, private-use and unassigned
# characters, and line/paragraph separators: a tag shows in dashboards and logs as is.
INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def visible_tag(value: str) -> str:
    for char in value:
        if unicodedata.category(char) in INVISIBLE_CATEGORIES:
            raise ValueError(
                f"tag must not contain control, bidi or zero-width characters (U+{ord(char):04X})"
            )
    return value


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
    # strict: true and "993" are not ports.
    imap_port: int | None = Field(default=None, ge=1, le=65535, strict=True)
    imap_tls: TlsMode | None = None
    smtp_host: str | None = Field(default=None, max_length=255, pattern=NO_NUL)
    smtp_port: int | None = Field(default=None, ge=1, le=65535, strict=True)
    smtp_tls: TlsMode | None = None
    oauth_base_url: str | None = Field(
        default=None,
        max_length=500,
        pattern=OAUTH_BASE_URL,
        description="Loopback OAuth test providers only: the local OAuth server's base URL.",
    )


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

    @field_validator("tag")
    @classmethod
    def tag_is_visible(cls, value: str) -> str:
        return visible_tag(value)


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
