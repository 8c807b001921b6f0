"""Signed, expiring, single-use connect/disconnect links (design.md section 7).

Each link carries a random nonce. When a link has done its job (a mailbox connected or
disconnected) its nonce is recorded as a UsedLink, in the same transaction as the change,
and the link stops working: a connect_url cannot be used again to re-point the user to
another mailbox. Failed attempts (a wrong password) do not use the link up.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.utils import timezone

from superimap.mailboxes.models import UsedLink

LINK_MAX_AGE_SECONDS = 30 * 60
_SALT = "superimap.mailboxes.links"


@dataclass(frozen=True)
class Link:
    user_id: int
    nonce: str


def make_link(user_id: int, action: str) -> str:
    data = {"u": user_id, "a": action, "n": secrets.token_urlsafe(12)}
    token = signing.dumps(data, salt=_SALT, compress=True)
    return f"{settings.PUBLIC_URL}/{action}/{token}"


def parse_link(token: str, action: str) -> Link | None:
    """The link, or None if it is forged, expired, for another action or used already."""
    try:
        data = signing.loads(token, salt=_SALT, max_age=LINK_MAX_AGE_SECONDS)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict) or data.get("a") != action or not isinstance(data.get("u"), int):
        return None
    nonce = data.get("n")
    if not isinstance(nonce, str) or not nonce:
        # Links made before nonces existed: the token itself is the nonce.
        nonce = hashlib.sha256(token.encode()).hexdigest()[:32]
    if UsedLink.objects.filter(nonce=nonce).exists():
        return None
    return Link(data["u"], nonce)


def read_link(token: str, action: str) -> int | None:
    """The user id the link was made for, or None (see parse_link)."""
    link = parse_link(token, action)
    return link.user_id if link else None


def use_link(nonce: str) -> bool:
    """Record the link as used; False if it was used already (by a concurrent request).
    Call it inside the transaction that applies the link's change, and roll back on False."""
    now = timezone.now()
    try:
        with transaction.atomic():
            UsedLink.objects.create(nonce=nonce, used_at=now)
    except IntegrityError:
        return False
    # Expired links are refused by their signature anyway: forget their nonces.
    UsedLink.objects.filter(used_at__lt=now - timedelta(seconds=LINK_MAX_AGE_SECONDS + 60)).delete()
    return True
