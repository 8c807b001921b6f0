"""REST API v1 (spec: "API"); every call is scoped to the partner owning the API key."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Query, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.openapi.docs import Swagger
from ninja.security import APIKeyHeader, APIKeyQuery

from superimap import healthz
from superimap.accounts import users as accounts_users
from superimap.accounts.errors import Refused
from superimap.api import messages, service
from superimap.api.errors import ApiError, error_response
from superimap.api.partner import refuse_key_in_grace
from superimap.api.partner import router as partner_router
from superimap.api.schemas import (
    BackfillIn,
    ConnectionIn,
    ConnectionOut,
    ConnectionUpdate,
    DeliveryOut,
    ErrorOut,
    MessagePage,
    ReplayIn,
    ReplayOut,
    UserIn,
    UserOut,
    UserUpdate,
)
from superimap.delivery.replaylimit import ReplayLimited
from superimap.partners.models import Partner


class ApiKeyHeader(APIKeyHeader):
    param_name = "x-api-key"

    def authenticate(self, request: HttpRequest, key: str | None) -> Partner | None:
        return Partner.for_api_key(key or "")


class ApiKeyParam(APIKeyQuery):
    param_name = "api_key"

    def authenticate(self, request: HttpRequest, key: str | None) -> Partner | None:
        return Partner.for_api_key(key or "")


FORM_MEDIA_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class SuperImapApi(NinjaAPI):
    def get_openapi_schema(self, *args, **kwargs):
        """Bodies are also accepted form-encoded or multipart (superimap.api.params): say so."""
        schema = super().get_openapi_schema(*args, **kwargs)
        for operations in schema["paths"].values():
            for operation in operations.values():
                content = operation.get("requestBody", {}).get("content", {})
                if "application/json" in content:
                    for media_type in FORM_MEDIA_TYPES:
                        content.setdefault(media_type, content["application/json"])
        return schema


api = SuperImapApi(
    title="SuperIMAP API",
    version="1",
    description="Manage partner connections and mailbox users. Authenticate with the "
    "partner's API key in the x-api-key header (preferred) or the api_key parameter. "
    "Bodies may be JSON, form-encoded or multipart, whatever the Content-Type says, and "
    "query-string parameters are merged over the body's, as the original (Rails) did. "
    "The original's field names are accepted as aliases of ours.",
    auth=[ApiKeyHeader(), ApiKeyParam()],
    urls_namespace="api-v1",
    docs_url="/docs",
    # Served from our static files (ninja is an installed app), so the CSP allows it; no
    # validator badge, an image from validator.swagger.io the CSP would block.
    docs=Swagger(settings={"validatorUrl": None}),
    openapi_url="/openapi.json",
)

ERRORS = {400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 413: ErrorOut, 422: ErrorOut}
WRITE_ERRORS = {**ERRORS, 409: ErrorOut}
# Connection writes change settings (servers, OAuth client secrets): 403 key_in_grace.
SETTINGS_WRITE_ERRORS = {**WRITE_ERRORS, 403: ErrorOut}


@api.exception_handler(Refused)
def _api_error(request, exc: Refused):
    return error_response(exc.status, exc.code, exc.message)


def _public_loc(loc) -> list:
    """Where the error is, as the caller sees the request: ["body", "field"], ["query",
    "limit"]. ninja puts the view's body parameter name second (["body", "body", "field"]),
    a name of our code, not of the request: dropped (every view has one body parameter)."""
    loc = list(loc)
    if len(loc) >= 2 and loc[0] == "body":
        del loc[1]
    return loc


@api.exception_handler(ReplayLimited)
def _replay_limited(request, exc: ReplayLimited):
    if exc.retry_after is None:
        return error_response(422, "replay_too_large", exc.message)
    response = error_response(429, "replay_rate_limited", exc.message)
    response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(ValidationError)
def _validation_error(request, exc: ValidationError):
    details = [
        {
            "loc": _public_loc(e.get("loc", [])),
            "msg": str(e.get("msg", "")),
            "type": e.get("type", ""),
        }
        for e in exc.errors
    ]
    return error_response(422, "validation_error", "The request is not valid.", details)


@api.exception_handler(AuthenticationError)
def _auth_error(request, exc):
    return error_response(401, "unauthorized", "Missing or invalid API key.")


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    code = {400: "bad_request", 405: "method_not_allowed", 413: "payload_too_large"}
    return error_response(exc.status_code, code.get(exc.status_code, "error"), str(exc))


@api.exception_handler(IntegrityError)
def _integrity_error(request, exc):
    return error_response(409, "conflict", "The change conflicts with existing data.")


api.add_router("", partner_router)


# Connections ---------------------------------------------------------------------------


@api.get("/connections", response={200: list[ConnectionOut], **ERRORS}, tags=["connections"])
def list_connections(request):
    """Connections of the calling partner."""
    connections = (
        request.auth.connections.select_related("provider")
        .annotate(users_count=Count("users", filter=Q(users__archived=False)))
        .order_by("provider__code")
    )
    return [service.connection_out(c) for c in connections]


@api.post(
    "/connections", response={201: ConnectionOut, **SETTINGS_WRITE_ERRORS}, tags=["connections"]
)
def create_connection(request, body: ConnectionIn):
    """Create a connection. imap_provider_code is required; other fields depend on the provider."""
    refuse_key_in_grace(request)
    connection = service.create_connection(request.auth, body)
    return Status(201, service.connection_out(connection))


@api.get("/connections/{code}", response={200: ConnectionOut, **ERRORS}, tags=["connections"])
def get_connection(request, code: str):
    return service.connection_out(service.get_connection(request.auth, code))


@api.put(
    "/connections/{code}",
    response={200: ConnectionOut, **SETTINGS_WRITE_ERRORS},
    tags=["connections"],
)
def update_connection(request, code: str, body: ConnectionUpdate):
    refuse_key_in_grace(request)
    connection = service.get_connection(request.auth, code)
    service.update_connection(connection, body)
    return service.connection_out(connection)


# Rails routes `resources` sent PATCH to update as well as PUT.
api.patch(
    "/connections/{code}",
    response={200: ConnectionOut, **SETTINGS_WRITE_ERRORS},
    tags=["connections"],
    operation_id="patch_connection",
    summary="Update Connection (PATCH, as PUT)",
)(update_connection)


@api.delete(
    "/connections/{code}", response={204: None, 403: ErrorOut, **ERRORS}, tags=["connections"]
)
def delete_connection(request, code: str):
    """Delete a connection and all its users' data. 403 key_in_grace with a rotated key."""
    refuse_key_in_grace(request)
    service.get_connection(request.auth, code).delete()
    return Status(204, None)


# Users ---------------------------------------------------------------------------------


@api.get("/connections/{code}/users", response={200: list[UserOut], **ERRORS}, tags=["users"])
def list_users(request, code: str, archived: bool = False):
    """Users of a connection; archived users only when archived=true."""
    connection = service.get_connection(request.auth, code)
    users = connection.users.filter(archived=archived).select_related("connection__provider")
    live_nodes = healthz.live_engine_nodes()
    return [service.user_out(u, live_nodes) for u in users]


@api.post(
    "/connections/{code}/users",
    response={201: UserOut, **WRITE_ERRORS, 502: ErrorOut},
    tags=["users"],
)
def create_user(request, code: str, body: UserIn):
    """Create a user. tag is required and unique among the connection's active users; with
    credentials (password or refresh token) the user is connected, and user_connected is
    sent once the engine's first login with them succeeds (user_error if it is refused).
    verify=true logs in during the call first: 422 imap_auth_failed (nothing saved) if the
    server refuses the credentials, 502 if it cannot be reached."""
    connection = service.get_connection(request.auth, code)
    if body.verify:
        service.verify_login(connection, None, body)
    with transaction.atomic():
        user = service.create_user(connection, body)
    return Status(201, service.user_out(user))


@api.get("/connections/{code}/users/{tag}", response={200: UserOut, **ERRORS}, tags=["users"])
def get_user(request, code: str, tag: str):
    """A user, with connect_url and disconnect_url (signed, valid for 30 minutes)."""
    return service.user_out(service.get_user(request.auth, code, tag))


@api.put(
    "/connections/{code}/users/{tag}",
    response={200: UserOut, **WRITE_ERRORS, 502: ErrorOut},
    tags=["users"],
)
def update_user(request, code: str, tag: str, body: UserUpdate):
    """Update a user. archived=false restores an archived user, archived=true archives it;
    new credentials (a password or refresh token) connect the user, and user_connected is
    sent once the engine's first login with them succeeds. verify=true logs in during the
    call first: 422 imap_auth_failed (nothing saved), or 502 if the server cannot be reached."""
    user = service.get_user(request.auth, code, tag)
    if body.verify:
        service.verify_login(user.connection, user, body)
    with transaction.atomic():
        user = service.lock_user(user)
        service.update_user(user, body)
    return service.user_out(user)


api.patch(
    "/connections/{code}/users/{tag}",
    response={200: UserOut, **WRITE_ERRORS, 502: ErrorOut},
    tags=["users"],
    operation_id="patch_user",
    summary="Update User (PATCH, as PUT)",
)(update_user)


@api.delete("/connections/{code}/users/{tag}", response={204: None, **ERRORS}, tags=["users"])
def archive_user(request, code: str, tag: str):
    """Archive a user: its mailbox is no longer watched. Restore it with PUT. An archived
    user stays as it is (204 again), as PUT with archived=true answers it."""
    accounts_users.archive_user(service.get_user(request.auth, code, tag))
    return Status(204, None)


@api.post(
    "/connections/{code}/users/{tag}/sweep",
    response={202: UserOut, 401: ErrorOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut},
    tags=["users"],
)
def sweep_user(request, code: str, tag: str):
    """Sweep the user's inbox: send a new_mail webhook for every email not sent yet (such as
    mail older than the user); already-sent mail is not sent again. A backfill of all mail
    (POST .../backfill): paced, with "backfill": true; sweep_requested_at is cleared when it
    is done. 409 if archived or not connected."""
    user = service.get_user(request.auth, code, tag)
    accounts_users.sweep_user(user)
    return Status(202, service.user_out(user))


ACTION_ERRORS = {401: ErrorOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut}


@api.post(
    "/connections/{code}/users/{tag}/backfill",
    response={202: UserOut, **ACTION_ERRORS},
    tags=["users"],
)
def backfill_user(request, code: str, tag: str, body: BackfillIn):
    """Backfill: send the mail already in the user's primary folder since `since` (or of
    the last `days` days) as new_mail with "backfill": true, oldest first, at most
    BACKFILL_RATE_PER_MAILBOX a second, beside live mail (which is never held behind it).
    Mail sent before is not sent again; filters apply. Progress (done / total) is the
    user's `backfill`. A new request replaces a running one. 409 if archived or not
    connected; 422 for neither or both of since and days, or a start in the future."""
    user = service.get_user(request.auth, code, tag)
    accounts_users.backfill_user(user, body.start())
    return Status(202, service.user_out(user))


@api.post(
    "/connections/{code}/users/{tag}/reconnect",
    response={202: UserOut, **ACTION_ERRORS},
    tags=["users"],
)
def reconnect_user(request, code: str, tag: str):
    """Reconnect now: skip the back-off (e.g. after fixing the password on the mail server)
    and log in again within a few seconds. No mail is sent again: the new session catches up
    from where the last one stopped. 409 if archived, not connected or paused."""
    user = service.get_user(request.auth, code, tag)
    accounts_users.reconnect_user(user)
    return Status(202, service.user_out(user))


@api.post(
    "/connections/{code}/users/{tag}/pause",
    response={200: UserOut, **ACTION_ERRORS},
    tags=["users"],
)
def pause_user(request, code: str, tag: str):
    """Pause: stop watching the mailbox (status paused) until resumed. No mail is lost: a
    resume catches up from the checkpoint. 409 if archived or not connected."""
    user = service.get_user(request.auth, code, tag)
    accounts_users.pause_user(user)
    return service.user_out(user)


@api.post(
    "/connections/{code}/users/{tag}/resume",
    response={200: UserOut, **ACTION_ERRORS},
    tags=["users"],
)
def resume_user(request, code: str, tag: str):
    """Resume a paused mailbox: the engine watches it again within a few seconds and sends
    the mail that arrived meanwhile. 409 if archived."""
    user = service.get_user(request.auth, code, tag)
    accounts_users.resume_user(user)
    return service.user_out(user)


# Messages ------------------------------------------------------------------------------

MessageStatus = Literal["delivered", "skipped"]


@api.get(
    "/connections/{code}/users/{tag}/messages",
    response={200: MessagePage, **ERRORS},
    tags=["messages"],
)
def list_messages(
    request,
    code: str,
    tag: str,
    status: MessageStatus | None = None,
    reason: str | None = Query(None, max_length=100, pattern=r"^[a-z_]+$"),
    cursor: str | None = Query(None, pattern=r"^[1-9][0-9]{0,17}$"),
    limit: int = Query(100, ge=1, le=1000),
):
    """Every message the engine saw in the user's folder, newest first, and what became of
    it: delivered as new_mail, or skipped with a reason (expunged, duplicate,
    before_baseline, tracer, unfetchable, filtered). Filter with status= and reason=; page with the
    next_cursor of the previous answer."""
    user = service.get_user(request.auth, code, tag)
    return service.list_messages(user, status=status, reason=reason, cursor=cursor, limit=limit)


RFC822_RESPONSE = {
    "responses": {
        200: {
            "description": "The raw message (RFC 5322 bytes), streamed from the IMAP server.",
            "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
        }
    }
}


@api.get(
    "/connections/{code}/users/{tag}/messages/{uid_validity}/{uid}",
    response={
        401: ErrorOut,
        404: ErrorOut,
        409: ErrorOut,
        422: ErrorOut,
        429: ErrorOut,
        502: ErrorOut,
    },
    openapi_extra=RFC822_RESPONSE,
    tags=["messages"],
)
async def get_message(
    request,
    code: str,
    tag: str,
    uid_validity: int,
    uid: int,
    folder: str | None = Query(
        None,
        min_length=1,
        max_length=1000,
        pattern=r"^[^\x00\r\n]*$",
        description="The folder of the UID (new_mail's `folder`); default: the user's "
        "primary folder, the one watched by IDLE.",
    ),
):
    """The raw message with this UIDVALIDITY and UID (new_mail's `rfc822_url`), read from
    the IMAP server on demand and streamed as message/rfc822. 404 if the message is gone
    (expunged, or the mailbox's UIDVALIDITY changed), unknown or in no such folder; 409 if
    the user is archived or not connected; 429 when the mailbox or its server had too many
    logins lately (each request is one); 502 if the IMAP server cannot be read."""
    return await messages.stream_message(request.auth, code, tag, uid_validity, uid, folder)


# Deliveries ----------------------------------------------------------------------------

DeliveryStatus = Literal["pending", "delivered", "failed", "skipped", "cancelled"]
DeliveryKind = Literal[
    "new_mail",
    "user_connected",
    "user_disconnected",
    "user_error",
    "user_recovered",
    "message_updated",
    "message_deleted",
]


DELIVERIES_PAGING = {
    "responses": {
        200: {
            "description": "Newest first. With more to read, the Next-Cursor header holds "
            "the cursor= of the next (older) page, and Link its URL (rel=next); neither on "
            "the last page.",
            "headers": {
                "Next-Cursor": {"schema": {"type": "string"}},
                "Link": {"schema": {"type": "string"}},
            },
        }
    }
}


@api.get(
    "/deliveries",
    response={200: list[DeliveryOut], **ERRORS},
    tags=["deliveries"],
    openapi_extra=DELIVERIES_PAGING,
)
def list_deliveries(
    request,
    response: HttpResponse,
    status: DeliveryStatus | None = None,
    kind: DeliveryKind | None = None,
    since: datetime | None = None,
    cursor: str | None = Query(None, pattern=r"^[1-9][0-9]{0,17}$"),
    limit: int = Query(100, ge=1, le=1000),
):
    """The partner's webhook deliveries, newest first, with every attempt; since= (ISO 8601
    with a time zone) keeps those created at or after it. The body is the list, as ever;
    page with cursor= from the Next-Cursor header (as /messages' next_cursor)."""
    if since is not None and since.tzinfo is None:
        raise ApiError(422, "invalid_field", "since needs a time zone (e.g. 2026-01-01T00:00:00Z).")
    page, next_cursor = service.list_deliveries(
        request.auth, status=status, kind=kind, since=since, cursor=cursor, limit=limit
    )
    if next_cursor:
        query = request.GET.copy()
        query.pop("api_key", None)  # a secret: not echoed in a header proxies may log
        query["cursor"] = next_cursor
        response["Next-Cursor"] = next_cursor
        response["Link"] = f'<{request.path}?{query.urlencode()}>; rel="next"'
    return page


@api.post(
    "/deliveries/{event_id}/retry",
    response={200: DeliveryOut, **WRITE_ERRORS, 429: ErrorOut},
    tags=["deliveries"],
)
def retry_delivery(request, event_id: uuid.UUID):
    """Send a failed, skipped or cancelled delivery again now, with a fresh round of retries.
    Counts as one against the partner's replay limit (429 with Retry-After when spent)."""
    return service.retry_delivery(request.auth, event_id)


@api.post(
    "/deliveries/replay",
    response={
        200: ReplayOut,
        400: ErrorOut,
        401: ErrorOut,
        413: ErrorOut,
        422: ErrorOut,
        429: ErrorOut,
    },
    tags=["deliveries"],
)
def replay_deliveries(request, body: ReplayIn):
    """Send the partner's deliveries created in [since, until) again, delivered ones too,
    with the same event_id (receivers dedupe on it), optionally only one event kind, user or
    status. Pending ones are queued already and left alone; deliveries whose payload was
    purged by retention cannot be replayed (not_replayable). Returns how many were queued.

    Rate limited per partner (WEBHOOK_REPLAY_BURST deliveries at once, refilled at
    WEBHOOK_REPLAY_PER_SECOND): a replay that does not fit is refused whole with 429
    `replay_rate_limited` and Retry-After; one larger than the burst with 422
    `replay_too_large` (split the range)."""
    return service.replay_deliveries(request.auth, body)
