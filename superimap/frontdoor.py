"""The front door: an ASGI middleware in front of Django (docs/design.md 7.1).

Django's ASGI handler reads a whole request body (into a temporary file past 2.5 MiB)
before any Django middleware runs, so limits and API key checks in Django come too late:
a 1 GiB upload without a key was spooled to disk before its 401. This middleware:

- refuses a body whose Content-Length is over the limit with 413 before reading any of it,
  and counts the bytes of every body while receiving (chunked bodies have no length), so
  no more than the limit plus one chunk is ever read; the body is kept in memory and
  handed to Django only when complete;
- for API routes that need a key, checks a key sent in the x-api-key header or the api_key
  query parameter before reading the body, with the API's own lookup
  (Partner.for_api_key: the current key, or the previous one during its rotation grace
  period), and answers 401 without reading the body when that key is wrong;
- a request that sends no key there may carry `api_key` in its body, as the original's
  (Rails) clients could: its body is read, in memory, up to KEYLESS_BODY_LIMIT only. A
  Content-Length past that bound gets 401 before any byte is read; otherwise the bytes are
  counted while receiving and the 401 comes with the message that crosses the bound (so at
  most the bound plus one message is read). A body within the bound goes to Django, whose
  API auth decides;
- logs every request it refuses as one short line, at most LOG_LINES_PER_MINUTE a minute.

Limits: API_BODY_LIMIT for /api/ (JSON documents), FORM_BODY_LIMIT for everything else
(admin login and dashboard forms, hosted connect pages).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from django.conf import settings

log = logging.getLogger("superimap.frontdoor")

LOG_LINES_PER_MINUTE = 20
# How much of a body the door reads for a request that names no key in its header or query
# string: enough for the original's small forms carrying `api_key`, never an upload.
KEYLESS_BODY_LIMIT = 16 * 1024
# API routes that anyone may call (the schema and its docs page).
OPEN_API_PATHS = ("/api/v1/openapi.json", "/api/v1/docs")


class RateLimitedLog:
    """At most ``per_minute`` lines a minute; the next line after a pause says how many
    were left out."""

    def __init__(self, logger: logging.Logger, per_minute: int = LOG_LINES_PER_MINUTE) -> None:
        self.logger = logger
        self.per_minute = per_minute
        self.window_start = 0.0
        self.lines = 0
        self.suppressed = 0
        self.lock = threading.Lock()

    def allow(self) -> tuple[bool, int]:
        """(may log now, lines suppressed since the last logged one)."""
        now = time.monotonic()
        with self.lock:
            if now - self.window_start >= 60:
                self.window_start = now
                self.lines = 0
            if self.lines >= self.per_minute:
                self.suppressed += 1
                return False, 0
            self.lines += 1
            suppressed, self.suppressed = self.suppressed, 0
            return True, suppressed

    def warning(self, message: str, *args) -> None:
        allowed, suppressed = self.allow()
        if allowed:
            if suppressed:
                message += f" ({suppressed} similar lines suppressed)"
            self.logger.warning(message, *args)


_refusals = RateLimitedLog(log)


class ShortClientErrors(logging.Filter):
    """A logging filter for Django's request loggers: a 4xx is a client's mistake, worth
    one line (no traceback), and at most LOG_LINES_PER_MINUTE of them a minute."""

    _limit = RateLimitedLog(logging.getLogger("django.request"))

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if not (record.name.startswith("django.") and isinstance(status, int)):
            return True
        if not 400 <= status < 500:
            return True
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        allowed, suppressed = self._limit.allow()
        if allowed and suppressed:
            record.msg = f"{record.msg} ({suppressed} similar lines suppressed)"
        return allowed


def _api_key_valid(key: str) -> bool:
    """The API's own lookup (superimap.api.api authenticates with it too)."""
    from superimap.partners.models import Partner

    return Partner.for_api_key(key) is not None


_check_key = sync_to_async(_api_key_valid, thread_sensitive=True)


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


class FrontDoor:
    def __init__(self, app, *, api_limit: int | None = None, form_limit: int | None = None):
        self.app = app
        self.api_limit = api_limit
        self.form_limit = form_limit

    def limit_for(self, path: str) -> int:
        if path.startswith("/api/"):
            return self.api_limit or settings.API_BODY_LIMIT
        return self.form_limit or settings.FORM_BODY_LIMIT

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        is_api = path.startswith("/api/")
        limit = self.limit_for(path)
        headers = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name.lower(), value)
        length: int | None = None
        raw_length = headers.get(b"content-length")
        if raw_length is not None:
            try:
                length = int(raw_length.decode("latin-1").strip())
                if length < 0:
                    raise ValueError
            except ValueError:
                await self.refuse(scope, send, 400, "bad_request", "Invalid Content-Length.")
                return
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        has_body = bool(length) or chunked
        if length is not None and length > limit:
            await self.refuse(
                scope, send, 413, "payload_too_large", f"Request body is larger than {limit} bytes."
            )
            return
        keyless = False
        if has_body and is_api and not path.startswith(OPEN_API_PATHS):
            key = _key_outside_body(headers, scope)
            if key:
                try:
                    valid = await _check_key(key)
                except Exception:  # noqa: BLE001 - the database may be down: let Django answer
                    log.exception("front door: could not check an API key")
                    valid = True
                if not valid:
                    await self.refuse_key(scope, send, method)
                    return
            else:
                keyless = True
                if length is not None and length > KEYLESS_BODY_LIMIT:
                    await self.refuse_key(scope, send, method)
                    return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            received += len(body)
            if keyless and received > KEYLESS_BODY_LIMIT:
                await self.refuse_key(scope, send, method)
                return
            if received > limit:
                await self.refuse(
                    scope,
                    send,
                    413,
                    "payload_too_large",
                    f"Request body is larger than {limit} bytes.",
                )
                return
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def refuse_key(self, scope, send, method: str) -> None:
        await self.refuse(
            scope, send, 401, "unauthorized", "Missing or invalid API key.", method=method
        )

    async def refuse(
        self, scope, send, status: int, code: str, message: str, *, method: str | None = None
    ) -> None:
        path = scope.get("path", "")
        _refusals.warning(
            "refused %s %s from %s: %d %s",
            method or scope.get("method", "-"),
            path[:200],
            _client(scope),
            status,
            code,
        )
        if path.startswith("/api/"):
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            content_type = b"application/json"
        else:
            body = f"{status} {message}\n".encode()
            content_type = b"text/plain; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
