"""All outbound webhook HTTP goes through here: timeout, no redirects, User-Agent, signatures.
The connections and the HTTP/1.1 exchange are delivery/webclient.py's.

Secrets (API keys, webhook secrets) are used to sign and never logged.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from superimap import __version__
from superimap.delivery import policy
from superimap.delivery.http11 import EXCERPT_LIMIT
from superimap.delivery.payloads import (
    signed_body,
    spec_signature,
    standard_webhook_signature,
)
from superimap.delivery.webclient import WebError, WebhookSession
from superimap.platform.netguard import PrivateTargetRefused

USER_AGENT = f"SuperIMAP/{__version__} (+webhooks)"
EXCERPT_BYTES = EXCERPT_LIMIT  # the excerpt of an answer kept in PostResult


@dataclass(frozen=True)
class PostResult:
    status_code: int | None
    excerpt: str
    error: str
    duration_ms: int
    # Seconds from a Retry-After header (429 and 503 answers), else None.
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return policy.succeeded(self.status_code)


def make_session(
    concurrency: int,
    timeout_seconds: float,
    *,
    allow_private: bool,
    tls: ssl.SSLContext | None = None,
) -> WebhookSession:
    """A session whose connections go to addresses netguard resolved and checked (unless
    allow_private, WEBHOOK_ALLOW_PRIVATE): the test webhook and the worker alike. `tls`
    replaces the system's CAs (tests with their own CA)."""
    return WebhookSession(
        concurrency,
        timeout_seconds,
        allow_private=allow_private,
        user_agent=USER_AGENT,
        tls=tls,
    )


# Keys added at each send; a stored payload that seems to hold one is re-encoded whole.
SEND_KEYS = ("event_id", "event", "timestamp", "signature")
# One pass over the stored text for all of them (the raw message is most of it).
_SEND_KEY = re.compile("|".join(f'"{key}"' for key in SEND_KEYS))


def render_request(
    payload: dict,
    *,
    event_id: str,
    kind: str,
    api_key: str,
    webhook_secrets: tuple[str, ...],
    timestamp: int,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one webhook."""
    body = signed_body(payload, event_id=event_id, kind=kind, api_key=api_key, timestamp=timestamp)
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return raw, _headers(raw, event_id, timestamp, webhook_secrets)


def render_stored_request(
    payload_json: str,
    sha1: str | None,
    *,
    event_id: str,
    kind: str,
    api_key: str,
    webhook_secrets: tuple[str, ...],
    timestamp: int,
) -> tuple[bytes, dict[str, str]]:
    """The same webhook from the payload as stored (JSON text of an object) and its `sha1`:
    the per-send fields are appended to the stored text instead of decoding and re-encoding
    the whole payload (the raw message is most of it)."""
    text = payload_json.rstrip()
    if sha1 is None or not text.endswith("}") or _SEND_KEY.search(text):
        return render_request(
            json.loads(payload_json),
            event_id=event_id,
            kind=kind,
            api_key=api_key,
            webhook_secrets=webhook_secrets,
            timestamp=timestamp,
        )
    head = text[:-1].rstrip()
    # event_id is a UUID and the signature hex: only the kind needs JSON quoting.
    tail = (
        f'"event_id":"{event_id}","event":{json.dumps(kind)},"timestamp":{int(timestamp)},'
        f'"signature":"{spec_signature(api_key, timestamp, sha1)}"}}'
    )
    raw = (head + ("" if head.endswith("{") else ",") + tail).encode("utf-8")
    return raw, _headers(raw, event_id, timestamp, webhook_secrets)


def _headers(
    raw: bytes, event_id: str, timestamp: int, webhook_secrets: tuple[str, ...]
) -> dict[str, str]:
    """With several secrets (a rotation's grace period) `webhook-signature` carries one
    signature per secret, space-separated, as Standard Webhooks allows, so receivers holding
    either secret verify it."""
    signatures = [
        standard_webhook_signature(secret, event_id, timestamp, raw) for secret in webhook_secrets
    ]
    return {
        "Content-Type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }


async def post(
    session: WebhookSession,
    url: str,
    raw: bytes,
    headers: dict,
) -> PostResult:
    started = time.monotonic()
    try:
        answer = await session.post(url, raw, headers)
    except TimeoutError:
        error = "timed out"
    except PrivateTargetRefused as exc:
        error = f"refused: {exc}"[:1024]
    except WebError as exc:
        error = str(exc)[:1024]
    except (OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:1024]
    except asyncio.CancelledError:
        raise
    else:
        retry_after = None
        if answer.status in (429, 503):
            retry_after = parse_retry_after(answer.retry_after)
        return PostResult(
            status_code=answer.status,
            excerpt=answer.excerpt.decode("utf-8", errors="replace"),
            error="",
            duration_ms=int((time.monotonic() - started) * 1000),
            retry_after=retry_after,
        )
    return PostResult(None, "", error, int((time.monotonic() - started) * 1000))


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if unusable."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
