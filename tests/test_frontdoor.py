"""The front door (superimap.frontdoor): body limits while receiving, keys before bodies.

These tests drive the real ASGI application (superimap.asgi.application, as uvicorn runs
it) and count how many body bytes it pulls from the client.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from django.conf import settings

from superimap.asgi import application  # configures logging once, before caplog hooks in
from superimap.partners.models import ImapProvider, Partner

CHUNK = 64 * 1024


class Call:
    """One HTTP request through the ASGI app; the body is produced lazily, chunk by chunk."""

    def __init__(self, method, path, *, headers=(), body_size=0, body=b"", query=b""):
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
            "headers": [(b"host", b"127.0.0.1")] + [(k.encode(), v.encode()) for k, v in headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        self.body = body
        self.body_size = body_size or len(body)
        self.consumed = 0
        self.status = None
        self.response = b""
        self.response_headers = {}

    async def receive(self):
        if self.consumed >= self.body_size:
            await asyncio.Event().wait()  # the client stays connected
        if self.body:
            chunk = self.body[self.consumed : self.consumed + CHUNK]
        else:
            chunk = b"x" * min(CHUNK, self.body_size - self.consumed)
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

    def run(self):
        asyncio.run(asyncio.wait_for(application(self.scope, self.receive, self.send), 60))
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
        ([("transfer-encoding", "chunked")], b""),
        ([("x-api-key", "wrong"), ("transfer-encoding", "chunked")], b""),
        ([("transfer-encoding", "chunked")], b"api_key=wrong"),
        ([("content-length", str(100 * 1024))], b""),
    ],
)
def test_it_answers_401_without_reading_the_body_of_a_caller_without_a_key(key, headers, query):
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


@pytest.mark.parametrize("path", ["/admin/login/", "/connect/any-token", "/disconnect/x"])
def test_it_limits_form_pages_with_their_own_larger_limit(transactional_db, path):
    assert settings.FORM_BODY_LIMIT > settings.API_BODY_LIMIT
    call = Call(
        "POST", path, headers=[("transfer-encoding", "chunked")], body_size=16 * 1024 * 1024
    ).run()
    assert call.status == 413
    assert settings.FORM_BODY_LIMIT < call.consumed <= settings.FORM_BODY_LIMIT + CHUNK
    by_length = Call(
        "POST",
        path,
        headers=[("content-length", str(settings.FORM_BODY_LIMIT + 1))],
        body_size=settings.FORM_BODY_LIMIT + 1,
    ).run()
    assert (by_length.status, by_length.consumed) == (413, 0)


def test_it_lets_a_form_body_under_the_form_limit_through(transactional_db):
    # Over the API limit, under the form limit: Django answers (403 CSRF), not the door.
    size = settings.API_BODY_LIMIT + CHUNK
    call = Call(
        "POST",
        "/admin/login/",
        headers=[
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", str(size)),
        ],
        body_size=size,
    ).run()
    assert call.status == 403
    assert call.consumed == size


def test_it_rate_limits_its_log_lines(transactional_db, caplog):
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

    from superimap.frontdoor import ShortClientErrors

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
