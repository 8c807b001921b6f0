"""A small, real OAuth 2.0 authorization server on 127.0.0.1 for tests and local use.

Pairs with the chaos IMAP server: it issues access tokens ``token-for-<login>``, which the
chaos server accepts over XOAUTH2 for ``user=<login>``.

- ``GET /authorize``: approves at once (as ``login``) and redirects back to ``redirect_uri``
  with ``code`` and ``state``; ``deny = True`` redirects with ``error=access_denied``.
- ``POST /token``: ``authorization_code`` and ``refresh_token`` grants; the client
  authenticates with HTTP Basic or in the body. ``token_error`` scripts a failure
  (``"invalid_grant"`` or any OAuth error → 400 JSON; ``"500"`` → HTTP 500).
- ``GET /userinfo``: ``{"sub", "email"}`` for a bearer access token.
- ``POST /revoke``: records the revoked token (RFC 7009; always 200).

Every request is recorded in ``requests`` for assertions. Run it on the current event loop
(``await server.start()``) or on a thread of its own (``with server.in_thread():``), which is
what Django tests need.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote_plus, urlencode, urlsplit

from aiohttp import web


@dataclass
class RecordedRequest:
    method: str
    path: str
    params: dict[str, str]
    authorization: str = ""


@dataclass
class IssuedGrant:
    login: str
    client_id: str
    redirect_uri: str = ""
    scope: str = ""
    revoked: bool = False


@dataclass
class LoopbackOAuthServer:
    client_id: str = "loopback-client"
    client_secret: str = "loopback-secret"
    host: str = "127.0.0.1"
    port: int = 0
    # Scripting.
    login: str = "user0"
    emails: dict[str, str] = field(default_factory=dict)  # login -> email (default: login)
    deny: bool = False
    token_error: str | None = None
    omit_refresh_token: bool = False
    include_id_token: bool = False
    expires_in: int = 3600
    # Like Microsoft: every refresh answers with a new refresh token (the old one stays valid).
    rotate_refresh_tokens: bool = False
    # Records.
    requests: list[RecordedRequest] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    access_tokens_issued: int = 0
    refreshes: int = 0

    def __post_init__(self) -> None:
        self._codes: dict[str, IssuedGrant] = {}
        self._refresh_tokens: dict[str, IssuedGrant] = {}
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_get("/userinfo", self._userinfo)
        app.router.add_post("/revoke", self._revoke)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LoopbackOAuthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[LoopbackOAuthServer]:
        """Serve from a thread with its own event loop (for synchronous callers)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True, name="oauth-server")
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(10)
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    # --- helpers for tests --------------------------------------------------------------

    def issue_refresh_token(self, login: str) -> str:
        """A refresh token for ``login`` as if the user had gone through the consent screen."""
        token = f"refresh-{login}-{secrets.token_urlsafe(12)}"
        with self._lock:
            self._refresh_tokens[token] = IssuedGrant(login=login, client_id=self.client_id)
        return token

    def email_of(self, login: str) -> str:
        return self.emails.get(login, login)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    # --- endpoints ----------------------------------------------------------------------

    async def _record(self, request: web.Request) -> dict[str, str]:
        params = dict(request.query)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        self.requests.append(
            RecordedRequest(
                request.method, request.path, params, request.headers.get("Authorization", "")
            )
        )
        return params

    async def _authorize(self, request: web.Request) -> web.Response:
        params = await self._record(request)
        redirect_uri = params.get("redirect_uri", "")
        if params.get("client_id") != self.client_id or not redirect_uri.startswith("http"):
            return web.Response(status=400, text="unknown client or bad redirect_uri")
        if params.get("response_type") != "code":
            return _redirect(redirect_uri, error="unsupported_response_type", **_state(params))
        if self.deny:
            return _redirect(redirect_uri, error="access_denied", **_state(params))
        code = secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = IssuedGrant(
                login=self.login,
                client_id=self.client_id,
                redirect_uri=redirect_uri,
                scope=params.get("scope", ""),
            )
        return _redirect(redirect_uri, code=code, **_state(params))

    async def _token(self, request: web.Request) -> web.Response:
        params = await self._record(request)
        client_id, client_secret = _client_credentials(request, params)
        if client_id != self.client_id or client_secret != self.client_secret:
            return _error(401, "invalid_client")
        if self.token_error == "500":
            return web.Response(status=500, text="token endpoint is down")
        if self.token_error:
            return _error(400, self.token_error)
        grant_type = params.get("grant_type")
        with self._lock:
            if grant_type == "authorization_code":
                grant = self._codes.pop(params.get("code", ""), None)
                if grant is None or grant.redirect_uri != params.get("redirect_uri"):
                    return _error(400, "invalid_grant")
                refresh_token = f"refresh-{grant.login}-{secrets.token_urlsafe(12)}"
                self._refresh_tokens[refresh_token] = grant
            elif grant_type == "refresh_token":
                refresh_token = params.get("refresh_token", "")
                grant = self._refresh_tokens.get(refresh_token)
                if grant is None or grant.revoked:
                    return _error(400, "invalid_grant")
                self.refreshes += 1
                if self.rotate_refresh_tokens:
                    refresh_token = f"refresh-{grant.login}-{secrets.token_urlsafe(12)}"
                    self._refresh_tokens[refresh_token] = grant
            else:
                return _error(400, "unsupported_grant_type")
            self.access_tokens_issued += 1
        body = {
            "access_token": f"token-for-{grant.login}",
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": grant.scope,
        }
        rotated = grant_type == "refresh_token" and self.rotate_refresh_tokens
        if (grant_type == "authorization_code" and not self.omit_refresh_token) or rotated:
            body["refresh_token"] = refresh_token
        if grant_type == "authorization_code" and self.include_id_token:
            body["id_token"] = _unsigned_jwt(
                {
                    "iss": self.base_url,
                    "aud": self.client_id,
                    "sub": grant.login,
                    "email": self.email_of(grant.login),
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 3600,
                }
            )
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _userinfo(self, request: web.Request) -> web.Response:
        await self._record(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        if not auth.startswith("Bearer ") or not token.startswith("token-for-"):
            return _error(401, "invalid_token")
        login = token.removeprefix("token-for-")
        return web.json_response({"sub": login, "email": self.email_of(login)})

    async def _revoke(self, request: web.Request) -> web.Response:
        params = await self._record(request)
        token = params.get("token", "")
        self.revoked.append(token)
        with self._lock:
            grant = self._refresh_tokens.get(token)
            if grant is not None:
                grant.revoked = True
        return web.Response(status=200)


def _state(params: dict[str, str]) -> dict[str, str]:
    return {"state": params["state"]} if "state" in params else {}


def _redirect(url: str, **params: str) -> web.Response:
    separator = "&" if urlsplit(url).query else "?"
    return web.Response(status=302, headers={"Location": url + separator + urlencode(params)})


def _error(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status)


def _client_credentials(request: web.Request, params: dict[str, str]) -> tuple[str, str]:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Basic "):
        try:
            decoded = base64.b64decode(auth[6:]).decode()
        except ValueError:
            return "", ""
        client_id, _, secret = decoded.partition(":")
        return unquote_plus(client_id), unquote_plus(secret)
    return params.get("client_id", ""), params.get("client_secret", "")


def _unsigned_jwt(claims: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def main(argv: list[str] | None = None) -> None:
    """``python -m devtools.testing.oauth_server --port 9100 --login user0``"""
    import argparse

    parser = argparse.ArgumentParser(description="A loopback OAuth 2.0 server for local tests.")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--login", default="user0", help="who /authorize approves as")
    parser.add_argument("--client-id", default="loopback-client")
    parser.add_argument("--client-secret", default="loopback-secret")
    args = parser.parse_args(argv)
    server = LoopbackOAuthServer(
        client_id=args.client_id,
        client_secret=args.client_secret,
        port=args.port,
        login=args.login,
    )

    async def serve() -> None:
        await server.start()
        print(f"loopback OAuth server on {server.base_url} (approves as {server.login})")
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
