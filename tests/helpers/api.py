"""API test tools: the error-shape assertion, a JSON API client, GETs through the ASGI
handler, and the requests the original service's clients send."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connections
from django.test import AsyncClient, Client

from superimap.delivery.payloads import message_url
from superimap.mailboxes.models import MailboxUser


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response is our JSON error shape with this status (and code, if given)."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    if code is not None:
        assert error["code"] == code, error
    return error


class ApiClient:
    """A Django test client that talks JSON with an API key."""

    def __init__(self, api_key: str | None) -> None:
        self.client = Client()
        self.api_key = api_key

    def _headers(self) -> dict:
        return {"HTTP_X_API_KEY": self.api_key} if self.api_key else {}

    def get(self, path: str, **params):
        return self.client.get(f"/api/v1{path}", params, **self._headers())

    def delete(self, path: str):
        return self.client.delete(f"/api/v1{path}", **self._headers())

    def post(self, path: str, body=None, raw: bytes | str | None = None):
        data = raw if raw is not None else json.dumps(body or {})
        return self.client.post(
            f"/api/v1{path}", data, content_type="application/json", **self._headers()
        )

    def put(self, path: str, body=None, raw: bytes | str | None = None):
        data = raw if raw is not None else json.dumps(body or {})
        return self.client.put(
            f"/api/v1{path}", data, content_type="application/json", **self._headers()
        )


# Captured from rest-client 2.1.0 (Debian's ruby-rest-client, Ruby 3.1) running the original
# README's snippets against a socket; "$API_KEY$" is replaced by the partner's key. The
# client sets `content_type: :json`, but rest-client sends a Ruby hash form-encoded and
# overrides the Content-Type ("warning: Overriding "Content-Type" header ... due to payload").
REST_CLIENT_REQUESTS = {
    "create_user": (
        "POST /api/v1/connections/GMAIL_OAUTH2/users HTTP/1.1\r\n"
        "Accept: application/json\r\n"
        "User-Agent: rest-client/2.1.0 (linux-gnu x86_64) ruby/3.1.2p20\r\n"
        "X-Api-Key: $API_KEY$\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 11\r\n"
        "Accept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3\r\n"
        "Host: 127.0.0.1:18765\r\n"
        "\r\n"
        "tag=MY_USER"
    ),
    "get_user": (
        "GET /api/v1/connections/GMAIL_OAUTH2/users/MY_USER HTTP/1.1\r\n"
        "Accept: application/json\r\n"
        "User-Agent: rest-client/2.1.0 (linux-gnu x86_64) ruby/3.1.2p20\r\n"
        "X-Api-Key: $API_KEY$\r\n"
        "Content-Type: application/json\r\n"
        "Accept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3\r\n"
        "Host: 127.0.0.1:18765\r\n"
        "\r\n"
    ),
    "list_connections": (
        "GET /api/v1/connections HTTP/1.1\r\n"
        "Accept: application/json\r\n"
        "User-Agent: rest-client/2.1.0 (linux-gnu x86_64) ruby/3.1.2p20\r\n"
        "X-Api-Key: $API_KEY$\r\n"
        "Content-Type: application/json\r\n"
        "Accept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3\r\n"
        "Host: 127.0.0.1:18765\r\n"
        "\r\n"
    ),
    "create_connection": (
        "POST /api/v1/connections HTTP/1.1\r\n"
        "Accept: application/json\r\n"
        "User-Agent: rest-client/2.1.0 (linux-gnu x86_64) ruby/3.1.2p20\r\n"
        "X-Api-Key: $API_KEY$\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 74\r\n"
        "Accept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3\r\n"
        "Host: 127.0.0.1:18765\r\n"
        "\r\n"
        "imap_provider_code=GMAIL_OAUTH2&oauth2_client_id=id&oauth2_client_secret=s"
    ),
    "set_password": (
        "PUT /api/v1/connections/PLAIN/users/MY_USER HTTP/1.1\r\n"
        "Accept: application/json\r\n"
        "User-Agent: rest-client/2.1.0 (linux-gnu x86_64) ruby/3.1.2p20\r\n"
        "X-Api-Key: $API_KEY$\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 59\r\n"
        "Accept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3\r\n"
        "Host: 127.0.0.1:18765\r\n"
        "\r\n"
        "login_username=me%40example.com&login_password=app-password"
    ),
    "restore": (
        "PUT /api/v1/connections/PLAIN/users/MY_USER HTTP/1.1\r\n"
        "Accept: application/json\r\n"
        "User-Agent: rest-client/2.1.0 (linux-gnu x86_64) ruby/3.1.2p20\r\n"
        "X-Api-Key: $API_KEY$\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 14\r\n"
        "Accept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3\r\n"
        "Host: 127.0.0.1:18765\r\n"
        "\r\n"
        "archived=false"
    ),
    "delete_user": (
        "DELETE /api/v1/connections/PLAIN/users/MY_USER HTTP/1.1\r\n"
        "Accept: application/json\r\n"
        "User-Agent: rest-client/2.1.0 (linux-gnu x86_64) ruby/3.1.2p20\r\n"
        "X-Api-Key: $API_KEY$\r\n"
        "Content-Type: application/json\r\n"
        "Accept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3\r\n"
        "Host: 127.0.0.1:18765\r\n"
        "\r\n"
    ),
}


def send(method: str, path: str, api_key: str, body: bytes = b"", content_type: str = ""):
    return Client().generic(
        method, f"/api/v1{path}", body, content_type=content_type, HTTP_X_API_KEY=api_key
    )


def form(params: dict) -> bytes:
    return urlencode(params).encode()


async def close_request_connections() -> None:
    """Close the database connections the requests opened: Django runs the views' queries
    in asgiref's one thread for sync code, which lives as long as this process, so they
    would stay open through every later test."""
    await sync_to_async(connections.close_all, thread_sensitive=True)()


def message_path(user: MailboxUser, uid_validity: int, uid: int) -> str:
    url = message_url(user.connection.provider.code, user.tag, uid_validity, uid)
    return url[url.index("/api/v1/") :]


def asgi_get(path: str, api_key: str | None) -> tuple[int, dict, bytes]:
    """GET through Django's ASGI handler, reading the stream in this event loop."""

    async def run():
        headers = {"x-api-key": api_key} if api_key else {}
        try:
            response = await AsyncClient().get(path, headers=headers)
            if response.streaming:
                body = b"".join([part async for part in response.streaming_content])
            else:
                body = response.content
        finally:
            await close_request_connections()
        return response.status_code, response.headers, body

    close_old_connections()
    return asyncio.run(run())


GMAIL = {
    "imap_provider_code": "GMAIL_OAUTH2",
    "oauth_client_id": "client-id",
    "oauth_client_secret": "oauth-secret-123",
}
