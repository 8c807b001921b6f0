"""OAuth 2.0 access tokens from refresh tokens, cached per user (for AUTHENTICATE XOAUTH2).

Access tokens are cached per user until shortly before they expire, so reconnects reuse
them; one refresh per user runs at a time. ``invalid_grant`` (the user revoked access, or
the partner's client is wrong) is an AuthFailed: the session marks the user auth_failed and
backs off long. Network errors, timeouts and 5xx are transient (TokenUnavailable, an
OSError, so the session backs off as for any connection failure). Tokens are never logged.

Each process that logs in keeps its own cache: the engine's (engine/oauth.py
access_tokens) and the web process's (api/messages.py), each saving rotated refresh
tokens its own way (on_rotated).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from django.conf import settings

from superimap.imapclient.account import Account
from superimap.imapclient.errors import AuthFailed, TokenUnavailable
from superimap.platform import netguard

log = logging.getLogger("superimap.engine")

REFRESH_TIMEOUT_SECONDS = 30.0
MAX_EXPIRY_MARGIN_SECONDS = 60.0
DEFAULT_EXPIRES_IN = 3600
MAX_CONCURRENT_REFRESHES = 20
# Token endpoint errors that need a human (new consent or fixed client settings).
AUTH_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})


@dataclass(frozen=True)
class _Cached:
    token: str
    valid_until: float  # time.monotonic()
    grant: str  # fingerprint of the refresh token it came from


def _fingerprint(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()[:16]


class AccessTokens:
    """Per-process cache of access tokens (user id -> token until shortly before expiry)."""

    def __init__(
        self,
        timeout: float = REFRESH_TIMEOUT_SECONDS,
        on_rotated: Callable[[Account, str], Awaitable[None]] | None = None,
    ) -> None:
        self.timeout = timeout
        # Called with (config, new refresh token) when the provider rotates it.
        self.on_rotated = on_rotated
        self._cache: dict[int, _Cached] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._refreshes = asyncio.Semaphore(MAX_CONCURRENT_REFRESHES)
        self.refresh_count = 0

    def cached(self, config: Account) -> str | None:
        entry = self._cache.get(config.user_id)
        if entry is None or entry.grant != _fingerprint(config.refresh_token):
            return None
        if time.monotonic() >= entry.valid_until:
            return None
        return entry.token

    def forget(self, user_id: int) -> None:
        self._cache.pop(user_id, None)

    async def get(self, config: Account) -> str:
        """A valid access token for the user: cached, or fresh from the token endpoint."""
        token = self.cached(config)
        if token is not None:
            return token
        lock = self._locks.setdefault(config.user_id, asyncio.Lock())
        async with lock:
            token = self.cached(config)  # another session may have refreshed meanwhile
            if token is not None:
                return token
            async with self._refreshes:
                token, expires_in, rotated = await self._refresh(config)
            if rotated and rotated != config.refresh_token and self.on_rotated is not None:
                await self.on_rotated(config, rotated)
            margin = min(MAX_EXPIRY_MARGIN_SECONDS, expires_in * 0.1)
            self._cache[config.user_id] = _Cached(
                token, time.monotonic() + expires_in - margin, _fingerprint(config.refresh_token)
            )
            return token

    async def _refresh(self, config: Account) -> tuple[str, float, str | None]:
        if not config.refresh_token:
            raise AuthFailed("no refresh token: the user must connect again")
        if not config.oauth_token_url or not config.oauth_client_id:
            raise AuthFailed(f"{config.provider_code} connection has no OAuth client settings")
        form = {
            "grant_type": "refresh_token",
            "refresh_token": config.refresh_token,
            "client_id": config.oauth_client_id,
            "client_secret": config.oauth_client_secret,
        }
        self.refresh_count += 1
        try:
            async with aiohttp.ClientSession(
                connector=netguard.CheckedConnector(
                    allow_private=settings.IMAP_ALLOW_PRIVATE_HOSTS
                ),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as http:
                async with http.post(
                    config.oauth_token_url, data=form, headers={"Accept": "application/json"}
                ) as response:
                    status = response.status
                    try:
                        body = await response.json(content_type=None)
                    except ValueError:
                        body = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenUnavailable(f"token endpoint unreachable ({type(exc).__name__})") from None
        error = body.get("error") if isinstance(body, dict) else None
        if status >= 500 or status == 429:
            raise TokenUnavailable(f"token endpoint answered {status}")
        if error in AUTH_ERRORS or (status in (400, 401) and isinstance(error, str)):
            raise AuthFailed(f"token refresh refused: {str(error)[:100]}")
        token = body.get("access_token") if isinstance(body, dict) else None
        if status != 200 or not isinstance(token, str) or not token:
            raise TokenUnavailable(f"token endpoint answered {status} without an access token")
        try:
            expires_in = float(body.get("expires_in", DEFAULT_EXPIRES_IN))
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN
        log.info("mailbox %s: access token refreshed (expires in %ds)", config.label, expires_in)
        rotated = body.get("refresh_token")
        return token, max(0.0, expires_in), rotated if isinstance(rotated, str) else None
