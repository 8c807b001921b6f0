"""Per-partner content of new_mail webhooks: the raw message and/or a parsed view of it.

`include_rfc822` (default on) keeps the original's `rfc822` field; `include_parsed` (default
off) adds `text` and `html` (decoded to Unicode, each cut at WEBHOOK_PARSED_MAX_CHARS with
`text_truncated` / `html_truncated`), `attachments` (metadata only) and `parse_defects`.

Parsing uses the standard library's `email` package with policy.default and must never
fail on the mail people actually get: broken boundaries, 8-bit headers, unknown or lying
charsets, bad base64. Whatever cannot be read is left out and named in `parse_defects`.
"""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage

from superimap.delivery.payloads import _without_nul

# Charsets tried, in order, when the declared one is unknown or does not fit the bytes.
FALLBACK_CHARSETS = ("utf-8", "cp1252", "latin-1")
MAX_PARTS = 1000  # a message with more parts is cut there (and flagged)


def with_content_options(
    payload: dict, raw: bytes, *, include_rfc822: bool, include_parsed: bool, max_chars: int
) -> dict:
    """The new_mail payload as the partner asked for it (a new dict)."""
    payload = dict(payload)
    if include_parsed:
        payload.update(parse_content(raw, max_chars))
    if not include_rfc822:
        payload.pop("rfc822", None)
        payload.pop("rfc822_base64", None)
    return payload


def parse_content(raw: bytes, max_chars: int) -> dict:
    """text, html (capped), attachments and parse_defects of a raw message. Never raises."""
    try:
        return _parse(raw, max_chars)
    except Exception as exc:  # the last line of defence: the webhook must still go out
        return _empty([f"unparseable: {type(exc).__name__}"])


def _parse(raw: bytes, max_chars: int) -> dict:
    defects: list[str] = []
    message = email.message_from_bytes(raw, policy=policy.default)
    text_part = _body(message, "plain", defects)
    html_part = _body(message, "html", defects)
    text = _decoded(text_part, defects)
    if text_part is None and html_part is None and _unsplit_multipart(message):
        # The boundary is missing or wrong: the parts could not be split. Rather than
        # nothing, give the body as it is.
        text = _decoded(message, defects)
        defects.append("multipart body could not be split: given whole as text")
    text, text_truncated = _capped(text, max_chars)
    html, html_truncated = _capped(_decoded(html_part, defects), max_chars)
    attachments = []
    for part in _leaves(message, defects):
        if part is text_part or part is html_part:
            continue
        if _is_inline_body(part):
            continue
        attachments.append(_attachment(part, defects))
    for part in _all_parts(message):
        defects.extend(type(defect).__name__ for defect in part.defects)
    return _without_nul(
        {
            "text": text,
            "text_truncated": text_truncated,
            "html": html,
            "html_truncated": html_truncated,
            "attachments": attachments,
            "parse_defects": sorted(set(defects)),
        }
    )


def _unsplit_multipart(message) -> bool:
    return message.get_content_maintype() == "multipart" and isinstance(message.get_payload(), str)


def _empty(defects: list[str]) -> dict:
    return {
        "text": None,
        "text_truncated": False,
        "html": None,
        "html_truncated": False,
        "attachments": [],
        "parse_defects": defects,
    }


def _body(message: EmailMessage, subtype: str, defects: list[str]):
    try:
        part = message.get_body(preferencelist=(subtype,))
    except Exception as exc:
        defects.append(f"body: {type(exc).__name__}")
        return None
    if part is None or part.get_content_subtype() != subtype:
        return None
    if part.get_content_disposition() == "attachment":
        return None
    return part


def _decoded(part, defects: list[str]) -> str | None:
    if part is None:
        return None
    data = _payload_bytes(part, defects)
    declared = None
    try:
        declared = part.get_content_charset()
    except Exception:
        defects.append("charset: unreadable parameter")
    for charset in ([declared] if declared else []) + list(FALLBACK_CHARSETS):
        try:
            text = data.decode(charset)
        except (LookupError, UnicodeDecodeError, ValueError):
            continue
        if declared and charset != declared:
            defects.append(f"charset: declared {declared}, decoded as {charset}")
        return text
    return data.decode("utf-8", errors="replace")  # not reached: latin-1 decodes anything


def _payload_bytes(part, defects: list[str]) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception as exc:
        defects.append(f"payload: {type(exc).__name__}")
        data = None
    if data is None:
        raw = part.get_payload()
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    return data


def _capped(text: str | None, max_chars: int) -> tuple[str | None, bool]:
    if text is None or len(text) <= max_chars:
        return text, False
    return text[:max_chars], True


def _all_parts(message):
    stack, seen = [message], 0
    while stack and seen < MAX_PARTS:
        part = stack.pop()
        seen += 1
        yield part
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(reversed(payload))


def _leaves(message, defects: list[str]):
    """Non-multipart parts in order; an attached message (message/rfc822) is one leaf."""
    count = 0
    stack = [message]
    while stack:
        part = stack.pop()
        count += 1
        if count > MAX_PARTS:
            defects.append(f"more than {MAX_PARTS} parts: the rest were not read")
            return
        if part.get_content_maintype() == "multipart":
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(reversed(payload))
            continue
        yield part


def _is_inline_body(part) -> bool:
    """Alternative text/html bodies that are not the chosen one (e.g. a second text part
    between attachments) are kept out of `attachments` only when unnamed and inline."""
    return (
        part.get_content_maintype() == "text"
        and part.get_content_disposition() != "attachment"
        and not _safe(part.get_filename)
    )


def _attachment(part, defects: list[str]) -> dict:
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload()
        message = inner[0] if isinstance(inner, list) and inner else None
        try:
            size = len(message.as_bytes()) if message is not None else 0
        except Exception as exc:
            defects.append(f"attached message: {type(exc).__name__}")
            size = 0
    else:
        size = len(_payload_bytes(part, defects))
    return {
        "filename": _safe(part.get_filename),
        "content_type": part.get_content_type(),
        "size": size,
        "content_id": _safe(lambda: _header(part, "Content-ID")),
        "disposition": _safe(part.get_content_disposition),
    }


def _header(part, name: str) -> str | None:
    value = part.get(name)
    return str(value).strip() if value is not None else None


def _safe(getter):
    """Header accessors of policy.default parse lazily and can raise on garbage."""
    try:
        value = getter()
    except Exception:
        return None
    return str(value) if value is not None else None
