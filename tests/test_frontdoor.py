"""The front door (superimap.frontdoor): body limits while receiving, keys before bodies.

These tests drive the real ASGI application (superimap.asgi.application, as uvicorn runs
it) and count how many body bytes it pulls from the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.conf import settings
from django.utils import timezone

from superimap import frontdoor
from superimap.accounts import partners
from superimap.asgi import application  # configures logging once, before caplog hooks in
from superimap.partners.models import Connection, ImapProvider, Partner
from tests.helpers.api import REST_CLIENT_REQUESTS

CHUNK = 64 * 1024


class Call:
    """One HTTP request through the ASGI app; the body is produced lazily, chunk by chunk."""

    def __init__(
        self,
        method,
        path,
        *,
        headers=(),
        body_size=0,
        body=b"",
        query=b"",
        chunk=CHUNK,
        hang_at=None,
    ):
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(k.encode(), v.encode()) for k, v in headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        if not any(name.lower() == "host" for name, _ in headers):
            self.scope["headers"].insert(0, (b"host", b"127.0.0.1"))
        self.body = body
        self.body_size = body_size or len(body)
        self.chunk = chunk
        self.hang_at = hang_at  # stop sending (but stay connected) after this many bytes
        self.consumed = 0
        self.sent_empty = False
        self.status = None
        self.response = b""
        self.response_headers = {}

    async def receive(self):
        if self.body_size == 0 and not self.sent_empty:
            self.sent_empty = True  # as uvicorn: one empty message for a request without a body
            return {"type": "http.request", "body": b"", "more_body": False}
        if self.consumed >= min(self.body_size, self.hang_at or self.body_size):
            await asyncio.Event().wait()  # the client stays connected
        if self.body:
            chunk = self.body[self.consumed : self.consumed + self.chunk]
        else:
            chunk = b"x" * min(self.chunk, self.body_size - self.consumed)
        self.consumed += len(chunk)
        return {
            "type": "http.request",
            "body": chunk,
            "more_body": self.consumed < self.body_size,
        }

    async def send(self, message):
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.response_headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            self.response += message.get("body", b"")

    @classmethod
    def raw(cls, request: str) -> Call:
        """A request as a client wrote it on the wire (request line, headers, body)."""
        head, _, body = request.partition("\r\n\r\n")
        request_line, *header_lines = head.split("\r\n")
        method, target, _ = request_line.split(" ")
        path, _, query = target.partition("?")
        headers = [tuple(line.split(": ", 1)) for line in header_lines]
        return cls(method, path, headers=headers, body=body.encode(), query=query.encode())

    def run(self, app=None):
        app = app or application
        asyncio.run(asyncio.wait_for(app(self.scope, self.receive, self.send), 60))
        return self

    def json(self):
        return json.loads(self.response)


@pytest.fixture
def key(transactional_db, seeded_providers) -> str:
    return Partner.objects.create(name="Door app").api_key


def test_it_answers_413_to_a_huge_chunked_body_after_reading_only_the_limit(key, caplog):
    size = 32 * 1024 * 1024
    with caplog.at_level(logging.INFO):
        call = Call(
            "POST",
            "/api/v1/connections",
            headers=[("x-api-key", key), ("transfer-encoding", "chunked")],
            body_size=size,
        ).run()
    assert call.status == 413
    assert call.json()["error"]["code"] == "payload_too_large"
    assert call.consumed <= settings.API_BODY_LIMIT + CHUNK
    # One short line for the refusal, never a traceback.
    assert [r for r in caplog.records if r.exc_info] == []
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert "\n" not in refused[0].getMessage()


def test_it_answers_413_by_content_length_without_reading_the_body(key):
    call = Call(
        "POST",
        "/api/v1/connections",
        headers=[("x-api-key", key), ("content-length", str(512 * 1024 * 1024))],
        body_size=512 * 1024 * 1024,
    ).run()
    assert call.status == 413
    assert call.consumed == 0


@pytest.mark.parametrize(
    "headers, query",
    [
        ([("x-api-key", "wrong"), ("transfer-encoding", "chunked")], b""),
        ([("transfer-encoding", "chunked")], b"api_key=wrong"),
        ([("content-length", str(100 * 1024))], b""),
    ],
    ids=["wrong-header-key", "wrong-query-key", "no-key-length-over-keyless-bound"],
)
def test_it_answers_401_without_reading_the_body_of_a_caller_without_a_valid_key(
    key, headers, query
):
    call = Call(
        "POST", "/api/v1/connections", headers=headers, body_size=100 * 1024, query=query
    ).run()
    assert call.status == 401
    assert call.json() == {
        "error": {"code": "unauthorized", "message": "Missing or invalid API key."}
    }
    assert call.consumed == 0


def test_it_passes_a_chunked_body_within_the_limit_to_the_api(key):
    body = json.dumps(
        {"imap_provider_code": "PLAIN", "imap_host": "imap.example.com", "imap_port": 993}
    ).encode()
    call = Call(
        "POST",
        "/api/v1/connections",
        headers=[
            ("x-api-key", key),
            ("content-type", "application/json"),
            ("transfer-encoding", "chunked"),
        ],
        body=body + b" " * (3 * CHUNK),  # several chunks
    ).run()
    assert call.status == 201, call.response
    assert call.json()["imap_host"] == "imap.example.com"
    assert ImapProvider.objects.get(code="PLAIN").connections.count() == 1


def test_it_accepts_the_key_as_a_parameter_too(key):
    body = json.dumps({"imap_provider_code": "PLAIN", "imap_host": "imap.example.com"}).encode()
    call = Call(
        "POST",
        "/api/v1/connections",
        headers=[("content-type", "application/json"), ("content-length", str(len(body)))],
        body=body,
        query=f"api_key={key}".encode(),
    ).run()
    assert call.status == 201, call.response


def _plain_connection(key: str) -> None:
    Connection.objects.create(
        partner=Partner.for_api_key(key),
        provider=ImapProvider.objects.get(code="PLAIN"),
        imap_host="imap.example.com",
    )


def _rotated(key: str, grace: timedelta) -> str:
    """Rotate the partner's key; returns the new one (the old one is `key`)."""
    return partners.rotate_api_key(Partner.for_api_key(key), grace)


def test_it_accepts_the_previous_key_with_a_body_during_its_grace_period(key):
    # A data route: a key in its grace may not change settings such as connections (403
    # key_in_grace, tests/api/test_key_grace.py), but that is the API's answer, not ours.
    _plain_connection(key)
    _rotated(key, timedelta(hours=1))
    body = json.dumps({"tag": "door-user"}).encode()
    call = Call(
        "POST",
        "/api/v1/connections/PLAIN/users",
        headers=[
            ("x-api-key", key),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ],
        body=body,
    ).run()
    assert call.status == 201, call.response


def test_it_answers_401_without_reading_the_body_for_a_previous_key_past_its_grace(key):
    _rotated(key, timedelta(hours=1))
    Partner.objects.update(previous_api_key_until=timezone.now() - timedelta(seconds=1))
    call = Call(
        "POST",
        "/api/v1/connections",
        headers=[("x-api-key", key), ("transfer-encoding", "chunked")],
        body_size=100 * 1024,
    ).run()
    assert call.status == 401
    assert call.json()["error"]["code"] == "unauthorized"
    assert call.consumed == 0


def _multipart(fields: dict) -> tuple[bytes, str]:
    boundary = "BoUnDaRy"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


@pytest.mark.parametrize("encoding", ["form", "form-chunked", "multipart", "json"])
def test_it_takes_the_api_key_from_a_small_body_without_a_key_elsewhere(key, encoding):
    fields = {"imap_provider_code": "PLAIN", "imap_host": "imap.example.com", "api_key": key}
    if encoding == "multipart":
        body, content_type = _multipart(fields)
    elif encoding == "json":
        body, content_type = json.dumps(fields).encode(), "application/json"
    else:
        body, content_type = urlencode(fields).encode(), "application/x-www-form-urlencoded"
    framing = (
        ("transfer-encoding", "chunked")
        if encoding == "form-chunked"
        else ("content-length", str(len(body)))
    )
    call = Call(
        "POST",
        "/api/v1/connections",
        headers=[("content-type", content_type), framing],
        body=body,
        chunk=16,  # many small messages
    ).run()
    assert call.status == 201, call.response
    assert call.json()["imap_host"] == "imap.example.com"


def test_it_answers_401_after_reading_at_most_the_bound_of_a_large_body_without_a_key(key):
    chunk = 1024
    call = Call(
        "POST",
        "/api/v1/connections",
        headers=[
            ("content-type", "application/x-www-form-urlencoded"),
            ("transfer-encoding", "chunked"),
        ],
        body_size=1024 * 1024,
        chunk=chunk,
    ).run()
    assert call.status == 401
    assert call.json() == {
        "error": {"code": "unauthorized", "message": "Missing or invalid API key."}
    }
    # The message that crosses the bound is the last one read.
    assert settings.ANONYMOUS_BODY_LIMIT < call.consumed <= settings.ANONYMOUS_BODY_LIMIT + chunk
    # A Content-Length past the bound is refused before reading (past API_BODY_LIMIT too,
    # the 413 comes first, as for any caller).
    by_length = Call(
        "POST",
        "/api/v1/connections",
        headers=[("content-length", str(settings.ANONYMOUS_BODY_LIMIT + 1))],
        body_size=settings.ANONYMOUS_BODY_LIMIT + 1,
    ).run()
    assert (by_length.status, by_length.consumed) == (401, 0)


def test_it_lets_the_api_answer_401_to_a_small_body_without_any_key(key):
    body = urlencode({"imap_provider_code": "PLAIN", "api_key": "wrong"}).encode()
    call = Call(
        "POST",
        "/api/v1/connections",
        headers=[("content-length", str(len(body)))],
        body=body,
    ).run()
    assert call.status == 401
    assert call.json()["error"]["code"] == "unauthorized"
    assert call.consumed == len(body)
    assert not ImapProvider.objects.get(code="PLAIN").connections.exists()


def test_it_answers_the_original_readme_snippet_as_rest_client_sends_it(key):
    call = Call.raw(REST_CLIENT_REQUESTS["create_connection"].replace("$API_KEY$", key)).run()
    assert call.status == 201, call.response
    assert call.json()["imap_provider_code"] == "GMAIL_OAUTH2"


def test_it_answers_the_original_readme_snippet_with_the_previous_key_in_grace(key):
    Connection.objects.create(
        partner=Partner.for_api_key(key),
        provider=ImapProvider.objects.get(code="GMAIL_OAUTH2"),
        oauth_client_id="id",
        oauth_client_secret="secret",
    )
    _rotated(key, timedelta(hours=1))
    call = Call.raw(REST_CLIENT_REQUESTS["create_user"].replace("$API_KEY$", key)).run()
    assert call.status == 201, call.response


def test_it_answers_the_original_readme_snippet_with_the_key_in_its_form_body(key):
    # The snippet as a client that passes `api_key` in its payload hash sends it: no
    # X-Api-Key header, the key form-encoded in the body (Rails' params).
    raw = REST_CLIENT_REQUESTS["create_connection"].replace("X-Api-Key: $API_KEY$\r\n", "")
    head, _, body = raw.partition("\r\n\r\n")
    body += f"&api_key={key}"
    head = head.replace("Content-Length: 74", f"Content-Length: {len(body)}")
    call = Call.raw(f"{head}\r\n\r\n{body}").run()
    assert call.status == 201, call.response
    assert call.json()["imap_provider_code"] == "GMAIL_OAUTH2"


@pytest.mark.parametrize("path", ["/admin/login/", "/connect/any-token", "/disconnect/x"])
def test_it_reads_at_most_the_anonymous_bound_of_a_form_without_a_session(transactional_db, path):
    assert settings.ANONYMOUS_BODY_LIMIT < settings.API_BODY_LIMIT < settings.FORM_BODY_LIMIT
    call = Call(
        "POST", path, headers=[("transfer-encoding", "chunked")], body_size=16 * 1024 * 1024
    ).run()
    assert call.status == 413
    bound = settings.ANONYMOUS_BODY_LIMIT
    assert bound < call.consumed <= bound + CHUNK
    by_length = Call(
        "POST", path, headers=[("content-length", str(bound + 1))], body_size=bound + 1
    ).run()
    assert (by_length.status, by_length.consumed) == (413, 0)


@pytest.mark.parametrize("path", ["/nonexistent", "/healthz", "/oauth2/callback", "/"])
def test_it_reads_no_body_for_a_path_that_takes_none(transactional_db, path):
    call = Call(
        "POST", path, headers=[("transfer-encoding", "chunked")], body_size=1024 * 1024
    ).run()
    assert call.status == 413
    assert call.consumed <= CHUNK
    assert b"takes no request body" in call.response
    by_length = Call("POST", path, headers=[("content-length", "1")], body_size=1).run()
    assert (by_length.status, by_length.consumed) == (413, 0)
    assert Call("GET", path).run().status != 413


@pytest.fixture
def staff_cookie(transactional_db) -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    get_user_model().objects.create_superuser("boss", "boss@example.com", "a-long-password")
    client = Client()
    client.force_login(get_user_model().objects.get(username="boss"))
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def test_it_gives_a_staff_session_the_form_limit(staff_cookie):
    # Over the anonymous and API limits, under the form limit: Django answers (403 CSRF).
    size = settings.API_BODY_LIMIT + CHUNK
    headers = [("content-type", "application/x-www-form-urlencoded")]
    call = Call(
        "POST",
        "/admin/partners/partner/add/",
        headers=[*headers, ("content-length", str(size)), ("cookie", staff_cookie)],
        body_size=size,
    ).run()
    assert call.status == 403
    assert call.consumed == size
    chunked = Call(
        "POST",
        "/admin/partners/partner/add/",
        headers=[*headers, ("transfer-encoding", "chunked"), ("cookie", staff_cookie)],
        body_size=16 * 1024 * 1024,
    ).run()
    assert chunked.status == 413
    assert settings.FORM_BODY_LIMIT < chunked.consumed <= settings.FORM_BODY_LIMIT + CHUNK
    forged = Call(
        "POST",
        "/admin/partners/partner/add/",
        headers=[*headers, ("content-length", str(size)), ("cookie", "sessionid=forged")],
        body_size=size,
    ).run()
    assert (forged.status, forged.consumed) == (413, 0)


def test_it_caps_the_memory_all_anonymous_bodies_hold_together(transactional_db, settings):
    settings.ANONYMOUS_BODY_MEMORY = 4 * settings.ANONYMOUS_BODY_LIMIT

    async def many():
        calls = [
            Call(
                "POST",
                "/admin/login/",
                headers=[("transfer-encoding", "chunked")],
                body_size=settings.ANONYMOUS_BODY_LIMIT,
                chunk=1024,
                hang_at=settings.ANONYMOUS_BODY_LIMIT - 1024,  # within the bound, unfinished
            )
            for _ in range(8)
        ]
        calls_done = [asyncio.create_task(application(c.scope, c.receive, c.send)) for c in calls]
        await asyncio.sleep(1.0)
        for task in calls_done:
            task.cancel()
        await asyncio.gather(*calls_done, return_exceptions=True)
        return calls

    calls = asyncio.run(many())
    busy = [c for c in calls if c.status == 503]
    assert busy and all(b"try again" in c.response for c in busy)
    assert all(c.response_headers["retry-after"] == "5" for c in busy)
    held = sum(c.consumed for c in calls if c.status is None)
    assert held <= settings.ANONYMOUS_BODY_MEMORY
    assert application.anonymous_held == 0  # all released


def test_it_answers_408_to_a_body_that_does_not_arrive_in_time(transactional_db, settings):
    settings.WEB_BODY_TIMEOUT = 1
    call = Call(
        "POST",
        "/admin/login/",
        headers=[("content-length", "100")],
        body_size=100,
        chunk=10,
        hang_at=10,
    ).run()
    assert call.status == 408
    assert call.response_headers["connection"] == "close"


def test_it_rate_limits_its_log_lines(transactional_db, caplog, monkeypatch):
    # A fresh minute: the refusals of the tests before this one count in the shared window.
    monkeypatch.setattr(frontdoor, "_refusals", frontdoor.RateLimitedLog(frontdoor.log))
    with caplog.at_level(logging.INFO):
        for _ in range(60):
            Call("POST", "/api/v1/connections", headers=[("content-length", str(10**9))]).run()
    refused = [r for r in caplog.records if r.name == "superimap.frontdoor"]
    assert 1 <= len(refused) <= 20


def test_it_answers_400_to_a_bad_content_length(transactional_db):
    call = Call("POST", "/api/v1/connections", headers=[("content-length", "ten")]).run()
    assert call.status == 400
    assert call.json()["error"]["code"] == "bad_request"


def test_django_4xx_log_lines_lose_their_traceback_and_are_rate_limited():
    import sys

    from superimap.platform.logs import ShortClientErrors

    client_errors = ShortClientErrors()
    client_errors._limit = type(client_errors._limit)(logging.getLogger("t"), per_minute=5)
    try:
        raise ValueError("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")
    except ValueError:
        exc_info = sys.exc_info()
    kept = []
    for _ in range(20):
        record = logging.LogRecord(
            "django.security.RequestDataTooBig", logging.ERROR, "x", 1, "too big", (), exc_info
        )
        record.status_code = 400
        if client_errors.filter(record):
            kept.append(record)
    assert len(kept) == 5
    assert all(r.exc_info is None for r in kept)
    server_error = logging.LogRecord("django.request", logging.ERROR, "x", 1, "boom", (), exc_info)
    server_error.status_code = 500
    assert client_errors.filter(server_error) and server_error.exc_info is exc_info


SECURITY_HEADERS = (
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "cross-origin-opener-policy",
    "strict-transport-security",
)


@pytest.mark.parametrize(
    "path, door_headers, door_status",
    [
        ("/api/v1/connections", [("x-api-key", "wrong"), ("content-length", "10")], 401),
        ("/api/v1/connections", [("content-length", str(10**9))], 413),
        ("/admin/login/", [("content-length", str(10**9))], 413),
        ("/connect/any-token", [("content-length", str(10**9))], 413),
        ("/nonexistent", [("content-length", "10")], 413),
    ],
)
def test_the_doors_answers_carry_the_security_headers_of_the_apps(
    key, settings, path, door_headers, door_status
):
    from django.core.handlers.asgi import ASGIHandler

    from superimap.frontdoor import FrontDoor

    # Production's headers (HSTS over https), and an app built with them.
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    app = FrontDoor(ASGIHandler())
    django_answer = Call("GET", path)
    django_answer.scope["scheme"] = "https"
    django_answer.run(app)
    door_answer = Call("POST", path, headers=door_headers, body_size=10)
    door_answer.scope["scheme"] = "https"
    door_answer.run(app)
    assert door_answer.status == door_status
    assert door_answer.consumed == 0  # answered by the door
    expected = {name: django_answer.response_headers.get(name) for name in SECURITY_HEADERS}
    assert None not in expected.values(), expected
    assert {name: door_answer.response_headers.get(name) for name in SECURITY_HEADERS} == expected


def test_it_logs_a_refused_path_with_its_control_characters_escaped(
    transactional_db, caplog, monkeypatch
):
    monkeypatch.setattr(frontdoor, "_refusals", frontdoor.RateLimitedLog(frontdoor.log))
    path = "/x\r\n2026-12-06 20:00:00,000 CRITICAL superimap forged"
    with caplog.at_level(logging.INFO):
        call = Call("POST", path, headers=[("content-length", "5")], body_size=5).run()
    assert call.status == 413
    [line] = [r.getMessage() for r in caplog.records if r.name == "superimap.frontdoor"]
    assert "\r" not in line and "\n" not in line
    assert "/x\\r\\n2026-12-06 20:00:00,000 CRITICAL superimap forged" in line
