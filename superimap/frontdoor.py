"""The front door: an ASGI middleware in front of Django (docs/design.md 7.1).

Django's ASGI handler reads a whole request body (into a temporary file past 2.5 MiB)
before any Django middleware runs, so limits and credential checks in Django come too
late: a 1 GiB upload without a key was spooled to disk before its 401, and 1,000 slow 1 MiB
bodies to /nonexistent held 1 GiB of memory. This middleware decides, from the request
head, how much of a body it will read, refuses a Content-Length past that before reading
any of it, and counts the bytes of every body while receiving (chunked bodies have no
length), so no more than the allowance plus one message is ever read. A body within it is
kept in memory and handed to Django only when complete. The allowance:

- paths that take no body (anything but /api/, /admin/, /connect/, /disconnect/): none;
  a body there gets 413;
- a request without credentials (the login form, the connect pages, an API call without a
  key outside its body, an /admin/ page without a staff session): ANONYMOUS_BODY_LIMIT,
  and such bodies together hold at most ANONYMOUS_BODY_MEMORY (503 past it);
- an API key sent in the x-api-key header or the api_key query parameter is checked before
  reading the body, with the API's own lookup (Partner.for_api_key: the current key, or
  the previous one during its rotation grace period): wrong, 401 with the body unread;
  right, API_BODY_LIMIT;
- an API call with no key there may carry `api_key` in its body, as the original's (Rails)
  clients could: past ANONYMOUS_BODY_LIMIT it gets 401 (a Content-Length past it before
  any byte is read); a body within it goes to Django, whose API auth decides;
- /admin/ with a staff session (checked with Django's own session and user lookup):
  FORM_BODY_LIMIT.

A body must arrive within WEB_BODY_TIMEOUT seconds (408). The door's answers carry the
headers Django's middleware would add (security.add_security_headers) and close the
connection. Every refusal is logged as one short line, at most LOG_LINES_PER_MINUTE (logs.py) a
minute, with the path's control characters escaped.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from importlib import import_module
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.cookie import parse_cookie

from superimap.partners.models import Partner
from superimap.platform.logs import RateLimitedLog, escape_controls
from superimap.platform.security import add_security_headers

log = logging.getLogger("superimap.frontdoor")

# API routes that anyone may call (the schema and its docs page).
OPEN_API_PATHS = ("/api/v1/openapi.json", "/api/v1/docs")
# Pages whose forms post a body; every other path takes none.
ANONYMOUS_FORM_PATHS = ("/connect/", "/disconnect/")


_refusals = RateLimitedLog(log)


def _api_key_valid(key: str) -> bool:
    """The API's own lookup (superimap.api.api authenticates with it too)."""
    return Partner.for_api_key(key) is not None


def _staff_session(session_key: str) -> bool:
    """Django's own lookup of the session's user (as AuthenticationMiddleware does)."""
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user(request)
    return bool(user.is_active and user.is_staff)


_check_key = sync_to_async(_api_key_valid, thread_sensitive=True)
_check_staff = sync_to_async(_staff_session, thread_sensitive=True)


def _key_outside_body(headers: dict[bytes, bytes], scope) -> str:
    """The key of the x-api-key header, else of the api_key query parameter ("" if none)."""
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    if not key:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        key = (query.get("api_key") or [""])[0].strip()
    return key


def _client(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "-"


class Refused(Exception):
    """An answer the door gives instead of Django's."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def _too_large(limit: int) -> Refused:
    if limit == 0:
        return Refused(413, "payload_too_large", "This URL takes no request body.")
    return Refused(413, "payload_too_large", f"Request body is larger than {limit} bytes.")


def _unauthorized() -> Refused:
    return Refused(401, "unauthorized", "Missing or invalid API key.")


@dataclass(frozen=True)
class Allowance:
    """How much of a request's body the door reads, and what it answers past that."""

    limit: int
    anonymous: bool  # counted in ANONYMOUS_BODY_MEMORY
    keyless: bool = False  # an API call whose key may be in its body: 401 past the limit

    def past_limit(self) -> Refused:
        return _unauthorized() if self.keyless else _too_large(self.limit)


class FrontDoor:
    def __init__(self, app, *, api_limit: int | None = None, form_limit: int | None = None):
        self.app = app
        self.api_limit = api_limit
        self.form_limit = form_limit
        # Bytes of bodies held right now for requests without credentials.
        self.anonymous_held = 0

    def ceiling(self, path: str) -> int:
        """The most any caller may send to ``path``."""
        if path.startswith("/api/"):
            return self.api_limit or settings.API_BODY_LIMIT
        if path.startswith("/admin/"):
            return self.form_limit or settings.FORM_BODY_LIMIT
        if path.startswith(ANONYMOUS_FORM_PATHS):
            return settings.ANONYMOUS_BODY_LIMIT
        return 0

    async def allowance(self, scope, headers: dict[bytes, bytes]) -> Allowance:
        """What this caller may send; raises Refused (a wrong key) before any byte is read."""
        path = scope.get("path", "")
        anonymous = Allowance(min(settings.ANONYMOUS_BODY_LIMIT, self.ceiling(path)), True)
        if path.startswith("/api/") and not path.startswith(OPEN_API_PATHS):
            key = _key_outside_body(headers, scope)
            if not key:
                return Allowance(anonymous.limit, True, keyless=True)
            try:
                valid = await _check_key(key)
            except Exception:  # noqa: BLE001 - the database may be down: let Django answer
                log.exception("front door: could not check an API key")
                valid = True
            if not valid:
                raise _unauthorized()
            return Allowance(self.ceiling(path), False)
        if path.startswith("/admin/"):
            cookies = parse_cookie(headers.get(b"cookie", b"").decode("latin-1"))
            session_key = cookies.get(settings.SESSION_COOKIE_NAME)
            if session_key:
                try:
                    if await _check_staff(session_key):
                        return Allowance(self.ceiling(path), False)
                except Exception:  # noqa: BLE001 - the database may be down: as anonymous
                    log.exception("front door: could not check a session")
        return anonymous

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name.lower(), value)
        length: int | None = None
        raw_length = headers.get(b"content-length")
        held = [0]
        try:
            if raw_length is not None:
                try:
                    length = int(raw_length.decode("latin-1").strip())
                    if length < 0:
                        raise ValueError
                except ValueError:
                    raise Refused(400, "bad_request", "Invalid Content-Length.") from None
            chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
            if not (length or chunked):
                await self.app(scope, receive, send)
                return
            ceiling = self.ceiling(scope.get("path", ""))
            if length is not None and length > ceiling:
                raise _too_large(ceiling)
            allowance = await self.allowance(scope, headers)
            if length is not None and length > allowance.limit:
                raise allowance.past_limit()
            chunks = await self.read_body(receive, allowance, held)
            if chunks is None:
                return  # the client left
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        except Refused as refused:
            await self.refuse(scope, send, refused)
        finally:
            self.anonymous_held -= held[0]

    async def read_body(self, receive, allowance: Allowance, held: list[int]) -> list | None:
        """The body's pieces as they arrive, counted; None if the client left. Anonymous
        bytes are added to ``held[0]`` (and self.anonymous_held) while they are kept."""
        chunks: list[bytes] = []
        received = 0
        budget = settings.ANONYMOUS_BODY_MEMORY
        try:
            async with asyncio.timeout(settings.WEB_BODY_TIMEOUT):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    body = message.get("body", b"")
                    received += len(body)
                    if received > allowance.limit:
                        raise allowance.past_limit()
                    if body and allowance.anonymous:
                        if self.anonymous_held + len(body) > budget:
                            raise Refused(
                                503,
                                "busy",
                                "Too many requests without credentials at once; try again.",
                                {"Retry-After": "5"},
                            )
                        self.anonymous_held += len(body)
                        held[0] += len(body)
                    if body:
                        chunks.append(body)
                    if not message.get("more_body", False):
                        return chunks
        except TimeoutError:
            raise Refused(
                408,
                "request_timeout",
                f"The request body did not arrive within {settings.WEB_BODY_TIMEOUT} seconds.",
            ) from None

    async def refuse(self, scope, send, refused: Refused) -> None:
        path = scope.get("path", "")
        _refusals.warning(
            "refused %s %s from %s: %d %s",
            scope.get("method", "-"),
            escape_controls(path[:200]),
            _client(scope),
            refused.status,
            refused.code,
        )
        if path.startswith("/api/"):
            response: HttpResponse = JsonResponse(
                {"error": {"code": refused.code, "message": refused.message}},
                status=refused.status,
            )
        else:
            response = HttpResponse(
                f"{refused.status} {refused.message}\n",
                status=refused.status,
                content_type="text/plain; charset=utf-8",
            )
        for name, value in refused.headers.items():
            response[name] = value
        response["Content-Length"] = str(len(response.content))
        response["Connection"] = "close"
        add_security_headers(ASGIRequest(scope, io.BytesIO()), response)
        await send(
            {
                "type": "http.response.start",
                "status": refused.status,
                "headers": [
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in response.items()
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.content})
