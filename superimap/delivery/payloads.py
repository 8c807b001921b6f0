"""Webhook payloads and signatures exactly as the spec's "Webhooks" section.

The stored payload holds everything but `timestamp` and `signature`, which are added at
each send (the timestamp is when the webhook was sent, as the spec says).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from urllib.parse import quote

from django.conf import settings


def sha1_hex(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def truncated_mail_payload(
    *,
    provider_code: str,
    user_tag: str,
    header: bytes,
    envelope: dict,
    size: int,
    uid: int,
    uid_validity: int,
    folder: str,
    internal_date: str | None,
) -> dict:
    """new_mail for a message over MAX_EMAIL_SIZE: the envelope, no `rfc822`, a URL to
    fetch it; `sha1` is the SHA-1 of the header block (the only bytes fetched)."""
    return {
        "sha1": sha1_hex(header.decode("utf-8", errors="replace").replace("\x00", "\ufffd")),
        "imap_provider_code": provider_code,
        "user_tag": user_tag,
        "envelope": _without_nul(envelope),
        "size": size,
        "truncated": True,
        "rfc822_url": message_url(provider_code, user_tag, uid_validity, uid, folder),
        "uid": uid,
        "uid_validity": uid_validity,
        "folder": folder,
        "internal_date": internal_date,
    }


def new_mail_payload(
    *,
    provider_code: str,
    user_tag: str,
    raw: bytes,
    envelope: dict,
    uid: int,
    uid_validity: int,
    folder: str,
    internal_date: str | None,
    size: int | None = None,
) -> dict:
    rfc822 = raw.decode("utf-8", errors="replace")
    exact = "\ufffd" not in rfc822 or _is_utf8(raw)
    if "\x00" in rfc822:
        # PostgreSQL's jsonb cannot store U+0000: the row would never be written and the
        # mail never sent. Replace it like invalid UTF-8 and send the exact bytes too.
        rfc822 = rfc822.replace("\x00", "\ufffd")
        exact = False
    payload = {
        "sha1": sha1_hex(rfc822),
        "imap_provider_code": provider_code,
        "user_tag": user_tag,
        "envelope": _without_nul(envelope),
        "rfc822": rfc822,
        "size": len(raw) if size is None else size,
        "uid": uid,
        "uid_validity": uid_validity,
        "folder": folder,
        "internal_date": internal_date,
    }
    if not exact:
        # beyond: the exact bytes when `rfc822` had to replace invalid UTF-8 (or NUL).
        payload["rfc822_base64"] = base64.b64encode(raw).decode("ascii")
    return payload


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _without_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {key: _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def message_url(
    provider_code: str, user_tag: str, uid_validity: int, uid: int, folder: str | None = None
) -> str:
    """The API route that streams one message's raw bytes (``rfc822_url`` in new_mail).

    The partner fetches it with its API key; the web process reads the message from the IMAP
    server on demand, so a URL stays valid as long as the message and its UIDVALIDITY do.
    ``folder`` (the query parameter) names the folder the UID belongs to; without it the
    route reads the user's primary folder.
    """
    code = quote(provider_code, safe="")
    tag = quote(user_tag, safe="")
    url = (
        f"{settings.PUBLIC_URL}/api/v1/connections/{code}/users/{tag}"
        f"/messages/{int(uid_validity)}/{int(uid)}"
    )
    if folder:
        url += f"?folder={quote(folder, safe='')}"
    return url


def user_event_payload(*, provider_code: str, user_tag: str, email: str | None = None) -> dict:
    payload = {
        "sha1": sha1_hex(user_tag),
        "imap_provider_code": provider_code,
        "user_tag": user_tag,
    }
    if email is not None:
        payload["email"] = email
    return payload


def user_error_payload(
    *, provider_code: str, user_tag: str, status: str, error: str, failing_since: str | None
) -> dict:
    """user_error: the mailbox needs attention (auth_failed, tls_failed, or failing 15 min)."""
    payload = user_event_payload(provider_code=provider_code, user_tag=user_tag)
    payload.update(status=status, error=error, failing_since=failing_since)
    return payload


def user_recovered_payload(
    *, provider_code: str, user_tag: str, status: str, failing_since: str | None
) -> dict:
    """user_recovered: a mailbox reported with user_error is watched again."""
    payload = user_event_payload(provider_code=provider_code, user_tag=user_tag)
    payload.update(status=status, failing_since=failing_since)
    return payload


def message_change_payload(
    *,
    kind: str,
    provider_code: str,
    user_tag: str,
    folder: str,
    uid: int,
    uid_validity: int,
    message_id: str,
    new_mail_event_id: str | None,
    old_flags: list[str],
    new_flags: list[str],
    old_labels: list[str] | None = None,
    new_labels: list[str] | None = None,
) -> dict:
    """message_updated (flags or Gmail labels of a delivered message changed) or
    message_deleted (it left the folder: ``new_flags`` are its last known ones). ``sha1``
    (what the spec signature covers) is of the change: kind, mailbox, UID and flags."""
    key = f"{kind}\x00{user_tag}\x00{folder}\x00{uid_validity}\x00{uid}\x00{' '.join(new_flags)}"
    payload = {
        "sha1": sha1_hex(key),
        "imap_provider_code": provider_code,
        "user_tag": user_tag,
        "folder": folder,
        "uid": uid,
        "uid_validity": uid_validity,
        "message_id": message_id,
        "new_mail_event_id": new_mail_event_id,
    }
    if kind == "message_updated":
        payload.update(old_flags=old_flags, new_flags=new_flags)
    else:
        payload.update(flags=old_flags)
    if new_labels is not None or old_labels is not None:
        if kind == "message_updated":
            payload.update(old_labels=old_labels or [], new_labels=new_labels or [])
        else:
            payload.update(labels=old_labels or [])
    return payload


@functools.lru_cache(maxsize=256)
def _keyed(key: bytes):
    """An HMAC-SHA256 keyed once: each signature copies it instead of keying again."""
    return hmac.new(key, digestmod=hashlib.sha256)


def spec_signature(api_key: str, timestamp: int, sha1: str) -> str:
    """OpenSSL::HMAC.hexdigest(sha256, api_key, "#{timestamp}#{sha1}")."""
    mac = _keyed(api_key.encode()).copy()
    mac.update(f"{timestamp}{sha1}".encode())
    return mac.hexdigest()


@functools.lru_cache(maxsize=256)
def _secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def standard_webhook_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks: base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")) as 'v1,<sig>'."""
    mac = _keyed(_secret_key(secret)).copy()
    mac.update(f"{msg_id}.{timestamp}.".encode())
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_body(payload: dict, *, event_id: str, kind: str, api_key: str, timestamp: int) -> dict:
    body = dict(payload)
    body["event_id"] = event_id
    body["event"] = kind
    body["timestamp"] = timestamp
    body["signature"] = spec_signature(api_key, timestamp, body["sha1"])
    return body
