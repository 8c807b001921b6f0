"""Putting events in the outbox. Callers run these inside their own transaction."""

from __future__ import annotations

from django.utils import timezone

from superimap.delivery.models import Delivery
from superimap.delivery.payloads import (
    user_error_payload,
    user_event_payload,
    user_recovered_payload,
)
from superimap.mailboxes.models import MailboxUser


def enqueue(kind: str, user: MailboxUser, payload: dict, message_id: str = "") -> Delivery:
    partner = user.connection.partner
    status = Delivery.Status.PENDING if partner.webhook_url(kind) else Delivery.Status.SKIPPED
    return Delivery.objects.create(
        kind=kind,
        partner=partner,
        user=user,
        message_id=message_id,
        payload=payload,
        status=status,
        next_attempt_at=timezone.now(),
        last_error=""
        if status == Delivery.Status.PENDING
        else f"partner has no {kind} webhook URL",
    )


def enqueue_user_event(kind: str, user: MailboxUser) -> Delivery:
    email = user.email if kind == Delivery.Kind.USER_CONNECTED else None
    payload = user_event_payload(
        provider_code=user.connection.provider.code, user_tag=user.tag, email=email
    )
    return enqueue(kind, user, payload)


def enqueue_user_error(user: MailboxUser, status: str, error: str) -> Delivery:
    payload = user_error_payload(
        provider_code=user.connection.provider.code,
        user_tag=user.tag,
        status=status,
        error=error,
        failing_since=user.failing_since.isoformat() if user.failing_since else None,
    )
    return enqueue(Delivery.Kind.USER_ERROR, user, payload)


def enqueue_user_recovered(user: MailboxUser, status: str) -> Delivery:
    payload = user_recovered_payload(
        provider_code=user.connection.provider.code,
        user_tag=user.tag,
        status=status,
        failing_since=user.failing_since.isoformat() if user.failing_since else None,
    )
    return enqueue(Delivery.Kind.USER_RECOVERED, user, payload)
