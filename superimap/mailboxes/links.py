"""Signed, expiring connect/disconnect links (design.md section 7)."""

from __future__ import annotations

from django.conf import settings
from django.core import signing

LINK_MAX_AGE_SECONDS = 30 * 60
_SALT = "superimap.mailboxes.links"


def make_link(user_id: int, action: str) -> str:
    token = signing.dumps({"u": user_id, "a": action}, salt=_SALT, compress=True)
    return f"{settings.PUBLIC_URL}/{action}/{token}"


def read_link(token: str, action: str) -> int | None:
    """The user id the link was made for, or None if it is forged, expired or for another action."""
    try:
        data = signing.loads(token, salt=_SALT, max_age=LINK_MAX_AGE_SECONDS)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict) or data.get("a") != action or not isinstance(data.get("u"), int):
        return None
    return data["u"]
