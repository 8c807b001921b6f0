"""Partner self-service: the calling partner's own settings, key and secret rotation, and a
test webhook. The API key and the signing secret are shown only by the call that makes them."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta
from typing import Literal

from django.conf import settings
from django.utils import timezone
from ninja import Router, Schema
from pydantic import ConfigDict, Field, field_validator

from superimap.accounts import partners
from superimap.api.errors import ApiError
from superimap.api.schemas import NO_NUL, ErrorOut
from superimap.delivery.http import make_session, post, render_request
from superimap.delivery.payloads import sha1_hex
from superimap.partners.models import DEFAULT_ROTATION_GRACE, URL_FIELDS, Partner
from superimap.platform.validation import host_problem, url_host_problem

router = Router(tags=["partner"])

WebhookKind = Literal[
    "new_mail",
    "user_connected",
    "user_disconnected",
    "user_error",
    "user_recovered",
    "message_updated",
    "message_deleted",
]
URL = r"^(https?://[^\s\x00]+)?$"
DEFAULT_GRACE_SECONDS = int(DEFAULT_ROTATION_GRACE.total_seconds())
MAX_GRACE_SECONDS = 30 * 24 * 3600
PING_TIMEOUT_SECONDS = 10.0
ERRORS = {401: ErrorOut, 413: ErrorOut, 422: ErrorOut}
# Routes that change keys, secrets, URLs or other settings: 403 for a key in its grace.
SETTINGS_ERRORS = {**ERRORS, 403: ErrorOut}


def refuse_key_in_grace(request) -> None:
    """403 key_in_grace when the call was made with the previous API key, in its rotation
    grace period. That key may keep using the data routes (users, deliveries, messages) while
    deployments switch over, but not change keys, secrets, webhook URLs, callback hosts or
    other settings: a leaked old key cannot lock the owner out or re-point the webhooks."""
    if getattr(request.auth, "key_in_grace", False):
        raise ApiError(
            403,
            "key_in_grace",
            "This API key was rotated and is valid only in its grace period, for data "
            "routes; use the current key to change keys, secrets or settings.",
        )


class PartnerOut(Schema):
    name: str
    new_mail_webhook: str
    user_connected_webhook: str
    user_disconnected_webhook: str
    user_error_webhook: str
    user_recovered_webhook: str
    message_updated_webhook: str
    message_deleted_webhook: str
    success_url: str
    failure_url: str
    allowed_redirect_hosts: list[str] = Field(
        description="Hosts callbacks may point to, besides the hosts of the partner's own "
        "webhook and success/failure URLs (always allowed)."
    )
    effective_redirect_hosts: list[str] = Field(
        description="Every host a ?success= / ?failure= callback may point to."
    )
    previous_api_key_valid_until: datetime | None = Field(
        description="While set, the previous API key still works."
    )
    previous_webhook_secret_valid_until: datetime | None = Field(
        description="While set, webhooks are signed by the previous secret too."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Saved URLs that are refused now (a host that no longer resolves, or "
        "resolves to an internal address): the worker will not send to them until fixed.",
    )


class PartnerUpdate(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL)
    new_mail_webhook: str | None = Field(default=None, max_length=1000, pattern=URL)
    user_connected_webhook: str | None = Field(default=None, max_length=1000, pattern=URL)
    user_disconnected_webhook: str | None = Field(default=None, max_length=1000, pattern=URL)
    user_error_webhook: str | None = Field(default=None, max_length=1000, pattern=URL)
    user_recovered_webhook: str | None = Field(default=None, max_length=1000, pattern=URL)
    message_updated_webhook: str | None = Field(default=None, max_length=1000, pattern=URL)
    message_deleted_webhook: str | None = Field(default=None, max_length=1000, pattern=URL)
    success_url: str | None = Field(default=None, max_length=1000, pattern=URL)
    failure_url: str | None = Field(default=None, max_length=1000, pattern=URL)
    allowed_redirect_hosts: list[str] | str | None = Field(
        default=None,
        description="A list of host names, or one comma-separated string (form bodies).",
    )

    @field_validator(*URL_FIELDS)
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value and (problem := url_host_problem(value.strip())):
            raise ValueError(problem)
        return value

    @field_validator("allowed_redirect_hosts")
    @classmethod
    def _hosts(cls, value: list[str] | str | None) -> list[str] | None:
        if value is None:
            return None
        hosts = value.split(",") if isinstance(value, str) else value
        cleaned = [h.strip().lower() for h in hosts if h.strip()]
        for host in cleaned:
            if problem := host_problem(host):
                raise ValueError(f"{host!r} {problem}.")
        if len(",".join(cleaned)) > 1000:
            raise ValueError("Too many hosts (1000 characters at most).")
        return cleaned


class RotateIn(Schema):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(
        default=DEFAULT_GRACE_SECONDS,
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="How long the previous value stays valid (default 24 h).",
    )


class ApiKeyOut(Schema):
    api_key: str = Field(description="The new key; shown only in this response.")
    previous_api_key_valid_until: datetime


class SecretOut(Schema):
    webhook_secret: str = Field(description="The new whsec_ secret; shown only here.")
    previous_webhook_secret_valid_until: datetime


class TestWebhookIn(Schema):
    model_config = ConfigDict(extra="forbid")

    kind: WebhookKind = "new_mail"


class TestWebhookOut(Schema):
    kind: str
    url: str
    event_id: str
    status_code: int | None = Field(description="The receiver's answer; null if none came.")
    succeeded: bool
    latency_ms: int
    error: str
    response_excerpt: str


def _while_valid(until: datetime | None) -> datetime | None:
    return until if until and until > timezone.now() else None


def partner_out(partner: Partner) -> dict:
    return {
        "name": partner.name,
        **{f"{kind}_webhook": partner.webhook_url(kind) for kind in Partner.WEBHOOK_KINDS},
        "success_url": partner.success_url,
        "failure_url": partner.failure_url,
        "allowed_redirect_hosts": [
            h.strip() for h in partner.allowed_redirect_hosts.split(",") if h.strip()
        ],
        "effective_redirect_hosts": sorted(partner.redirect_hosts()),
        "previous_api_key_valid_until": _while_valid(partner.previous_api_key_until),
        "previous_webhook_secret_valid_until": _while_valid(partner.previous_webhook_secret_until),
        "warnings": partners.stale_url_warnings(partner),
    }


@router.get("/partner", response={200: PartnerOut, **ERRORS})
def get_partner(request):
    """The calling partner's settings: webhook URLs per event kind, callbacks, allowed hosts."""
    return partner_out(request.auth)


@router.put("/partner", response={200: PartnerOut, 409: ErrorOut, **SETTINGS_ERRORS})
def update_partner(request, body: PartnerUpdate):
    """Change the name, webhook URLs, success/failure URLs or allowed callback hosts ("" clears
    a URL). Only the URLs given are checked: one saved earlier that is refused now does not
    block the change; it is listed in `warnings`. 409 if another partner has the name
    (ignoring case); 403 key_in_grace with a rotated key."""
    refuse_key_in_grace(request)
    given = body.model_dump(exclude_unset=True)
    if given.get("allowed_redirect_hosts") is not None:
        given["allowed_redirect_hosts"] = ",".join(given["allowed_redirect_hosts"])
    # URLs given or changed: a host name, http(s), and no internal address in production.
    partners.update_partner(request.auth, given)
    return partner_out(request.auth)


@router.post("/partner/rotate-api-key", response={200: ApiKeyOut, **SETTINGS_ERRORS})
def rotate_api_key(request, body: RotateIn):
    """A new API key. The key used for this call stays valid for grace_seconds (default 24 h)
    so deployments can switch over; the body `signature` of webhooks uses the new key.
    Rotating again ends the grace of the key before. 403 key_in_grace with a rotated key."""
    refuse_key_in_grace(request)
    partner = request.auth
    key = partners.rotate_api_key(partner, timedelta(seconds=body.grace_seconds))
    return {"api_key": key, "previous_api_key_valid_until": partner.previous_api_key_until}


@router.post("/partner/rotate-secret", response={200: SecretOut, **SETTINGS_ERRORS})
def rotate_secret(request, body: RotateIn):
    """A new Standard Webhooks signing secret. For grace_seconds (default 24 h) every webhook
    carries two signatures in `webhook-signature`, by the new and the previous secret.
    403 key_in_grace with a rotated key."""
    refuse_key_in_grace(request)
    partner = request.auth
    secret = partners.rotate_webhook_secret(partner, timedelta(seconds=body.grace_seconds))
    return {
        "webhook_secret": secret,
        "previous_webhook_secret_valid_until": partner.previous_webhook_secret_until,
    }


@router.post("/partner/test-webhook", response={200: TestWebhookOut, 409: ErrorOut, **ERRORS})
def test_webhook(request, body: TestWebhookIn):
    """Send a signed `ping` event to the URL of one webhook kind now (no retries) and report
    the receiver's status code and latency. 409 if the partner has no URL for that kind."""
    return send_test_webhook(request.auth, body.kind)


def send_test_webhook(partner: Partner, kind: str) -> dict:
    """POST a signed ping to the partner's URL for ``kind`` through the worker's checked
    connector (netguard: private addresses refused unless allowed). Shared by the API and the
    dashboard's "Send test webhook" button. ApiError 409 without a URL for that kind."""
    url = partner.webhook_url(kind)
    if not url:
        raise ApiError(409, "no_webhook_url", f"No {kind} webhook URL is set.")
    event_id = str(uuid.uuid4())
    raw, headers = render_request(
        {"sha1": sha1_hex(event_id), "webhook_kind": kind},
        event_id=event_id,
        kind="ping",
        api_key=partner.api_key,
        webhook_secrets=partner.signing_secrets(),
        timestamp=int(time.time()),
    )
    result = asyncio.run(_send(url, raw, headers))
    return {
        "kind": kind,
        "url": url,
        "event_id": event_id,
        "status_code": result.status_code,
        "succeeded": result.succeeded,
        "latency_ms": result.duration_ms,
        "error": result.error,
        "response_excerpt": result.excerpt,
    }


async def _send(url: str, raw: bytes, headers: dict):
    timeout = min(float(settings.WEBHOOK_TIMEOUT), PING_TIMEOUT_SECONDS)
    allow_private = settings.WEBHOOK_ALLOW_PRIVATE  # the worker's rule, checked at connect
    async with make_session(1, timeout, allow_private=allow_private) as session:
        return await post(session, url, raw, headers)
