"""All outbound webhook HTTP goes through here: timeout, no redirects, User-Agent, signatures.

Secrets (API keys, webhook secrets) are used to sign and never logged.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import aiohttp

from superimap import __version__
from superimap.delivery.payloads import signed_body, standard_webhook_signature

USER_AGENT = f"SuperIMAP/{__version__} (+webhooks)"
EXCERPT_BYTES = 1024


@dataclass(frozen=True)
class PostResult:
    status_code: int | None
    excerpt: str
    error: str
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code <= 206


def make_session(concurrency: int, timeout_seconds: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=60
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_seconds),
        headers={"User-Agent": USER_AGENT},
        json_serialize=json.dumps,
    )


def render_request(
    payload: dict,
    *,
    event_id: str,
    kind: str,
    api_key: str,
    webhook_secrets: tuple[str, ...],
    timestamp: int,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one webhook. With several secrets (a rotation's grace period)
    `webhook-signature` carries one signature per secret, space-separated, as Standard
    Webhooks allows, so receivers holding either secret verify it."""
    body = signed_body(payload, event_id=event_id, kind=kind, api_key=api_key, timestamp=timestamp)
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    signatures = [
        standard_webhook_signature(secret, event_id, timestamp, raw) for secret in webhook_secrets
    ]
    headers = {
        "Content-Type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }
    return raw, headers


async def post(session: aiohttp.ClientSession, url: str, raw: bytes, headers: dict) -> PostResult:
    started = time.monotonic()
    try:
        async with session.post(url, data=raw, headers=headers, allow_redirects=False) as response:
            excerpt = await _read_prefix(response, EXCERPT_BYTES)
            return PostResult(
                status_code=response.status,
                excerpt=excerpt.decode("utf-8", errors="replace"),
                error="",
                duration_ms=int((time.monotonic() - started) * 1000),
            )
    except TimeoutError:
        error = "timed out"
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}"[:1024]
    except (OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:1024]
    except asyncio.CancelledError:
        raise
    return PostResult(None, "", error, int((time.monotonic() - started) * 1000))


async def _read_prefix(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to `limit` bytes of the body; one read() may return less than is on the way."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
